#!/bin/sh
# Install the real mail servers used by spfmilter's MTA test lab (tests/mta.py).
#
#  * Postfix from apt.  Debian's package does not start it under
#    DEBIAN_FRONTEND=noninteractive without systemd, but we stop it anyway so that
#    no system Postfix is left running; the tests run private instances
#    (`postfix -c DIR`).
#  * Sendmail conflicts with Postfix in Debian (both provide mail-transport-agent),
#    so its packages are downloaded and unpacked with `dpkg -x` into
#    /opt/spfmilter-lab/sendmail instead of being installed.
#  * m4 builds sendmail.cf; liblockfile1, libwrap0 (and their deps) are the
#    sendmail binary's shared libraries; util-linux and mount give unshare,
#    nsenter and mount for the labs' private mount namespaces; iproute2 gives
#    `ip netns` for Sendmail's client network namespace.
#
#  * It refuses (exit 1, one line, nothing installed) on a host whose installed
#    mail server is not Postfix (exim4, sendmail, opensmtpd, ...): apt would
#    replace it with Postfix.
#
# Idempotent: run it as often as you like.  Usage: scripts/install-mtas.sh
set -eu

PREFIX="${SPFMILTER_LAB_PREFIX:-/opt/spfmilter-lab}"
SM_DIR="$PREFIX/sendmail"
APT_PKGS="postfix m4 liblockfile1 libwrap0 libsasl2-2 libldap-2.5-0 libdb5.3 libssl3 libnsl2 iproute2 util-linux mount"
SM_PKGS="sendmail-bin sendmail-base sendmail-cf"
INSTALL_CMD="sudo make -C $(cd "$(dirname "$0")/.." && pwd) mta-deps"

# A test suite must never change which mail server a host runs: Postfix conflicts
# with every other mail-transport-agent in Debian, so installing it would remove
# the host's exim4, sendmail or opensmtpd.  Refuse before touching anything.
if command -v dpkg-query >/dev/null 2>&1; then
    other=$(dpkg-query -W -f='${db:Status-Status}\t${Package}\t${Provides}\n' 2>/dev/null |
        awk -F '\t' '$1 != "not-installed" && $1 != "config-files" && $2 != "postfix" && $3 ~ /(^|[ ,])mail-transport-agent([ ,(]|$)/ {print $2}' |
        tr '\n' ' ' | sed 's/ $//')
    if [ -n "$other" ]; then
        echo "install-mtas: this host's mail server is $other, not Postfix; installing the test lab's Postfix would replace it, so nothing was installed (run the tests in a container or VM without another MTA)" >&2
        exit 1
    fi
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    echo "install-mtas: needs root and apt-get/dpkg (Debian). As root, run:" >&2
    echo "  $INSTALL_CMD" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive

have_all() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || return 1
    done
}

# No package lists yet (fresh machine): fetch them first.
apt-cache show postfix >/dev/null 2>&1 || apt-get update -q

# Some of the library package names differ between Debian releases; keep only
# those apt knows about (the binary's real needs are checked with ldd below).
pkgs=""
for p in $APT_PKGS; do
    if have_all "$p" || apt-cache show "$p" >/dev/null 2>&1; then pkgs="$pkgs $p"; fi
done

if ! have_all $pkgs; then
    # Preseed so Postfix's postinst does not ask and does not build a live config.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    if ! apt-get install -y -q --no-install-recommends $pkgs; then
        apt-get update -q
        apt-get install -y -q --no-install-recommends $pkgs
    fi
fi

# Postfix must not be left running as a system service.
if [ -f /etc/postfix/main.cf ] || [ -d /etc/postfix ]; then
    postfix status >/dev/null 2>&1 && postfix stop >/dev/null 2>&1 || true
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now postfix >/dev/null 2>&1 || true
fi
# With "No configuration" there may be no main.cf.  The lab's private
# instances bind-mount their own copy (listing their config folder in
# alternate_config_directories) over this file, so it has to exist.
if [ ! -f /etc/postfix/main.cf ]; then
    mkdir -p /etc/postfix
    : > /etc/postfix/main.cf
fi
[ -f /etc/postfix/master.cf ] || cp /usr/share/postfix/master.cf.dist /etc/postfix/master.cf 2>/dev/null || true

SM_BIN="$SM_DIR/usr/libexec/sendmail/sendmail"
if [ ! -x "$SM_BIN" ] || [ ! -f "$SM_DIR/usr/share/sendmail/cf/m4/cf.m4" ]; then
    tmp="$(mktemp -d)"
    chown _apt "$tmp" 2>/dev/null || chmod 0777 "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download $SM_PKGS) || { apt-get update -q && (cd "$tmp" && apt-get download $SM_PKGS); }
    mkdir -p "$SM_DIR"
    for deb in "$tmp"/*.deb; do
        dpkg -x "$deb" "$SM_DIR"
    done
fi

if ldd "$SM_BIN" | grep -q 'not found'; then
    echo "install-mtas: sendmail is missing shared libraries:" >&2
    ldd "$SM_BIN" | grep 'not found' >&2
    exit 1
fi
# The probe runs with a qualified host name and no network: with an unqualified
# one (a VM called "vm") sendmail sleeps a minute trying to qualify it.
if ! unshare --uts --net sh -c 'hostname localhost.localdomain; "$0" -d0.1 -bt -C /dev/null' "$SM_BIN" \
        </dev/null 2>&1 | grep -q '^Version 8\.'; then
    echo "install-mtas: $SM_BIN does not run" >&2
    exit 1
fi
echo "install-mtas: postfix $(postconf -h mail_version 2>/dev/null), sendmail in $SM_DIR"
