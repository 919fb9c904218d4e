"""A Debian 12 root booted with systemd as PID 1, without a VM and without touching the host.

The root is made once by ``scripts/install-boot-lab.sh`` (debootstrap, from the
host's apt sources; the only step that downloads) and cached.  Each boot puts
a fresh overlayfs on it, writes the run's files into the overlay's upper
folder, and runs systemd in new PID, mount, UTS, IPC, network and cgroup
namespaces (``unshare`` + ``chroot``): services start as on a real host (units,
sysusers, tmpfiles, hardening options), the network is only the namespace's
``lo`` with the documentation addresses the test gives it, and everything
mounted disappears with the namespace.  What ran inside leaves its results in
the upper folder, which the test reads after the boot.

``systemd-nspawn`` is not used: it wants the host's system bus, and the hosts
this suite runs on need not run systemd at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.kit import ROOT

INSTALL_SCRIPT = ROOT / "scripts" / "install-boot-lab.sh"
CGROUP_V1 = Path("/sys/fs/cgroup/systemd")
CGROUP_V2 = Path("/sys/fs/cgroup/unified")

# Run in the new namespaces: the overlay, the API file systems systemd expects,
# a /dev of its own (only a few nodes of the host's bound in: nothing systemd
# or journald creates there reaches the host's /dev), the addresses on lo.
_BOOT = r"""
set -eu
R=$1 LOWER=$2 UPPER=$3 WORK=$4
shift 4
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$R/dev"
for n in null zero full random urandom tty; do
    touch "$R/dev/$n"
    mount --bind "/dev/$n" "$R/dev/$n"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd "$R/dev/fd"
mount -t tmpfs tmpfs "$R/sys/fs/cgroup"
mkdir -p "$R/sys/fs/cgroup/unified" "$R/sys/fs/cgroup/systemd"
mount -t cgroup2 none "$R/sys/fs/cgroup/unified"
mount -t cgroup -o none,name=systemd systemd "$R/sys/fs/cgroup/systemd"
ip link set lo up
for a in "$@"; do ip addr add "$a" dev lo; done
hostname mx.test
exec chroot "$R" env container=other /lib/systemd/systemd --log-target=console --log-level=info
"""

# Outside the namespaces: this boot's own cgroups (systemd builds its tree under
# them, not in the host's roots), then the namespaces with the cgroup one rooted there.
_ENTER = r"""
set -eu
for cg in "$CG1" "$CG2"; do mkdir -p "$cg"; echo $$ > "$cg/cgroup.procs"; done
exec unshare --fork --pid --mount --uts --ipc --net --cgroup -- sh -c "$BOOT" boot "$@"
"""


class BootLabMissing(RuntimeError):
    """The cached root is missing and could not be made (message says why)."""


def base_root() -> Path:
    """The cached root, made by scripts/install-boot-lab.sh when missing (as root)."""
    if os.geteuid() != 0:
        raise BootLabMissing("the booted-Debian lab needs root")
    res = subprocess.run(["sh", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=1800)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines or not Path(lines[-1], ".complete").exists():
        raise BootLabMissing(f"sh {INSTALL_SCRIPT.relative_to(ROOT)} failed ({res.returncode}): "
                             + (res.stderr.strip().splitlines() or ["no output"])[-1])
    return Path(lines[-1])


@dataclass
class Boot:
    """How a boot ended: unshare's exit code, the console, the wall time."""

    returncode: int | None
    console: str
    seconds: float


class BootLab:
    """One throwaway overlay on the cached root: put files in, boot it, read files out."""

    def __init__(self, base: Path, work: Path) -> None:
        self.base = base
        self.work = work
        self.upper = work / "upper"
        self.merged = work / "merged"
        self._ovl_work = work / "ovl-work"
        for d in (self.upper, self.merged, self._ovl_work):
            d.mkdir(parents=True)
        self.name = f"spfmilter-bootlab-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def path(self, inside: str) -> Path:
        """Where a file of the root is in the upper folder (written before or during a boot)."""
        return self.upper / inside.lstrip("/")

    def put(self, inside: str, data: str | bytes, mode: int = 0o644) -> None:
        target = self.path(inside)
        for parent in reversed(target.relative_to(self.upper).parents[:-1]):
            folder = self.upper / parent
            if not folder.exists():  # the root's mode, so that the overlay keeps it
                lower = self.base / parent
                folder.mkdir()
                folder.chmod(lower.stat().st_mode & 0o7777 if lower.is_dir() else 0o755)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)

    def enable(self, unit: str, text: str, target: str = "multi-user.target") -> None:
        """A unit of the test, enabled as `systemctl enable` would (WantedBy=target)."""
        self.put(f"/etc/systemd/system/{unit}", text)
        link = self.path(f"/etc/systemd/system/{target}.wants/{unit}")
        if not link.parent.exists():
            self.put(f"/etc/systemd/system/{target}.wants/.keep", "")
        link.symlink_to(f"/etc/systemd/system/{unit}")

    def boot(self, addresses: list[str], timeout: float) -> Boot:
        """Boot until the root powers itself off, or ``timeout`` (then everything is killed)."""
        cg1, cg2 = CGROUP_V1 / self.name, CGROUP_V2 / self.name
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CG1": str(cg1), "CG2": str(cg2), "BOOT": _BOOT}
        cmd = ["timeout", "--kill-after=10", str(int(timeout)), "sh", "-c", _ENTER, "enter",
               str(self.merged), str(self.base), str(self.upper), str(self._ovl_work),
               *(f"{a}/32" if ":" not in a else f"{a}/128" for a in addresses)]
        start = time.monotonic()
        try:
            with open(self.work / "console.log", "wb") as console:
                proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                      env=env, timeout=timeout + 30)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _remove_cgroup(cg1)
            _remove_cgroup(cg2)
        return Boot(rc, (self.work / "console.log").read_text(errors="replace"), time.monotonic() - start)

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _remove_cgroup(top: Path) -> None:
    """Remove a boot's cgroup tree, deepest first (its processes died with its PID 1)."""
    if not top.exists():
        return
    deadline = time.monotonic() + 10
    while top.exists() and time.monotonic() < deadline:
        for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            time.sleep(0.2)  # the kernel frees a cgroup once its last process is reaped
