"""Results kept per kind of client (spf_memo) against pyspf's own evaluation, with the
records served by a DNS server of the test's own on loopback."""

import gc
import ipaddress
import time

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from spfmilter.checks import spf as spf_check
from spfmilter.checks import spf_memo
from spfmilter.core.values import SPFResult
from spfmilter.resolver import Resolver
from tests.kit.dnsserver import TestDNSServer

ZONES = {
    "list.memo.test": [{"TXT": "v=spf1 ip4:192.0.2.0/25 -ip4:192.0.2.128/26 ip6:2001:db8:1::/48 "
                               "?ip4:198.51.100.0/24 ~all"}],
    "top.memo.test": [{"TXT": "v=spf1 a mx/30 include:list.memo.test -all"}, {"A": "203.0.113.5"},
                      {"MX": [10, "mx1.memo.test"]}],
    "mx1.memo.test": [{"A": "203.0.113.64"}, {"AAAA": "2001:db8:2::1"}],
    "redir.memo.test": [{"TXT": "v=spf1 ip4:203.0.113.200 redirect=top.memo.test"}],
    "nested.memo.test": [{"TXT": "v=spf1 include:top.memo.test include:redir.memo.test ?all"}],
    "voids.memo.test": [{"TXT": "v=spf1 ip4:203.0.113.0/28 a:nx1.memo.test a:nx2.memo.test "
                                "a:nx3.memo.test -all"}],
    "many.memo.test": [{"TXT": "v=spf1 ip4:198.51.100.0/25 " + " ".join(
        f"include:l{i}.memo.test" for i in range(11)) + " -all"}],
    **{f"l{i}.memo.test": [{"TXT": f"v=spf1 ip4:203.0.113.{i}/32 -all"}] for i in range(11)},
    "perm.memo.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 include:norecord.memo.test -all"}],
    "norecord.memo.test": [{"A": "192.0.2.99"}],
    "all.memo.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 +all"}],
    "everything.memo.test": [{"TXT": "v=spf1 include:wide.memo.test -all"}],
    "wide.memo.test": [{"TXT": "v=spf1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 ip6:::/0 -all"}],
    "pair.memo.test": [{"TXT": "v=spf1 ip4:192.0.2.0/25 ip4:198.51.100.0/24 -all"}],
    "incpair.memo.test": [{"TXT": "v=spf1 include:pair.memo.test -all"}],
    # what reads the client address other than by address tests: never kept
    "exp.memo.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all exp=why.memo.test"}],
    "why.memo.test": [{"TXT": "%{i} may not send for %{d}"}],
    "macro.memo.test": [{"TXT": "v=spf1 exists:%{i}.ok.memo.test -all"}],
    "192.0.2.10.ok.memo.test": [{"A": "127.0.0.2"}],
    "ptr.memo.test": [{"TXT": "v=spf1 ptr:memo.test -all"}],
    "10.2.0.192.in-addr.arpa": [{"PTR": "host.memo.test"}],
    "host.memo.test": [{"A": "192.0.2.10"}],
}
DOMAINS = [name for name in ZONES if not name[0].isdigit() and name.count(".") == 2]
ADDRESSES = ["192.0.2.10", "192.0.2.11", "192.0.2.130", "192.0.2.200", "198.51.100.7",
             "198.51.100.200", "203.0.113.3", "203.0.113.5", "203.0.113.6", "203.0.113.65",
             "203.0.113.200", "8.8.8.8", "2001:db8:1::10", "2001:db8:2::1", "2001:db8:2::2",
             "2001:db8:bad::7", "::ffff:192.0.2.10", "::ffff:203.0.113.5", "::ffff:198.51.100.7"]


@pytest.fixture(scope="module")
def server():
    with TestDNSServer(ZONES) as running:
        yield running


@pytest.fixture(scope="module")
def resolver(server):
    return Resolver((server.address,), timeout=2.0)


def _evaluate(resolver, ip, domain, identity="mailfrom"):
    return spf_check.evaluate(identity, ip, f"user@{domain}" if identity == "mailfrom" else "",
                              domain, resolver=resolver, receiver="mx.test", lookup_time=2.0,
                              void_limit=2)


def _kept_way(resolver, ip, domain, identity="mailfrom", walk=False):
    """The way a message's evaluation goes once its records are cached (the memo's way);
    with ``walk``, without the kept results (pyspf walks the cached records)."""
    if walk:
        memo = spf_check._memo_of(resolver)
        kept, memo._trees = memo._trees, {}
        try:
            return spf_check.each([lambda: _evaluate(resolver, ip, domain, identity)], [domain],
                                  resolver)[0]
        finally:
            memo._trees = kept
    done = spf_check.each([lambda: _evaluate(resolver, ip, domain, identity)], [domain], resolver)
    return done[0]


def _same(a: SPFResult, b: SPFResult) -> None:
    assert {**vars(a), "seconds": 0} == {**vars(b), "seconds": 0}


@hsettings(max_examples=400, deadline=None)
@given(ips=st.lists(st.one_of(st.sampled_from(ADDRESSES),
                              st.integers(0, 255).map(lambda n: f"192.0.2.{n}"),
                              st.integers(0, 255).map(lambda n: f"203.0.113.{n}"),
                              st.integers(0, 0xffff).map(lambda n: f"2001:db8:1::{n:x}")),
                    min_size=1, max_size=6),
       domain=st.sampled_from(DOMAINS), identity=st.sampled_from(["mailfrom", "helo"]))
def test_a_kept_result_is_what_pyspf_gives_for_every_client(resolver, ips, domain, identity):
    for ip in ips:
        pyspf_says = _evaluate(resolver, ip, domain, identity)   # pyspf itself, fills the cache
        _same(_kept_way(resolver, ip, domain, identity), pyspf_says)


def test_a_new_client_of_a_known_kind_is_answered_without_pyspf(server, monkeypatch):
    resolver = Resolver((server.address,), timeout=2.0)   # its cache and kept results its own
    first = _kept_way(resolver, "192.0.2.10", "nested.memo.test")
    first = _kept_way(resolver, "192.0.2.10", "nested.memo.test")   # cached and kept now
    assert first.result == "pass" and first.mechanism == "include:top.memo.test"
    walks = []
    monkeypatch.setattr(spf_check._Query, "check",
                        lambda self, *a, **k: walks.append(self) or
                        spf_check.spf.query.check(self, *a, **k))
    again = _kept_way(resolver, "192.0.2.77", "nested.memo.test")
    assert walks == []
    _same(again, first)
    assert again.sender == "user@nested.memo.test"
    other = _kept_way(resolver, "192.0.2.150", "nested.memo.test")   # -ip4 in the list: a new path
    assert walks and other.result == "neutral"
    walks.clear()
    _kept_way(resolver, "192.0.2.151", "nested.memo.test")   # kept too, now its records are cached
    assert walks
    walks.clear()
    _same(_kept_way(resolver, "192.0.2.152", "nested.memo.test"), other)
    assert walks == []


def test_clients_of_different_terms_of_an_included_list_share_one_kept_result(server,
                                                                             monkeypatch):
    """Below the top record an address list gives back only its result: a client matched
    by another term with the same result takes the same kept result, without pyspf."""
    resolver = Resolver((server.address,), timeout=2.0)
    _kept_way(resolver, "192.0.2.10", "incpair.memo.test")
    first = _kept_way(resolver, "192.0.2.10", "incpair.memo.test")
    monkeypatch.setattr(spf_check._Query, "check", lambda *a, **k: pytest.fail("walked"))
    again = _kept_way(resolver, "198.51.100.7", "incpair.memo.test")
    _same(again, first)
    monkeypatch.undo()
    _same(again, _evaluate(resolver, "198.51.100.7", "incpair.memo.test"))


@pytest.mark.parametrize("domain, ips, field", [
    ("pair.memo.test", ["192.0.2.10", "198.51.100.7"], "mechanism"),   # the top record's term
    ("everything.memo.test", ["8.8.8.8", "192.0.2.10"], "authorizes_all"),   # a covering list
])
def test_a_kept_result_keeps_the_term_that_matched_where_it_is_reported(server, domain, ips,
                                                                        field):
    """Where the matching term shows (the top record's mechanism, the term of an included
    list that authorizes every address), clients of another term get their own result."""
    resolver = Resolver((server.address,), timeout=2.0)
    for ip in ips:
        _kept_way(resolver, ip, domain)
        _kept_way(resolver, ip, domain)
    kept = [getattr(_kept_way(resolver, ip, domain), field) for ip in ips]
    assert kept == [getattr(_evaluate(resolver, ip, domain), field) for ip in ips]
    assert kept[0] != kept[1]


def test_a_kept_result_counts_each_answer_it_came_from_as_one_cache_hit(server, monkeypatch):
    """A message answered by a kept result reads its answers as the walk would have: each
    counted once as a cache hit, none as a lookup on the network."""
    resolver = Resolver((server.address,), timeout=2.0)
    _kept_way(resolver, "192.0.2.10", "nested.memo.test")
    _kept_way(resolver, "192.0.2.10", "nested.memo.test")   # cached and kept now
    before = resolver.stats()
    walked = _kept_way(resolver, "192.0.2.11", "nested.memo.test", walk=True)
    by_walk = resolver.stats()["hits"] - before["hits"]
    assert by_walk > 1
    before = resolver.stats()
    monkeypatch.setattr(spf_check._Query, "check", lambda *a, **k: pytest.fail("walked"))
    _same(_kept_way(resolver, "192.0.2.12", "nested.memo.test"), walked)
    after = resolver.stats()
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (by_walk, 0)


def test_an_explanation_that_shows_the_client_address_is_never_kept(resolver):
    for ip in ("198.51.100.7", "198.51.100.7", "198.51.100.8", "198.51.100.9"):
        _evaluate(resolver, ip, "exp.memo.test")
        kept = _kept_way(resolver, ip, "exp.memo.test")
        assert kept.result == "fail" and kept.explanation == f"{ip} may not send for exp.memo.test"


def test_a_kept_result_ends_with_the_record_it_came_from():
    zones = {"change.memo.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}]}
    with TestDNSServer(zones, ttl=1) as server:
        resolver = Resolver((server.address,), timeout=2.0)
        _evaluate(resolver, "192.0.2.10", "change.memo.test")
        assert _kept_way(resolver, "192.0.2.10", "change.memo.test").result == "pass"
        assert _kept_way(resolver, "192.0.2.11", "change.memo.test").result == "pass"
        server.set_zones({"change.memo.test": [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}]})
        deadline = time.monotonic() + 10   # until the cached answer's one-second TTL has run out
        while _evaluate(resolver, "192.0.2.10", "change.memo.test").result != "fail":
            assert time.monotonic() < deadline, "the changed record was never fetched"
        assert _kept_way(resolver, "192.0.2.12", "change.memo.test").result == "fail"
        assert _kept_way(resolver, "198.51.100.1", "change.memo.test").result == "pass"


@pytest.mark.parametrize("client, first", [
    ("192.0.2.10", 1), ("8.8.8.8", -1), ("2001:db8::1", 1), ("2001:db9::1", -1)])
def test_a_client_is_in_no_network_of_the_other_ip_version(client, first):
    """Address tests are made on integers: an IPv4 address is never inside ``::/0`` (nor
    an IPv6 one inside ``0.0.0.0/0``), as ipaddress and pyspf have it."""
    address = ipaddress.ip_address(client)
    everything, own = (("::/0", "192.0.2.0/24") if address.version == 4
                       else ("0.0.0.0/0", "2001:db8::/32"))
    networks = (ipaddress.ip_network(everything), ipaddress.ip_network(own))
    assert spf_memo.outcome(("first", networks), address) == first
    assert spf_memo.outcome(("any", networks[:1]), address) == 0
    assert spf_memo.outcome(("any", networks), address) == int(first == 1)


def test_kept_results_are_bounded_in_trees_and_in_paths_per_tree():
    memo = spf_memo.ResultMemo(trees=8, leaves=4)
    result = SPFResult("mailfrom", "pass", "u@d.test", "d.test", "", False)
    test = ("first", tuple(None for _ in range(10)))
    for n in range(40):
        memo.keep(("d", n), [(test, 0)], result, ())
        for index in range(10):
            memo.keep(("paths",), [(test, index)], result, ())
    assert len(memo._trees) <= 8
    assert memo._trees[("paths",)].leaves == 4


def test_what_kept_paths_hold_together_is_bounded():
    """A sender's records can make one path test many networks (long address lists,
    many includes): all trees together stay within the bound, whatever they hold."""
    memo = spf_memo.ResultMemo(size=5_000)
    result = SPFResult("mailfrom", "pass", "u@d.test", "d.test", "", False)
    for n in range(200):
        wide = ("first", tuple(ipaddress.ip_network(f"10.{n}.{i}.0/24") for i in range(100)))
        memo.keep(("d", n), [(wide, 0)] * 10, result, ())
        # past the bound by at most one path: its test (2 + 2 x 100), its networks as
        # integers (4 x 100), its nodes and leaf
        assert memo.size <= 5_000 + 202 + 400 + 30
    assert len(memo._trees) < 200


def test_paths_that_share_tests_and_answers_hold_them_once():
    memo = spf_memo.ResultMemo()
    result = SPFResult("mailfrom", "pass", "u@d.test", "d.test", "", False)
    wide = ("first", tuple(ipaddress.ip_network(f"10.0.{i}.0/24") for i in range(100)))
    for n in range(50):
        memo.keep(("d", n), [(("first", tuple(wide[1])), n % 7)], result, ())
    assert memo.size < 50 * 10 + 202 + 400   # the test and its integers once


def test_a_kept_result_holds_no_answer_the_cache_has_let_go(server):
    """Kept results name the answers they came from; they do not keep them: an answer
    the cache drops (expired, pushed out) is freed, whatever results were kept."""
    resolver = Resolver((server.address,), timeout=2.0)
    _evaluate(resolver, "192.0.2.10", "top.memo.test")
    _kept_way(resolver, "192.0.2.10", "top.memo.test")
    _kept_way(resolver, "192.0.2.11", "top.memo.test")
    key = ("top.memo.test", "TXT")
    entry = resolver.cache.entry(key)
    assert entry is not None
    resolver.cache._protected.pop(key, None)
    resolver.cache._probation.pop(key, None)
    gc.collect()
    assert gc.get_referrers(entry) == []
    assert _kept_way(resolver, "192.0.2.12", "top.memo.test").result == "pass"


def _suite_cases():
    from tests.integration.test_rfc7208 import SUITE, _load_suite
    assert SUITE.is_file(), f"the RFC 7208 test suite is missing: {SUITE}"
    for scenario in _load_suite():
        cases = [(c.get("host", ""), c.get("mailfrom", ""), c.get("helo", ""))
                 for c in scenario["tests"].values()]
        yield pytest.param(scenario.get("zonedata") or {}, cases, id=scenario["description"][:40])


@pytest.mark.parametrize("zonedata,cases", list(_suite_cases()))
def test_the_rfc7208_suite_through_kept_results_is_the_suite_through_pyspf(zonedata, cases):
    """Every case of every scenario of the openspf suite, evaluated for every identity by
    pyspf, then twice more the way a message on cached answers is (the first keeps, the
    second takes what was kept, for every other case's client as well): the same result."""
    with TestDNSServer(zonedata) as server:
        resolver = Resolver((server.address,), timeout=2.0)

        def ev(ip, sender, helo, identity):
            return spf_check.evaluate(identity, ip, sender, helo, resolver=resolver,
                                      receiver="mx.test", lookup_time=1.0, void_limit=2)

        calls = [(ip, sender, helo, identity) for ip, sender, helo in cases
                 for identity in ("mailfrom", "helo")]
        direct = {call: ev(*call) for call in calls}
        for _ in range(2):
            for call, expected in direct.items():
                if expected.result == "temperror":
                    continue   # a timeout: nothing to keep, and each costs Lookup_Time
                got = spf_check.each([lambda call=call: ev(*call)], [], resolver)[0]
                _same(got, expected)
