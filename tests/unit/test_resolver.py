"""The one resolver: answers in pyspf's shape, a TTL-respecting shared cache, TCP fallback."""

import time

import pytest

from spfmilter.resolver import Resolver, TempFailure


def make(dns_server, timeout=2.0):
    host, port = dns_server.address
    return Resolver(((host, port),), timeout=timeout)


def test_answers_in_pyspf_shape(dns_server):
    r = make(dns_server)
    assert r.spf_lookup("allowed.test", "TXT", 2) == [
        (("allowed.test", "TXT"), [b"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:1::/48 -all exp=explain.allowed.test"])]
    assert r.spf_lookup("none.test", "A", 2) == [(("none.test", "A"), "192.0.2.99")]
    assert r.spf_lookup("nosuch.test", "TXT", 2) == []
    assert r.spf_lookup("none.test", "TXT", 2) == []


def test_cache_is_shared_and_counts_no_second_query(dns_server):
    r = make(dns_server)
    dns_server.clear_queries()
    for _ in range(5):
        r.spf_lookup("soft.test", "TXT", 2)
        r.spf_lookup("nosuch.test", "TXT", 2)
    assert dns_server.query_count("soft.test", "TXT") == 1
    assert dns_server.query_count("nosuch.test", "TXT") == 1


def test_cache_respects_ttl(dns_server):
    r = make(dns_server)
    r.spf_lookup("soft.test", "TXT", 2)
    key = next(k for k in r.cache.data if str(k[0]).startswith("soft.test"))
    answer = r.cache.data[key].value
    assert answer.expiration <= time.time() + 300 + 1  # the server's TTL, not forever
    answer.expiration = time.time() - 1                # as if the TTL ran out
    dns_server.clear_queries()
    r.spf_lookup("soft.test", "TXT", 2)
    assert dns_server.query_count("soft.test", "TXT") == 1


def test_truncated_udp_answer_is_retried_over_tcp(dns_server):
    big = [{"TXT": "v=spf1 " + "ip4:192.0.2.%d " % i * 1 + "x" * 200} for i in range(20)]
    dns_server.update({"big.test": big})
    r = make(dns_server)
    dns_server.clear_queries()
    assert len(r.spf_lookup("big.test", "TXT", 2)) == 20
    protos = {p for n, t, p in dns_server.queries if n == "big.test"}
    assert protos == {"udp", "tcp"}


@pytest.mark.parametrize("entry", ["TIMEOUT", "SERVFAIL", "REFUSED"])
def test_no_answer_is_a_temporary_failure(dns_server, entry):
    dns_server.update({"broken.test": [entry]})
    r = make(dns_server, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(TempFailure):
        r.spf_lookup("broken.test", "TXT", 0.5)
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
            r.spf_lookup(name, qtype, 2)
    for i in range(150):
        assert r.spf_lookup(f"once{i}.test", "TXT", 2)
        assert len(r.cache) <= 40
    dns_server.clear_queries()
    for name, qtype in regulars:
        r.spf_lookup(name, qtype, 2)
    assert [q for q in dns_server.queries if (q[0], q[1]) in regulars] == []
    r.spf_lookup("once0.test", "TXT", 2)  # long gone from probation: asked again
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
