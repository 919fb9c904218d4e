"""The client behind a trusted relay, from the Received headers the common MTAs write --
and never from what the client put into them."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spfmilter.config_values import networks as _networks
from spfmilter.core.received import (
    MAX_HOPS,
    MAX_LEN,
    Hop,
    Unreadable,
    Writer,
    client_behind,
    parse,
    read,
    written,
)

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
    assert client_behind([], TRUSTED) == Unreadable("it wrote no Received header")
    only = client_behind(["from r (r [10.0.0.1]) by mx"], TRUSTED)
    assert isinstance(only, Unreadable) and "only trusted relays" in only.reason
    garbage = client_behind(["from r (r [10.0.0.1]) by mx", "garbage"], TRUSTED)
    assert garbage == Unreadable("its Received header has no from clause")
    many = ["from r (r [10.0.0.1]) by mx"] * (MAX_HOPS + 5000) + ["from h (h [192.0.2.1]) by r"]
    assert isinstance(client_behind(many, TRUSTED), Unreadable)                  # bounded walk


# --- attacks: the client chooses its HELO (and its envelope), the relay copies them in ---

REAL = "203.0.113.66"


def postfix(helo: str, rcpt: str = "r@mx.test", tls: bool = False) -> str:
    """What Postfix's smtpd writes: ``from %s (%s [%s])`` with the HELO as given."""
    using = ("\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\n\t key-exchange "
             "X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256)\n\t"
             "(No client certificate requested)" if tls else "")
    return (f"from {helo} (evil.example [{REAL}]){using}\n\tby relay.test (Postfix) with ESMTP "
            f"id 4XyZ1\n\tfor <{rcpt}>; Fri,  4 Dec 2026 17:00:00 +0000 (UTC)")


def sendmail(helo: str, rcpt: str = "r@mx.test") -> str:
    return (f"from {helo} (evil.example [{REAL}] (may be forged))\n\tby relay.test "
            f"(8.17.1/8.17.1/Debian-2) with ESMTP id 4B4H0\n\tfor <{rcpt}>; Fri, 4 Dec 2026")


def exchange(helo: str) -> str:
    return (f"from {helo} ({REAL}) by EXCH02.contoso.test (10.0.0.2) with Microsoft SMTP "
            "Server (version=TLS1_2, cipher=TLS_ECDHE_RSA) id 15.20.1; Fri, 4 Dec 2026")


@pytest.mark.parametrize("write", [postfix, sendmail, exchange], ids=["postfix", "sendmail",
                                                                       "exchange"])
@pytest.mark.parametrize("helo", [
    "x (y [192.0.2.10])",                          # a Postfix/Sendmail comment
    "mail.bank.example (192.0.2.10)",              # the Exchange form
    "x (y [192.0.2.10]) by z",                     # ... followed by a by clause
    "x (y [192.0.2.10]) by z (Postfix) with ESMTP id Q; Fri, 4 Dec 2026",
    "x ([192.0.2.10] helo=a) by z",                # the Exim form
    "x (y [192.0.2.10] (may be forged)) (u@y [192.0.2.11]) by z",
    "x ()", "x (", "x )", "((((", "x (y [192.0.2.10]",
    "a" * 1990, "b" * 12000 + " (y [192.0.2.10]) by z",
])
def test_a_helo_that_imitates_the_relays_comment_is_never_read_as_the_client(write, helo):
    hop = parse(write(helo), ["r@mx.test"])
    assert hop is not None and hop.client_ip == REAL


def test_the_helo_is_reported_as_given_but_never_as_an_address():
    assert parse(postfix("x (y [192.0.2.10])")) == Hop(REAL, "x (y [192.0.2.10])")
    assert parse(postfix("[192.0.2.10]")) == Hop(REAL, "")


@pytest.mark.parametrize("rcpt", ['"(y [192.0.2.10]) by z"@mx.test',
                                  '"x (y [192.0.2.10])"@mx.test', '"a;b(c [192.0.2.10]) by"@mx.test'])
def test_an_envelope_address_that_imitates_the_relays_comment_is_never_read(rcpt):
    for value in (postfix("helo.test", rcpt), sendmail("helo.test", rcpt)):
        assert parse(value, ["u@bank.example", rcpt]) == Hop(REAL, "helo.test")
        # and beside a HELO that does the same
        assert parse(postfix("x (y [192.0.2.11]) by q", rcpt), [rcpt]).client_ip == REAL


def test_a_header_too_long_to_read_is_unreadable_not_a_guess():
    found = read(postfix("c" * (MAX_LEN + 10)))
    assert isinstance(found, Unreadable) and "longer than" in found.reason


@pytest.mark.parametrize("value", [
    "by relay.test (Postfix, from userid 0)\n\tid 4XyZ1; Fri,  4 Dec 2026 17:00:00 +0000 (UTC)",
    "(from root@localhost)\n\tby relay.test (8.17.1/8.17.1/Submit) id 4B4H0; Fri, 4 Dec 2026",
])
def test_mail_the_relay_originated_itself_is_told_apart(value):
    assert read(value) == Unreadable("the relay originated the message", local=True)


_TRICKY = st.sampled_from(["(", ")", "[", "]", " ", "by ", " by ", "from ", ";", "<", ">", '"',
                           "@", "192.0.2.10", "IPv6:2001:db8::1", "helo=", "(may be forged)",
                           "unknown", "x.example", "\\", ":", ".", "for <"])


@given(helo=st.lists(_TRICKY, max_size=30).map("".join).filter(lambda h: h.strip()),
       write=st.sampled_from([postfix, sendmail, exchange]), tls=st.booleans())
@settings(max_examples=400, deadline=None)
def test_whatever_the_helo_the_address_is_the_one_the_relay_wrote(helo, write, tls):
    value = postfix(helo, tls=tls) if write is postfix else write(helo)
    hop = parse(value, ["r@mx.test"])
    assert hop is not None and hop.client_ip == REAL


@pytest.mark.parametrize("rcpt", ['"(y [192.0.2.10]) by z"@mx.test',
                                  'x> (y [192.0.2.10]) by relay.test (Postfix) with ESMTP id Q for <y'])
def test_an_envelope_address_the_relay_rewrote_is_ambiguous_not_a_guess(rcpt):
    """The relay wrote a recipient this message does not have (an alias rewrote it):
    the comment it imitates cannot be told from the relay's, so nothing is read."""
    found = read(postfix("helo.test", rcpt), ["u@bank.example", "other@mx.test"])
    assert found == Unreadable("its Received header is ambiguous: an address comment in the "
                               "HELO or an envelope address")


@given(helo=st.lists(_TRICKY, max_size=20).map("".join).filter(lambda h: h.strip()),
       rcpt=st.lists(_TRICKY, max_size=20).map("".join), known=st.booleans(), tls=st.booleans())
@settings(max_examples=400, deadline=None)
def test_whatever_the_helo_and_recipient_no_other_address_is_read(helo, rcpt, known, tls):
    """Both sides hostile, the recipient known or not: the relay's address or nothing."""
    value = postfix(helo, rcpt=rcpt, tls=tls)
    hop = parse(value, [rcpt] if known else ["other@mx.test"])
    assert hop is None or hop.client_ip == REAL
    if known:
        assert hop is not None


@pytest.mark.parametrize("value,name,protocol", [
    ("from h.test (h.test [192.0.2.1])\n\tby mx.test (Postfix) with ESMTPSA id 4X", "mx.test", "ESMTPSA"),
    ("from h.test (user@r [198.51.100.7] (may be forged)) by MX.test. (8.17.1/8.17.1) with ESMTP",
     "mx.test", "ESMTP"),
    ("from r ([192.0.2.2] helo=h) by mx.test with esmtps (TLS1.3) (Exim 4.96)", "mx.test", "esmtps"),
    ("from [192.0.2.3] (helo=h) by mx.test with esmtpa (Exim 4.96)", "mx.test", "esmtpa"),
    ("from E1.c.test (192.0.2.4) by E2.c.test (10.0.0.2) with Microsoft SMTP Server", "e2.c.test",
     "Microsoft"),
    ("by mx.test (Postfix, from userid 0) id 4X", "mx.test", ""),
])
def test_the_writer_is_read_from_the_by_clause_the_relay_wrote(value, name, protocol):
    _, writer = written(value)
    assert writer is not None and (writer.name, writer.protocol) == (name, protocol)


def test_a_by_clause_in_the_helo_is_never_taken_for_the_writer():
    value = ("from x by mx.test with ESMTPSA (y [192.0.2.10]) (evil.example [203.0.113.66]) "
             "by evil.example (Postfix) with ESMTP")
    hop, writer = written(value)
    assert hop == Hop("203.0.113.66", "x by mx.test with ESMTPSA (y [192.0.2.10])")
    assert writer is not None and writer.name == "evil.example" and not writer.authenticated


def test_only_rfc3848_protocols_are_authenticated():
    assert [Writer("m", p).authenticated for p in ("ESMTPA", "esmtpsa", "LMTPA", "ESMTP", "ESMTPS",
                                                   "Microsoft")] == [True, True, True, False,
                                                                     False, False]


@settings(max_examples=500)
@given(st.lists(st.sampled_from(["a@b", "A@B", "<", ">", " ", "for ", "FoR ", ";", "x", "_", "a",
                                 "@b", "1"]), max_size=14).map("".join),
       st.sampled_from(["a@b", "a@b>", "<a", "a", "for a@b", "a@b a@b"]))
def test_the_string_search_blanks_exactly_what_the_expression_does(text, address):
    import re

    from spfmilter.core.received import _blank_ascii
    where = re.escape(address)
    expected = re.sub(rf"(?<=<){where}(?=>)|(?<=\bfor ){where}(?=;|\s|$)",
                      lambda m: " " * len(m.group()), text, flags=re.I)
    assert _blank_ascii(text, address) == expected
