# spfmilter — the two commands a newcomer types are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONF   ?= spfmilter.conf
PYTEST_ARGS ?=

# As root the shipped socket (/run/spfmilter/spfmilter.sock) is used; otherwise
# one under ./run, which the current user can create.
RUN_SOCKET := $(if $(filter 0,$(shell id -u)),,--socket unix:$(CURDIR)/run/spfmilter.sock)

.PHONY: run test lint deps test-deps mta-deps interop-deps check-config clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

deps: .stamp-deps
.stamp-deps: setup.cfg pyproject.toml scripts/system-deps.sh | $(BIN)/python
	sh scripts/system-deps.sh
	$(BIN)/python -m pip install -q -e .
	touch $@

test-deps: .stamp-test-deps
.stamp-test-deps: .stamp-deps
	sh scripts/system-deps.sh test
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

mta-deps:
	sh scripts/install-mtas.sh

interop-deps:
	sh scripts/install-interop.sh
	sh scripts/install-opendmarc.sh

run: deps
	@mkdir -p run
	$(BIN)/spfmilter -c $(CONF) $(RUN_SOCKET)

check-config: deps
	$(BIN)/spfmilter --check-config -c $(CONF)

# Static checks first: a type error or a lint error fails `make test` (and CI).
lint: test-deps
	$(BIN)/mypy
	$(BIN)/ruff check .

test: lint mta-deps interop-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .stamp-* run build *.egg-info .pytest_cache

# Performance benchmark, not part of `make test` (root, ~10 minutes): spfmilter beside
# pyspf-milter and a no-op pymilter milter, over the milter protocol and through Postfix.
# Installs what it needs itself (bench/setup.sh); results in bench/results/.
.PHONY: bench
bench: deps
	sh bench/setup.sh $(PYTHON)
	$(BIN)/python -m bench.bench $(BENCH_ARGS)

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
