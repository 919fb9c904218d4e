# spfmilter — the two commands a newcomer types are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONF   ?= spfmilter.conf
PYTEST_ARGS ?=

# As root the shipped socket (/run/spfmilter/spfmilter.sock) is used; otherwise
# one under ./run, which the current user can create.
RUN_SOCKET := $(if $(filter 0,$(shell id -u)),,--socket unix:$(CURDIR)/run/spfmilter.sock)

.PHONY: run test lint deps system-deps test-deps mta-deps interop-deps boot-lab-deps check-config clean deb dist

# The system packages come first (python3 and python3-venv among them: a minimal
# Debian has neither), then the venv.  As root they are installed with apt;
# otherwise the script prints the one apt-get line that would.
system-deps:
	@sh scripts/system-deps.sh

# .venv/.complete is written last: a venv that a failed run left half made (no
# pip, say) is made again from scratch instead of failing every later run.
$(VENV)/.complete: | system-deps
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip --version >/dev/null
	touch $@

deps: .stamp-deps
.stamp-deps: setup.cfg pyproject.toml $(VENV)/.complete
	$(BIN)/python -m pip install -q -e .
	touch $@

test-deps: .stamp-test-deps
.stamp-test-deps: .stamp-deps scripts/system-deps.sh
	sh scripts/system-deps.sh test
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

mta-deps:
	sh scripts/install-mtas.sh

# SpamAssassin, OpenDMARC and the sample configurations of spf-engine (for the
# migration tests: fetched here, never while the tests run).
interop-deps: deps
	SPFMILTER_PYTHON=$(BIN)/python sh scripts/install-interop.sh
	sh scripts/install-opendmarc.sh

# The debootstrap'd Debian 12 root the package is booted in with systemd
# (tests/integration/test_package_systemd.py); cached, made again only when its
# package list changes.
boot-lab-deps:
	sh scripts/install-boot-lab.sh

run: deps
	@mkdir -p run
	$(BIN)/spfmilter -c $(CONF) $(RUN_SOCKET)

check-config: deps
	$(BIN)/spfmilter --check-config -c $(CONF)

# Static checks first: a type error or a lint error fails `make test` (and CI).
lint: test-deps
	$(BIN)/mypy
	$(BIN)/ruff check .

# The suite installs the Debian package `make deb` built (tests/integration/test_package.py,
# and in a Debian booted with systemd: test_package_systemd.py) and checks the sdist and
# wheel of `make dist`.
test: lint mta-deps interop-deps boot-lab-deps deb dist
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .stamp-* run build dist *.egg-info .pytest_cache spfmilter_*.deb

# --- packages -------------------------------------------------------------------
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' spfmilter/__init__.py)
DEB     := spfmilter_$(VERSION)_all.deb
DEBSRC  := build/deb/spfmilter-$(VERSION)
# Every file of the checkout (tracked or new, not ignored): what the package is built from.
TREE    := $(wildcard $(shell git ls-files -co --exclude-standard 2>/dev/null))

# The Debian package, built with Debian's tools (debhelper, dh-python) in a copy of
# the tree under build/deb (dpkg-buildpackage writes next to its source folder),
# then checked with lintian: an error or an unexplained warning fails the build.
deb: $(DEB)
$(DEB): $(TREE)
	sh scripts/system-deps.sh deb
	@git ls-files --error-unmatch Makefile >/dev/null || { echo "make deb: the package is built \
	from the files git lists, and git cannot list this checkout's (see above)" >&2; exit 1; }
	@v=$$(dpkg-parsechangelog -l debian/changelog -S Version); [ "$$v" = "$(VERSION)" ] || \
	  { echo "debian/changelog says $$v but spfmilter/__init__.py says $(VERSION): add a changelog entry" >&2; exit 1; }
	rm -rf build/deb && mkdir -p $(DEBSRC)
	git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(DEBSRC)
	# Debian's python3 and tools only, whatever python3 comes first in PATH (pyenv, a venv)
	cd $(DEBSRC) && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc --no-sign
	lintian --fail-on error,warning --info build/deb/$(DEB)
	cp build/deb/$(DEB) $@

# The sdist and the wheel for pip users, same version; twine checks their metadata.
dist: test-deps
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

# Performance benchmark, not part of `make test` (root, ~10 minutes): spfmilter beside
# pyspf-milter and a no-op pymilter milter, over the milter protocol and through Postfix.
# Installs what it needs itself (bench/setup.sh); results in bench/results/.
.PHONY: bench
bench: test-deps
	sh bench/setup.sh $(PYTHON)
	$(BIN)/python -m bench.bench $(BENCH_ARGS)

# spfmilter report's lines/s alone (no root, no DNS; also part of `make bench`).
.PHONY: bench-report
bench-report: test-deps
	$(BIN)/python -m bench.report_bench

.PHONY: fuzz soak

# The longer fuzz run (FUZZ_SECONDS per target; atheris when it installs, else hypothesis);
# its figures go to tests/fuzz/RESULTS.md.  Exits non-zero when something was found.
FUZZ_SECONDS ?= 120
fuzz: test-deps
	-$(BIN)/python -m pip install -q atheris
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python -m tests.fuzz.run

# At least 200,000 transactions over the milter protocol against a local DNS server;
# RSS, descriptors, threads and errors go to soak/results.md and soak/results.json.
SOAK_TRANSACTIONS ?= 200000
soak: test-deps
	$(BIN)/python -m soak.soak --transactions $(SOAK_TRANSACTIONS)
