"""The daemon: privileges, socket mode, pid file, SIGHUP reload, graceful stop."""

import os
import pwd
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.test_dkim_rescue import deliver, message
from tests.kit import dkimkeys
from tests.kit.daemon import SpfmilterProcess
from tests.kit.dnsserver import TestDNSServer
from tests.kit.milterclient import MilterSession

pytestmark = pytest.mark.e2e


def child_pid(parent: int) -> int:
    kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert len(kids) == 1, kids
    return int(kids[0])


def ids(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1])
    gid = int(next(x for x in status.splitlines() if x.startswith("Gid:")).split()[1])
    return uid, gid


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to test the privilege drop (CI runs as root)")
def test_root_start_binds_then_drops_to_userid(dns_server):
    nobody = pwd.getpwnam("nobody")
    # pytest's tmp folders are private to root; the dropped process must reach its pid file
    with tempfile.TemporaryDirectory(prefix="spfmilter-priv-") as top:
        os.chmod(top, 0o755)
        _root_start(Path(top), nobody, dns_server)


def _root_start(workdir, nobody, dns_server):
    pidfile = workdir / "run" / "spfmilter.pid"  # a folder spfmilter creates, owned by UserID
    proc = SpfmilterProcess(workdir, {"Nameservers": dns_server.nameserver, "UserID": "nobody",
                                      "UMask": "007", "PidFile": str(pidfile),
                                      "skip_addresses": "", "Authserv_Id": "mx.test"}).start()
    try:
        assert int(pidfile.read_text()) == proc.proc.pid
        milter_pid = child_pid(proc.proc.pid)
        assert ids(milter_pid) == (nobody.pw_uid, nobody.pw_gid)
        assert ids(proc.proc.pid) == (nobody.pw_uid, nobody.pw_gid)
        st = os.stat(proc.socket_path)
        assert stat.S_ISSOCK(st.st_mode)
        mode = stat.S_IMODE(st.st_mode)
        assert mode & 0o060 == 0o060 and mode & 0o007 == 0  # group (the MTA) may connect, others not
        assert st.st_uid == nobody.pw_uid
        with MilterSession(proc.socket_path) as s:   # still serves after the drop
            s.connect("192.0.2.10")
            s.helo("helo.test")
            replies, eom = s.transaction("user@allowed.test", ["rcpt@mx.test"])
            assert eom.final.kind == "accept"
    finally:
        assert proc.stop() == 0
    assert not pidfile.exists()


# Every record type the checks read, so that each is decoded after the drop for the first time.
HIDDEN_ZONES = {
    "bank.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "sel1._domainkey.bank.test": [{"TXT": dkimkeys.key_record()}],
    "mech.test": [{"TXT": "v=spf1 a mx ptr -all"}, {"A": "192.0.2.30"},
                  {"AAAA": "2001:db8::30"}, {"MX": [10, "mx.mech.test"]}],
    "mx.mech.test": [{"A": "192.0.2.31"}],
    "host.mech.test": [{"A": "192.0.2.32"}],
    "32.2.0.192.in-addr.arpa": [{"PTR": "host.mech.test."}],
    "alias.test": [{"CNAME": "mech.test."}],
}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to test the privilege drop (CI runs as root)")
def test_workers_that_cannot_read_the_code_after_the_drop_still_check_spf_and_dkim(dns_server):
    """Installed where only root may read (a checkout or venv under /root), the daemon
    binds as root and serves as UserID: every module and data file a check needs must
    be loaded before the drop, or the first TXT answer is decoded as opaque data and
    every message tempfails (dnspython loads record types on first use)."""
    dns_server.update(HIDDEN_ZONES)
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory(prefix="spfmilter-hidden-") as top:
        os.chmod(top, 0o755)  # the config and socket folder: reachable by UserID
        proc = SpfmilterProcess(Path(top), {
            "Nameservers": dns_server.nameserver, "UserID": "nobody", "DKIM_Rescue": "True",
            "skip_addresses": "", "Authserv_Id": "mx.test"}, hide_code=True).start()
        try:
            worker = child_pid(proc.proc.pid)
            assert ids(worker) == (nobody.pw_uid, nobody.pw_gid)
            # the premise: as UserID, in the daemon's mount namespace, the code is unreadable
            code = Path(top) / "code" / "c" / "spfmilter" / "resolver.py"
            probe = subprocess.run(
                ["nsenter", "-t", str(worker), "-m", "-S", str(nobody.pw_uid),
                 "-G", str(nobody.pw_gid), "cat", str(code)], capture_output=True, timeout=10)
            assert probe.returncode != 0 and b"Permission denied" in probe.stderr, probe
            for client, sender in (("192.0.2.10", "user@allowed.test"),  # ip4
                                   ("2001:db8::30", "user@mech.test"),   # a (AAAA)
                                   ("192.0.2.31", "user@mech.test"),     # mx
                                   ("192.0.2.32", "user@mech.test"),     # ptr
                                   ("192.0.2.30", "user@alias.test")):   # a, via a CNAME
                with MilterSession(proc.socket_path) as s:
                    s.connect(client)
                    s.helo("helo.test" if client == "192.0.2.10" else "mech.test")
                    replies, eom = s.transaction(sender, ["rcpt@mx.test"])
                    assert eom is not None and eom.final.kind == "accept", (sender, proc.log_text())
                    assert any("spf=pass smtp.mailfrom=" in v for n, v in eom.headers_on_top()
                               if n == "Authentication-Results"), eom.headers_on_top()
            with MilterSession(proc.socket_path) as s:  # SPF fail (held for DKIM), with exp=
                s.connect("198.51.100.7")
                s.helo("unknown.test")
                replies, eom = s.transaction("user@allowed.test", ["rcpt@mx.test"])
                assert eom is not None and eom.final.code == "550", eom
                assert "198.51.100.7 is not one of allowed.test's" in eom.final.text, eom
            with MilterSession(proc.socket_path) as s:  # an international sender domain
                s.connect("192.0.2.10")
                s.helo("helo.test")
                replies, eom = s.transaction("user@b\u00fccher.test", ["rcpt@mx.test"])
                assert eom is not None and eom.final.kind == "accept", proc.log_text()
                assert any("spf=none smtp.mailfrom=" in v for n, v in eom.headers_on_top()
                           if n == "Authentication-Results"), eom.headers_on_top()
            # SPF fails for bank.test, its own signature rescues the message (key over DNS)
            replies, eom, _ = deliver(proc, dkimkeys.sign(message(), "bank.test"))
            assert eom is not None and eom.final.kind == "accept", proc.log_text()
            proc.wait_for_log(r"action=accept reason=\"mailfrom fail rescued by DKIM d=bank\.test\"")
            # and a forgery is still refused at end of message
            replies, eom, _ = deliver(proc, message())
            assert eom is not None and eom.final.code == "550", proc.log_text()
            log = proc.log_text()
            assert "4.3.0" not in log and "Error" not in log and "denied" not in log, log
        finally:
            assert proc.stop() == 0


def test_sighup_reloads_for_new_connections_only(spfmilter):
    milter = spfmilter(fresh=True)
    conf = milter.config_path
    original = conf.read_text()
    with MilterSession(milter.socket_path) as old:
        old.connect("198.51.100.7")
        old.helo("unknown.test")
        old.mail("user@allowed.test")           # in flight before the reload
        conf.write_text(original + "Mail_From_reject = False\n")
        milter.proc.send_signal(signal.SIGHUP)
        milter.wait_for_log(r"action=reload result=ok")
        with MilterSession(milter.socket_path) as new:
            new.connect("198.51.100.7")
            new.helo("unknown.test")
            replies, eom = new.transaction("user@allowed.test", ["rcpt@mx.test"])
            assert replies[0].kind == "continue"      # new settings: header only
        assert old.rcpt("rcpt@mx.test").code == "550"  # old settings stay for this one
    # A broken file is refused and the running settings stay in force.
    conf.write_text(original + "Mail_From_reject = Sometimes\n")
    milter.proc.send_signal(signal.SIGHUP)
    milter.wait_for_log(r"action=reload-refused .*Mail_From_reject: expected one of")
    with MilterSession(milter.socket_path) as s:
        s.connect("198.51.100.7")
        s.helo("unknown.test")
        replies, _ = s.transaction("user@allowed.test", ["rcpt@mx.test"])
        assert replies[0].kind == "continue"
    assert milter.proc.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: resolv.conf servers listen on port 53")
def test_sighup_rereads_resolv_conf_when_nameservers_is_not_set(tmp_path):
    """A new local resolver in resolv.conf is used from the next reload on (not only
    after a restart); the start and reload lines say which servers are asked."""
    # resolv.conf has no port: two test servers on port 53 of their own loopback addresses
    old = TestDNSServer({"moved.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}]},
                        host="127.0.83.1", port=53).start()
    new = TestDNSServer({"moved.test": [{"TXT": "v=spf1 -all"}]},
                        host="127.0.83.2", port=53).start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.83.1\noptions timeout:1\n")
    os.environ["SPFMILTER_RESOLV_CONF"] = str(resolv)
    try:
        proc = SpfmilterProcess(tmp_path / "d", {"skip_addresses": "", "Authserv_Id": "mx.test",
                                                 "Lookup_Time": "3", "HELO_reject": "No_Check"})
        proc.start()
    finally:
        del os.environ["SPFMILTER_RESOLV_CONF"]

    def result() -> str:
        with MilterSession(proc.socket_path) as s:
            s.connect("192.0.2.10")
            s.helo("client.test")
            replies, _ = s.transaction("user@moved.test", ["rcpt@mx.test"])
            return replies[0].code or replies[0].kind

    try:
        proc.wait_for_log(rf"action=start .*nameservers=127\.0\.83\.1 nameservers_from={resolv}")
        assert result() == "continue"               # pass, from the first server
        resolv.write_text("nameserver 127.0.83.2\n")
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_log(rf"action=reload result=ok .*nameservers=127\.0\.83\.2 "
                          rf"nameservers_from={resolv}")
        assert result() == "550"                    # fail: the second server's record
        assert ("moved.test", "TXT") in [q[:2] for q in new.queries], new.queries
        # a reload with resolv.conf unchanged keeps the servers (and the warm cache)
        old.stop()
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_log(r"(?s)action=reload result=ok .*action=reload result=ok .*"
                          r"nameservers=127\.0\.83\.2 ")
        assert result() == "550"
    finally:
        proc.stop()
        old.stop()
        new.stop()


def test_sigterm_lets_transactions_in_flight_finish(spfmilter):
    milter = spfmilter(fresh=True)
    with MilterSession(milter.socket_path) as s:
        s.connect("192.0.2.10")
        s.helo("helo.test")
        s.mail("user@allowed.test")
        milter.proc.send_signal(signal.SIGTERM)
        milter.wait_for_log(r"action=stop|", timeout=1)  # no wait: just read
        assert s.rcpt("rcpt@mx.test").kind == "continue"
        eom = s.data([("Subject", "x")])
        assert eom.final.kind == "accept"
        assert any(n == "Received-SPF" for n, _ in eom.headers_on_top())
    assert milter.proc.wait(40) == 0
    assert "action=stop in_flight=0" in milter.log_text()
