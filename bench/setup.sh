#!/bin/sh
# What `make bench` needs at run time, installed by the benchmark itself
# (idempotent; a second run installs nothing):
#   * NSD (authoritative DNS server for the benchmark's zone), Postfix (the
#     end-to-end run; Debian does not start it without systemd), iproute2 and
#     util-linux (private network and mount namespaces);
#   * pyspf-milter: PyPI spf-engine==3.1.0 with pymilter, pyspf, authres and
#     dnspython, in a venv of its own under $BENCH_WORK (default
#     /var/tmp/spfmilter-bench), never in the project's .venv; the same package
#     provides python policyd-spf (the `policyd-spf` command), the policy-protocol
#     contender.
# Needs root (apt, namespaces).  Usage: bench/setup.sh [PYTHON]
set -eu
WORK="${BENCH_WORK:-/var/tmp/spfmilter-bench}"
PY="${1:-python3}"

if [ "$(id -u)" != 0 ]; then
    echo "bench/setup.sh: the benchmark needs root (apt, network namespaces, Postfix)" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
need=""
for tool in nsd:nsd nsd-control:nsd postfix:postfix smtp-source:postfix ip:iproute2 unshare:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || need="$need ${tool#*:}"
done
if [ -n "$need" ]; then
    pkgs=$(echo $need | tr ' ' '\n' | sort -u | tr '\n' ' ')
    echo "bench/setup.sh: installing $pkgs"
    apt-get install -y -qq $pkgs >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $pkgs; }
fi
# Debian's packages may have started a system NSD/Postfix where an init system exists;
# the benchmark runs private instances in its own namespaces, so leave those alone.

VENV="$WORK/venv-pyspf-milter"
mkdir -p "$WORK"
if ! "$VENV/bin/python" -c 'import spf_engine, Milter, spf, authres, dns' 2>/dev/null \
        || [ ! -x "$VENV/bin/policyd-spf" ]; then
    echo "bench/setup.sh: creating $VENV with spf-engine==3.1.0"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        'spf-engine[milter]==3.1.0' pyspf authres pymilter dnspython
fi
"$VENV/bin/python" -c 'import importlib.metadata as m; print("pyspf-milter venv: spf-engine", m.version("spf-engine"), "pymilter", m.version("pymilter"), "pyspf", m.version("pyspf"))'
