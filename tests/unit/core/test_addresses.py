"""The one definition of client addresses, domains and recipient patterns."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from spfmilter.config_values import networks as _networks
from spfmilter.core.addresses import (
    ascii_address,
    ascii_domain,
    client_address,
    in_networks,
    is_domain,
    parse_ip,
    recipient_matches,
    recipient_pattern,
    strip_brackets,
)


@pytest.mark.parametrize("raw,ip", [
    (("192.0.2.1", 25), "192.0.2.1"), ("[192.0.2.1]", "192.0.2.1"),
    ("IPv6:2001:db8::1", "2001:db8::1"), ("[IPv6:2001:DB8::1]", "2001:db8::1"),
    ("::ffff:192.0.2.1", "192.0.2.1"), ("fe80::1%eth0", "fe80::1"),
    ("/run/socket", ""), ("", ""), (None, ""), ((), ""), ("192.0.2.300", ""),
])
def test_client_address_forms(raw, ip):
    assert client_address(raw) == ip


def test_networks_match_v4_mapped_and_zoned_addresses():
    nets = _networks("192.0.2.0/24, 2001:db8::/32")
    assert in_networks("::ffff:192.0.2.7", nets) and in_networks("2001:db8::1%eth0", nets)
    assert not in_networks("198.51.100.1", nets) and not in_networks("not an ip", nets)


def test_recipient_patterns():
    assert recipient_pattern("<Postmaster@>") == "postmaster@"
    for pattern, rcpt, hit in [("postmaster@", "<POSTMASTER@any.where>", True),
                               ("@abuse.test", "x@abuse.test", True),
                               ("a@b.test", "a@b.test", True), ("a@b.test", "a@c.test", False),
                               ("@abuse.test", "x@sub.abuse.test", False)]:
        assert recipient_matches(rcpt, pattern) is hit, (pattern, rcpt)
    for bad in ("nobody", "@", "a@b..c"):
        with pytest.raises(ValueError):
            recipient_pattern(bad)


def test_domain_syntax_and_envelope_brackets():
    assert is_domain("mail.example.com") and is_domain("_spf.example.com")
    assert not is_domain("a..b") and not is_domain("a" * 64 + ".test") and not is_domain("x.test.")
    assert strip_brackets("<@relay.example:user@example.com>") == "user@example.com"
    assert strip_brackets(" <> ") == ""


@pytest.mark.parametrize("address,ascii", [
    ("user@example.com", "user@example.com"),
    ("jürgen@bücher.example", r"j\x{FC}rgen@xn--bcher-kva.example"),
    ("a\\b@ex.com", "a\\b@ex.com"),                                # an ASCII address: as it is
    ("a\\b@bücher.example", r"a\x{5C}b@xn--bcher-kva.example"),  # else "\\" is escaped too
    ("ä\\x{41}@example.com", r"\x{E4}\x{5C}x{41}@example.com"),   # an escape cannot be forged
    ("u@bad..bücher", r"u@bad..b\x{FC}cher"),                      # no IDNA name: escaped
    ("no-at-sign-ü", r"no-at-sign-\x{FC}"),
])
def test_ascii_address_keeps_the_sender_recognisable(address, ascii):
    assert ascii_address(address) == ascii
    assert ascii_address(address).isascii()


def test_ascii_domain_is_a_labels_or_escapes():
    assert ascii_domain("bücher.example") == "xn--bcher-kva.example"
    assert ascii_domain("x" * 70 + "ü.example").isascii()   # too long a label for IDNA


def _ipaddress_reading(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


_OCTETS = st.one_of(st.integers(0, 300).map(str),
                    st.sampled_from(["00", "01", "007", "0x1", "1e1", " 1", "1 ", "+1", "-1", "",
                                     "\u0663", "\u00b2", "1\x00", "1\n"]))


@hsettings(max_examples=3000, deadline=None)
@given(st.one_of(st.lists(_OCTETS, min_size=1, max_size=6).map(".".join),
                 st.text(max_size=24), st.ip_addresses().map(str)))
def test_an_address_is_read_as_ipaddress_reads_it(text):
    """Dotted quads are read by a pattern of our own, not by ipaddress: every text --
    leading zeros, signs, spaces, non-ASCII digits, too many or too few parts, every
    real address -- still means what ipaddress (an IPv4-mapped address as IPv4) says."""
    parse_ip.cache_clear()
    assert parse_ip(text) == _ipaddress_reading(text)
