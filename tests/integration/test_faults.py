"""Faults: DNS that fails in every way RFC 7208 names, and spfmilter killed under load.

DNS faults run against the real daemon over the milter protocol, with the
test DNS server (tests/dnsserver.py) serving each case under names of its own
(a pooled daemon keeps its DNS cache between tests, so no name is reused).
Each case must end in the RFC 7208 result and the configured action, within
one Lookup_Time (plus a small margin) for the whole message.

The kill test sends 2,000 messages through a real Postfix (tests/mta.py),
SIGKILLs the supervisor and its worker in the middle and starts a new daemon on
the same socket: every message must be delivered with our headers or refused
with a 4xx/5xx that the client saw.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.kit.daemon import SpfmilterProcess
from tests.kit.milterclient import MilterSession
from tests.kit.wait import wait_for

pytestmark = pytest.mark.e2e

LOOKUP_TIME = 1.0
MARGIN = 0.6          # what a check may take beyond Lookup_Time (scheduling, one round trip)
AUTH_IP = "192.0.2.10"
STRICT = {"TempError_Defer": "True", "PermError_reject": "True"}
LENIENT = {"TempError_Defer": "False", "PermError_reject": "False"}


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}.fault.test"


def transaction(milter, sender: str, ip: str = AUTH_IP, helo: str = "helo.test"):
    """One message; returns (RCPT reply, end-of-message result or None, seconds for RCPT)."""
    with MilterSession(milter.socket_path, timeout=LOOKUP_TIME + 20) as s:
        s.connect(ip)
        s.helo(helo)
        s.mail(sender)
        started = time.monotonic()
        reply = s.rcpt("rcpt@mx.test")
        elapsed = time.monotonic() - started
        eom = None
        if reply.kind == "continue":
            eom = s.data([("From", f"<{sender}>"), ("Subject", "fault test")])
        else:
            s.abort()
    return reply, eom, elapsed


def mailfrom_header(eom) -> str:
    [value] = [v for n, v in eom.headers_on_top()
               if n == "Received-SPF" and "identity=mailfrom" in v]
    return value


def ar_header(eom) -> str:
    [value] = [v for n, v in eom.headers_on_top() if n == "Authentication-Results"]
    return value


def includes(domain: str, count: int) -> dict:
    """A record with ``count`` includes of harmless records, plus the authorised network."""
    zone = {domain: [{"TXT": "v=spf1 " + " ".join(f"include:i{i}.{domain}" for i in range(count))
                      + " ip4:192.0.2.0/24 -all"}]}
    for i in range(count):
        zone[f"i{i}.{domain}"] = [{"TXT": "v=spf1 -ip4:203.0.113.1"}]
    return zone


def big_record(domain: str) -> dict:
    """A record far larger than 512 bytes (and the server's EDNS size): UDP answers truncate."""
    nets = " ".join(f"ip4:10.{i // 250}.{i % 250}.0/24" for i in range(150))
    return {domain: [{"TXT": f"v=spf1 {nets} ip4:192.0.2.0/24 -all"}]}


# name -> (zone data for the domain D, expected result)
CASES = {
    "timeout": (lambda d: {d: ["TIMEOUT"]}, "temperror"),
    "servfail": (lambda d: {d: ["SERVFAIL"]}, "temperror"),
    "refused": (lambda d: {d: ["REFUSED"]}, "temperror"),
    "slower-than-lookup-time": (
        lambda d: {d: [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}, {"DELAY": LOOKUP_TIME + 2}]},
        "temperror"),
    # each answer is in time, together they are not: one budget per message
    "chain-slower-than-lookup-time": (
        lambda d: {d: [{"TXT": f"v=spf1 include:a.{d} ip4:192.0.2.0/24 -all"}, {"DELAY": 0.4}],
                   f"a.{d}": [{"TXT": f"v=spf1 include:b.{d}"}, {"DELAY": 0.4}],
                   f"b.{d}": [{"TXT": "v=spf1 -ip4:203.0.113.1"}, {"DELAY": 0.4}]},
        "temperror"),
    "servfail-in-include": (
        lambda d: {d: [{"TXT": f"v=spf1 include:broken.{d} ip4:192.0.2.0/24 -all"}],
                   f"broken.{d}": ["SERVFAIL"]},
        "temperror"),
    "cname-loop": (lambda d: {d: [{"CNAME": f"loop.{d}"}], f"loop.{d}": [{"CNAME": d}]},
                   "temperror"),
    "cname-loop-in-include": (
        lambda d: {d: [{"TXT": f"v=spf1 include:c1.{d} ip4:192.0.2.0/24 -all"}],
                   f"c1.{d}": [{"CNAME": f"c2.{d}"}], f"c2.{d}": [{"CNAME": f"c1.{d}"}]},
        "temperror"),
    "eleven-includes": (lambda d: includes(d, 11), "permerror"),
    "void-lookups-over-limit": (
        lambda d: {d: [{"TXT": f"v=spf1 a:v1.{d} a:v2.{d} a:v3.{d} ip4:192.0.2.0/24 -all"}]},
        "permerror"),
    "include-loop": (lambda d: {d: [{"TXT": f"v=spf1 include:other.{d} -all"}],
                                f"other.{d}": [{"TXT": f"v=spf1 include:{d} -all"}]},
                     "permerror"),
    "include-without-record": (lambda d: {d: [{"TXT": f"v=spf1 include:empty.{d} -all"}],
                                          f"empty.{d}": [{"A": "192.0.2.99"}]},
                               "permerror"),
    "two-spf-records": (lambda d: {d: [{"TXT": "v=spf1 +all"}, {"TXT": "v=spf1 -all"}]},
                        "permerror"),
    # the limits' edges are not errors
    "ten-includes": (lambda d: includes(d, 10), "pass"),
    "void-lookups-at-limit": (
        lambda d: {d: [{"TXT": f"v=spf1 a:v1.{d} a:v2.{d} ip4:192.0.2.0/24 -all"}]}, "pass"),
    "slow-but-in-time": (
        lambda d: {d: [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}, {"DELAY": 0.3}]}, "pass"),
    "truncated-udp-retried-over-tcp": (big_record, "pass"),
}


@pytest.mark.parametrize("policy", ["strict", "lenient"])
@pytest.mark.parametrize("case", list(CASES))
def test_dns_fault_gives_rfc_result_and_configured_action(spfmilter, dns_server, case, policy):
    zone, expected = CASES[case]
    domain = unique(case)
    dns_server.update(zone(domain))
    milter = spfmilter(Lookup_Time=str(LOOKUP_TIME), **(STRICT if policy == "strict" else LENIENT))
    sender = f"user@{domain}"
    reply, eom, elapsed = transaction(milter, sender)

    assert elapsed < LOOKUP_TIME + MARGIN, f"{case}: RCPT took {elapsed:.2f}s"
    if expected == "temperror" and policy == "strict":
        assert (reply.kind, reply.code) == ("reply", "451"), reply
        assert reply.text.startswith("4.7.24 ")
        assert eom is None
        action = "defer"
    elif expected == "permerror" and policy == "strict":
        assert (reply.kind, reply.code) == ("reply", "550"), reply
        assert reply.text.startswith("5.7.24 ")
        assert eom is None
        action = "reject"
    else:
        assert reply.kind == "continue", reply
        assert eom.final.kind == "accept"
        assert mailfrom_header(eom).startswith(f"{expected} (mx.test: ")
        assert f"spf={expected} smtp.mailfrom={sender.split('@')[1]}" in ar_header(eom)
        action = "accept"
    milter.wait_for_log(rf"action={action} .*result={expected} .*envelope_from={re.escape(sender)} ")
    if case == "truncated-udp-retried-over-tcp":
        transports = {t for name, qtype, t in dns_server.queries if name == domain and qtype == "TXT"}
        assert transports == {"udp", "tcp"}


def test_whitelist_lookups_share_the_message_budget(spfmilter, dns_server):
    """Domain_Whitelist checks have their own limit, but never beyond the message's Lookup_Time
    (they run beside HELO and MAIL FROM, each within its own budget)."""
    slow, listed = unique("slow"), unique("listed")
    dns_server.update({slow: ["TIMEOUT"], listed: ["TIMEOUT"]})
    milter = spfmilter(Lookup_Time=str(LOOKUP_TIME), Whitelist_Lookup_Time="10",
                       Domain_Whitelist=listed, **STRICT)
    reply, _, elapsed = transaction(milter, f"user@{slow}", helo=unique("helo"))
    assert elapsed < LOOKUP_TIME + MARGIN, elapsed
    assert (reply.code, reply.text[:6]) == ("451", "4.7.24")


def test_name_server_that_never_answers(spfmilter, dns_server):
    """Nameservers points at a socket that swallows every query (UDP and TCP)."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", port))
    tcp.listen(8)            # connections queue up, nobody reads them
    try:
        milter = spfmilter(fresh=True, Nameservers=f"127.0.0.1:{port}",
                           Lookup_Time=str(LOOKUP_TIME), **STRICT)
        reply, _, elapsed = transaction(milter, "user@allowed.test")
        assert elapsed < LOOKUP_TIME + MARGIN, elapsed
        assert (reply.code, reply.text[:6]) == ("451", "4.7.24")
        milter.wait_for_log(r"action=defer .*result=temperror helo_result=temperror")
        reply, eom, elapsed = transaction(spfmilter(fresh=True, Nameservers=f"127.0.0.1:{port}",
                                                    Lookup_Time=str(LOOKUP_TIME), **LENIENT),
                                          "user@allowed.test")
        assert elapsed < LOOKUP_TIME + MARGIN, elapsed
        assert eom.final.kind == "accept"
        assert "spf=temperror smtp.mailfrom=allowed.test" in ar_header(eom)
        assert "spf=temperror smtp.helo=helo.test" in ar_header(eom)
    finally:
        udp.close()
        tcp.close()


def test_a_refusing_resolver_is_not_named_in_delivered_mail(spfmilter, dns_server):
    """Nameservers points at a closed port (refused at once): the temperror's problem= says
    which lookup failed and how, never the resolver's address, port or errno text; the log
    line names them for the administrator."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    milter = spfmilter(fresh=True, Nameservers=f"127.0.0.1:{port}", **LENIENT)
    reply, eom, _ = transaction(milter, "user@allowed.test")
    assert eom is not None and eom.final.kind == "accept", reply
    header = mailfrom_header(eom)
    assert header.startswith("temperror ") and \
        "problem=\"SPF Temporary Error: DNS server failure looking up allowed.test/TXT " \
        "(connection refused)\"" in header, header
    for name, value in eom.headers_on_top():
        for internal in ("127.0.0.1", str(port), "Errno"):
            assert internal not in value, (name, value)
    milter.wait_for_log(rf'action=dns-failure name="allowed.test" type=TXT .*'
                        rf'detail="127.0.0.1#{port}: \[Errno 111\] Connection refused"')


def test_concurrent_slow_lookups_do_not_queue_behind_each_other(spfmilter, dns_server):
    """Twenty messages whose DNS times out, at once: each ends within its own budget."""
    domains = [unique("parallel") for _ in range(20)]
    dns_server.update({d: ["TIMEOUT"] for d in domains})
    milter = spfmilter(Lookup_Time=str(LOOKUP_TIME), **STRICT)
    results: list[tuple] = []
    lock = threading.Lock()

    def one(domain: str) -> None:
        out = transaction(milter, f"user@{domain}")
        with lock:
            results.append(out)

    threads = [threading.Thread(target=one, args=(d,)) for d in domains]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    total = time.monotonic() - started
    assert len(results) == len(domains)
    assert all(r.code == "451" for r, _, _ in results)
    assert max(e for _, _, e in results) < LOOKUP_TIME + 2 * MARGIN
    assert total < LOOKUP_TIME + 5, total


# --- spfmilter killed under load through a real Postfix ----------------------------

MESSAGES = 2000
KILL_AFTER = 700     # messages finished before the kill


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _sigkill_daemon(proc: SpfmilterProcess) -> None:
    """SIGKILL the supervisor and its libmilter child (the whole daemon, no clean-up)."""
    sup = proc.proc.pid
    kids = _children(sup)
    assert len(kids) == 1, kids
    os.kill(kids[0], signal.SIGKILL)
    os.kill(sup, signal.SIGKILL)
    proc.proc.wait(10)
    wait_for(lambda: not Path(f"/proc/{kids[0]}").exists(), 10, "milter child to die")


@pytest.mark.slow
@pytest.mark.mta
def test_sigkill_under_postfix_load_loses_nothing_and_forges_nothing(tmp_path, dns_server):
    from tests.kit import mta

    mta.require_or_skip("postfix")
    settings = {"Nameservers": dns_server.nameserver, "skip_addresses": "",
                "Authserv_Id": "mx.test", "Lookup_Time": "5"}
    milter_dir = tmp_path / "milter"
    first = SpfmilterProcess(milter_dir, settings).start()
    procs = [first]
    try:
        with mta.CaptureSMTP() as capture, \
                mta.PostfixLab(tmp_path / "postfix", first.socket_spec, capture.port,
                               extra_settings={"default_process_limit": "20"}) as postfix, \
                mta.PacedLoad(postfix, MESSAGES, prefix="kill", client_ip=AUTH_IP,
                              helo="helo.test", sender="user@allowed.test",
                              rcpt="rcpt@example.com") as load:
            load.wait_finished(KILL_AFTER, 120)
            _sigkill_daemon(first)
            killed_at = len(load.outcomes)
            second = SpfmilterProcess(milter_dir, settings).start()   # same socket path
            procs.append(second)
            # the log file is shared: start() saw the first daemon's line, wait for the new one
            wait_for(lambda: second.log_text().count("action=start") >= 2, 20, "restart")
            postfix.grant_socket()   # the lab's socket permissions for user postfix
            load.join(300)

            delivered, refused, lost = (load.fates(f) for f in ("delivered", "refused", "lost"))
            print(f"\nkill under load: {MESSAGES} sent, {len(delivered)} delivered with headers, "
                  f"{len(refused)} refused/deferred, {len(lost)} lost; killed after {killed_at}")
            assert len(load.outcomes) == MESSAGES
            assert not lost, [load.replies[i] for i in lost[:3]]
            assert len(delivered) + len(refused) == MESSAGES
            assert refused, "the kill refused nothing: it did not happen under load"
            # milter_default_action = tempfail: the client is told to come back, never bounced
            codes = load.refusal_codes
            assert codes and all(400 <= c < 500 for c in codes), codes
            assert killed_at < MESSAGES
            assert len(delivered) > MESSAGES // 2, (killed_at, load.replies[refused[-1]])
            # Each of them arrived exactly once, each with our verdict; nothing else arrived.
            mta.assert_delivered_once_with_our_headers(capture, delivered, "mx.test", "allowed.test")
            assert postfix.queue_files() == []
            log = first.log_text()
            assert log.count("action=start") == 2
            assert "Traceback" not in log
    finally:
        for p in procs:
            p.stop()
