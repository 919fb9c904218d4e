"""SPF evaluation: pyspf behind ``evaluate``, with its pure steps kept between checks.

The kept steps (address parsing, pyspf's set_ip, parsed networks and terms) must
never change an outcome: every case is evaluated on a fresh process state and
again once everything is kept, against the test DNS server.
"""

import ipaddress

import pytest

from spfmilter import spfcheck
from spfmilter.resolver import Resolver
from spfmilter.spfcheck import evaluate, parse_ip

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
    ("not-an-address", "u@allowed.test", "permerror", None),
]


def _forget() -> None:
    for memo in (spfcheck._networks, spfcheck._mechanisms, spfcheck._client_ips):
        memo.data.clear()
    parse_ip.cache_clear()


@pytest.mark.parametrize("ip,sender,result,shown", CASES)
def test_kept_steps_never_change_an_outcome(dns_server, ip, sender, result, shown):
    resolver = Resolver(((dns_server.address),), timeout=2.0)

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
