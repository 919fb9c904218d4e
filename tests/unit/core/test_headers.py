"""Header formatting: RFC 7208 §9.1 Received-SPF, RFC 8601 Authentication-Results, hostile input."""

import re

import authres
import pytest

from spfmilter.core import forged
from spfmilter.core import headers as h
from spfmilter.core.values import SPFResult

# RFC 7208 §9.1 with RFC 5322 dot-atom / quoted-string, comments without nesting.
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
DOT_ATOM = rf"{ATEXT}+(?:\.{ATEXT}+)*"
QUOTED = r'"(?:[^"\\\x00-\x1f\x7f]|\\[\x20-\x7e])*"'
COMMENT = r"\((?:[^()\\\x00-\x1f\x7f]|\\[\x20-\x7e])*\)"
KV = rf"[A-Za-z][A-Za-z0-9_.-]*=(?:{DOT_ATOM}|{QUOTED})"
RECEIVED_SPF = re.compile(
    rf"^(pass|fail|softfail|neutral|none|temperror|permerror) (?:{COMMENT} )?{KV}(?:; {KV})*;?$")


def r(result="pass", identity="mailfrom", sender="user@example.com", exp=""):
    return SPFResult(identity, result, sender, sender.rpartition("@")[2], exp, False)


def test_received_spf_shape():
    v = h.received_spf(r(), client_ip="192.0.2.1", helo="mail.example.com",
                       envelope_from="user@example.com", receiver="mx.test")
    assert v == ('pass (mx.test: domain of user@example.com designates 192.0.2.1 as permitted '
                 'sender) client-ip=192.0.2.1; envelope-from="user@example.com"; '
                 'helo=mail.example.com; receiver=mx.test; identity=mailfrom')
    assert RECEIVED_SPF.match(v)


@pytest.mark.parametrize("sender,helo,ip", [
    ('"odd local"@example.com', "[192.0.2.1]", "2001:db8::1"),
    ("a\r\nX-Evil: yes@example.com", "helo\nInjected: 1", "192.0.2.1"),
    ("x" * 70000 + "@example.com", "h" * 70000, "192.0.2.1"),
    ("üser@exämple.com", "mail.exämple.com", "192.0.2.1"),
    ('back\\slash"quote)@example.com', "(comment", "192.0.2.1"),
    ("nul\x00byte@example.com", "\udcff\udcfe", "192.0.2.1"),
])
def test_hostile_values_stay_inside_the_grammar(sender, helo, ip):
    for result in ("pass", "fail", "permerror"):
        v = h.received_spf(r(result, sender=sender, exp="x\r\ny"), client_ip=ip, helo=helo,
                           envelope_from=sender, receiver="mx.test")
        # the only line break is our own fold (LF TAB), and every line fits RFC 5322
        assert "\r" not in v and not re.search(r"\n(?!\t)", v)
        assert all(len(line) <= 998 for line in f"Received-SPF: {v}".split("\n"))
        v = v.replace("\n\t", " ")
        assert RECEIVED_SPF.match(v), v
        assert forged.received_spf_receivers(v) == ["mx.test"]
        ar = h.authentication_results("mx.test", [r(result, sender=sender),
                                                  r(result, "helo", "postmaster@x")], helo=helo)
        assert "\r" not in ar and "\n" not in ar and "\x00" not in ar
        parsed = authres.AuthenticationResultsHeader.parse_value(ar)
        assert parsed.authserv_id == "mx.test"
        assert [x.result for x in parsed.results] == [result, result]


def test_authentication_results_round_trips():
    ar = h.authentication_results("MX.test", [r("fail"), r("pass", "helo", "postmaster@m.example")],
                                  helo="m.example")
    assert ar == "mx.test; spf=fail smtp.mailfrom=example.com; spf=pass smtp.helo=m.example"
    parsed = authres.AuthenticationResultsHeader.parse_value(ar)
    assert parsed.results[0].smtp_mailfrom == "example.com"  # the domain, as RFC 7208 §9.2 shows
    assert parsed.results[1].smtp_helo == "m.example"


@pytest.mark.parametrize("value,ours", [
    ("mx.test; spf=pass smtp.mailfrom=a@b", True),
    ("  MX.TEST.; spf=pass", True),
    ("(forged)\r\n\tmx.test; spf=pass", True),
    ('"mx.test"; spf=pass', True),
    ("mx.test.evil; spf=pass", False),
    ("other.example; spf=pass (mx.test)", False),
])
def test_recognises_our_authserv_id(value, ours):
    assert forged.claims_to_be_ours("Authentication-Results", value, "mx.test") is ours


def test_recognises_our_received_spf():
    assert forged.claims_to_be_ours("Received-SPF", "pass (x) client-ip=1.2.3.4; receiver=mx.test", "mx.test")
    assert forged.claims_to_be_ours("received-spf", 'pass receiver="MX.test"; identity=mailfrom', "mx.test")
    assert not forged.claims_to_be_ours("Received-SPF", "pass receiver=other.test", "mx.test")
    assert not forged.claims_to_be_ours("Subject", "receiver=mx.test", "mx.test")


def test_rendered_pieces_are_kept_only_for_text_no_longer_than_a_domain_name():
    """HELO names, domains and clauses are kept for the next message (bounded in number);
    a client's longer text is rendered each time and never kept, so it cannot make the
    kept pieces hold more than 4,096 short strings."""
    res = SPFResult("helo", "pass", "postmaster@h.test", "h.test", "", False)
    kept = [f.cache_info().currsize for f in (h._spf_clause, h._pvalue_domain)]
    long_helo = "a" * 60 + "." + "b" * 300
    values = {h.authentication_results("mx.test", [res], helo=long_helo) for _ in range(2)}
    assert [v.startswith("mx.test; spf=pass smtp.helo=") for v in values] == [True]
    assert [f.cache_info().currsize for f in (h._spf_clause, h._pvalue_domain)] == kept
    h.authentication_results("mx.test", [res], helo=f"short{len(kept)}.kept.test")
    assert h._spf_clause.cache_info().currsize == kept[0] + 1
