"""SPF evaluation: pyspf behind ``evaluate``, with its pure steps kept between checks.

The kept steps (address parsing, pyspf's set_ip, parsed networks and terms) must
never change an outcome: every case is evaluated on a fresh process state and
again once everything is kept, against the test DNS server.
"""

import ipaddress
import os
import threading
import time

import pytest
import spf
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from spfmilter import resolver as resolver_mod
from spfmilter.checks import spf as spf_check
from spfmilter.checks.spf import evaluate
from spfmilter.core.addresses import parse_ip
from spfmilter.resolver import Resolver
from tests.kit.wait import wait_for

CASES = [  # (client address, sender, result, the client address as pyspf shows it in %{i})
    ("192.0.2.10", "u@allowed.test", "pass", "192.0.2.10"),
    ("::ffff:192.0.2.10", "u@allowed.test", "pass", "192.0.2.10"),
    ("2001:db8:1::10", "u@allowed.test", "pass", None),
    ("198.51.100.7", "u@allowed.test", "fail", "198.51.100.7"),
    ("::ffff:198.51.100.7", "u@allowed.test", "fail", "198.51.100.7"),
    ("2001:db8:bad::7", "u@allowed.test", "fail",
     "2.0.0.1.0.D.B.8.0.B.A.D.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.7"),
    ("198.51.100.7", "u@soft.test", "softfail", None),
    ("192.0.2.10", "u@perm.test", "permerror", None),
    ("not-an-address", "u@allowed.test", "none", None),  # no address: not checked
]


def _forget() -> None:
    for memo in (spf_check._networks, spf_check._mechanisms, spf_check._client_ips, spf_check._address_lists,
                 spf_check._not_lists):
        memo.data.clear()
    parse_ip.cache_clear()


@pytest.mark.parametrize("ip,sender,result,shown", CASES)
def test_kept_steps_never_change_an_outcome(dns_server, ip, sender, result, shown):
    resolver = Resolver((dns_server.address,), timeout=2.0)

    def check():
        return evaluate("mailfrom", ip, sender, "helo.test", resolver=resolver, receiver="mx.test",
                        lookup_time=2.0, void_limit=2)

    _forget()
    first = check()
    for other, _, _, _ in CASES:  # fill every memo with the other cases as well
        evaluate("mailfrom", other, "u@allowed.test", "helo.test", resolver=resolver,
                 receiver="mx.test", lookup_time=2.0, void_limit=2)
    again = check()
    assert first.result == again.result == result
    assert (first.mechanism, first.explanation) == (again.mechanism, again.explanation)
    if shown and result == "fail":  # the exp= text expands %{i}: the kept forms of the address
        assert first.explanation.startswith(f"{shown} is not one of allowed.test")
        assert again.explanation == first.explanation


def test_parse_ip_unmaps_ipv4_and_rejects_non_addresses():
    assert parse_ip("::ffff:192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")
    assert parse_ip("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert parse_ip("192.0.2.300") is None and parse_ip("") is None and parse_ip("[192.0.2.1]") is None


# --- address-list records: the kept network lists against pyspf's own check0 ----------------

_qualifier = st.sampled_from(["", "+", "-", "~", "?"])
_v4 = st.builds(lambda a, b, n: f"ip4:192.0.{a}.{b}" + (f"/{n}" if n is not None else ""),
                st.integers(0, 3), st.integers(0, 255), st.one_of(st.none(), st.integers(8, 34)))
_v6 = st.builds(lambda a, n: f"ip6:2001:db8:{a:x}::" + (f"/{n}" if n is not None else ""),
                st.integers(0, 3), st.one_of(st.none(), st.integers(16, 130)))
_odd = st.sampled_from(["ip4:192.0.2.300", "ip4:192.0.02.1", "ip6:2001:zz::", "all:x", "IP4:192.0.2.0/24",
                        "ip4:%{i}", "foo=bar", "redirect=", "ip4", "ip6:", "mx", "exists:%{i}.x.test"])
_term = st.one_of(st.builds(str.__add__, _qualifier, st.one_of(_v4, _v6, st.just("all"))), _odd)
_record = st.builds(lambda head, terms, tail: " ".join([head, *terms, *tail]),
                    st.sampled_from(["v=spf1", "V=SPF1", "v=spf2"]),
                    st.lists(st.one_of(_term, _term, _term, st.just("")), max_size=8),
                    st.lists(st.sampled_from(["-all", "~all", "?all"]), max_size=1))
_client = st.sampled_from(["192.0.2.10", "192.0.1.200", "198.51.100.7", "::ffff:192.0.2.10",
                           "2001:db8:1::10", "2001:db8:3::1", "2001:db8:bad::7"])


@hsettings(max_examples=400, deadline=None)
@given(record=_record, client=_client)
def test_address_lists_match_pyspf(record, client):
    """Every record, simple or not (then pyspf's own code runs), gives pyspf's outcome,
    the first time and once its network list is kept."""
    def run(cls):
        q = cls(i=client, s="user@example.test", h="helo.test", receiver="mx.test")
        return q.check(spf=record), q.mechanism

    expected = run(spf.query)
    assert run(spf_check._Query) == expected
    assert run(spf_check._Query) == expected


def test_records_that_are_no_address_list_never_push_the_lists_out():
    """Every sender domain's own record is no address list; more of them than the lists'
    memo holds must leave the lists that providers' includes share where they are."""
    _forget()
    listed = "v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all"

    def check(record):
        q = spf_check._Query(i="192.0.2.10", s="user@example.test", h="helo.test", receiver="mx.test")
        return q.check(spf=record)[0]

    assert check(listed) == "pass"
    for i in range(2 * spf_check._address_lists.size):
        assert check(f"v=spf1 ip4:192.0.2.0/24 exp=e{i}.example.test -all") == "pass"
    assert [k[0] for k in spf_check._address_lists.data] == [listed]
    assert len(spf_check._not_lists.data) == 2 * spf_check._address_lists.size


def test_long_address_lists_are_left_to_pyspf():
    """A record longer than what is kept (published to fill memory, say) is walked by
    pyspf itself, with the same outcome, and leaves nothing behind."""
    terms = [f"ip4:198.18.{i // 250}.{i % 250}" for i in range(spf_check._MAX_LISTED + 50)]
    record = "v=spf1 " + " ".join(terms + ["ip4:192.0.2.0/24", "-all"])
    for client, result in (("192.0.2.10", "pass"), ("198.51.100.7", "fail"), ("2001:db8::1", "fail")):
        q = spf_check._Query(i=client, s="user@example.test", h="helo.test", receiver="mx.test")
        assert q.check(spf=record)[0] == result
    kept = [v for memo in (spf_check._address_lists, spf_check._not_lists)
            for k, v in memo.data.items() if k[0] == record]
    assert kept == []  # IPv4 and IPv6: "not a list", nothing held for a record that long


def test_void_limit_is_each_checks_own_and_no_global_is_rewritten(dns_server):
    """Different Void_Limit values in one process: each evaluation applies its own,
    and pyspf's module-wide limit is not rewritten by any evaluation."""
    dns_server.update({"voids.test": [{"TXT": "v=spf1 a:n1.voids.test a:n2.voids.test "
                                              "a:n3.voids.test -all"}]})
    resolver = Resolver((dns_server.address,), timeout=2.0)
    installed = spf.MAX_VOID_LOOKUPS

    def check(limit):
        return evaluate("mailfrom", "192.0.2.10", "u@voids.test", "helo.test", resolver=resolver,
                        receiver="mx.test", lookup_time=2.0, void_limit=limit)

    strict, lax = check(2), check(5)
    assert strict.result == "permerror" and "Void lookup limit of 2 exceeded" in strict.explanation
    assert lax.result == "fail" and lax.void_lookups == 3
    assert check(0).explanation.endswith("Void lookup limit of 0 exceeded")
    assert spf.MAX_VOID_LOOKUPS is installed


def test_an_evaluation_without_the_dns_hook_is_refused(monkeypatch, dns_server):
    """Never pyspf's own uncached driver behind our back: without install() nothing is looked up."""
    monkeypatch.setattr(spf, "DNSLookup", lambda *a, **k: [])
    resolver = Resolver((dns_server.address,), timeout=2.0)
    with pytest.raises(RuntimeError, match="install"):
        evaluate("mailfrom", "192.0.2.10", "u@allowed.test", "helo.test", resolver=resolver,
                 receiver="mx.test", lookup_time=2.0, void_limit=2)
    assert dns_server.query_count() == 0


def _calls(resolver, ip="198.51.100.7"):
    def call(identity, sender, helo="helo.test"):
        return lambda: evaluate(identity, ip, sender, helo, resolver=resolver,
                                receiver="mx.test", lookup_time=2.0, void_limit=2)
    return [call("helo", ""), call("mailfrom", "u@allowed.test"),
            call("mailfrom", "postmaster@plain.test")]


def test_each_gives_what_one_by_one_gives_and_counts_each_lookup_once(dns_server):
    """Cold, then warm (answered in this thread from the cache), then half warm: the
    results, the explanation (exp=, whose lookup pyspf makes inside a bare except)
    and the cache's hit and miss counts are those of evaluating one by one."""
    plain, concurrent = (Resolver((dns_server.address,), timeout=2.0) for _ in range(2))
    for _ in range(2):
        one_by_one = [call() for call in _calls(plain)]
        together = spf_check.each(_calls(concurrent))
        assert [(r.result, r.explanation, r.mechanism) for r in together] == \
            [(r.result, r.explanation, r.mechanism) for r in one_by_one]
        assert (concurrent._cache.hits(), concurrent._cache.misses()) == \
            (plain._cache.hits(), plain._cache.misses())
    assert together[1].explanation.startswith("198.51.100.7 is not one of allowed.test")
    for resolver in (plain, concurrent):   # the explanation expires first: half warm
        resolver._cache.entry(("explain.allowed.test", "TXT")).expiration = 0
    one_by_one = [call() for call in _calls(plain)]
    together = spf_check.each(_calls(concurrent))
    assert [(r.result, r.explanation) for r in together] == \
        [(r.result, r.explanation) for r in one_by_one]
    assert (concurrent._cache.hits(), concurrent._cache.misses()) == \
        (plain._cache.hits(), plain._cache.misses())


def test_each_waits_for_the_slowest_not_the_sum(dns_server):
    """Two identities whose DNS never answers: one Lookup_Time, not two."""
    resolver = Resolver((dns_server.address,), timeout=1.0)
    def call(identity):
        return lambda: evaluate(identity, "198.51.100.7", "u@dead.test", "slow.test",
                                resolver=resolver, receiver="mx.test", lookup_time=1.0,
                                void_limit=2)
    calls = [call("helo"), call("mailfrom")]
    started = time.monotonic()
    results = spf_check.each(calls)
    assert [r.result for r in results] == ["temperror", "temperror"]
    assert time.monotonic() - started < 1.8


# --- the client's reverse DNS is not the sender's void lookups (RFC 7208 §4.6.4, §5.5) ---------

_PTR_ZONES = {
    "ptrvoid.test": [{"TXT": "v=spf1 ptr -all"}],
    "ptrterms.test": [{"TXT": "v=spf1 ptr:a.test ptr:b.test ptr:c.test -all"}],
    # the client's reverse DNS: three names that do not resolve, one of them a CNAME to nowhere
    "33.100.51.198.in-addr.arpa": [{"PTR": ["n1.client.test", "n2.client.test", "n3.client.test"]}],
    "n3.client.test": [{"CNAME": "gone.client.test"}],
}


@pytest.mark.parametrize("sender,ip", [("u@ptrvoid.test", "198.51.100.33"),     # 3 dead PTR names
                                       ("u@ptrterms.test", "198.51.100.34")])   # no PTR at all
def test_client_reverse_dns_cannot_turn_a_fail_into_permerror(dns_server, sender, ip):
    dns_server.update(_PTR_ZONES)
    resolver = Resolver((dns_server.address,), timeout=2.0)
    res = evaluate("mailfrom", ip, sender, "helo.test", resolver=resolver, receiver="mx.test",
                   lookup_time=2.0, void_limit=2)
    assert (res.result, res.void_lookups) == ("fail", 0), res


# --- which passes come from a record that authorizes every address -------------------------------

@pytest.mark.parametrize("term,ipv6,everything", [
    ("all", False, True), ("+all", True, True), ("+ALL", False, True),
    ("ip4:0.0.0.0/0", False, True), ("ip4:192.0.2.0/00", False, True),
    ("ip4:0.0.0.0/1", False, False), ("ip4:0.0.0.0", False, False),
    ("ip6:::/0", True, True), ("ip6:::/1", True, False), ("ip6:::/0", False, False),
    ("a/0", False, True), ("a:x.test/0", False, True), ("mx/0", False, True),
    ("a/0", True, False), ("a//0", True, True), ("mx:x.test/24//0", True, True),
    ("a", False, False), ("a/24", False, False), ("include:x.test", False, False),
    ("exists:%{i}.x.test", False, False), ("ptr", False, False),
])
def test_terms_that_match_every_address(term, ipv6, everything):
    assert spf_check._matches_everything(term, ipv6) is everything


def test_address_lists_whose_pass_terms_cover_every_address():
    def covers(record, client="203.0.113.5"):
        q = spf_check._Query(i=client, s="u@example.test", h="helo.test", receiver="mx.test")
        return spf_check._covers_all(q._address_list(record)[0])
    assert covers("v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1")
    assert covers("v=spf1 -ip4:192.0.2.0/24 +all")
    assert not covers("v=spf1 ip4:0.0.0.0/1 -ip4:128.0.0.0/1")
    assert not covers("v=spf1 ~ip4:0.0.0.0/0 -all")            # covered, but not by a pass
    assert not covers("v=spf1 ip6:::/0 -all")                  # another version than the client's
    assert covers("v=spf1 ip6:::/1 ip6:8000::/1", "2001:db8::1")
    # as many addresses as the whole space, counted twice: not everything
    assert not covers("v=spf1 ip4:0.0.0.0/1 ip4:0.0.0.0/2 ip4:64.0.0.0/2")
    assert covers("v=spf1 ip4:0.0.0.0/2 ip4:0.0.0.0/1 ip4:64.0.0.0/2 ip4:128.0.0.0/1")


@pytest.mark.parametrize("record,result,term", [
    ("v=spf1 +all", "pass", "+all"),
    ("v=spf1 ip4:192.0.2.0/24 -all", "pass", None),
    ("v=spf1 ip4:192.0.2.0/24 mx ip4:0.0.0.0/0", "pass", None),   # matched the /24 first
    ("v=spf1 mx ip4:0.0.0.0/0", "pass", "ip4:0.0.0.0/0"),         # pyspf's own walk
    ("v=spf1 -all", "fail", None),
])
def test_the_check_names_the_term_of_a_pass_from_every_address(dns_server, record, result, term):
    dns_server.update({"everything.test": [{"TXT": record}]})
    resolver = Resolver((dns_server.address,), timeout=2.0)
    res = evaluate("mailfrom", "192.0.2.10", "u@everything.test", "helo.test", resolver=resolver,
                   receiver="mx.test", lookup_time=2.0, void_limit=2)
    assert (res.result, res.authorizes_all) == (result, term)


def test_each_starts_no_thread_while_dns_answers_quickly(dns_server, monkeypatch):
    """Cold but quick: one evaluation after the other in the calling thread (threads would
    contend for the interpreter lock); a slow one has the others started beside it."""
    started = []

    class Counted(spf_check._Beside):
        def __init__(self, *args):
            started.append(1)
            super().__init__(*args)

    monkeypatch.setattr(spf_check, "_Beside", Counted)
    results = spf_check.each(_calls(Resolver((dns_server.address,), timeout=2.0)))
    assert [r.result for r in results] == ["fail", "fail", "fail"] and started == []
    slow_first = [lambda: evaluate("helo", "198.51.100.7", "", "slow.test",
                                   resolver=Resolver((dns_server.address,), timeout=1.0),
                                   receiver="mx.test", lookup_time=1.0, void_limit=2),
                  *_calls(Resolver((dns_server.address,), timeout=2.0))[1:]]
    started_at = time.monotonic()
    results = spf_check.each(slow_first)
    assert [r.result for r in results] == ["temperror", "fail", "fail"] and started == [1, 1]
    assert time.monotonic() - started_at < 1.8


_TREE = {  # a sender domain and its HELO name as providers publish them (the benchmark's shape)
    "h.tree.test": [{"TXT": "v=spf1 a include:_nb.tree.test ~all"}, {"A": "198.18.100.1"}],
    "tree.test": [{"TXT": "v=spf1 mx a:out.tree.test include:_spf.tree.test ~all"},
                  {"MX": [10, "mx1.tree.test"]}, {"MX": [20, "mx2.tree.test"]}],
    "mx1.tree.test": [{"A": "198.18.0.1"}], "mx2.tree.test": [{"A": "198.18.1.1"}],
    "out.tree.test": [{"A": "198.18.2.1"}],
    "_spf.tree.test": [{"TXT": "v=spf1 ip4:198.18.3.0/24 include:_nb.tree.test ~all"}],
    "_nb.tree.test": [{"TXT": "v=spf1 ip4:198.19.0.0/24 ip6:2001:db8::/64 ~all"}],
}


def test_a_message_asks_each_name_the_evaluation_needs_once_and_nothing_else(dns_server):
    """HELO and MAIL FROM of one message, cold: one query per name and type that RFC 7208
    evaluation reaches (the HELO record, its a, its include; the sender's record, its mx,
    the address of each MX host, its a:, its include), the include both share asked once,
    no SPF-type, PTR or DKIM query; warm, none.  The two identities' records are asked
    for first, together."""
    dns_server.update(_TREE)
    checker = spf_check.Checker(Resolver((dns_server.address,), timeout=2.0), receiver="mx.test",
                                void_limit=2)

    def message():
        return checker.each([
            lambda: checker("helo", "198.19.0.7", "", "h.tree.test", lookup_time=2.0),
            lambda: checker("mailfrom", "198.19.0.7", "u@tree.test", "h.tree.test", lookup_time=2.0)],
            ["h.tree.test", "tree.test"])

    dns_server.clear_queries()
    assert [r.result for r in message()] == ["pass", "pass"]
    # as a multiset: the names a record lists are asked for together (look-ahead), so the
    # order among them is the network's; each identity's record still comes first
    queries = [q[:2] for q in dns_server.queries]
    assert sorted(queries) == sorted([
        ("h.tree.test", "TXT"), ("h.tree.test", "A"), ("_nb.tree.test", "TXT"),
        ("tree.test", "TXT"), ("tree.test", "MX"), ("mx1.tree.test", "A"), ("mx2.tree.test", "A"),
        ("out.tree.test", "A"), ("_spf.tree.test", "TXT")])
    assert sorted(queries[:2]) == [("h.tree.test", "TXT"), ("tree.test", "TXT")]
    dns_server.clear_queries()
    assert [r.result for r in message()] == ["pass", "pass"]
    assert dns_server.queries == []


# --- looking ahead: a record's names asked for together, pyspf's results unchanged -----------

def test_the_later_identities_records_are_asked_for_while_the_first_is_evaluated(dns_server,
                                                                                 monkeypatch):
    """HELO (its record, then its a) and MAIL FROM (its record), every name answered after
    0.3 s, evaluated one after another (no slow start): the sender's record is asked for
    before the HELO evaluation begins, so the message waits for two answers, not three;
    a domain whose evaluation never asks for its record (a Local_Rules match) has its
    query given up, its socket closed."""
    monkeypatch.setattr(spf_check, "SLOW_START", 30.0)
    dns_server.update({
        "h.seq.test": [{"TXT": "v=spf1 a -all"}, {"A": "192.0.2.10"}, {"DELAY": 0.3}],
        "seq.test": [{"TXT": "v=spf1 ip4:192.0.2.10 -all"}, {"DELAY": 0.3}],
        "never.test": [{"TXT": "v=spf1 -all"}, {"DELAY": 0.3}]})
    checker = spf_check.Checker(Resolver((dns_server.address,), timeout=3.0), receiver="mx.test",
                                void_limit=2)
    dns_server.clear_queries()
    sockets = _open_udp_sockets()
    started = time.monotonic()
    results = checker.each([
        lambda: checker("helo", "192.0.2.10", "", "h.seq.test", lookup_time=3.0),
        lambda: checker("mailfrom", "192.0.2.10", "u@seq.test", "h.seq.test", lookup_time=3.0),
        lambda: checker("mailfrom", "192.0.2.10", "u@never.test", "h.seq.test", lookup_time=3.0,
                        local_rules="ip4:192.0.2.0/24")],
        ["h.seq.test", "seq.test", "never.test"])
    took = time.monotonic() - started
    assert [(r.result, r.mechanism) for r in results] == [
        ("pass", "a"), ("pass", "ip4:192.0.2.10"), ("pass", "local:ip4:192.0.2.0/24")]
    assert 0.55 < took < 0.85, took   # one after another: at least 0.9 s
    assert _open_udp_sockets() == sockets
    assert sorted(q[:2] for q in dns_server.queries) == [
        ("h.seq.test", "A"), ("h.seq.test", "TXT"), ("never.test", "TXT"), ("seq.test", "TXT")]


def _slow_tree(delay):
    return {
        "par.test": [{"TXT": "v=spf1 a:a1.par.test mx:m.par.test include:i1.par.test "
                             "include:i2.par.test -all"}],
        "a1.par.test": [{"A": "198.51.100.1"}, {"DELAY": delay}],
        "m.par.test": [{"MX": [10, "mh.par.test"]}, {"DELAY": delay}],
        "mh.par.test": [{"A": "198.51.100.2"}],
        "i1.par.test": [{"TXT": "v=spf1 ip4:198.51.100.3 -all"}, {"DELAY": delay}],
        "i2.par.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}, {"DELAY": delay}],
    }


def test_independent_names_of_a_record_are_looked_up_at_once(dns_server):
    """Four names of one record, each answered after 0.3 s: the evaluation waits about
    one answer, not four one after another, and asks each name once."""
    dns_server.update(_slow_tree(0.3))
    resolver = Resolver((dns_server.address,), timeout=3.0)
    dns_server.clear_queries()
    started = time.monotonic()
    res = evaluate("mailfrom", "192.0.2.10", "u@par.test", "helo.test", resolver=resolver,
                   receiver="mx.test", lookup_time=3.0, void_limit=2)
    took = time.monotonic() - started
    assert (res.result, res.mechanism, res.lookups) == ("pass", "include:i2.par.test", 4)
    assert took < 0.75, took          # one after another: at least 1.2 s
    assert sorted(q[:2] for q in dns_server.queries) == [
        ("a1.par.test", "A"), ("i1.par.test", "TXT"), ("i2.par.test", "TXT"),
        ("m.par.test", "MX"), ("mh.par.test", "A"), ("par.test", "TXT")]


class _Asked:
    """A resolver that records what is to be looked up ahead (the choice is pure logic)."""

    def __init__(self):
        self.asked = []

    def ahead(self, name, qtype, deadline, owner=None):
        self.asked.append((name, qtype))
        return object()


def _ahead_of(records, client="198.51.100.7", domain="d.test"):
    asked = _Asked()
    ahead = spf_check._Ahead(asked, time.monotonic() + 1.0)
    token = spf_check._ahead.set(ahead)
    try:
        q = spf_check._Query(i=client, s=f"u@{domain}", h="helo.test", receiver="mx.test")
        for record in records:
            q.look_ahead(record)
    finally:
        spf_check._ahead.reset(token)
    return asked.asked


@pytest.mark.parametrize("record,client,expected", [
    ("v=spf1 a mx include:X.Test. -all", "198.51.100.7",
     [("d.test", "A"), ("d.test", "MX"), ("x.test", "TXT")]),
    ("v=spf1 a a:h.test/24//64 -all", "2001:db8::7", [("d.test", "AAAA"), ("h.test", "AAAA")]),
    # macros, ptr and exists are not looked up ahead
    ("v=spf1 a:%{d}.m.test ptr exists:e.test include:%{l}.x.test mx:m.test -all", "198.51.100.7",
     [("m.test", "MX")]),
    # nothing after a term that matches the client, or after all
    ("v=spf1 ip4:198.51.100.0/24 include:x.test -all", "198.51.100.7", []),
    ("v=spf1 ip6:2001:db8::/32 ip4:192.0.2.0/24 include:x.test -all", "198.51.100.7",
     [("x.test", "TXT")]),
    ("v=spf1 include:x.test ?all include:y.test redirect=r.test", "198.51.100.7", [("x.test", "TXT")]),
    ("v=spf1 include:x.test redirect=r.test", "198.51.100.7", [("x.test", "TXT"), ("r.test", "TXT")]),
    ("v=spf1 include:x.test redirect=%{d}.r.test", "198.51.100.7", [("x.test", "TXT")]),
    # a record pyspf fails before any lookup, a name pyspf would not ask for, no record
    ("v=spf1 include:x.test a:192.0.2.1 -all", "198.51.100.7", []),
    ("v=spf1 include:x.test moo -all", "198.51.100.7", []),
    ("v=spf1 include:x..test a:" + "l" * 64 + ".test -all", "198.51.100.7", []),
    ("v=spf2 include:x.test", "198.51.100.7", []),
])
def test_look_ahead_starts_only_what_pyspf_will_ask_for(record, client, expected):
    assert _ahead_of([record], client) == expected


def test_look_ahead_stops_at_ten_lookup_terms_per_evaluation():
    """RFC 7208 §4.6.4's ten terms, counted over the whole evaluation as pyspf counts
    them (ptr and exists too): fifty includes start ten lookups, not fifty."""
    fifty = "v=spf1 " + " ".join(f"include:i{n}.test" for n in range(50)) + " -all"
    assert _ahead_of([fifty]) == [(f"i{n}.test", "TXT") for n in range(10)]
    nine = "v=spf1 " + "ptr " * 5 + "exists:e.test " * 4 + "include:a.test include:b.test -all"
    assert _ahead_of([nine]) == [("a.test", "TXT")]
    six = "v=spf1 " + " ".join(f"a:h{n}.test" for n in range(6)) + " -all"
    assert len(_ahead_of([six, six.replace(":h", ":g")])) == 10


def test_a_record_of_fifty_includes_asks_no_more_than_pyspf_does(dns_server):
    """pyspf stops at the eleventh lookup term; looking ahead asks nothing beyond the
    ten names it asks for itself, and the result is pyspf's."""
    zones = {"fifty.test": [{"TXT": "v=spf1 " + " ".join(f"include:i{n}.fifty.test"
                                                          for n in range(50)) + " -all"}]}
    zones.update({f"i{n}.fifty.test": [{"TXT": "v=spf1 -all"}] for n in range(50)})
    dns_server.update(zones)
    resolver = Resolver((dns_server.address,), timeout=2.0)
    dns_server.clear_queries()
    res = evaluate("mailfrom", "192.0.2.10", "u@fifty.test", "helo.test", resolver=resolver,
                   receiver="mx.test", lookup_time=2.0, void_limit=2)
    assert res.result == "permerror" and "Too many DNS lookups" in res.explanation
    # (the record itself is asked over UDP, then over TCP: too long for a datagram)
    assert sorted(q[:2] for q in dns_server.queries if q[0] != "fifty.test") == sorted(
        (f"i{n}.fifty.test", "TXT") for n in range(10))


def _open_udp_sockets():
    """UDP sockets this process holds open besides those kept idle for the next query
    (closed first: a socket whose answer was read may be kept, one never read may not),
    from /proc: the socket inodes of its fds that /proc/net/udp{,6} list."""
    resolver_mod._sockets.close()
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            inodes.update(line.split()[9] for line in list(f)[1:])
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    return len(mine & inodes)


def test_queries_sent_ahead_for_names_pyspf_never_asks_are_bounded_and_closed(dns_server):
    """Evaluations that pass before pyspf reaches the names that never answer leave
    those queries unread: none waited for, no socket left open once each evaluation
    is over, no thread started, and the slots free for the next evaluation."""
    zones = {"fast.test": [{"A": "192.0.2.10"}]}
    for i in range(10):
        zones[f"s{i}.test"] = [{"TXT": f"v=spf1 a:fast.test include:d{i}a.test "
                                       f"include:d{i}b.test mx:d{i}c.test -all"}]
        zones.update({f"d{i}{x}.test": ["TIMEOUT"] for x in "abc"})
    dns_server.update(zones)
    resolver = Resolver((dns_server.address,), timeout=1.0)
    threads, sockets = threading.active_count(), _open_udp_sockets()
    dns_server.clear_queries()
    started = time.monotonic()
    for i in range(10):
        res = evaluate("mailfrom", "192.0.2.10", f"u@s{i}.test", "helo.test", resolver=resolver,
                       receiver="mx.test", lookup_time=1.0, void_limit=2)
        assert (res.result, res.mechanism) == ("pass", "a:fast.test")
        assert _open_udp_sockets() == sockets       # every query sent ahead closed
        assert threading.active_count() == threads
    assert time.monotonic() - started < 0.8     # no evaluation waited for what it left behind
    sent_ahead = {f"d{i}{x}.test" for i in range(10) for x in "abc"}
    # sent ahead, unread (the server may log the last ones a moment after they were sent)
    wait_for(lambda: {q[0] for q in dns_server.queries if q[0].startswith("d")} == sent_ahead,
             5.0, "the queries sent ahead to reach the server")
    assert resolver._flights == {}
    slots = [resolver.ahead(f"n{n}.test", "A", time.monotonic() + 1.0, "owner")
             for n in range(resolver_mod.AHEAD_QUERIES + 5)]
    assert sum(flight is not None for flight in slots) == resolver_mod.AHEAD_QUERIES
    for n, flight in enumerate(slots):
        if flight is not None:
            resolver.give_up((f"n{n}.test", "A"), flight, "owner")
    assert _open_udp_sockets() == sockets
    again = resolver.ahead("fast2.test", "A", time.monotonic() + 1.0, "x")   # slots free again
    assert again is not None
    resolver.give_up(("fast2.test", "A"), again, "x")
    # every query sent reached the server before the next test clears its list
    wanted = resolver_mod.AHEAD_QUERIES + 1
    until = time.monotonic() + 5.0
    while sum(1 for q in dns_server.queries if q[0][0] in "nf" and q[0] != "fast.test") < wanted:
        assert time.monotonic() < until
        time.sleep(0.01)


def test_the_hosts_of_an_mx_answer_are_looked_up_at_once(dns_server):
    """pyspf asks for each MX host's address in turn; the others are looked up beside
    the first, each once."""
    dns_server.update({
        "mxs.test": [{"TXT": "v=spf1 mx -all"}, {"MX": [10, "h1.mxs.test"]},
                     {"MX": [20, "h2.mxs.test"]}, {"MX": [30, "h3.mxs.test"]}],
        **{f"h{n}.mxs.test": [{"A": f"198.51.100.{n}"}, {"DELAY": 0.3}] for n in (1, 2, 3)},
    })
    resolver = Resolver((dns_server.address,), timeout=3.0)
    dns_server.clear_queries()
    started = time.monotonic()
    res = evaluate("mailfrom", "198.51.100.3", "u@mxs.test", "helo.test", resolver=resolver,
                   receiver="mx.test", lookup_time=3.0, void_limit=2)
    took = time.monotonic() - started
    assert (res.result, res.mechanism) == ("pass", "mx")
    assert took < 0.6, took           # one after another: at least 0.9 s
    assert sorted(q[:2] for q in dns_server.queries) == [
        ("h1.mxs.test", "A"), ("h2.mxs.test", "A"), ("h3.mxs.test", "A"),
        ("mxs.test", "MX"), ("mxs.test", "TXT")]
