#!/bin/sh
# Install what spfmilter's interoperability and migration tests need:
#
#  * SpamAssassin from Debian (tests/integration/test_spamassassin.py).
#    Recommends are left out on purpose: without libmail-spf-perl SpamAssassin
#    cannot evaluate SPF itself, so every SPF_* hit in those tests comes from the
#    headers spfmilter wrote.
#  * The sample configurations of spf-engine 3.1.0 (pyspf-milter's and python
#    policyd-spf's, tests/integration/test_operations.py), from its source
#    distribution on PyPI, unpacked into $PREFIX/spf-engine-3.1.0: the tests read
#    them there and fetch nothing themselves.  SPFMILTER_PYTHON names the Python
#    whose pip downloads it (make passes the venv's).
#
# Idempotent: run it as often as you like.  Usage (as root): scripts/install-interop.sh
set -eu

PREFIX="${SPFMILTER_LAB_PREFIX:-/opt/spfmilter-lab}"
PYTHON="${SPFMILTER_PYTHON:-python3}"
SPF_ENGINE="spf-engine-3.1.0"
PKGS="spamassassin"
INSTALL_CMD="sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PKGS"

if ! command -v spamassassin >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "install-interop: needs root and apt-get (Debian). Install with:" >&2
        echo "  $INSTALL_CMD" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends $PKGS; then
        apt-get update -q
        apt-get install -y -q --no-install-recommends $PKGS
    fi
    # The package may start a spamd service; the tests run `spamassassin` directly.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now spamd spamassassin >/dev/null 2>&1 || true
    fi
fi
echo "install-interop: $(spamassassin --version 2>/dev/null | head -1)"

if [ ! -f "$PREFIX/$SPF_ENGINE/data/etc/pyspf-milter/pyspf-milter.conf" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: "spf-engine==3.1.0" -d "$tmp" || {
        echo "install-interop: could not download spf-engine 3.1.0's source with $PYTHON -m pip" >&2
        exit 1
    }
    mkdir -p "$tmp/x"
    tar -xzf "$tmp"/spf*engine-3.1.0.tar.gz -C "$tmp/x"
    src=$(ls -d "$tmp"/x/spf*engine-3.1.0)
    mkdir -p "$PREFIX"
    rm -rf "$PREFIX/$SPF_ENGINE"
    mv "$src" "$PREFIX/$SPF_ENGINE"
    chmod -R a+rX "$PREFIX/$SPF_ENGINE"
fi
echo "install-interop: spf-engine samples in $PREFIX/$SPF_ENGINE/data/etc"
