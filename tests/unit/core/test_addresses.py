"""The one definition of client addresses, domains and recipient patterns."""

import pytest

from spfmilter.config_values import networks as _networks
from spfmilter.core.addresses import (
    ascii_address,
    ascii_domain,
    client_address,
    in_networks,
    is_domain,
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
