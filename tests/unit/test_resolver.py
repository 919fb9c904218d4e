"""The one resolver: answers in pyspf's shape, a TTL-respecting shared cache, TCP fallback."""

import array
import logging
import os
import socket
import struct
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
import pytest
from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from spfmilter import resolver as resolver_mod
from spfmilter.resolver import Resolver, TempFailure
from tests.kit.wait import wait_for


def make(dns_server, timeout=2.0):
    host, port = dns_server.address
    return Resolver(((host, port),), timeout=timeout)


def test_answers_in_pyspf_shape(dns_server):
    r = make(dns_server)
    assert r.records("allowed.test", "TXT", 2) == [
        (("allowed.test", "TXT"), [b"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:1::/48 -all exp=explain.allowed.test"])]
    assert r.records("none.test", "A", 2) == [(("none.test", "A"), "192.0.2.99")]
    assert r.records("nosuch.test", "TXT", 2) == []
    assert r.records("none.test", "TXT", 2) == []


def test_cache_is_shared_and_counts_no_second_query(dns_server):
    r = make(dns_server)
    dns_server.clear_queries()
    for _ in range(5):
        r.records("soft.test", "TXT", 2)
        r.records("nosuch.test", "TXT", 2)
    assert dns_server.query_count("soft.test", "TXT") == 1
    assert dns_server.query_count("nosuch.test", "TXT") == 1


def test_cache_respects_ttl(dns_server):
    r = make(dns_server)
    r.records("soft.test", "TXT", 2)
    key = next(k for k in r.cache.data if str(k[0]).startswith("soft.test"))
    answer = r.cache.data[key].value
    assert answer.expiration <= time.time() + 300 + 1  # the server's TTL, not forever
    answer.expiration = time.time() - 1                # as if the TTL ran out
    dns_server.clear_queries()
    r.records("soft.test", "TXT", 2)
    assert dns_server.query_count("soft.test", "TXT") == 1


def test_truncated_udp_answer_is_retried_over_tcp(dns_server):
    big = [{"TXT": "v=spf1 " + "ip4:192.0.2.%d " % i * 1 + "x" * 200} for i in range(20)]
    dns_server.update({"big.test": big})
    r = make(dns_server)
    dns_server.clear_queries()
    assert len(r.records("big.test", "TXT", 2)) == 20
    protos = {p for n, t, p in dns_server.queries if n == "big.test"}
    assert protos == {"udp", "tcp"}


def test_a_truncated_answer_to_a_query_sent_ahead_is_asked_again_over_tcp(dns_server):
    big = [{"TXT": "v=spf1 " + "ip4:192.0.2.%d " % i * 1 + "x" * 200} for i in range(20)]
    dns_server.update({"big2.test": big})
    r = make(dns_server)
    dns_server.clear_queries()
    flight = r.ahead("big2.test", "TXT", time.monotonic() + 2.0)
    assert flight is not None and flight.sent is not None
    assert len(r.records("big2.test", "TXT", 2, flight)) == 20
    assert sorted(p for n, t, p in dns_server.queries if n == "big2.test") == ["tcp", "udp"]
    assert flight.sent is None and flight.done.is_set() and r._flights == {}


@pytest.mark.parametrize("entry", ["TIMEOUT", "SERVFAIL", "REFUSED"])
def test_no_answer_is_a_temporary_failure(dns_server, entry):
    dns_server.update({"broken.test": [entry]})
    r = make(dns_server, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TempFailure):
        r.records("broken.test", "TXT", 0.5)
    assert time.monotonic() - started < 2.0


def test_one_off_names_do_not_push_out_the_names_in_use(dns_server):
    """A burst of one-off domains larger than the cache (a spam run) cycles through
    the probation segment; names asked for again stay cached: no new queries."""
    dns_server.update({f"once{i}.test": [{"TXT": f"v=spf1 ip4:192.0.2.{i % 250} -all"}]
                       for i in range(150)})
    host, port = dns_server.address
    r = Resolver(((host, port),), timeout=2.0, cache_size=40)
    regulars = [("soft.test", "TXT"), ("allowed.test", "TXT"), ("none.test", "A")]
    for _ in range(2):  # the second round is answered from the cache and marks them as in use
        for name, qtype in regulars:
            r.records(name, qtype, 2)
    for i in range(150):
        assert r.records(f"once{i}.test", "TXT", 2)
        assert len(r.cache) <= 40
    dns_server.clear_queries()
    for name, qtype in regulars:
        r.records(name, qtype, 2)
    assert [q for q in dns_server.queries if (q[0], q[1]) in regulars] == []
    r.records("once0.test", "TXT", 2)  # long gone from probation: asked again
    assert dns_server.query_count("once0.test", "TXT") == 1


def test_cache_segments_stay_within_the_size():
    from spfmilter.resolver import _Cache, _Cached
    cache = _Cache(10)
    later = time.time() + 60
    for i in range(10):
        cache.put((f"n{i}", "A"), _Cached(later, (f"192.0.2.{i}",)))
    for i in range(10):  # all promoted: the protected segment holds 8, two are demoted
        assert cache.get((f"n{i}", "A")) is not None
    for i in range(100):
        cache.put((f"x{i}", "A"), _Cached(later, ()))
        assert len(cache) <= 10
    kept = {k[0] for k in cache.data}
    assert {f"n{i}" for i in range(2, 10)} <= kept      # the 8 most recently used survive
    assert cache.get(("n0", "A")) is None and cache.get(("x0", "A")) is None
    cache.put(("n5", "A"), _Cached(time.time() - 1, ()))  # an expired answer is not served
    assert cache.get(("n5", "A")) is None and ("n5", "A") not in cache.data


# --- the UDP exchange: only the answer to the question asked is taken -------------

class _Scripted:
    """A UDP name server on loopback that answers each query with what ``script`` sends:
    a list of (datagram, from_other_port) built from the query it got."""

    def __init__(self, script) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.script = script
        self.queries = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            if not data:  # woken by close()
                return
            self.queries += 1
            for wire, from_other in self.script(dns.message.from_wire(data)):
                (self.other if from_other else self.sock).sendto(wire, peer)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the serving thread's recvfrom()
        except OSError:  # ENOTCONN on an unconnected UDP socket, after waking it (Linux)
            pass
        self.sock.close()
        self.other.close()
        self._thread.join(5)


def _txt_answer(query, text: str, qname: str | None = None, qid: int | None = None) -> bytes:
    response = dns.message.make_response(query)
    if qname is not None:  # an answer to some other question
        response.question = [dns.rrset.RRset(dns.name.from_text(qname), dns.rdataclass.IN,
                                             dns.rdatatype.TXT)]
    response.answer.append(dns.rrset.from_text(response.question[0].name, 300, "IN", "TXT",
                                               f'"{text}"'))
    if qid is not None:
        response.id = qid
    return response.to_wire()


@pytest.fixture
def scripted():
    made = []

    def make(script) -> _Scripted:
        made.append(_Scripted(script))
        return made[-1]
    yield make
    for s in made:
        s.close()


def test_stray_datagrams_are_ignored_until_the_answer_to_the_question(scripted):
    """Forged or late datagrams (wrong id, another question, another source port, not a
    response) are dropped; the one that answers this query is taken."""
    def script(q):
        not_response = dns.message.from_wire(q.to_wire())  # the query itself, echoed
        return [(_txt_answer(q, "v=spf1 +all wrong-id", qid=(q.id + 1) % 65536), False),
                (_txt_answer(q, "v=spf1 +all other-question", qname="evil.test"), False),
                (_txt_answer(q, "v=spf1 +all other-port"), True),
                (not_response.to_wire(), False),
                (b"\x00", False),
                # the question in another case is the same question (DNS names are case-blind)
                (_txt_answer(q, "v=spf1 -all the-answer", qname=q.question[0].name.to_text().lower()),
                 False)]
    server = scripted(script)
    r = Resolver((server.address,), timeout=2.0)
    assert r.records("Case.Test", "TXT", 2) == [(("Case.Test", "TXT"), [b"v=spf1 -all the-answer"])]


def test_only_stray_datagrams_is_a_timeout(scripted):
    server = scripted(lambda q: [(_txt_answer(q, "v=spf1 +all", qname="evil.test"), False)])
    r = Resolver((server.address,), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TempFailure, match="timeout"):
        r.records("case.test", "TXT", 0.5)
    assert 0.4 < time.monotonic() - started < 2.0
    assert r.stats()["timeouts"] == 1


def test_a_refusing_server_hands_over_to_the_next_at_once(dns_server):
    """A server whose port is closed (ICMP port unreachable) is not waited for."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()
    closed.close()
    r = Resolver((dead, dns_server.address), timeout=5.0)
    started = time.monotonic()
    assert r.records("none.test", "A", 5) == [(("none.test", "A"), "192.0.2.99")]
    assert time.monotonic() - started < 1.0
    only_dead = Resolver((dead,), timeout=5.0)
    with pytest.raises(TempFailure, match="refused"):
        only_dead.records("none.test", "A", 5)


@pytest.mark.parametrize("reply", ["formerr-without-question", "unparsable"])
def test_a_broken_answer_moves_on_to_the_next_server(scripted, dns_server, reply):
    def script(q):
        wire = q.to_wire()
        if reply == "formerr-without-question":  # id, QR + FORMERR, no sections
            return [(wire[:2] + bytes([0x80, dns.rcode.FORMERR]) + bytes(8), False)]
        header = wire[:2] + bytes([0x81, 0x80]) + b"\x00\x01\x00\x05\x00\x00\x00\x00"
        return [(header + wire[12:] + b"\xc0\x0c\x00", False)]  # five answers promised, one cut
    broken = scripted(script)
    r = Resolver((broken.address, dns_server.address), timeout=2.0)
    assert r.records("none.test", "A", 2) == [(("none.test", "A"), "192.0.2.99")]
    assert broken.queries == 1
    alone = Resolver((broken.address,), timeout=2.0)
    with pytest.raises(TempFailure, match="server failure"):
        alone.records("none.test", "A", 2)


class _TCPAnswer:
    """A TCP name server on 127.0.0.1 at ``port`` that answers every query with a TXT record."""

    def __init__(self, port: int, text: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(4)
        self.text = text
        self.queries = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    size = int.from_bytes(conn.recv(2), "big")
                    data = b""
                    while len(data) < size:
                        data += conn.recv(size - len(data))
                except OSError:
                    continue
                self.queries += 1
                wire = _txt_answer(dns.message.from_wire(data), self.text)
                conn.sendall(len(wire).to_bytes(2, "big") + wire)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)


def test_truncated_answer_without_question_is_retried_over_tcp(scripted):
    """A server that drops the question from a truncated UDP answer: the answer is taken as
    the server's (same id, same server) and the query goes to TCP, not into a timeout and
    a temperror that would defer the sender's mail."""
    def script(q):
        wire = q.to_wire()  # the query's id; QR, TC and RD; no sections at all
        return [(wire[:2] + bytes([0x80 | (dns.flags.TC >> 8) | 0x01, 0x80]) + bytes(8), False)]
    server = scripted(script)
    tcp = _TCPAnswer(server.address[1], "v=spf1 -all over-tcp")
    try:
        r = Resolver((server.address,), timeout=2.0)
        assert r.records("tc.test", "TXT", 2) == [(("tc.test", "TXT"), [b"v=spf1 -all over-tcp"])]
        assert (server.queries, tcp.queries, r.stats()["timeouts"]) == (1, 1, 0)
    finally:
        tcp.close()


def _closed_port() -> tuple[str, int]:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    address = closed.getsockname()
    closed.close()
    return address


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_failure_names_what_failed_but_not_the_resolver(scripted):
    """The failure's text reaches Received-SPF's problem= in delivered mail: it says which
    lookup failed and how, never the resolver's address, port or the system's errno text;
    those go to the log (and ``detail``) for the administrator."""
    dead = _closed_port()
    servfail = scripted(lambda q: [(dns.message.make_response(q).to_wire()[:3]
                                    + bytes([0x80 | dns.rcode.SERVFAIL])
                                    + dns.message.make_response(q).to_wire()[4:], False)])
    r = Resolver((dead, servfail.address), timeout=2.0)
    lines, logger = _Lines(), logging.getLogger("spfmilter.resolver")
    logger.addHandler(lines)  # whatever an earlier test made of the "spfmilter" logger
    try:
        with pytest.raises(TempFailure) as failure:
            r.records("gone.test", "TXT", 2)
    finally:
        logger.removeHandler(lines)
    text = str(failure.value)
    assert text == "DNS server failure looking up gone.test/TXT (connection refused, SERVFAIL)"
    for internal in ("127.0.0.1", str(dead[1]), str(servfail.address[1]), "Errno"):
        assert internal not in text
    assert f"127.0.0.1#{dead[1]}: [Errno 111]" in failure.value.detail
    logged = lines.lines
    assert len(logged) == 1 and "action=dns-failure name=\"gone.test\" type=TXT" in logged[0]
    assert f"127.0.0.1#{servfail.address[1]}: SERVFAIL" in logged[0]


# Records as text, or (bytes) as their raw data: lengths and strings that do not fit,
# which must be refused or read exactly as dnspython does.
_POOL = {"A": ["192.0.2.1", "192.0.2.2", b"\xc0\x00\x02", b"\xc0\x00\x02\x01\x00"],
         "AAAA": ["2001:db8::1", "2001:db8::2", "::ffff:192.0.2.1", "::192.0.2.1",
                  b"\x20\x01" + b"\x00" * 13, b"\x00" * 17],
         # the question's name is at 12 (q.example.), its "example" label at 14
         "MX": ["10 mx.example.", "10 MX.Example.", "20 mx.example.", b"\x00\x0a\xc0\x0c",
                b"\x00\x0a\x02mx\xc0\x0e", b"\x00\x05\x02MX\xc0\x0e", b"\x00\x00\x00",
                b"\x00\x0a\x03a.b\x00", b"\x00\x0a\x01a\x00\x00", b"\x00\x0a\xc0\xff",
                b"\x00\x0a\x02mx", b"\x00\x0a\x01a\xc0\x0e\x01b\x00",
                # as the first record, its name starts at 41: a pointer to itself, and a
                # label then a pointer back to that label (both refused, neither followed
                # for ever)
                b"\x00\x0a\xc0\x29", b"\x00\x0a\x01a\xc0\x29"],
         "TXT": ['"v=spf1 -all"', '"a" "b"', '"ab"', b"", b"\x00", b"\x05ab", b"\x02ab\x00",
                 b"\x01a\x01b", b"\x02a"],
         "PTR": ["h.example.", "H.EXAMPLE."],
         "CNAME": ["c1.example.", "C2.example.", "q.example."]}
_POOL["SPF"] = _POOL["TXT"]
_OWNERS = ["q.example.", "Q.EXAMPLE.", "c1.example.", "c2.example.", "other.example."]


def _rr(owner, rtype, rclass, ttl, text):
    # its bytes, whatever the class
    data = text if isinstance(text, bytes) else dns.rdata.from_text(dns.rdataclass.IN, rtype,
                                                                    text).to_wire()
    # the question's name as servers write it again: a pointer to the question
    name = b"\xc0\x0c" if owner == "q.example." else dns.name.from_text(owner).to_wire()
    return name + struct.pack("!HHIH", rtype, rclass, ttl, len(data)) + data


_records = st.tuples(st.sampled_from(_OWNERS), st.sampled_from(["qtype", "CNAME", "A", "TXT"]),
                     st.sampled_from([dns.rdataclass.IN, dns.rdataclass.IN, dns.rdataclass.CH]),
                     st.sampled_from([0, 5, 300, 0x80000000, 2**32 - 1]), st.integers(0, 13))


@hsettings(max_examples=1500, deadline=None)
@given(qtype=st.sampled_from(["A", "AAAA", "MX", "TXT", "SPF", "PTR"]),
       records=st.lists(_records, max_size=7),
       rcode=st.sampled_from([0, 0, 0, 3]), authority=st.sampled_from([0, 0, 1]),
       junk=st.sampled_from([b"", b"", b"\0"]))
# the rules that differ from a naive reading: a duplicate kept once (names case-blind, the
# first stays), the least TTL of an RRset, the last of two CNAMEs of one owner
@example(qtype="MX", records=[("q.example.", "qtype", 1, 300, 0), ("q.example.", "qtype", 1, 300, 1)],
         rcode=0, authority=0, junk=b"")
@example(qtype="A", records=[("q.example.", "qtype", 1, 300, 0), ("Q.EXAMPLE.", "qtype", 1, 5, 1)],
         rcode=0, authority=0, junk=b"")
@example(qtype="A", records=[("q.example.", "CNAME", 1, 300, 0), ("q.example.", "CNAME", 1, 300, 1),
                             ("c1.example.", "A", 1, 300, 0), ("c2.example.", "A", 1, 300, 1)],
         rcode=0, authority=0, junk=b"")
# data of a length or shape dnspython refuses: three and five bytes of A, seventeen of
# AAAA, TXT with no string and with a string longer than the data left
@example(qtype="A", records=[("q.example.", "qtype", 1, 300, 2)], rcode=0, authority=0, junk=b"")
@example(qtype="A", records=[("q.example.", "qtype", 1, 300, 3)], rcode=0, authority=0, junk=b"")
@example(qtype="AAAA", records=[("q.example.", "qtype", 1, 300, 5)], rcode=0, authority=0, junk=b"")
@example(qtype="TXT", records=[("q.example.", "qtype", 1, 300, 3)], rcode=0, authority=0, junk=b"")
@example(qtype="SPF", records=[("q.example.", "qtype", 1, 300, 5)], rcode=0, authority=0, junk=b"")
def test_answers_read_from_the_answer_section_alone_are_what_dnspython_reads(qtype, records, rcode,
                                                                            authority, junk):
    """A plain positive answer is read without dnspython's Message and Answer (the cold
    path's cost): the records, their order and the expiration must be dnspython's, and
    every other answer (or one dnspython refuses) must be left to dnspython."""
    rdtype = dns.rdatatype.from_text(qtype)
    qname = dns.name.from_text("q.example.")
    question = qname.to_wire() + struct.pack("!HH", rdtype, dns.rdataclass.IN)
    rrs = []
    for owner, rtype, rclass, ttl, pick in records:
        rtype = qtype if rtype == "qtype" else rtype
        pool = _POOL[rtype]
        rrs.append(_rr(owner, dns.rdatatype.from_text(rtype), rclass, ttl, pool[pick % len(pool)]))
    soa = [_rr("example.", dns.rdatatype.SOA, dns.rdataclass.IN, 60, "ns.example. h.example. 1 2 3 4 5")]
    answer, auth = rrs, soa * authority
    wire = (struct.pack("!HHHHHH", 7, 0x8180 | rcode, 1, len(answer), len(auth), 0) + question
            + b"".join(answer) + b"".join(auth) + junk)
    try:
        expected = dns.resolver.Answer(qname, rdtype, dns.rdataclass.IN, dns.message.from_wire(wire))
    except (dns.exception.DNSException, ValueError) as exc:   # the resolver's "broken answer"
        expected = exc
    try:
        got = resolver_mod._positive(wire, qname, rdtype, 12 + len(question))
    except (dns.exception.DNSException, ValueError) as exc:
        assert type(exc) is type(expected)
        return
    plain = rcode == 0 and not authority and not junk
    if got is None:
        assert isinstance(expected, Exception) or expected.rrset is None or not plain
        return
    assert not isinstance(expected, Exception) and expected.rrset is not None
    assert got.values == [resolver_mod._value(rdtype, r) for r in expected.rrset]
    assert abs(got.expiration - expected.expiration) < 1


# MX names: through pointers, the root alone, escaped text, data left over, a pointer
# forward, a name cut short; each alone and beside another record
for _pick in range(3, len(_POOL["MX"])):
    for _records_ in ([("q.example.", "qtype", 1, 300, _pick)],
                      [("q.example.", "qtype", 1, 300, _pick), ("Q.example.", "qtype", 1, 60, 4)]):
        test_answers_read_from_the_answer_section_alone_are_what_dnspython_reads = example(
            qtype="MX", records=_records_, rcode=0, authority=0, junk=b"")(
                test_answers_read_from_the_answer_section_alone_are_what_dnspython_reads)


@hsettings(max_examples=500, deadline=None)
@given(text=st.one_of(
    st.lists(st.text(st.sampled_from("aZ09-_"), min_size=0, max_size=70), min_size=1, max_size=6)
    .map(".".join),
    st.text(st.sampled_from("aZ9-_.\\@*\u00fc "), max_size=30)).flatmap(
        lambda t: st.sampled_from([t, t + ".", t * 5])))
def test_names_are_the_names_dnspython_makes_of_the_text(text):
    """The question's name, made quickly for plain labels, is dnspython's from_text
    name (labels, case, absolute) or the same error."""
    try:
        expected = dns.name.from_text(text)
    except Exception as exc:
        with pytest.raises(type(exc)):
            resolver_mod._name(text)
        return
    got = resolver_mod._name(text)
    assert got.labels == expected.labels and got.to_wire() == expected.to_wire()


# --- one query per name in flight: lookups of one key wait for the one asked ----------------

def _wait_for_query(dns_server, name):
    wait_for(lambda: dns_server.query_count(name), 2.0, f"the query for {name}", interval=0.005)


def test_concurrent_lookups_of_one_name_make_one_query(dns_server):
    """A second lookup of a name whose query is on its way waits for that answer."""
    dns_server.update({"slowish.test": [{"TXT": "v=spf1 -all"}, {"DELAY": 0.3}]})
    r = make(dns_server)
    dns_server.clear_queries()
    first: list = []
    thread = threading.Thread(target=lambda: first.append(r.records("slowish.test", "TXT", 2)))
    thread.start()
    _wait_for_query(dns_server, "slowish.test")
    second = r.records("slowish.test", "TXT", 2)
    thread.join(2)
    assert first == [second] == [[(("slowish.test", "TXT"), [b"v=spf1 -all"])]]
    assert dns_server.query_count("slowish.test") == 1


def test_a_lookup_joined_to_a_shorter_one_keeps_its_own_budget(dns_server):
    """A lookup that waited for another one, which ran out of its (shorter) budget, asks
    again itself and fails only at its own deadline; a failure that is an answer
    (SERVFAIL) is shared, not asked again."""
    dns_server.update({"gone.test": ["TIMEOUT"], "broken.test": ["SERVFAIL"]})
    r = make(dns_server)
    dns_server.clear_queries()
    short: list = []

    def ask_short():
        try:
            r.records("gone.test", "A", 0.3)
        except TempFailure as exc:
            short.append(exc)

    thread = threading.Thread(target=ask_short)
    thread.start()
    _wait_for_query(dns_server, "gone.test")
    started = time.monotonic()
    with pytest.raises(TempFailure, match="timeout looking up gone.test/A"):
        r.records("gone.test", "A", 1.0)
    assert time.monotonic() - started >= 0.9
    thread.join(2)
    assert len(short) == 1 and short[0].timed_out
    assert dns_server.query_count("gone.test") == 2
    with pytest.raises(TempFailure, match="server failure") as failed:
        r.records("broken.test", "A", 1.0)
    assert not failed.value.timed_out


def test_a_lookup_ahead_hands_its_answer_over_once_cached_or_not(dns_server):
    """``ahead`` sends the query at once; the lookup it was sent for reads its answer
    (a NODATA answer without SOA too, which the cache cannot keep) and counts the one
    miss it was; nothing is sent for a name the cache holds."""
    dns_server.update({"later.test": [{"A": "192.0.2.77"}, {"DELAY": 0.1}]})
    r = make(dns_server)
    dns_server.clear_queries()
    deadline = time.monotonic() + 2.0
    later, nodata = r.ahead("later.test", "A", deadline), r.ahead("none.test", "TXT", deadline)
    assert later is not None and nodata is not None
    assert r.records("later.test", "A", 2, later) == [(("later.test", "A"), "192.0.2.77")]
    assert r.records("none.test", "TXT", 2, nodata) == []
    assert r.ahead("later.test", "A", deadline) is None            # cached now
    assert (r.stats()["misses"], r.stats()["hits"]) == (2, 0)
    assert sorted(q[:2] for q in dns_server.queries) == [("later.test", "A"), ("none.test", "TXT")]


# --- sockets kept between queries to a server on the host ------------------------------

def _spy_on_sockets(monkeypatch) -> list[socket.socket]:
    """Every socket the resolver takes for a query, in order (idle ones closed first)."""
    resolver_mod._sockets.close()
    taken: list[socket.socket] = []
    take = resolver_mod._sockets.take

    def spy(host: str, port: int) -> socket.socket:
        taken.append(take(host, port))
        return taken[-1]
    monkeypatch.setattr(resolver_mod._sockets, "take", spy)
    return taken


def test_a_socket_is_used_again_only_after_its_answer_was_read(dns_server, monkeypatch):
    """The socket of a query to a loopback server whose answer was read serves the next
    query (no socket, connect and close per lookup); one whose query timed out may still
    get the late answer, and one sent ahead and never read gets its answer unread, so
    both are closed, never used again."""
    dns_server.update({"late.test": [{"TXT": "v=spf1 +all"}, {"DELAY": 0.5}]})
    taken = _spy_on_sockets(monkeypatch)
    r = make(dns_server)
    assert r.records("allowed.test", "TXT", 2) and r.records("none.test", "A", 2)
    assert len(taken) == 2 and taken[1] is taken[0] and taken[0].fileno() != -1
    with pytest.raises(TempFailure, match="timeout"):
        r.records("late.test", "TXT", 0.2)
    assert taken[2] is taken[0] and taken[0].fileno() == -1
    flight = r.ahead("never.test", "A", time.monotonic() + 2.0, "owner")
    assert flight is not None
    r.give_up(("never.test", "A"), flight, "owner")
    assert len(taken) == 4 and taken[3].fileno() == -1
    assert r.records("none.test", "TXT", 2) == []
    assert len(taken) == 5 and all(taken[4] is not s for s in taken[:4])
    assert resolver_mod._sockets._idle[dns_server.address] == [taken[4]]


def test_a_query_after_a_timeout_gets_a_socket_of_its_own(dns_server, monkeypatch):
    """The socket of a query that timed out is not the next query's: the late answer
    arrives on a closed socket, while the next query reads its own answer."""
    dns_server.update({"late2.test": [{"TXT": "v=spf1 -all"}, {"DELAY": 0.3}],
                       "next.test": [{"TXT": "v=spf1 +all"}, {"DELAY": 0.5}]})
    taken = _spy_on_sockets(monkeypatch)
    r = make(dns_server)
    with pytest.raises(TempFailure, match="timeout"):
        r.records("late2.test", "TXT", 0.1)
    assert r.records("next.test", "TXT", 2) == [(("next.test", "TXT"), [b"v=spf1 +all"])]
    assert taken[1] is not taken[0]


@pytest.mark.parametrize("host, kept", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                        ("192.0.2.53", False), ("10.0.0.53", False),
                                        ("2001:db8::53", False), ("::ffff:192.0.2.53", False)])
def test_only_sockets_to_a_server_on_a_loopback_address_are_kept(host, kept):
    """Off the host, a fresh socket (so a fresh random source port) per query keeps
    forged answers hard to land; a loopback source cannot come from off the host."""
    pool = resolver_mod._Sockets()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    pool.give(sock, host, 53)
    assert (sock.fileno() != -1) == kept
    pool.close()
    assert sock.fileno() == -1


def test_a_forked_worker_keeps_none_of_its_parents_sockets(dns_server):
    """A worker forked from a process that has asked must not read its parent's answers
    (nor its parent the worker's): the child closes the sockets it inherited idle."""
    resolver_mod._sockets.close()
    r = make(dns_server)
    assert r.records("allowed.test", "TXT", 2)
    kept = list(resolver_mod._sockets._idle[dns_server.address])
    assert len(kept) == 1
    pid = os.fork()
    if pid == 0:   # the child: exit 0 only when nothing of the parent's is kept
        fresh = not any(resolver_mod._sockets._idle.values()) and kept[0].fileno() == -1
        os._exit(0 if fresh else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert resolver_mod._sockets._idle[dns_server.address] == kept and kept[0].fileno() != -1


# --- query ids ---------------------------------------------------------------------------

def test_query_ids_are_the_kernels_random_bytes_each_handed_out_once(monkeypatch):
    """Read a batch at a time (one system call, not one per lookup), every id of a
    batch used, none twice however many threads take them at once."""
    batches: list[int] = []

    def urandom(n: int) -> bytes:   # distinct 16-bit values across batches
        start = len(batches) * (n // 2)
        batches.append(n)
        return array.array("H", range(start, start + n // 2)).tobytes()
    monkeypatch.setattr(resolver_mod.os, "urandom", urandom)
    ids = resolver_mod._QueryIds()
    first = [ids.take() for _ in range(2049)]
    assert first == list(range(2049)) and len(batches) == 2
    taken: list[list[int]] = [[] for _ in range(8)]

    def take(into: list[int]) -> None:
        for _ in range(3000):
            into.append(ids.take())
    threads = [threading.Thread(target=take, args=(into,)) for into in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    every = first + [qid for into in taken for qid in into]
    assert len(set(every)) == len(every) == 2049 + 8 * 3000


def test_a_forked_worker_takes_ids_of_its_own(dns_server):
    """Two workers forked from one process must not send the same ids in turn (one
    seen would tell the other's next)."""
    assert make(dns_server).records("allowed.test", "TXT", 2)   # the parent has read ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, array.array("H", [resolver_mod._query_ids.take() for _ in range(16)]).tobytes())
        os._exit(0)
    os.close(write)
    child = array.array("H", os.read(read, 64)).tolist()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != [resolver_mod._query_ids.take() for _ in range(16)]
