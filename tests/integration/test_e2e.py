"""The real spfmilter process over the milter protocol, DNS from a real server on 127.0.0.1."""

import re
import subprocess
import sys

import pytest

from tests.kit import ROOT
from tests.kit.milterclient import MilterSession

pytestmark = pytest.mark.e2e

FORGED = [
    ("Authentication-Results", "mx.test; spf=pass smtp.mailfrom=ceo@allowed.test"),
    ("Authentication-Results", "(folded)\r\n\tMX.TEST; dkim=pass header.d=allowed.test"),
    ("Authentication-Results", "other.example; spf=fail smtp.mailfrom=x@y"),
    ("Received-SPF", "pass (forged) client-ip=192.0.2.10; receiver=mx.test; identity=mailfrom"),
    ("From", "CEO <ceo@allowed.test>"),
    ("Subject", "wire transfer"),
]


def one(milter, ip, helo, sender, rcpts=("rcpt@mx.test",), headers=None, macros=None):
    with MilterSession(milter.socket_path) as s:
        s.connect(ip)
        s.helo(helo)
        return s.transaction(sender, list(rcpts), headers, macros)


def received_spf(eom, identity="mailfrom"):
    values = [v for n, v in eom.headers_on_top() if n == "Received-SPF" and f"identity={identity}" in v]
    assert len(values) == 1, eom.headers_on_top()
    return values[0]


def ar(eom):
    values = [v for n, v in eom.headers_on_top() if n == "Authentication-Results"]
    assert len(values) == 1
    return values[0]


@pytest.mark.parametrize("sender,ip,result", [
    ("user@allowed.test", "192.0.2.10", "pass"),
    ("user@soft.test", "198.51.100.7", "softfail"),
    ("user@neutral.test", "198.51.100.7", "neutral"),
    ("user@none.test", "198.51.100.7", "none"),
    ("user@perm.test", "198.51.100.7", "permerror"),
    ("user@slow.test", "198.51.100.7", "temperror"),
    ("user@allowed.test", "2001:db8:1::10", "pass"),
])
def test_results_are_labelled(spfmilter, sender, ip, result):
    milter = spfmilter()
    replies, eom = one(milter, ip, "unknown.test", sender)
    assert [r.kind for r in replies] == ["continue"]
    assert eom.final.kind == "accept"
    assert received_spf(eom).startswith(f"{result} (mx.test: ")
    assert f"client-ip={ip if ':' not in ip else chr(34) + ip + chr(34)};" in received_spf(eom)
    assert f"spf={result} smtp.mailfrom={sender.split('@')[1]}" in ar(eom)
    assert ar(eom).startswith("mx.test; ")
    assert [n for n, _ in eom.headers_on_top()][0] == "Authentication-Results"
    # this transaction's line (the daemon is shared: other tests' lines name other HELOs)
    line = milter.wait_for_log(rf"action=accept .*client_ip={re.escape(ip)} helo=unknown\.test "
                               rf"envelope_from={re.escape(sender)} .*\n")
    assert f"result={result}" in line.group(0)
    assert "mta=mx.test daemon=smtpd-test" in line.group(0)  # the connect macros


def test_fail_is_refused_with_explanation(spfmilter):
    milter = spfmilter()
    replies, eom = one(milter, "198.51.100.7", "unknown.test", "user@allowed.test", ["a@mx.test", "b@mx.test"])
    assert eom is None
    for r in replies:
        assert (r.kind, r.code) == ("reply", "550")
        assert r.text.startswith("5.7.23 ")
        assert "198.51.100.7 is not one of allowed.test's designated mail servers" in r.text
    milter.wait_for_log(r"action=reject reason=\"mailfrom fail\" .*reply=\"550 5.7.23\"")


def test_ipv6_fail(spfmilter):
    replies, _ = one(spfmilter(), "2001:db8:bad::7", "unknown.test", "user@allowed.test")
    # %{i} of an IPv6 address expands to dotted nibbles (RFC 7208 §7.3)
    assert replies[0].code == "550" and "2.0.0.1.0.D.B.8.0.B.A.D." in replies[0].text


def test_temperror_deferred_then_accepted_once_dns_answers(spfmilter, dns_server):
    # its own daemon: the answer it finally gets is cached, which must not leak into other tests
    milter = spfmilter(fresh=True, TempError_Defer="True", Lookup_Time="1")
    replies, _ = one(milter, "198.51.100.7", "unknown.test", "user@slow.test")
    assert (replies[0].code, replies[0].text[:6]) == ("451", "4.7.24")
    dns_server.update({"slow.test": [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}]})
    replies, eom = one(milter, "198.51.100.7", "unknown.test", "user@slow.test")
    assert replies[0].kind == "continue" and received_spf(eom).startswith("pass ")


def test_permerror_rejected_when_configured(spfmilter):
    replies, _ = one(spfmilter(PermError_reject="True"), "198.51.100.7", "unknown.test", "user@perm.test")
    assert (replies[0].code, replies[0].text[:6]) == ("550", "5.7.24")


def test_null_sender_checked_on_helo(spfmilter):
    milter = spfmilter()
    replies, _ = one(milter, "198.51.100.7", "badhelo.test", "")
    assert replies[0].code == "550" and "postmaster@badhelo.test" in replies[0].text
    replies, eom = one(milter, "192.0.2.10", "helo.test", "")
    assert replies[0].kind == "continue"
    assert 'envelope-from="postmaster@helo.test"' in received_spf(eom)
    assert received_spf(eom, "helo").startswith("pass ")
    assert "spf=pass smtp.helo=helo.test" in ar(eom)


def test_authenticated_client_is_skipped(spfmilter):
    milter = spfmilter()
    replies, eom = one(milter, "198.51.100.7", "badhelo.test", "user@allowed.test",
                       macros={"{auth_authen}": "alice"})
    assert replies[0].kind == "continue" and eom.final.kind == "accept"
    assert eom.headers_on_top() == []
    milter.wait_for_log(r"action=accept reason=\"skipped \(authenticated\)\"")


def test_forged_authentication_results_removed(spfmilter):
    replies, eom = one(spfmilter(), "192.0.2.10", "helo.test", "ceo@allowed.test", headers=FORGED)
    deleted = sorted((n, i) for i, n, v in eom.changed if v == "")
    assert deleted == [("Authentication-Results", 1), ("Authentication-Results", 2), ("Received-SPF", 1)]
    assert ar(eom).startswith("mx.test; spf=pass")


def test_several_messages_per_connection_get_their_own_verdicts(spfmilter):
    milter = spfmilter()
    with MilterSession(milter.socket_path) as s:
        s.connect("198.51.100.7")
        s.helo("unknown.test")
        replies, _ = s.transaction("user@allowed.test", ["a@mx.test"])
        assert replies[0].code == "550"
        replies, eom = s.transaction("user@soft.test", ["a@mx.test"])
        assert received_spf(eom).startswith("softfail ")
        replies, eom = s.transaction("user@forwarder.test", ["a@mx.test"])
        assert received_spf(eom).startswith("pass ") and "user@forwarder.test" in received_spf(eom)


def test_exempt_recipient_accepted_while_others_refused(spfmilter):
    milter = spfmilter(Exempt_Recipients="postmaster@")
    replies, eom = one(milter, "198.51.100.7", "unknown.test", "user@allowed.test",
                       ["staff@mx.test", "postmaster@mx.test"])
    assert [r.code or r.kind for r in replies] == ["550", "continue"]
    assert received_spf(eom).startswith("fail ")


def test_helo_fail_refuses(spfmilter):
    replies, _ = one(spfmilter(), "198.51.100.7", "badhelo.test", "user@soft.test")
    assert replies[0].code == "550" and "HELO" in replies[0].text


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(spfmilter, sig):
    import os
    import signal
    milter = spfmilter(fresh=True)
    milter.proc.send_signal(getattr(signal, sig))
    assert milter.proc.wait(20) == 0
    milter.wait_for_log(r"action=stop")
    assert not os.path.exists(milter.socket_path)  # no stale socket left for the MTA
    assert "Traceback" not in milter.log_text()


def test_shipped_configuration_serves(tmp_path):
    """What `make run` starts: the shipped file, on a socket the user can create."""
    import subprocess
    import sys

    from tests.kit import ROOT
    from tests.kit.wait import wait_for
    sock = tmp_path / "run.sock"
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "spfmilter", "-c", str(ROOT / "spfmilter.conf"),
                                 "--socket", f"unix:{sock}", "--log", "stderr"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "action=start" in log.read_text() or proc.poll() is not None, 20, "start")
            with MilterSession(str(sock)) as s:
                s.connect("127.0.0.1")      # loopback is in the default skip_addresses
                s.helo("localhost")
                replies, eom = s.transaction("user@example.invalid", ["root@localhost"])
            assert replies[0].kind == "continue" and eom.final.kind == "accept"
            assert 'reason="skipped (skip_addresses)"' in log.read_text()
        finally:
            proc.terminate()
            proc.wait(20)


def test_lookup_time_bounds_the_whole_message(spfmilter):
    """HELO and MAIL FROM both time out: each has its own Lookup_Time, and they are
    evaluated concurrently, so the message waits one Lookup_Time, not two."""
    import time
    milter = spfmilter(Lookup_Time="1", TempError_Defer="True")
    with MilterSession(milter.socket_path) as s:
        s.connect("198.51.100.7")
        s.helo("dead.test")
        s.mail("user@dead.test")
        started = time.monotonic()
        reply = s.rcpt("rcpt@mx.test")
        elapsed = time.monotonic() - started
    assert reply.code == "451" and reply.text.startswith("4.7.24")
    assert elapsed < 1.6, elapsed


def test_a_helo_whose_dns_never_answers_does_not_save_a_forged_sender(spfmilter):
    """Shipped defaults (TempError_Defer off): the HELO's lookups time out, and the
    forged sender is still refused -- its evaluation had its own Lookup_Time."""
    milter = spfmilter()
    with MilterSession(milter.socket_path) as s:
        s.connect("198.51.100.7")
        s.helo("dead.test")
        s.mail("ceo@plain.test")
        reply = s.rcpt("rcpt@mx.test")
    assert reply.code == "550" and reply.text.startswith("5.7.23"), reply
    milter.wait_for_log(r"action=reject reason=\"mailfrom fail\"")


def test_a_helo_whose_dns_never_answers_does_not_spoil_a_legitimate_pass(spfmilter):
    milter = spfmilter()
    replies, eom = one(milter, "192.0.2.10", "dead.test", "user@allowed.test")
    assert replies[0].kind == "continue"
    assert received_spf(eom).startswith("pass ")
    assert received_spf(eom, "helo").startswith("temperror ")
    assert "spf=pass smtp.mailfrom=allowed.test" in ar(eom)


def test_check_refuses_a_forged_sender_behind_a_helo_that_times_out(tmp_path, dns_server):
    conf = tmp_path / "c.conf"
    conf.write_text(f"Nameservers = {dns_server.nameserver}\nAuthserv_Id = mx.test\n"
                    "Lookup_Time = 3\n")
    res = subprocess.run([sys.executable, "-m", "spfmilter", "check", "-c", str(conf),
                          "--ip", "198.51.100.9", "--helo", "dead.test", "--from",
                          "ceo@plain.test"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert re.search(r"RCPT TO:<[^>]*>: reject -> 550 5\.7\.23 ", res.stdout), res.stdout + res.stderr
