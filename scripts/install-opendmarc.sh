#!/bin/sh
# Install OpenDMARC (Debian package `opendmarc`, 1.4.x) for spfmilter's
# interoperability test tests/test_opendmarc.py, which runs its own OpenDMARC
# in the foreground (`opendmarc -f -c CONF`) chained after spfmilter in the
# test Postfix.  The system service is not wanted: if the package started it,
# it is stopped and disabled again.
#
# `dbconfig-no-thanks` answers the package's `dbconfig-mysql | dbconfig-no-thanks`
# dependency without pulling in a MySQL client (OpenDMARC's history database is
# not used); recommends (perl reporting tools, libopendbx) are left out.
#
# Idempotent: run it as often as you like.  Usage (as root): scripts/install-opendmarc.sh
set -eu

PKGS="opendmarc dbconfig-no-thanks"
INSTALL_CMD="sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PKGS"

have_opendmarc() {
    command -v opendmarc >/dev/null 2>&1 || [ -x /usr/sbin/opendmarc ]
}

stop_service() {
    # Whatever init system there is: leave no system opendmarc running.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now opendmarc.service >/dev/null 2>&1 || true
    else
        if [ -x /etc/init.d/opendmarc ]; then
            /etc/init.d/opendmarc stop >/dev/null 2>&1 || true
        fi
        # works without a running systemd too (removes the unit's symlinks)
        if command -v systemctl >/dev/null 2>&1; then
            systemctl disable opendmarc.service >/dev/null 2>&1 || true
        fi
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d opendmarc disable >/dev/null 2>&1 || true
    fi
    # A daemon started by the package writes this pid file (Debian default).
    for pidfile in /run/opendmarc/opendmarc.pid /var/run/opendmarc/opendmarc.pid; do
        if [ -s "$pidfile" ]; then
            pid=$(cat "$pidfile" 2>/dev/null || true)
            case "$pid" in
                ''|*[!0-9]*) ;;
                *) if [ "$(cat /proc/"$pid"/comm 2>/dev/null || true)" = opendmarc ]; then
                       kill "$pid" 2>/dev/null || true
                   fi ;;
            esac
        fi
    done
}

version() {
    /usr/sbin/opendmarc -V 2>/dev/null | head -1 || true
}

if have_opendmarc; then
    if [ "$(id -u)" = 0 ]; then
        stop_service
    fi
    echo "install-opendmarc: $(version)"
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-opendmarc: needs root and apt-get (Debian). Install with:" >&2
    echo "  $INSTALL_CMD" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends $PKGS; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends $PKGS
fi
stop_service
echo "install-opendmarc: $(version)"
