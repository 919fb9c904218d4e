"""What runs inside the booted Debian root (tests/kit/bootlab.py), as a oneshot unit.

It does what an administrator does on a stock Debian with Postfix as installed
(``smtpd`` chrooted): ``apt-get install ./spfmilter_…deb``, the README's
Postfix lines (the packaged ``postfix-main.cf``) with ``postconf -e``, mail
over SMTP, ``spfmilter doctor``, reload/restart/stop, an upgrade and a purge.
It only *records* what it saw (exit codes, SMTP replies, the delivered mail,
modes and owners, journal lines) in /results/results.json; the test on the
host asserts on it.  Standard library only: it runs on the root's python3.

Usage: python3 bootlab_inside.py DEB UPGRADE_DEB
"""

from __future__ import annotations

import gzip
import json
import os
import re
import smtplib
import stat
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

RESULTS = Path("/results/results.json")
CONFFILE = Path("/etc/spfmilter/spfmilter.conf")
MBOX = Path("/var/mail/alice")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
FORGED = ("198.51.100.7", "unknown.test", "user@allowed.test")
GOOD = ("192.0.2.10", "mail.allowed.test", "user@allowed.test")
facts: dict[str, Any] = {"steps": []}


def sh(*cmd: str, timeout: float = 120) -> dict[str, Any]:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
        return {"cmd": list(cmd), "rc": res.returncode, "out": res.stdout + res.stderr}
    except subprocess.TimeoutExpired as exc:
        return {"cmd": list(cmd), "rc": None, "out": f"timed out after {timeout}s: {exc.output!r}"}


def wait_until(cond: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return bool(cond())


def describe(path: str) -> dict[str, Any] | None:
    """lstat of a path (owner names, octal mode, symlink target)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    out: dict[str, Any] = {"type": stat.filemode(st.st_mode)[0], "mode": "%04o" % stat.S_IMODE(st.st_mode),
                           "owner": sh("stat", "-c", "%U:%G", path)["out"].strip()}
    if stat.S_ISLNK(st.st_mode):
        out["target"] = os.readlink(path)
    return out


def unit(name: str = "spfmilter") -> dict[str, str]:
    props = "ActiveState,SubState,MainPID,Result,ExecMainStatus,NRestarts,User"
    out = sh("systemctl", "show", name, "-p", props)["out"]
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def send(client: tuple[str, str, str], rcpt: str = "alice@mx.test", subject: str = "test",
         raw: bytes | None = None) -> dict[str, Any]:
    """One SMTP transaction from a documentation address on lo (this namespace's own)."""
    ip, helo, sender = client
    out: dict[str, Any] = {"client": ip, "helo": helo, "from": sender}
    try:
        with smtplib.SMTP("127.0.0.1", 25, local_hostname=helo, source_address=(ip, 0), timeout=60) as s:
            s.ehlo(helo)
            out["mail"] = list(s.mail(sender))
            out["rcpt"] = list(s.rcpt(rcpt))
            if out["rcpt"][0] == 250:
                body = raw or (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
                               f"Message-ID: <{subject.replace(' ', '-')}.{time.time()}@allowed.test>\r\n"
                               "\r\nhello\r\n").encode()
                out["data"] = list(s.data(body))
            else:
                s.rset()
    except (OSError, smtplib.SMTPException) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    for key in ("mail", "rcpt", "data"):
        if key in out:
            out[key][1] = out[key][1].decode(errors="replace") if isinstance(out[key][1], bytes) else out[key][1]
    return out


def delivered(subject: str, seconds: float = 30) -> str | None:
    """The message with this subject in alice's mbox (headers and body), once delivered."""
    def find() -> str | None:
        text = MBOX.read_text(errors="replace") if MBOX.exists() else ""
        for msg in text.split("\nFrom ")[::-1]:
            if f"\nSubject: {subject}\n" in msg:
                return msg
        return None
    wait_until(lambda: find() is not None, seconds)
    return find()


def socket_ready() -> bool:
    return describe("/run/spfmilter/spfmilter.sock") is not None and unit()["ActiveState"] == "active"


def step(name: str, fn: Any) -> None:
    start = time.monotonic()
    try:
        facts[name] = fn()
    except Exception:
        facts[name] = {"exception": traceback.format_exc()}
    facts["steps"].append({"name": name, "seconds": round(time.monotonic() - start, 2)})
    RESULTS.write_text(json.dumps(facts, indent=1))


def conf_set(lines: str) -> None:
    """The administrator's edit of the conffile: appended keys (a later key wins)."""
    CONFFILE.write_text(CONFFILE.read_text() + lines)


def main() -> None:
    deb, upgrade_deb = sys.argv[1], sys.argv[2]
    RESULTS.parent.mkdir(exist_ok=True)
    facts["pid1"] = os.readlink("/proc/1/exe")
    facts["useradd"] = sh("useradd", "-m", "alice")  # a local mailbox to deliver to
    facts["dns_ready"] = wait_until(
        lambda: "ready" in sh("journalctl", "-q", "-o", "cat", "-u", "spfmilter-test-dns")["out"], 30)
    facts["system_state"] = sh("systemctl", "is-system-running", "--wait", timeout=90)
    facts["chroot_before"] = sh("postconf", "-F", "smtp/inet/chroot")["out"].strip()
    facts["postfix_before"] = unit("postfix@-")

    def install() -> dict[str, Any]:
        res = sh("apt-get", "install", "-y", "-q", deb, timeout=300)
        wait_until(socket_ready, 30)
        return {"apt": res, "unit": unit(), "enabled": sh("systemctl", "is-enabled", "spfmilter")["out"].strip(),
                "run_link": describe("/run/spfmilter"),
                "spool_run": describe("/var/spool/postfix/run"),
                "folder": describe("/var/spool/postfix/run/spfmilter"),
                "socket": describe("/var/spool/postfix/run/spfmilter/spfmilter.sock"),
                "socket_via_run": describe("/run/spfmilter/spfmilter.sock"),
                "postfix_groups": sh("id", "-nG", "postfix")["out"].split()}
    step("install", install)

    def configure() -> dict[str, Any]:
        conf_set("\n# edited by the admin:\nNameservers = 127.0.0.1\nAuthserv_Id = mx.test\n")
        # the README's Postfix lines, exactly as packaged, with postconf -e
        doc = gzip.decompress(Path("/usr/share/doc/spfmilter/postfix-main.cf.gz").read_bytes()).decode()
        settings = [line.strip() for line in doc.splitlines() if line.strip() and not line.startswith("#")]
        applied = [sh("postconf", "-e", s.replace(" = ", "=", 1)) for s in settings]
        # the mail domain of this test host (not about milters)
        applied.append(sh("postconf", "-e", "myhostname=mx.test", "mydestination=mx.test, localhost"))
        check = sh("postfix", "check", timeout=60)  # Postfix's own view of its queue folder
        reload_pf = sh("systemctl", "restart", "postfix", timeout=120)
        reload_sm = reload()
        return {"settings": settings, "postconf": applied, "postfix_check": check, "restart_postfix": reload_pf,
                "reload_spfmilter": reload_sm, "chroot": sh("postconf", "-F", "smtp/inet/chroot")["out"].strip(),
                "smtpd_milters": sh("postconf", "-h", "smtpd_milters")["out"].strip()}
    step("configure", configure)

    def mail() -> dict[str, Any]:
        forged = send(FORGED, subject="forged")
        good = send(GOOD, subject="spf pass")
        return {"forged": forged, "good": good, "delivered": delivered("spf pass"),
                "forged_delivered": delivered("forged", 2)}
    step("mail", mail)

    step("doctor", lambda: sh("spfmilter", "doctor", timeout=90))

    def testonly() -> dict[str, Any]:
        before = CONFFILE.read_text()
        conf_set("TestOnly = 0\n")
        r = reload()
        forged = send(FORGED, subject="testonly forged")
        msg = delivered("testonly forged")
        CONFFILE.write_text(before)
        r2 = reload()
        return {"reload": r, "forged": forged, "delivered": msg, "reload_back": r2}
    step("testonly", testonly)

    def no_chroot() -> dict[str, Any]:
        off = sh("postconf", "-F", "smtp/inet/chroot=n")
        r = sh("systemctl", "restart", "postfix", timeout=120)
        good = send(GOOD, subject="no chroot")
        forged = send(FORGED, subject="no chroot forged")
        doctor = sh("spfmilter", "doctor", timeout=90)
        on = sh("postconf", "-F", "smtp/inet/chroot=y")
        r2 = sh("systemctl", "restart", "postfix", timeout=120)
        return {"off": off, "restart": r, "good": good, "delivered": delivered("no chroot"),
                "forged": forged, "doctor": doctor, "on": on, "restart_back": r2,
                "chroot": sh("postconf", "-F", "smtp/inet/chroot")["out"].strip()}
    step("no_chroot", no_chroot)

    def dkim_rescue() -> dict[str, Any]:
        """A forward that keeps the sender's envelope: SPF fails, bank.test's DKIM
        signature (made on the host, key in the tests' DNS) rescues it."""
        before = CONFFILE.read_text()
        conf_set("DKIM_Rescue = True\n")
        r = reload()
        fwd = ("198.51.100.7", "forwarder.test", "user@bank.test")
        here = Path(deb).parent
        signed = send(fwd, raw=(here / "signed.eml").read_bytes())
        unsigned = send(fwd, raw=(here / "unsigned.eml").read_bytes())
        msg = delivered("dkim rescued")
        CONFFILE.write_text(before)
        return {"reload": r, "signed": signed, "unsigned": unsigned, "delivered": msg,
                "unsigned_delivered": delivered("dkim unsigned", 2), "reload_back": reload()}
    step("dkim_rescue", dkim_rescue)

    def lifecycle() -> dict[str, Any]:
        out: dict[str, Any] = {"before": unit()}
        out["reload"] = reload()
        out["after_reload"] = unit()
        out["restart"] = sh("systemctl", "restart", "spfmilter", timeout=90)
        wait_until(socket_ready, 30)
        out["after_restart"] = unit()
        out["mail_after_restart"] = send(GOOD, subject="after restart")
        out["delivered_after_restart"] = delivered("after restart") is not None
        out["stop"] = sh("systemctl", "stop", "spfmilter", timeout=90)
        out["after_stop"] = unit()
        out["socket_after_stop"] = describe("/run/spfmilter/spfmilter.sock")
        out["mail_while_stopped"] = send(GOOD, subject="while stopped")
        # removed behind systemd's back: the next start makes folder and link again
        sh("rm", "-rf", "/run/spfmilter", "/var/spool/postfix/run/spfmilter")
        out["start"] = sh("systemctl", "start", "spfmilter", timeout=90)
        wait_until(socket_ready, 30)
        out["after_start"] = unit()
        out["status_after_start"] = sh("systemctl", "status", "--no-pager", "-l", "-n", "30", "spfmilter")
        out["run_link_after_start"] = describe("/run/spfmilter")
        out["mail_after_start"] = send(GOOD, subject="after start")
        return out
    step("lifecycle", lifecycle)

    def socket_outside_chroot() -> dict[str, Any]:
        """The layout of a plain install: /run/spfmilter a real folder.  The chrooted
        smtpd cannot find the socket; doctor names it, and its fix restores the package's."""
        out: dict[str, Any] = {"stop": sh("systemctl", "stop", "spfmilter", timeout=90)}
        sh("rm", "-f", "/run/spfmilter")
        sh("install", "-d", "-o", "spfmilter", "-g", "spfmilter", "-m", "0750", "/run/spfmilter")
        out["manual"] = sh("systemd-run", "--unit=spfmilter-manual", "--uid=spfmilter", "--gid=spfmilter",
                           "-p", "UMask=0007", "/usr/bin/spfmilter", "-c", str(CONFFILE), "--log", "syslog")
        wait_until(lambda: describe("/run/spfmilter/spfmilter.sock") is not None, 30)
        out["run_dir"] = describe("/run/spfmilter")
        out["mail"] = send(GOOD, subject="socket outside")
        out["doctor"] = sh("spfmilter", "doctor", timeout=90)
        out["stop_manual"] = sh("systemctl", "stop", "spfmilter-manual", timeout=90)
        fixes = re.findall(r"(?m)^problem: .*; run: (.*)$", out["doctor"]["out"])
        out["fix"] = sh("sh", "-c", fixes[0], timeout=120) if fixes else None
        wait_until(socket_ready, 30)
        out["doctor_after"] = sh("spfmilter", "doctor", timeout=90)
        out["mail_after"] = send(GOOD, subject="after doctor fix")
        return out
    step("socket_outside_chroot", socket_outside_chroot)

    def postfix_installed_later() -> dict[str, Any]:
        """Postfix arriving after spfmilter fires spfmilter's file trigger on
        /usr/sbin/postfix, whose postinst then adds postfix to group spfmilter."""
        out = {"remove": sh("gpasswd", "-d", "postfix", "spfmilter"),
               "groups_before": sh("id", "-nG", "postfix")["out"].split(),
               "trigger": sh("dpkg-trigger", "--no-await", "/usr/sbin/postfix"),
               "process": sh("dpkg", "--triggers-only", "--pending", timeout=120)}
        out["groups_after"] = sh("id", "-nG", "postfix")["out"].split()
        return out
    step("postfix_installed_later", postfix_installed_later)

    def upgrade() -> dict[str, Any]:
        before = unit()
        conf = CONFFILE.read_text()
        res = sh("apt-get", "install", "-y", "-q", upgrade_deb, timeout=300)
        wait_until(lambda: unit()["MainPID"] not in ("0", before["MainPID"]) and socket_ready(), 30)
        return {"apt": res, "before": before, "after": unit(), "conf_kept": CONFFILE.read_text() == conf,
                "version": sh("dpkg-query", "-W", "-f", "${Version}", "spfmilter")["out"],
                "mail": send(GOOD, subject="after upgrade"), "delivered": delivered("after upgrade") is not None,
                "doctor": sh("spfmilter", "doctor", timeout=90)}
    step("upgrade", upgrade)

    step("journal", journal)

    def purge() -> dict[str, Any]:
        res = sh("apt-get", "purge", "-y", "-q", "spfmilter", timeout=300)
        return {"apt": res, "unit": unit(), "left": {p: describe(p) for p in (
            "/etc/spfmilter", "/run/spfmilter", "/var/spool/postfix/run/spfmilter", "/var/spool/postfix/run",
            "/lib/systemd/system/spfmilter.service", "/usr/bin/spfmilter",
            "/etc/systemd/system/multi-user.target.wants/spfmilter.service")},
            "postfix": unit("postfix@-"), "spool": describe("/var/spool/postfix")}
    step("purge", purge)
    facts["done"] = True
    RESULTS.write_text(json.dumps(facts, indent=1))


def reload() -> dict[str, Any]:
    """systemctl reload, then wait (bounded) for the supervisor's reload line."""
    text = journal()
    seen = text.count("action=reload result=ok")
    workers = [int(n) for n in re.findall(r"action=listen .*workers=(\d+)", text)][-1:] or [1]
    res = sh("systemctl", "reload", "spfmilter")
    # every worker says it applied the new settings
    res["logged"] = wait_until(lambda: journal().count("action=reload result=ok") >= seen + workers[0], 20)
    return res


def journal() -> str:
    return sh("journalctl", "-q", "--no-pager", "-o", "cat", "-u", "spfmilter")["out"]


if __name__ == "__main__":
    try:
        main()
    finally:
        subprocess.run(["systemctl", "--no-block", "poweroff"], env=ENV)
