#!/bin/sh
# The booted-Debian lab of tests/integration/test_package_systemd.py: a
# debootstrap'd Debian 12 root with systemd, Debian's Postfix and everything
# the spfmilter package depends on, so that the test installs the .deb,
# boots the root with systemd as PID 1 and sends mail through it without any
# network.  This script is the only part that downloads (Debian packages,
# from the host's own apt sources); the root is cached and rebuilt only when
# the package list changes (a new Depends in debian/control, say).
#
# Idempotent: run it as often as you like.  Usage (as root):
#   scripts/install-boot-lab.sh          # prints the cached root's path
# BOOT_LAB_CACHE chooses the cache folder (default /var/cache/spfmilter-tests).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
cache=${BOOT_LAB_CACHE:-/var/cache/spfmilter-tests}
suite=bookworm

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-boot-lab: needs root and apt-get (Debian)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get install -y -q debootstrap || { apt-get update -q && apt-get install -y -q debootstrap; }
fi

# The root's packages: systemd as PID 1, Debian's Postfix, the tests' DNS
# server (python3 + dnslib + yaml), and the .deb's Depends from debian/control
# (the test installs the .deb with apt, which must find them already there).
depends=$(sed -n '/^Package: spfmilter/,$p' "$here/debian/control" \
    | awk '/^Depends:/ {on=1; sub(/^Depends:/, "")} on && /^[A-Za-z-]+:/ && !/^Depends:/ {on=0} on' \
    | tr ',' '\n' | sed -e 's/([^)]*)//g' -e 's/[[:space:]]//g' | grep -v '^\$' | grep -v '^$' | sort -u)
pkgs=$(printf '%s\n' systemd systemd-sysv dbus postfix python3 iproute2 python3-dnslib python3-yaml \
    ca-certificates $depends | sort -u | tr '\n' ',' | sed 's/,$//')
key=$(printf '%s %s\n' "$suite" "$pkgs" | sha256sum | cut -c1-12)
root="$cache/$suite-$key"
mkdir -p "$cache"
# One builder at a time (two test runs may ask at once); the second finds it made.
exec 9>"$cache/.lock"
flock -w 1800 9 || { echo "install-boot-lab: $cache/.lock held for 30 minutes" >&2; exit 1; }
if [ -f "$root/.complete" ]; then
    echo "$root"
    exit 0
fi

mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\)[[:space:]]\+bookworm[[:space:]].*/\2/p' \
        /etc/apt/sources.list 2>/dev/null | head -1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$cache"
tmp="$cache/.build-$suite-$key.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "install-boot-lab: debootstrap $suite from $mirror into $root (a few minutes, once)" >&2
log="$cache/install-boot-lab.log"
fail() {
    tail -20 "$log" >&2
    echo "install-boot-lab: $1 failed (log: $log)" >&2
    exit 1
}
# debootstrap only the base and systemd; apt in the root then resolves the rest
# (debootstrap's own ordering trips over some Python packages' postinsts).
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3,iproute2 \
    "$suite" "$tmp" "$mirror" >"$log" 2>&1 || fail debootstrap
# apt inside the root works as the host's does (sources, proxies, CA certificates).
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    cp /etc/apt/sources.list.d/debian.sources "$tmp/etc/apt/sources.list.d/"
    rm -f "$tmp/etc/apt/sources.list"
fi
cp /etc/apt/apt.conf.d/* "$tmp/etc/apt/apt.conf.d/" 2>/dev/null || true
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
if [ -d /usr/local/share/ca-certificates ]; then
    cp -r /usr/local/share/ca-certificates/. "$tmp/usr/local/share/ca-certificates/"
fi
# No service may start while the root is only a chroot on the build host.
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 755 "$tmp/usr/sbin/policy-rc.d"
# Postfix as the installer's default answer gives it: "Internet Site".
printf '%s\n' 'postfix postfix/main_mailer_type select Internet Site' \
    'postfix postfix/mailname string mx.test' | chroot "$tmp" debconf-set-selections
unshare --mount --fork sh -c '
    mount --make-rprivate / && mount -t proc proc "$1/proc" &&
    chroot "$1" sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $2 && apt-get clean"
' install-boot-lab "$tmp" "$(echo "$pkgs" | tr ',' ' ')" >>"$log" 2>&1 || fail "apt-get install in the root"
rm -f "$tmp/usr/sbin/policy-rc.d"
chroot "$tmp" update-ca-certificates >/dev/null 2>&1 || true
# Nothing in the root may reach out when booted: no timers, no apt downloads.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
            systemd-timesyncd.service; do
    chroot "$tmp" systemctl mask "$unit" >/dev/null 2>&1 || true
done
touch "$tmp/.complete"
rm -rf "$root"
mv "$tmp" "$root"
trap - EXIT
echo "$root"
