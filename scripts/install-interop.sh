#!/bin/sh
# Install what spfmilter's interoperability tests need: SpamAssassin from Debian
# (tests/integration/test_spamassassin.py), and the sample configurations of
# spf-engine (pyspf-milter, python-policyd-spf) from its source distribution on
# PyPI, unpacked into .cache/spf-engine (tests/integration/test_operations.py:
# the tests never download anything themselves).  Recommends are left out on purpose: without
# libmail-spf-perl SpamAssassin cannot evaluate SPF itself, so every SPF_* hit
# in those tests comes from the headers spfmilter wrote.
#
# Idempotent: run it as often as you like.  Usage (as root): scripts/install-interop.sh
set -eu

PKGS="spamassassin"
INSTALL_CMD="sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PKGS"

here=$(cd "$(dirname "$0")/.." && pwd)

# spf-engine's samples: pip download (the sdist only), unpacked with tar.
SPF_ENGINE=spf-engine==3.1.0
cache="$here/.cache/spf-engine"
if [ ! -d "$cache/spf-engine-3.1.0/data/etc" ]; then
    py=python3
    [ -x "$here/.venv/bin/python" ] && py="$here/.venv/bin/python"
    mkdir -p "$cache"
    "$py" -m pip download -q --no-deps --no-binary :all: "$SPF_ENGINE" -d "$cache"
    tar -xzf "$(ls "$cache"/spf*engine-3.1.0.tar.gz | head -1)" -C "$cache"
fi
echo "install-interop: $SPF_ENGINE samples in $cache/spf-engine-3.1.0/data/etc"

if command -v spamassassin >/dev/null 2>&1; then
    echo "install-interop: $(spamassassin --version 2>/dev/null | head -1)"
    exit 0
fi

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
echo "install-interop: $(spamassassin --version 2>/dev/null | head -1)"
