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
