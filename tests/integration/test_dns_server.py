"""Tests for tests/dnsserver.py, the DNS server the spfmilter tests run against.

Why: every SPF test trusts this server's answers, so its wire behaviour
(duplication rules, NXDOMAIN vs NODATA, timeouts, truncation, live updates)
is checked here with an independent client, dnspython.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from tests.kit import ROOT
from tests.kit.dnsserver import TestDNSServer

QUERY_TIMEOUT = 2.0  # generous for loopback, still bounded


def udp(server: TestDNSServer, name: str, rdtype: str, **kw) -> dns.message.Message:
    """One UDP query, no retries, no TCP fallback."""
    timeout = kw.pop("timeout", QUERY_TIMEOUT)
    q = dns.message.make_query(name, rdtype, **kw)
    return dns.query.udp(q, server.address[0], port=server.address[1], timeout=timeout)


def tcp(server: TestDNSServer, name: str, rdtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return dns.query.tcp(q, server.address[0], port=server.address[1], timeout=QUERY_TIMEOUT)


def resolver_for(server: TestDNSServer) -> dns.resolver.Resolver:
    """A stub resolver that only talks to the test server (no system config)."""
    res = dns.resolver.Resolver(configure=False)
    res.port = server.address[1]
    res.nameserver_ports = {"127.0.0.1": server.address[1]}
    res.nameservers = ["127.0.0.1"]
    res.timeout = QUERY_TIMEOUT
    res.lifetime = QUERY_TIMEOUT
    res.cache = None
    return res


def txt_strings(msg: dns.message.Message, rdtype: str = "TXT") -> list[tuple[bytes, ...]]:
    """Character-strings of every record of rdtype in the answer, sorted."""
    out = []
    for rrset in msg.answer:
        if rrset.rdtype == dns.rdatatype.from_text(rdtype):
            out.extend(tuple(rd.strings) for rd in rrset)
    return sorted(out)


def answer_text(msg: dns.message.Message) -> list[str]:
    return [rr.to_text() for rr in msg.answer]


@pytest.fixture
def server():
    with TestDNSServer() as srv:
        yield srv


# -- record types and the suite's duplication rule -----------------------------


def test_spf_only_name_is_served_as_txt_too(server):
    server.set_zones({"spfonly.example.net": [{"SPF": "v=spf1 -all"}]})
    for rdtype in ("TXT", "SPF"):
        msg = udp(server, "spfonly.example.net", rdtype)
        assert msg.rcode() == dns.rcode.NOERROR
        assert msg.flags & dns.flags.AA and msg.flags & dns.flags.RA
        assert txt_strings(msg, rdtype) == [(b"v=spf1 -all",)]


def test_txt_entries_stop_spf_duplication(server):
    server.set_zones(
        {
            "both.example.net": [{"TXT": "v=spf1 ?all"}, {"SPF": "v=spf1 -all"}],
            "spfonly.example.net": [{"SPF": "v=spf1 -all"}, {"TXT": "NONE"}],
            "txtonly.example.net": [{"TXT": "v=spf1 -all"}],
        }
    )
    assert txt_strings(udp(server, "both.example.net", "TXT")) == [(b"v=spf1 ?all",)]
    assert txt_strings(udp(server, "both.example.net", "SPF"), "SPF") == [(b"v=spf1 -all",)]
    # TXT: NONE means "no TXT record" (NODATA), and no copy of the SPF one.
    msg = udp(server, "spfonly.example.net", "TXT")
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer == []
    assert txt_strings(udp(server, "spfonly.example.net", "SPF"), "SPF") == [(b"v=spf1 -all",)]
    msg = udp(server, "txtonly.example.net", "SPF")
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer == []


def test_multiple_strings_records_and_non_ascii(server):
    server.set_zones(
        {
            "null.example.com": [{"SPF": ["v=spf1 ip4:", "192.0.2.5 -all"]}, {"SPF": []}],
            "multi.example.com": [{"TXT": "one"}, {"TXT": "two"}],
            "utf8.example.com": [{"TXT": "caf\u00e9 \u20ac"}],
        }
    )
    # A list is several character-strings of ONE record; [] (illegal "no
    # strings") goes out as a single empty string.
    assert txt_strings(udp(server, "null.example.com", "TXT")) == [(b"",), (b"v=spf1 ip4:", b"192.0.2.5 -all")]
    assert txt_strings(udp(server, "multi.example.com", "TXT")) == [(b"one",), (b"two",)]
    assert txt_strings(udp(server, "utf8.example.com", "TXT")) == [("caf\u00e9 \u20ac".encode("utf-8"),)]


def test_long_string_is_split_into_255_byte_strings(server):
    text = "v=spf1 " + " ".join(f"ip4:192.0.2.{i}" for i in range(40)) + " -all"
    assert len(text) > 510
    server.set_zones({"long.example.com": [{"TXT": text}]})
    (strings,) = txt_strings(tcp(server, "long.example.com", "TXT"))
    assert [len(s) for s in strings] == [255, 255, len(text) - 510]
    assert b"".join(strings) == text.encode()


def test_address_mx_ptr_records(server):
    server.set_zones(
        {
            "mail.example.com": [{"A": "192.0.2.1"}, {"A": ["192.0.2.2", "192.0.2.3"]}, {"AAAA": "CAFE:BABE::1"}],
            "example.com": [{"MX": [10, "mail.example.com"]}, {"MX": [0, ""]}],
            "1.2.0.192.in-addr.arpa": [{"PTR": "mail.Example.com"}],
        }
    )
    msg = udp(server, "mail.example.com", "A")
    assert sorted(rd.address for rd in msg.answer[0]) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert [rd.address for rd in udp(server, "mail.example.com", "AAAA").answer[0]] == ["cafe:babe::1"]
    mx = sorted((rd.preference, rd.exchange.to_text()) for rd in udp(server, "example.com", "MX").answer[0])
    assert mx == [(0, "."), (10, "mail.example.com.")]
    ptr = udp(server, "1.2.0.192.in-addr.arpa", "PTR")
    assert [rd.target.to_text() for rd in ptr.answer[0]] == ["mail.Example.com."]


def test_names_are_case_insensitive_and_ignore_trailing_dot(server):
    server.set_zones({"Mixed.Example.COM.": [{"A": "192.0.2.9"}]})
    msg = udp(server, "mIXED.example.com", "A")
    assert msg.rcode() == dns.rcode.NOERROR
    assert [rd.address for rd in msg.answer[0]] == ["192.0.2.9"]
    assert msg.answer[0].name.to_text() == "mIXED.example.com."  # echoes the query's case


def test_cname_chain_is_followed_inside_the_zone(server):
    server.set_zones(
        {
            "a.example.org": [{"TXT": "v=spf1 -all"}, {"A": "192.0.2.7"}],
            "b.example.org": [{"CNAME": "c.example.org"}],
            "c.example.org": [{"CNAME": "A.example.org."}],
            "dangling.example.org": [{"CNAME": "missing.example.org"}],
            "loop4.example.com": [{"CNAME": "CNAME.example.com."}],
            "cname.example.com": [{"CNAME": "CNAME.example.com."}],
        }
    )
    msg = udp(server, "b.example.org", "TXT")
    assert msg.rcode() == dns.rcode.NOERROR
    assert [(rr.name.to_text(), dns.rdatatype.to_text(rr.rdtype)) for rr in msg.answer] == [
        ("b.example.org.", "CNAME"),
        ("c.example.org.", "CNAME"),
        ("A.example.org.", "TXT"),
    ]
    # The stub resolver sees the final data through the chain.
    ans = resolver_for(server).resolve("b.example.org", "A")
    assert [rd.address for rd in ans] == ["192.0.2.7"]
    assert ans.canonical_name.to_text() == "A.example.org."
    # Querying the CNAME type itself does not follow it.
    assert [rr.to_text() for rr in udp(server, "b.example.org", "CNAME").answer] == [
        "b.example.org. 300 IN CNAME c.example.org."
    ]
    # Chain into an unknown name: NXDOMAIN, with the chain.
    msg = udp(server, "dangling.example.org", "A")
    assert msg.rcode() == dns.rcode.NXDOMAIN and len(msg.answer) == 1
    # Loop: the chain so far, no endless answer.
    msg = udp(server, "loop4.example.com", "A")
    assert msg.rcode() == dns.rcode.NOERROR
    assert [rr.name.to_text() for rr in msg.answer] == ["loop4.example.com.", "CNAME.example.com."]


def test_cname_chain_stops_after_ten_hops(server):
    zones = {f"h{i}.example": [{"CNAME": f"h{i + 1}.example"}] for i in range(15)}
    zones["h15.example"] = [{"A": "192.0.2.15"}]
    server.set_zones(zones)
    msg = udp(server, "h0.example", "A")
    assert msg.rcode() == dns.rcode.NOERROR
    assert len(msg.answer) == 10
    assert all(rr.rdtype == dns.rdatatype.CNAME for rr in msg.answer)


def test_nxdomain_versus_nodata(server):
    server.set_zones({"known.example.com": [{"A": "192.0.2.1"}]})
    nx = udp(server, "unknown.example.com", "TXT")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.answer == []
    nodata = udp(server, "known.example.com", "TXT")
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == []
    res = resolver_for(server)
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("unknown.example.com", "TXT")
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("known.example.com", "TXT")


def test_bad_data_answers_servfail_and_server_keeps_serving(server):
    server.set_zones(
        {
            "bad.example.com": [{"A": "999.1.1.1"}, {"TXT": "ok"}],
            "badname.example.com": [{"PTR": "x" * 64 + ".example.com"}],
            "good.example.com": [{"A": "192.0.2.1"}],
        }
    )
    assert udp(server, "bad.example.com", "A").rcode() == dns.rcode.SERVFAIL
    assert udp(server, "badname.example.com", "PTR").rcode() == dns.rcode.SERVFAIL
    assert txt_strings(udp(server, "bad.example.com", "TXT")) == [(b"ok",)]
    assert udp(server, "good.example.com", "A").rcode() == dns.rcode.NOERROR


def test_malformed_zone_shapes_are_rejected(server):
    with pytest.raises((TypeError, ValueError)):
        server.set_zones({"x.example": [{"HINFO": "x"}]})
    with pytest.raises((TypeError, ValueError)):
        server.set_zones({"x.example": ["NOSUCHMARKER"]})
    with pytest.raises(TypeError):
        server.set_zones({"x.example": 42})


# -- failure modes ---------------------------------------------------------------


def test_timeout_name_is_never_answered_udp_and_tcp(server):
    server.set_zones({"dead.example.com": ["TIMEOUT"], "alive.example.com": [{"A": "192.0.2.1"}]})
    q = dns.message.make_query("dead.example.com", "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(q, "127.0.0.1", port=server.address[1], timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        dns.query.tcp(q, "127.0.0.1", port=server.address[1], timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        udp(server, "dead.example.com", "TXT", timeout=0.3)
    assert udp(server, "alive.example.com", "A").rcode() == dns.rcode.NOERROR
    assert server.query_count("dead.example.com") == 3


def test_timeout_follows_pyspf_order_rule(server):
    # rfc7208-tests.yml "Record lookup": records listed before TIMEOUT answer.
    server.set_zones(
        {
            "spftimeout.example.net": [{"TXT": "v=spf1 -all"}, "TIMEOUT"],
            "txttimeout.example.net": [{"SPF": "v=spf1 -all"}, {"TXT": "NONE"}, "TIMEOUT"],
            "pertype.example.net": [{"TXT": "TIMEOUT"}, {"A": "192.0.2.1"}],
        }
    )
    assert txt_strings(udp(server, "spftimeout.example.net", "TXT")) == [(b"v=spf1 -all",)]
    with pytest.raises(dns.exception.Timeout):
        udp(server, "spftimeout.example.net", "SPF", timeout=0.3)
    assert txt_strings(udp(server, "txttimeout.example.net", "SPF"), "SPF") == [(b"v=spf1 -all",)]
    with pytest.raises(dns.exception.Timeout):
        udp(server, "txttimeout.example.net", "TXT", timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        udp(server, "pertype.example.net", "TXT", timeout=0.3)
    assert udp(server, "pertype.example.net", "A").rcode() == dns.rcode.NOERROR


def test_servfail_and_refused(server):
    server.set_zones(
        {
            "sf.example.com": ["SERVFAIL", {"TXT": "ignored"}],
            "ref.example.com": ["REFUSED"],
            "via.example.com": [{"CNAME": "sf.example.com"}],
        }
    )
    for rdtype in ("TXT", "A", "MX"):
        assert udp(server, "sf.example.com", rdtype).rcode() == dns.rcode.SERVFAIL
        assert udp(server, "ref.example.com", rdtype).rcode() == dns.rcode.REFUSED
    assert tcp(server, "sf.example.com", "TXT").rcode() == dns.rcode.SERVFAIL
    assert udp(server, "via.example.com", "TXT").rcode() == dns.rcode.SERVFAIL
    with pytest.raises(dns.resolver.NoNameservers):
        resolver_for(server).resolve("sf.example.com", "TXT")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_delay_does_not_block_other_queries(server, transport):
    delay = 1.0
    server.set_zones(
        {"slow.example.com": [{"TXT": "late"}, {"DELAY": delay}], "fast.example.com": [{"TXT": "early"}]}
    )
    query = udp if transport == "udp" else tcp
    done = threading.Event()
    result: dict = {}

    def slow() -> None:
        start = time.monotonic()
        try:
            result["msg"] = query(server, "slow.example.com", "TXT")
        except Exception as exc:  # reported by the main thread
            result["error"] = exc
        result["elapsed"] = time.monotonic() - start
        done.set()

    worker = threading.Thread(target=slow, daemon=True)
    worker.start()
    # The fast name answers while the slow answer is still pending.
    assert txt_strings(query(server, "fast.example.com", "TXT")) == [(b"early",)]
    assert not done.is_set()
    assert done.wait(delay + QUERY_TIMEOUT)
    worker.join(QUERY_TIMEOUT)
    assert "error" not in result, result.get("error")
    assert txt_strings(result["msg"]) == [(b"late",)]
    assert result["elapsed"] >= delay * 0.9


def _read_tcp_reply(conn: socket.socket) -> dns.message.Message:
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
        chunk = conn.recv(65536)
        assert chunk, "server closed the connection early"
        buf += chunk
    return dns.message.from_wire(buf[2:])


def test_stop_cuts_pending_delays_and_timeout_connections():
    srv = TestDNSServer(
        {
            "slow.example.com": [{"A": "192.0.2.1"}, {"DELAY": 30}],
            "dead.example": ["TIMEOUT"],
            "fast.example": [{"A": "192.0.2.2"}],
        }
    )
    srv.start()
    port = srv.port
    conn = socket.create_connection(srv.address, timeout=QUERY_TIMEOUT)
    dead = dns.message.make_query("dead.example", "A").to_wire()
    fast = dns.message.make_query("fast.example", "A").to_wire()
    # Queries on one TCP connection are handled in order: once the fast one
    # is answered, the TIMEOUT one has been read and dropped.
    conn.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in (dead, fast)))
    assert _read_tcp_reply(conn).answer
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as usock:
        usock.sendto(dns.message.make_query("slow.example.com", "A").to_wire(), srv.address)
        # Same for UDP: the server reads its socket in order, so this answer
        # means the slow query is already waiting on its DELAY.
        assert udp(srv, "fast.example", "A").answer
        assert srv.query_count("slow.example.com") == 1
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 2.0
        usock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            usock.recv(512)  # the delayed answer was dropped, not sent
    assert conn.recv(10) == b""  # the TIMEOUT connection is closed, unanswered
    conn.close()
    # Only this server's threads: other tests' servers (the session one) may run.
    assert not [t for t in threading.enumerate()
                if t.name.startswith("dnsserver-") and t.name.endswith(f"-{port}") and t.is_alive()]


# -- truncation and TCP ------------------------------------------------------------


def test_udp_truncation_then_tcp_fallback_through_resolver(server):
    records = [{"TXT": f"record-{i:02d} " + "x" * 300} for i in range(20)]
    server.set_zones({"big.example.com": records})
    msg = udp(server, "big.example.com", "TXT")
    assert msg.flags & dns.flags.TC and msg.answer == []
    # With EDNS the limit is the client's payload size, still too small here.
    msg = udp(server, "big.example.com", "TXT", use_edns=0, payload=1232)
    assert msg.flags & dns.flags.TC and msg.answer == [] and msg.edns == 0
    server.clear_queries()
    ans = resolver_for(server).resolve("big.example.com", "TXT")
    assert len(ans) == 20
    assert {b"".join(rd.strings)[:9] for rd in ans} == {f"record-{i:02d}".encode() for i in range(20)}
    assert [t for _, _, t in server.queries] == ["udp", "tcp"]


def test_edns_payload_allows_bigger_udp_answers(server):
    server.set_zones({"mid.example.com": [{"TXT": f"r{i} " + "y" * 200} for i in range(4)]})
    assert udp(server, "mid.example.com", "TXT").flags & dns.flags.TC
    msg = udp(server, "mid.example.com", "TXT", use_edns=0, payload=4096)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == 4


def test_tcp_several_queries_on_one_connection_with_partial_writes(server):
    server.set_zones({"a.example": [{"A": "192.0.2.1"}], "b.example": [{"TXT": "bee"}]})
    wires = [
        dns.message.make_query("a.example", "A", id=1).to_wire(),
        dns.message.make_query("b.example", "TXT", id=2).to_wire(),
    ]
    stream = b"".join(len(w).to_bytes(2, "big") + w for w in wires)
    with socket.create_connection(server.address, timeout=QUERY_TIMEOUT) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(stream)):  # byte by byte: the server must reassemble
            conn.sendall(stream[i : i + 1])
        replies = []
        buf = b""
        while len(replies) < 2:
            chunk = conn.recv(65536)
            assert chunk, "server closed the connection early"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                size = int.from_bytes(buf[:2], "big")
                replies.append(dns.message.from_wire(buf[2 : 2 + size]))
                buf = buf[2 + size :]
    assert sorted(r.id for r in replies) == [1, 2]
    assert all(r.rcode() == dns.rcode.NOERROR and r.answer for r in replies)


# -- live data, counting, lifecycle --------------------------------------------------


def test_set_zones_and_update_while_running(server):
    server.set_zones({"one.example": [{"TXT": "1"}], "two.example": [{"TXT": "2"}]})
    assert txt_strings(udp(server, "one.example", "TXT")) == [(b"1",)]
    server.update({"two.example": [{"TXT": "2b"}], "three.example": [{"A": "192.0.2.3"}]})
    assert txt_strings(udp(server, "one.example", "TXT")) == [(b"1",)]
    assert txt_strings(udp(server, "two.example", "TXT")) == [(b"2b",)]
    assert udp(server, "three.example", "A").answer
    server.set_zones({"four.example": [{"TXT": "4"}]})
    assert udp(server, "one.example", "TXT").rcode() == dns.rcode.NXDOMAIN
    assert txt_strings(udp(server, "four.example", "TXT")) == [(b"4",)]


def test_set_zones_is_atomic_under_concurrent_queries(server):
    a = {"x.example": [{"TXT": "a"}], "y.example": [{"TXT": "a"}]}
    b = {"x.example": [{"TXT": "b"}], "y.example": [{"TXT": "b"}]}
    server.set_zones(a)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            server.set_zones(b)
            server.set_zones(a)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        for _ in range(100):
            ans = udp(server, "x.example", "TXT")
            assert ans.rcode() == dns.rcode.NOERROR
            assert txt_strings(ans) in ([(b"a",)], [(b"b",)])
    finally:
        stop.set()
        flipper.join(QUERY_TIMEOUT)


def test_query_log_and_counting(server):
    server.set_zones({"Count.example.com": [{"TXT": "v=spf1 -all"}]})
    udp(server, "COUNT.example.com.", "TXT")
    udp(server, "count.example.com", "A")
    tcp(server, "count.example.com", "TXT")
    udp(server, "other.example.com", "TXT")
    assert server.queries == [
        ("count.example.com", "TXT", "udp"),
        ("count.example.com", "A", "udp"),
        ("count.example.com", "TXT", "tcp"),
        ("other.example.com", "TXT", "udp"),
    ]
    assert server.query_count() == 4
    assert server.query_count("Count.Example.com.") == 3
    assert server.query_count("count.example.com", "txt") == 2
    assert server.query_count(qtype="TXT") == 3
    server.clear_queries()
    assert server.queries == [] and server.query_count() == 0


def test_address_and_nameserver_form():
    with TestDNSServer() as srv:
        host, port = srv.address
        assert host == "127.0.0.1" and port > 0
        assert srv.nameserver == f"127.0.0.1:{port}"
    with pytest.raises(RuntimeError):
        _ = TestDNSServer().address


def test_clean_stop_frees_the_port():
    srv = TestDNSServer({"a.example": [{"A": "192.0.2.1"}]}).start()
    port = srv.address[1]
    assert tcp(srv, "a.example", "A").answer  # leave a finished TCP connection behind
    srv.stop()
    srv.stop()  # idempotent
    assert not [t for t in threading.enumerate()
                if t.name.startswith("dnsserver-") and t.name.endswith(f"-{port}") and t.is_alive()]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as any server does
        t.bind(("127.0.0.1", port))
        t.listen(1)
    # And a new server can take the same fixed port.
    with TestDNSServer({"a.example": [{"A": "192.0.2.2"}]}, port=port) as again:
        assert again.address[1] == port
        assert [rd.address for rd in udp(again, "a.example", "A").answer[0]] == ["192.0.2.2"]


def test_start_picks_distinct_ports():
    with TestDNSServer() as one, TestDNSServer() as two:
        assert one.address[1] != two.address[1]


# -- the RFC 7208 test suite's zone data -------------------------------------------


def _suite_path() -> Path:
    env = os.environ.get("RFC7208_TESTS")
    if env:
        return Path(env)
    return ROOT.parent / "shared" / "data" / "rfc7208-tests.yml"


def test_every_rfc7208_scenario_zonedata_loads_and_answers(server):
    import yaml  # a missing PyYAML must fail this test, not skip it

    path = _suite_path()
    if not path.is_file():
        pytest.fail(f"RFC 7208 test suite not found at {path} (set RFC7208_TESTS)")
    with path.open("rb") as fh:
        scenarios = list(yaml.safe_load_all(fh))
    assert len(scenarios) >= 10
    problems = []
    for scenario in scenarios:
        zonedata = scenario["zonedata"]
        server.set_zones(zonedata)
        # Every name answers every type it lists (plus TXT) with data that
        # dnspython can parse, except where TIMEOUT is the point.
        for name, entries in zonedata.items():
            if "TIMEOUT" in entries:
                continue
            types = {"TXT"} | {k for e in entries if isinstance(e, dict) for k in e}
            for rdtype in sorted(types):
                try:
                    msg = udp(server, name, rdtype)
                    if msg.flags & dns.flags.TC:
                        msg = tcp(server, name, rdtype)
                except Exception as exc:
                    problems.append((scenario["description"], name, rdtype, repr(exc)))
                    continue
                if msg.rcode() != dns.rcode.NOERROR:
                    problems.append((scenario["description"], name, rdtype, dns.rcode.to_text(msg.rcode())))
    assert problems == []
