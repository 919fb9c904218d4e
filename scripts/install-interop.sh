#!/bin/sh
# Install what spfmilter's interoperability tests need (tests/test_spamassassin.py):
# SpamAssassin from Debian.  Recommends are left out on purpose: without
# libmail-spf-perl SpamAssassin cannot evaluate SPF itself, so every SPF_* hit
# in those tests comes from the headers spfmilter wrote.
#
# Idempotent: run it as often as you like.  Usage (as root): scripts/install-interop.sh
set -eu

PKGS="spamassassin"
INSTALL_CMD="sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PKGS"

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
