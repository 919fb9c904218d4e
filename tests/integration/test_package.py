"""The Debian package, installed for real: Debian's python3 and libraries, not the venv.

``make deb`` builds ``spfmilter_<version>_all.deb`` from the tree (``make test``
builds it first; the fixture runs ``make deb`` too, a no-op when it is up to
date).  The module installs it with ``apt-get install ./spfmilter_…deb``, which
resolves its Depends from Debian, then runs the installed program as an
administrator would: ``--version``, ``--check-config`` on the conffile, the
manual pages, an SPF check through Debian's dnspython against the tests' DNS
server, and one SMTP transaction through the suite's real Postfix against the
program started with the command line, user and umask of its shipped systemd
unit.  Then an upgrade keeps an edited conffile, and a purge removes the
conffile and the runtime folder.  The machine is left as it was: the package
purged, and the ``spfmilter`` user removed again if this module created it.

Also here: lintian and twine, each with a broken input that they must refuse.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from spfmilter import __version__
from tests.kit import ROOT, ZONES, mta
from tests.kit.dnsserver import TestDNSServer
from tests.kit.wait import wait_for

DEB = ROOT / f"spfmilter_{__version__}_all.deb"
UNIT = Path("/lib/systemd/system/spfmilter.service")
CONFFILE = Path("/etc/spfmilter/spfmilter.conf")
RUNTIME_DIR = Path("/run/spfmilter")          # a symlink to SOCKET_DIR (tmpfiles.d/spfmilter.conf)
SOCKET_DIR = Path("/var/spool/postfix/run/spfmilter")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
DEBIAN_LIBS = {  # Debian package -> the module it gives Debian's python3
    "python3-milter": "Milter", "python3-spf": "spf", "python3-dnspython": "dns",
    "python3-prometheus-client": "prometheus_client",
    "python3-dkim": "dkim",
}
# What the installed program sees: systemd's default PATH and nothing of the venv.
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
# Other apt runs on the machine (a `make test-deps` elsewhere) hold dpkg's lock for a while.
APT_LOCK = ["-o", "DPkg::Lock::Timeout=300"]


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(condition: bool, what: str) -> None:
    """Missing component: fail under CI, skip elsewhere, and say how to get it."""
    if condition:
        return
    if _ci():
        pytest.fail(what)
    pytest.skip(what)


def run(cmd: list[str], *, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None,
        cwd: str | Path = "/", **kw: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                         env=CLEAN_ENV if env is None else env, **kw)  # type: ignore[call-overload]
    if check:
        assert res.returncode == 0, f"{shlex.join(cmd)} exited {res.returncode}\n{res.stdout}{res.stderr}"
    return res


def installed_version(package: str) -> str | None:
    res = run(["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", package], check=False)
    status, _, version = res.stdout.partition(" ")
    return version if res.returncode == 0 and status == "installed" else None


def build_deb() -> Path:
    """``make deb``: builds the package when the tree changed since the last build."""
    res = run(["make", "-C", str(ROOT), "deb"], env={**os.environ}, timeout=900, check=False)
    assert res.returncode == 0 and DEB.exists(), f"make deb failed\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
    return DEB


def apt_install(*args: str) -> subprocess.CompletedProcess[str]:
    """apt-get install; on a fresh machine its package lists may first need an update."""
    cmd = ["apt-get", *APT_LOCK, "install", "-y", "-q", *args]
    res = run(cmd, env=APT_ENV, cwd=ROOT, timeout=900, check=False)
    if res.returncode != 0:
        run(["apt-get", *APT_LOCK, "update", "-q"], env=APT_ENV, timeout=600)
        res = run(cmd, env=APT_ENV, cwd=ROOT, timeout=900)
    return res


_NO_INIT = "No init system and policy-rc.d missing! Defaulting to block"


def policy_denies(action: str) -> bool:
    """Whether this machine's policy-rc.d (Debian's container images have one) refuses
    ``action`` for spfmilter: invoke-rc.d then skips the postinst's start/restart."""
    if not os.access(POLICY_RC_D, os.X_OK):
        return False
    return run([str(POLICY_RC_D), "spfmilter", action], check=False).returncode == 101


def started_by_postinst(res: subprocess.CompletedProcess[str], action: str) -> None:
    """The postinst asked invoke-rc.d to (re)start the service: without systemd as
    PID 1 here, that is the SysV script, unless a policy-rc.d refuses it.  The tests
    start the program themselves, so stop it if it did start."""
    out = res.stdout + res.stderr
    if policy_denies(action):
        assert f"denied execution of {action}" in out, out
        assert sysv("status").returncode != 0
    elif not os.access(POLICY_RC_D, os.X_OK) and _NO_INIT in out:
        # a root with no init system at all (a minimal Debian in a plain container):
        # invoke-rc.d itself blocks the start, and says so
        assert sysv("status").returncode != 0
    else:
        status = sysv("status")
        assert status.returncode == 0, f"the postinst's {action} did not leave it running\n{status.stdout}{out}"
        assert sysv("stop").returncode == 0


def sysv(action: str) -> subprocess.CompletedProcess[str]:
    return run(["/etc/init.d/spfmilter", action], check=False, timeout=90)


def purge() -> subprocess.CompletedProcess[str]:
    return run(["apt-get", *APT_LOCK, "purge", "-y", "-q", "spfmilter"], env=APT_ENV, timeout=600)


def unit_settings() -> dict[str, str]:
    """The [Service] section of the installed unit (one value per key; ExecStart kept whole)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


@pytest.fixture(scope="module")
def installed() -> Iterator[subprocess.CompletedProcess[str]]:
    """The package installed with apt, purged afterwards (and its user removed if it was new)."""
    _need(os.geteuid() == 0, "installing the Debian package needs root")
    _need(shutil.which("apt-get") is not None and shutil.which("dpkg-buildpackage") is not None,
          "apt-get and dpkg-buildpackage: run `make deb` (it installs Debian's build tools)")
    build_deb()
    user_existed = run(["getent", "passwd", "spfmilter"], check=False).returncode == 0
    if installed_version("spfmilter"):
        purge()  # left by an interrupted run: start from a machine without it
    res = apt_install(f"./{DEB.name}")
    try:
        started_by_postinst(res, "start")
        yield res
    finally:
        with contextlib.suppress(Exception):
            if sysv("status").returncode == 0:
                sysv("stop")
        known = run(["dpkg-query", "-W", "-f", "${db:Status-Status}", "spfmilter"], check=False)
        if known.returncode == 0 and known.stdout not in ("", "not-installed"):
            purge()  # installed, or removed with its conffiles left
        if not user_existed and run(["getent", "passwd", "spfmilter"], check=False).returncode == 0:
            run(["gpasswd", "-d", "postfix", "spfmilter"], check=False)
            run(["userdel", "spfmilter"], check=False)
            if run(["getent", "group", "spfmilter"], check=False).returncode == 0:
                run(["groupdel", "spfmilter"], check=False)


def test_changelog_version_is_the_programs() -> None:
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"spfmilter ({__version__}) "), first
    assert f"apt-get install ./{DEB.name}" in (ROOT / "README.rst").read_text()


def test_installs_the_promised_files_with_debians_depends(installed: subprocess.CompletedProcess[str]) -> None:
    assert installed_version("spfmilter") == __version__
    files = set(run(["dpkg", "-L", "spfmilter"]).stdout.split())
    for path in ("/usr/bin/spfmilter", str(CONFFILE), str(UNIT), "/usr/lib/sysusers.d/spfmilter.conf",
                 "/etc/init.d/spfmilter", "/usr/share/doc/spfmilter/README.rst.gz",
                 "/usr/share/doc/spfmilter/changelog.gz", "/usr/share/doc/spfmilter/copyright",
                 "/usr/share/man/man8/spfmilter.8.gz", "/usr/share/man/man5/spfmilter.conf.5.gz"):
        assert path in files, path
    # every module of the tree is in the package (a folder without __init__.py would be left out)
    for src in (ROOT / "spfmilter").rglob("*.py"):
        rel = src.relative_to(ROOT)
        assert f"/usr/lib/python3/dist-packages/{rel}" in files, rel
    conffiles = run(["dpkg-query", "-W", "-f", "${Conffiles}", "spfmilter"]).stdout
    assert str(CONFFILE) in conffiles
    assert CONFFILE.read_text() == (ROOT / "spfmilter.conf").read_text()
    depends = run(["dpkg-query", "-W", "-f", "${Depends}", "spfmilter"]).stdout
    for package in [*DEBIAN_LIBS, "publicsuffix"]:
        assert re.search(rf"(^|, ){re.escape(package)}( |,|$)", depends), (package, depends)
        assert installed_version(package), f"{package} not installed"
    assert "python3-pip" not in depends and "gcc" not in depends
    # the core writes Authentication-Results itself; authres is only the tests' oracle
    assert "authres" not in depends


def test_runs_on_debians_python_and_libraries(installed: subprocess.CompletedProcess[str]) -> None:
    assert Path("/usr/bin/spfmilter").read_text().splitlines()[0] == "#!/usr/bin/python3"
    mods = ["spfmilter", "spfmilter.cli", *DEBIAN_LIBS.values()]
    code = "import importlib\nfor m in %r: print(m, importlib.import_module(m).__file__)" % mods
    out = run(["/usr/bin/python3", "-c", code]).stdout
    where = dict(line.split(" ", 1) for line in out.splitlines())
    for mod in mods:
        assert where[mod].startswith("/usr/lib/python3/dist-packages/"), (mod, where[mod])
    import dns.version  # the venv's: the installed program must not be using it
    debian_dns = run(["/usr/bin/python3", "-c", "import dns.version; print(dns.version.version)"]).stdout.strip()
    assert (installed_version("python3-dnspython") or "").startswith(debian_dns)
    print(f"dnspython: Debian {debian_dns}, venv {dns.version.version}")


def test_version_and_check_config_on_the_conffile(installed: subprocess.CompletedProcess[str]) -> None:
    assert __version__ in run(["spfmilter", "--version"]).stdout
    res = run(["spfmilter", "--check-config", "-c", str(CONFFILE)])
    assert res.stdout.strip() == f"spfmilter: {CONFFILE}: OK"
    # as the unit's ExecStartPre does it, as the unit's user
    pre = shlex.split(unit_settings()["ExecStartPre"])
    assert pre[0] == "/usr/bin/spfmilter"
    assert run(["setpriv", "--reuid=spfmilter", "--regid=spfmilter", "--init-groups", "--", *pre]).returncode == 0


def test_man_pages_are_installed_and_carry_the_readme(installed: subprocess.CompletedProcess[str]) -> None:
    _need(shutil.which("man") is not None, "man: apt-get install man-db (make test-deps installs it)")
    found = run(["man", "-w", "spfmilter", "spfmilter.conf"]).stdout.split()
    assert found == ["/usr/share/man/man8/spfmilter.8.gz", "/usr/share/man/man5/spfmilter.conf.5.gz"]
    env = {**CLEAN_ENV, "MANWIDTH": "200"}  # not a terminal: plain text
    conf_page = run(["man", "-P", "cat", "5", "spfmilter.conf"], env=env).stdout
    prog_page = run(["man", "-P", "cat", "8", "spfmilter"], env=env).stdout
    readme = (ROOT / "README.rst").read_text()
    # a sentence of each included README section, rendered
    assert "Mail_From_reject" in conf_page and "Per-recipient sections" in conf_page
    assert "re-reads the configuration file, once, in the supervisor" in prog_page
    assert "--check-config" in prog_page and "milter_default_action" in prog_page
    assert "re-reads the configuration file, once, in the supervisor" in readme


def test_user_service_enablement_and_postfix_group(installed: subprocess.CompletedProcess[str]) -> None:
    user = run(["getent", "passwd", "spfmilter"]).stdout.strip().split(":")
    assert user[0] == "spfmilter" and user[6] == "/usr/sbin/nologin"
    assert unit_settings()["User"] == "spfmilter"
    # Documentation= names what is installed (the manual pages, the README), no web page
    docs = configparser.ConfigParser(interpolation=None, strict=False)
    docs.read_string(UNIT.read_text())
    assert docs["Unit"]["Documentation"].split() == [
        "man:spfmilter(8)", "man:spfmilter.conf(5)", "file:/usr/share/doc/spfmilter/README.rst.gz"]
    assert Path("/usr/share/doc/spfmilter/README.rst.gz").exists()
    # SysV links (update-rc.d) and the systemd enablement (deb-systemd-helper)
    assert list(Path("/etc/rc2.d").glob("S*spfmilter"))
    assert Path("/etc/systemd/system/multi-user.target.wants/spfmilter.service").is_symlink()
    tool = shutil.which("systemd-analyze")
    _need(tool is not None, "systemd-analyze: apt-get install systemd (make test-deps installs it)")
    res = run([str(tool), "verify", "--man=no", str(UNIT)], check=False,
              env={**CLEAN_ENV, "SYSTEMD_LOG_LEVEL": "warning"})
    assert res.returncode == 0 and "spfmilter.service" not in res.stdout + res.stderr, res.stdout + res.stderr
    if run(["getent", "passwd", "postfix"], check=False).returncode == 0:
        assert "spfmilter" in run(["id", "-nG", "postfix"]).stdout.split()


def test_tmpfiles_makes_socket_folder_and_link_also_without_postfix(installed: subprocess.CompletedProcess[str],
                                                                   tmp_path: Path) -> None:
    """On a host without Postfix the spool folder is made too (installing Postfix later then
    just works); a second run changes nothing.  The installed snippet, in a root of its own."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run").mkdir()
    for db in ("passwd", "group"):
        lines = [run(["getent", db, name]).stdout.strip() for name in ("root", "spfmilter")]
        (root / "etc" / db).write_text("\n".join(lines) + "\n")
    snippet = "/usr/lib/tmpfiles.d/spfmilter.conf"
    for _ in range(2):
        run(["systemd-tmpfiles", f"--root={root}", "--create", snippet])
        spool, folder = root / "var/spool/postfix", root / str(SOCKET_DIR).lstrip("/")
        assert (spool.stat().st_uid, spool.stat().st_mode & 0o7777) == (0, 0o755)
        st = folder.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == \
            (installed_uid("spfmilter"), installed_gid("spfmilter"), 0o750)
        link = root / str(RUNTIME_DIR).lstrip("/")
        assert link.is_symlink() and os.readlink(link) == str(SOCKET_DIR)


def test_sysv_script_remakes_the_link_and_listens_in_the_socket_folder(
        installed: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    """A host without systemd: nothing remade /run/spfmilter at boot; the packaged SysV
    script does before it starts the milter (as root, UserID = spfmilter, as the README says)."""
    conf = tmp_path / "spfmilter.conf"
    conf.write_text(CONFFILE.read_text() + "\nUserID = spfmilter\nUMask = 007\n")
    conf.chmod(0o644)
    log = tmp_path / "spfmilter.log"
    env = {**CLEAN_ENV, "SPFMILTER_CONF": str(conf), "SPFMILTER_LOGFILE": str(log)}
    run(["rm", "-rf", str(RUNTIME_DIR)])   # /run is a tmpfs: what a reboot leaves
    sock = RUNTIME_DIR / "spfmilter.sock"
    try:
        res = run(["/etc/init.d/spfmilter", "start"], env=env, check=False, timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
        wait_for(lambda: sock.exists(), 30, "the socket", on_timeout=lambda: log.read_text(errors="replace"))
        assert RUNTIME_DIR.is_symlink() and os.readlink(RUNTIME_DIR) == str(SOCKET_DIR)
        assert os.path.realpath(sock) == str(SOCKET_DIR / "spfmilter.sock")
        assert run(["/etc/init.d/spfmilter", "status"], env=env, check=False).returncode == 0
    finally:
        stop = run(["/etc/init.d/spfmilter", "stop"], env=env, check=False, timeout=90)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not sock.exists(), "the socket outlived the milter"


def test_check_through_debians_dnspython(installed: subprocess.CompletedProcess[str],
                                        dns_server: TestDNSServer, tmp_path: Path) -> None:
    """``Nameservers = 127.0.0.1:PORT``: the dnspython 2.3 form of a custom server."""
    conf = tmp_path / "spfmilter.conf"
    conf.write_text(f"Nameservers = {dns_server.nameserver}\nAuthserv_Id = mx.test\nskip_addresses =\n")
    conf.chmod(0o644)
    res = run(["spfmilter", "check", "-c", str(conf), "--ip", "198.51.100.7", "--helo", "unknown.test",
               "--from", "user@allowed.test", "--rcpt", "a@mx.test"])
    assert "MAIL FROM result: fail (user@allowed.test)" in res.stdout
    assert "reject -> 550 5.7.23" in res.stdout
    assert dns_server.query_count("allowed.test", "TXT"), "the test DNS server was not asked"


# Inside the network namespace: a private mount namespace whose /dev has what a
# service gets and a /dev/log of its own (journald's, under systemd), so the
# unit's `--log syslog` works without touching the host's /dev.
_PRIVATE_DEV = r"""
set -e
mount --make-rprivate /
hostdev=$(mktemp -d)
mount --rbind /dev "$hostdev"
mount -t tmpfs -o mode=0755 spfmilter-pkg-dev /dev
for n in null zero full random urandom tty; do
  [ -e "$hostdev/$n" ] || continue
  touch /dev/$n; mount --bind "$hostdev/$n" /dev/$n
done
ln -s /proc/self/fd /dev/fd
mkdir /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 spfmilter-pkg-shm /dev/shm
umount -l "$hostdev"; rmdir "$hostdev"
exec "$@"
"""


def test_mail_through_postfix_to_the_installed_program(installed: subprocess.CompletedProcess[str],
                                                       tmp_path: Path) -> None:
    """The unit's ExecStart, as its User= with its UMask, on the package's socket
    folder (/run/spfmilter a symlink into Postfix's chroot), in a network namespace
    whose resolv.conf names the tests' DNS server on 127.0.0.1:53 (the conffile has
    no Nameservers).  A non-chrooted Postfix reaches the socket through the symlink
    and group spfmilter, as the postinst arranged; so does Sendmail with
    init/sendmail.mc's S= path unchanged."""
    mta.require_or_skip("postfix")
    unit = unit_settings()
    cmd = shlex.split(unit["ExecStart"])
    assert cmd[0] == "/usr/bin/spfmilter" and cmd[1:3] == ["-c", str(CONFFILE)], cmd
    user, group = unit["User"], unit["Group"]
    assert "RuntimeDirectory" not in unit, "/run/spfmilter is the tmpfiles.d symlink, not systemd's folder"
    assert unit["ReadWritePaths"] == f"-{SOCKET_DIR}", unit["ReadWritePaths"]
    runtime = RUNTIME_DIR
    umask = unit["UMask"]
    log = tmp_path / "syslog.log"
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(mta.Netns(addresses=()))
        netns_etc = Path("/etc/netns") / ns.name
        if not netns_etc.parent.exists():
            netns_etc.parent.mkdir(exist_ok=True)
            # gone again once empty (other namespaces may have their folder there meanwhile)
            stack.callback(_rmdir_if_empty, netns_etc.parent)
        netns_etc.mkdir()
        stack.callback(shutil.rmtree, netns_etc, True)
        (netns_etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        dns = ns.run(lambda: TestDNSServer(ZONES, port=53).start())
        assert isinstance(dns, TestDNSServer)
        stack.callback(dns.stop)
        # what the unit's first ExecStartPre does (the postinst did it too)
        pre = [shlex.split(line) for line in UNIT.read_text().splitlines() if line.startswith("ExecStartPre=+")]
        assert pre == [["ExecStartPre=+/usr/bin/systemd-tmpfiles", "--create", "spfmilter.conf"]], pre
        run(["/usr/bin/systemd-tmpfiles", "--create", "spfmilter.conf"])
        assert runtime.is_symlink() and os.readlink(runtime) == str(SOCKET_DIR)
        st_dir = SOCKET_DIR.stat()
        assert (st_dir.st_uid, st_dir.st_gid, st_dir.st_mode & 0o777) == \
            (installed_uid(user), installed_gid(group), 0o750)
        service = [*ns.exec_prefix(), "unshare", "-m", "--", "sh", "-c", _PRIVATE_DEV, "private-dev",
                   *mta.syslog_wrap(str(log)),
                   "env", "-i", *(f"{k}={v}" for k, v in CLEAN_ENV.items()),
                   "setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--",
                   "sh", "-c", f'umask {umask}; exec "$@"', "unit", *cmd]
        proc = subprocess.Popen(service, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**CLEAN_ENV, "PYTHONPATH": str(ROOT)})

        def log_text() -> str:
            return log.read_text(errors="replace") if log.exists() else ""

        def stop() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(40)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

        stack.callback(stop)
        wait_for(lambda: proc.poll() is not None or "action=start" in log_text(), 30,
                 "the installed spfmilter to start", on_timeout=log_text)
        assert proc.poll() is None, log_text() + (proc.stdout.read().decode() if proc.stdout else "")
        # the supervisor is Debian's python3 running the installed script, with nothing of the venv
        listen = re.search(r"action=listen .*?pid=(\d+)", log_text())
        assert listen, log_text()
        pid = int(listen.group(1))
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert [a.decode() for a in argv[:2]] == ["/usr/bin/python3", "/usr/bin/spfmilter"], argv
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [e for e in environ if e.startswith((b"PYTHONPATH=", b"VIRTUAL_ENV="))], environ
        sock = runtime / "spfmilter.sock"
        st = sock.stat()
        assert (st.st_uid, st.st_gid) == (installed_uid(user), installed_gid(group))
        assert st.st_mode & 0o777 == 0o770, oct(st.st_mode)  # UMask 0007
        modes = {SOCKET_DIR: SOCKET_DIR.stat().st_mode & 0o777, sock: st.st_mode & 0o777}

        cap = stack.enter_context(mta.CaptureSMTP())
        lab = stack.enter_context(mta.PostfixLab(tmp_path / "postfix", f"unix:{sock}", cap.port))
        # The lab opens the socket to everybody (o+x, o+rw) for milters in test
        # folders: undo that, so only the group the postinst set up lets smtpd in.
        for path, mode in modes.items():
            path.chmod(mode)

        forged = lab.send("198.51.100.7", "unknown.test", "user@allowed.test", ["a@mx.test"],
                          mta.make_message("user@allowed.test", "a@mx.test"))
        rcpt = forged.rcpt("a@mx.test")
        assert rcpt is not None and rcpt.code == 550 and rcpt.enhanced == "5.7.23", str(forged)
        good = lab.send("192.0.2.10", "mail.allowed.test", "user@allowed.test", ["a@mx.test"],
                        mta.make_message("user@allowed.test", "a@mx.test", subject="installed package"))
        assert good.final is not None and good.final.code == 250, str(good)
        msg = cap.wait_for(1)[0]
        assert msg.header("Subject") == "installed package"
        ar = msg.header("Authentication-Results") or ""
        assert "spf=pass smtp.mailfrom=allowed.test" in ar, msg.text
        assert msg.header_names()[0] in ("Authentication-Results", "Received-SPF")
        wait_for(lambda: "action=reject" in log_text() and "action=accept" in log_text(), 10,
                 "the decision lines in syslog", on_timeout=log_text)
        assert "uid=%d" % installed_uid(user) in log_text()
        lab.stop()

        if not mta.missing_components("sendmail"):
            ns.ensure_address("198.51.100.7")
            ns.ensure_address("192.0.2.10")
            ns_cap = stack.enter_context(mta.CaptureSMTP(netns=ns))
            sendmail = stack.enter_context(SendmailAtThePath(tmp_path / "sendmail", f"unix:{sock}",
                                                             ns_cap.port, netns=ns))
            assert f"S=unix:{sock}," in sendmail.cf_file.read_text()
            forged = sendmail.send("198.51.100.7", "unknown.test", "user@allowed.test", ["user@example.com"],
                                   mta.make_message("user@allowed.test", "user@example.com"))
            rcpt = forged.rcpt("user@example.com")
            assert rcpt is not None and rcpt.code == 550 and rcpt.enhanced == "5.7.23", str(forged)
            good = sendmail.send("192.0.2.10", "mail.allowed.test", "user@allowed.test", ["user@example.com"],
                                 mta.make_message("user@allowed.test", "user@example.com", subject="via sendmail"))
            assert good.final is not None and good.final.code == 250, str(good)
            msg = ns_cap.wait_for(1)[0]
            assert "spf=pass smtp.mailfrom=allowed.test" in (msg.header("Authentication-Results") or ""), msg.text
            sendmail.stop()
        elif os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("Sendmail lab missing: " + ", ".join(mta.missing_components("sendmail")))
        stop()
        assert proc.returncode == 0, log_text()
        assert "action=stop" in log_text()
        assert dns.query_count("allowed.test", "TXT"), "the program did not use its namespace's resolver"


class SendmailAtThePath(mta.SendmailLab):
    """The lab's Sendmail with S= the socket's path exactly as given (the lab
    otherwise binds the socket's real folder elsewhere): Sendmail itself follows
    /run/spfmilter's symlink and checks the folders on the way."""

    def _milter_parts(self, spec: str) -> tuple[str, str | None]:
        return spec, None


def _rmdir_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def installed_uid(user: str) -> int:
    return int(run(["id", "-u", user]).stdout)


def installed_gid(group: str) -> int:
    return int(run(["getent", "group", group]).stdout.split(":")[2])


def test_upgrade_keeps_the_admins_edits(installed: subprocess.CompletedProcess[str]) -> None:
    """Installing the package over itself runs the upgrade path of the maintainer scripts."""
    edited = CONFFILE.read_text().replace("#TestOnly = 1", "# edited by the admin:\nTestOnly = 1")
    assert edited != CONFFILE.read_text()
    CONFFILE.write_text(edited)
    res = apt_install("--reinstall", f"./{DEB.name}")  # unpacks over 0.1.0: postinst configure 0.1.0
    assert f"Setting up spfmilter ({__version__})" in res.stdout
    assert CONFFILE.read_text() == edited
    assert run(["/usr/bin/spfmilter", "--check-config", "-c", str(CONFFILE)]).stdout.strip().endswith(": OK")
    # the upgrade restarts the service: here through invoke-rc.d (no systemd as PID 1)
    started_by_postinst(res, "restart")


def test_purge_removes_conffile_socket_folder_and_link(installed: subprocess.CompletedProcess[str]) -> None:
    run(["/usr/bin/systemd-tmpfiles", "--create", "spfmilter.conf"])
    (RUNTIME_DIR / "spfmilter-init.pid").write_text("")
    postfix_spool = Path("/var/spool/postfix/private").exists()  # Postfix is installed here
    purge()
    assert installed_version("spfmilter") is None
    assert not Path("/usr/bin/spfmilter").exists()
    assert not CONFFILE.exists() and not CONFFILE.parent.exists()
    assert not RUNTIME_DIR.exists() and not RUNTIME_DIR.is_symlink()
    assert not SOCKET_DIR.exists() and not SOCKET_DIR.parent.exists()
    assert Path("/var/spool/postfix").exists() == postfix_spool  # Postfix's own folder stays
    assert not Path("/etc/systemd/system/multi-user.target.wants/spfmilter.service").exists()
    assert not list(Path("/etc/rc2.d").glob("S*spfmilter"))


# --- lintian ----------------------------------------------------------------------

def lintian(deb: Path) -> subprocess.CompletedProcess[str]:
    """What `make deb` runs: errors and warnings fail (overridden tags do not count)."""
    return run(["lintian", "--fail-on", "error,warning", str(deb)], check=False, timeout=300)


def test_lintian_passes_the_package_and_catches_a_broken_one(tmp_path: Path) -> None:
    _need(os.geteuid() == 0 or DEB.exists(), "the package: run `make deb` (as root, it installs Debian's tools)")
    _need(shutil.which("lintian") is not None, "lintian: `make deb` installs it")
    deb = build_deb() if os.geteuid() == 0 else DEB
    good = lintian(deb)
    assert good.returncode == 0, good.stdout + good.stderr
    # the same package without its copyright file: lintian must refuse it
    tree = tmp_path / "tree"
    run(["dpkg-deb", "-R", str(deb), str(tree)])
    (tree / "usr/share/doc/spfmilter/copyright").unlink()
    broken = tmp_path / deb.name
    run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(broken)])
    bad = lintian(broken)
    assert bad.returncode != 0 and "no-copyright-file" in bad.stdout, bad.stdout


# --- sdist and wheel ----------------------------------------------------------------

def twine_check(files: list[Path]) -> subprocess.CompletedProcess[str]:
    twine = Path(sys.executable).with_name("twine")
    return run([str(twine), "check", "--strict", *map(str, files)], env={**os.environ}, check=False)


def python_build(src: Path, out: Path, *args: str) -> list[Path]:
    run([sys.executable, "-m", "build", *args, "--outdir", str(out), str(src)], env={**os.environ},
        timeout=600)
    return sorted(out.iterdir())


def test_sdist_and_wheel_build_and_pass_twine(tmp_path: Path) -> None:
    files = python_build(ROOT, tmp_path / "dist")
    names = sorted(p.name for p in files)
    assert names == [f"spfmilter-{__version__}-py3-none-any.whl", f"spfmilter-{__version__}.tar.gz"]
    res = twine_check(files)
    assert res.returncode == 0, res.stdout + res.stderr
    wheel = zipfile.ZipFile(next(p for p in files if p.suffix == ".whl"))
    listed = set(wheel.namelist())
    for src in (ROOT / "spfmilter").rglob("*.py"):
        assert str(src.relative_to(ROOT)) in listed, src
    meta = wheel.read(f"spfmilter-{__version__}.dist-info/METADATA").decode()
    assert "Requires-Dist: dnspython>=2.3" in meta and "Requires-Dist: prometheus_client>=0.16" in meta
    with tarfile.open(next(p for p in files if p.name.endswith(".tar.gz"))) as sdist:
        assert f"spfmilter-{__version__}/README.rst" in sdist.getnames()


def test_twine_refuses_a_description_that_does_not_render(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "spfmilter", src / "spfmilter", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy(ROOT / name, src / name)
    (src / "README.rst").write_text("spfmilter\n=========\n\n`unclosed link <https://example.org\n\n"
                                    ".. no-such-directive::\n")
    res = twine_check(python_build(src, tmp_path / "dist", "--wheel"))
    assert res.returncode != 0 and "FAILED" in res.stdout, res.stdout
