"""The client behind a trusted relay, from the Received headers the common MTAs write."""

import pytest

from spfmilter.config import _networks
from spfmilter.core.received import MAX_HOPS, Hop, client_behind, parse

TRUSTED = _networks("10.0.0.0/8, 2001:db8:ffff::/48")


@pytest.mark.parametrize("value,hop", [
    # Postfix
    ("from mail.example.com (mail.example.com [192.0.2.1])\n\tby mx.test (Postfix) with ESMTP id 4X",
     Hop("192.0.2.1", "mail.example.com")),
    ("from helo.test (unknown [IPv6:2001:db8:1::10]) by mx.test (Postfix) with ESMTPS",
     Hop("2001:db8:1::10", "helo.test")),
    # Sendmail, with ident and a forged-rDNS note
    ("from helo.test (user@rdns.example [198.51.100.7] (may be forged))\n\tby mx.test (8.17.1/8.17.1)",
     Hop("198.51.100.7", "helo.test")),
    ("from [192.0.2.9] ([192.0.2.9]) by mx.test (8.17.1/8.17.1) with ESMTP", Hop("192.0.2.9", "")),
    # Exim: the reverse name first, the HELO in the comment
    ("from rdns.example ([192.0.2.2] helo=helo.example)\n\tby mx.test with esmtp (Exim 4.96)",
     Hop("192.0.2.2", "helo.example")),
    ("from [192.0.2.3] (helo=helo.example) by mx.test with esmtp (Exim 4.96)",
     Hop("192.0.2.3", "helo.example")),
    # Microsoft Exchange
    ("from EXCH01.contoso.test (192.0.2.4) by EXCH02.contoso.test (10.0.0.2) with Microsoft SMTP Server",
     Hop("192.0.2.4", "EXCH01.contoso.test")),
    ("from EXCH01.contoso.test (2001:db8::4) by EXCH02.contoso.test with Microsoft SMTP Server",
     Hop("2001:db8::4", "EXCH01.contoso.test")),
    # IPv4-mapped addresses are IPv4
    ("from h.test (h.test [IPv6:::ffff:192.0.2.5]) by mx.test", Hop("192.0.2.5", "h.test")),
])
def test_forms_of_the_common_mtas(value, hop):
    assert parse(value) == hop


@pytest.mark.parametrize("value", [
    "", "by mx.test with ESMTP", "from helo.test by mx.test", "from helo.test (no address here)",
    "from helo.test (x [999.1.1.1]) by mx", "from h ([not:an:address:zz]) by", "\x00\r\n" * 500,
    "from " + "a" * 100000,
])
def test_garbage_is_no_hop(value):
    assert parse(value) is None


def test_the_walk_skips_trusted_hops_and_stops_at_the_first_other():
    chain = ["from relay2.internal (relay2 [10.0.0.2]) by mx.test (Postfix)",
             "from relay1.internal (relay1 [10.0.0.1]) by relay2.internal (Postfix)",
             "from helo.test (unknown [192.0.2.10]) by relay1.internal (Postfix)",
             "from x (x [198.51.100.9]) by helo.test"]
    assert client_behind(chain, TRUSTED) == Hop("192.0.2.10", "helo.test")


def test_no_hop_when_the_relays_left_none_that_parses():
    assert client_behind([], TRUSTED) is None
    assert client_behind(["from r (r [10.0.0.1]) by mx"], TRUSTED) is None     # only relays
    assert client_behind(["from r (r [10.0.0.1]) by mx", "garbage"], TRUSTED) is None
    many = ["from r (r [10.0.0.1]) by mx"] * (MAX_HOPS + 5000) + ["from h (h [192.0.2.1]) by r"]
    assert client_behind(many, TRUSTED) is None                                  # bounded walk
