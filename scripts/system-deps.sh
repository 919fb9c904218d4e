#!/bin/sh
# Install the system packages spfmilter needs to build (Python itself and its
# venv module, libmilter headers for pymilter, a C compiler, Python headers).
# As root with apt this installs them; otherwise it prints the one command that
# would.  A minimal Debian needs only `make` before `make run`: this is the rest.
set -eu
# publicsuffix: Debian's current Public Suffix List (DKIM_Rescue's organizational domains)
PKGS="python3 python3-venv libmilter-dev gcc python3-dev publicsuffix"
# `system-deps.sh test`: also what the test suite runs (systemd-analyze for the
# unit file check, start-stop-daemon for the SysV script, man for the installed
# package's manual pages, openssl for the tests' DKIM keys, git for the list of
# files the packages are built from).
# `system-deps.sh deb`: only Debian's tools that build and check the package
# (no compiler: the package runs on Debian's own python3-milter), and git.
case "${1:-}" in
  test) PKGS="$PKGS systemd dpkg man-db openssl git" ;;
  deb) PKGS="git debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-wheel python3-docutils dpkg-dev lintian fakeroot" ;;
esac
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# A Python that is not Debian's (pyenv, a local build) brings its own headers and venv.
if python3 -c 'import sysconfig,os,sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")) else 1)' 2>/dev/null; then
  missing=$(echo "$missing" | tr ' ' '\n' | grep -v -e '^python3-dev$' -e '^python3-venv$' | tr '\n' ' ')
fi
missing=$(echo $missing)
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  echo "spfmilter: installing$(printf ' %s' $missing)"
  if ! apt-get install -y -qq $missing >/dev/null 2>&1; then
    # a fresh system has no package lists yet
    apt-get update -qq && apt-get install -y -qq $missing || {
      echo "spfmilter: could not install$(printf ' %s' $missing) with apt-get (see above)" >&2
      exit 1
    }
  fi
else
  echo "spfmilter needs: $missing" >&2
  echo "install them with:  sudo apt-get install -y $missing" >&2
  exit 1
fi
