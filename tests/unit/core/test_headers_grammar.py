"""Property tests: the result headers stay inside their grammars for any input.

Everything an SMTP client chooses (HELO, envelope sender, and through its DNS
the mechanism and error texts) is generated hostile here: odd HELOs, quoted
local parts, IPv6 and v4-mapped addresses, non-ASCII, control characters
including CR/LF/NUL, lone surrogates (what pymilter hands over for undecodable
bytes), values up to 64 KiB, and every result.  For every combination:

* no header value contains CR, LF or NUL (nothing can end our header early);
* every Received-SPF value matches RFC 7208 §9.1 (checked by the small
  recursive-descent parser below, written from the ABNF), names the result,
  identity and client IP it was built from, and its receiver= is ours;
* every Authentication-Results value parses with authres and round-trips:
  authserv-id, one spf result per identity, smtp.mailfrom / smtp.helo present;
* spfmilter recognises its own headers as its own (the check it uses to
  remove forged copies from incoming mail).
"""

from __future__ import annotations

import ipaddress
import re

import authres
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spfmilter import config as cfg
from spfmilter.core import forged
from spfmilter.core import headers as h
from spfmilter.core.values import RESULTS, Facts, SPFResult

PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- RFC 7208 §9.1 Received-SPF, as a recursive-descent parser -----------------------
#
# RFC 7208 §9.1:
#   header-field     = "Received-SPF:" [CFWS] result FWS [comment FWS]
#                      [ key-value-list ] CRLF
#   result           = "pass" / "fail" / "softfail" / "neutral" /
#                      "none" / "temperror" / "permerror"
#   key-value-list   = key-value-pair *( ";" [CFWS] key-value-pair ) [";"]
#   key-value-pair   = key [CFWS] "=" ( dot-atom / quoted-string )
#   key              = "client-ip" / "envelope-from" / "helo" / "problem" /
#                      "receiver" / "identity" / "mechanism" / name
#   identity         = "mailfrom" / "helo" / name
# RFC 7208 §7.1:
#   name             = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )
# RFC 5322 §3.2.2-§3.2.4 (dot-atom, quoted-string, comment, CFWS):
#   FWS              = ([*WSP CRLF] 1*WSP) / obs-FWS
#   ctext            = %d33-39 / %d42-91 / %d93-126
#   ccontent         = ctext / quoted-pair / comment
#   comment          = "(" *([FWS] ccontent) [FWS] ")"
#   CFWS             = (1*([FWS] comment) [FWS]) / FWS
#   quoted-pair      = "\" (VCHAR / WSP)
#   atext            = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" /
#                      "+" / "-" / "/" / "=" / "?" / "^" / "_" / "`" / "{" / "|" /
#                      "}" / "~"
#   dot-atom-text    = 1*atext *("." 1*atext)
#   dot-atom         = [CFWS] dot-atom-text [CFWS]
#   qtext            = %d33 / %d35-91 / %d93-126
#   qcontent         = qtext / quoted-pair
#   quoted-string    = [CFWS] DQUOTE *([FWS] qcontent) [FWS] DQUOTE [CFWS]
# RFC 6532 §3.2 (SMTPUTF8 mail): VCHAR, ctext, atext and qtext each also take
#   UTF8-non-ascii (any non-ASCII scalar value; never a surrogate).
# The values checked are unfolded (no CRLF), so FWS is 1*WSP here; obsolete
# forms (obs-FWS, obs-ctext, obs-qtext) are not accepted from a generator.

_ATEXT = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_WSP = " \t"


def _utf8_non_ascii(ch: str) -> bool:
    return ord(ch) > 0x7F and not 0xD800 <= ord(ch) <= 0xDFFF


def _ctext(ch: str) -> bool:
    o = ord(ch)
    return 33 <= o <= 39 or 42 <= o <= 91 or 93 <= o <= 126 or _utf8_non_ascii(ch)


def _qtext(ch: str) -> bool:
    o = ord(ch)
    return o == 33 or 35 <= o <= 91 or 93 <= o <= 126 or _utf8_non_ascii(ch)


def _vchar(ch: str) -> bool:
    return 33 <= ord(ch) <= 126 or _utf8_non_ascii(ch)


class GrammarError(AssertionError):
    pass


class ReceivedSPFParser:
    """Parses one unfolded Received-SPF value; raises GrammarError where it leaves §9.1."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def parse(self) -> tuple[str, str | None, list[tuple[str, str]]]:
        """(result, comment text or None, [(key, value unquoted), ...])."""
        self.cfws()
        result = self.result()
        self.fws()
        comment = None
        if self.peek() == "(":
            start = self.i
            self.comment()
            comment = self.s[start + 1:self.i - 1]
            self.fws()   # "[comment FWS]": a comment is followed by FWS
        pairs = self.key_value_list() if not self.at_end() else []
        if not self.at_end():
            self.fail("end of value")
        return result, comment, pairs

    # -- helpers
    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def at_end(self) -> bool:
        return self.i >= len(self.s)

    def fail(self, wanted: str) -> None:
        near = self.s[max(0, self.i - 30):self.i + 30]
        raise GrammarError(f"Received-SPF: expected {wanted} at offset {self.i} near {near!r}")

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            self.fail(repr(ch))
        self.i += 1

    # -- RFC 5322 lexical tokens
    def fws(self, required: bool = True) -> bool:
        start = self.i
        while self.peek() and self.peek() in _WSP:
            self.i += 1
        if required and self.i == start:
            self.fail("FWS")
        return self.i > start

    def quoted_pair(self) -> str:
        self.expect("\\")
        ch = self.peek()
        if not ch or not (_vchar(ch) or ch in _WSP):
            self.fail("VCHAR or WSP after backslash")
        self.i += 1
        return ch

    def comment(self) -> None:
        self.expect("(")
        while True:
            self.fws(required=False)
            ch = self.peek()
            if ch == ")":
                self.i += 1
                return
            if ch == "(":
                self.comment()
            elif ch == "\\":
                self.quoted_pair()
            elif ch and _ctext(ch):
                self.i += 1
            else:
                self.fail("ctext, quoted-pair, comment or ')'")

    def cfws(self) -> None:
        while True:
            self.fws(required=False)
            if self.peek() != "(":
                return
            self.comment()

    def dot_atom(self) -> str:
        self.cfws()
        start = self.i
        while True:
            run = self.i
            while self.peek() and self.peek() in _ATEXT:
                self.i += 1
            if self.i == run:
                self.fail("atext")
            if self.peek() != ".":
                break
            self.i += 1
        value = self.s[start:self.i]
        self.cfws()
        return value

    def quoted_string(self) -> str:
        self.cfws()
        self.expect('"')
        out = []
        while True:
            if self.fws(required=False):
                out.append(" ")
            ch = self.peek()
            if ch == '"':
                self.i += 1
                break
            if ch == "\\":
                out.append(self.quoted_pair())
            elif ch and _qtext(ch):
                out.append(ch)
                self.i += 1
            else:
                self.fail("qtext, quoted-pair or '\"'")
        self.cfws()
        return "".join(out)

    # -- RFC 7208 §9.1
    def result(self) -> str:
        for word in sorted(RESULTS, key=len, reverse=True):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return word
        self.fail("a result")
        raise AssertionError  # unreachable

    def name(self) -> str:
        start = self.i
        if not (self.peek().isascii() and self.peek().isalpha()):
            self.fail("ALPHA starting a key")
        self.i += 1
        while self.peek() and self.peek().isascii() and (self.peek().isalnum() or self.peek() in "-_."):
            self.i += 1
        return self.s[start:self.i]

    def key_value_pair(self) -> tuple[str, str]:
        key = self.name()
        self.cfws()
        self.expect("=")
        save = self.i
        self.cfws()
        quoted = self.peek() == '"'
        self.i = save
        return key.lower(), (self.quoted_string() if quoted else self.dot_atom())

    def key_value_list(self) -> list[tuple[str, str]]:
        pairs = [self.key_value_pair()]
        while self.peek() == ";":
            self.i += 1
            if self.at_end():
                break      # the optional trailing ";"
            self.cfws()
            pairs.append(self.key_value_pair())
        return pairs


def parse_received_spf(value: str) -> tuple[str, str | None, dict[str, str]]:
    result, comment, pairs = ReceivedSPFParser(value).parse()
    keys = [k for k, _ in pairs]
    for key in ("client-ip", "envelope-from", "helo", "receiver", "identity", "mechanism", "problem"):
        assert keys.count(key) <= 1, f"{key}= given {keys.count(key)} times in {value!r}"
    return result, comment, dict(pairs)


def test_parser_accepts_rfc_examples_and_rejects_breakage() -> None:
    """The validator itself: RFC 7208 §9.1.1 examples pass, broken values do not."""
    good = [
        "pass (mybox.example.org: domain of myname@example.com designates 192.0.2.1 as "
        "permitted sender) receiver=mybox.example.org; client-ip=192.0.2.1; "
        "envelope-from=\"myname@example.com\"; helo=foo.example.com;",
        "fail (mybox.example.org: domain of myname@example.com does not designate "
        "192.0.2.1 as permitted sender) identity=mailfrom; client-ip=192.0.2.1; "
        "envelope-from=\"myname@example.com\";",
        "softfail (nested (comment \\) here)) client-ip=\"2001:db8::1\"; identity=helo",
        "none identity=helo",
    ]
    for value in good:
        parse_received_spf(value)
    bad = ["pas client-ip=1.2.3.4", "pass (unclosed client-ip=1.2.3.4",
           'pass client-ip="unterminated', "pass client-ip=a b", "pass ; identity=helo",
           "pass x=1;; y=2", "pass helo=a\r\nX-Injected: 1", "pass helo=\"a\x00b\"",
           "pass (a) b=c\n", "pass helo=\"\udcff\"", "pass 1key=v"]
    for value in bad:
        with pytest.raises(GrammarError):
            parse_received_spf(value)


# --- hostile inputs --------------------------------------------------------------------

_PIECES = st.sampled_from([
    "\r", "\n", "\r\n", "\x00", "\t", "\x7f", "\x1b", "\x85", "\u2028", "\ufeff", " ", '"', "\\",
    "(", ")", ";", "=", "@", "[", "]", ":", "<", ">", ",", ".", "%", "ü", "é", "日本", "😀",
    "\udcff", "\ud800", "\udfff", "receiver=evil.example", "; receiver=mx.test",
    "identity=helo", "spf=pass", " smtp.mailfrom=ceo@bank.example", "\r\nX-Injected: yes",
    "xn--bcher-kva", "..", "-"])
_hostile = st.lists(st.one_of(_PIECES, st.characters(exclude_categories=()),
                              st.text(max_size=8)), max_size=12).map("".join)


def _overlong(draw_unit: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Values up to 64 KiB: a short head and one piece repeated."""
    return st.builds(lambda head, unit, n: head + unit * (n // max(1, len(unit))),
                     _hostile, draw_unit, st.integers(200, 64 * 1024))


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)
_domain = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_fqdn = st.lists(_LABEL, min_size=2, max_size=4).map(".".join)
_dot_atom_local = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+){0,2}",
                                fullmatch=True)

helos = st.one_of(
    _fqdn, _fqdn.map(lambda d: d + "."), _fqdn.map(str.upper), st.just(""),
    st.sampled_from(["[192.0.2.1]", "[IPv6:2001:db8::1]", "192.0.2.1", "localhost", "A2345678",
                     "OEMCOMPUTER", "JUMPIN' JUPITER", "%%%%", "mail.exämple.com",
                     "xn--mller-kva.example", "-bad-.example", "a..b", "[", "(", '"']),
    _hostile, _overlong(st.sampled_from(["h", ".", "ü", '"', "\\", "\r\n", "\udcff", "a.b"])))

senders = st.one_of(
    st.builds(lambda lp, d: f"{lp}@{d}", _dot_atom_local, _fqdn),
    st.builds(lambda lp, d: f'"{lp}"@{d}', st.sampled_from(["odd local", "a\\\"b", "x@y", "a;b=c",
                                                          "(c)", "receiver=evil", ""]), _fqdn),
    st.builds(lambda lp, d: f"{lp}@{d}", _hostile, _fqdn),
    st.builds(lambda lp, d: f"{lp}@{d}", _dot_atom_local, _hostile),
    st.sampled_from(["", "postmaster", "@example.net", "a@b@c", "üser@exämple.com",
                     "user@[192.0.2.1]", "user@xn--bcher-kva.example", "Macro Error@e8.example.com",
                     "~jack&jill=up-a_b3.c@e8.example.com", "user@example.com."]),
    _hostile, _overlong(st.sampled_from(["x", "@", '"', "\\", "ü", "\n", "\udcff", "a.b@"])))

ips = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded.upper()),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"), st.ip_addresses(v=4).map(lambda a: f"::FFFF:{a}"),
    st.sampled_from(["fe80::1%eth0", "", "unknown", "[192.0.2.1]", "IPv6:2001:db8::1"]),
    _hostile, _overlong(st.sampled_from(["1", ":", "\r\n", '"'])))

texts = st.one_of(st.just(""), _hostile, _overlong(st.sampled_from(["e", "\r\n", ")", "\\", "ü"])))
mechanisms = st.one_of(st.none(), st.sampled_from(["ip4:192.0.2.0/24", "-all", "a", "default",
                                                   "not-checked"]), _hostile)
authserv_ids = st.one_of(
    st.sampled_from(["mx.test", "MX.Example.COM", "localhost", "mx-1.example.org"]), _fqdn,
    st.lists(st.from_regex(r"[a-z]{63}", fullmatch=True), min_size=3, max_size=3).map(".".join))


def _result(identity: str, result: str, sender: str, explanation: str, mechanism: str | None,
            published: bool = False) -> SPFResult:
    return SPFResult(identity, result, sender, sender.rpartition("@")[2], explanation,
                     published, mechanism)


# --- checks ----------------------------------------------------------------------------

def assert_header_safe(name: str, value: str) -> None:
    """Nothing in the value can end the header or fail to encode.

    The only line break allowed is spfmilter's own fold (LF + TAB) between
    key=value pairs of a long Received-SPF: it continues the header, it cannot end it.
    """
    for bad in ("\r", "\x00"):
        assert bad not in value, f"{name} contains {bad!r}: {value!r}"
    assert not re.search(r"\n(?!\t)", value), f"{name} has a line break that is not a fold: {value!r}"
    unfolded = value.replace("\n\t", " ")
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", unfolded), f"{name} has a control character"
    value.encode("utf-8")  # no lone surrogate survives


def _plain_domain(name: str) -> bool:
    """A host name that is written as given (short enough not to be cut)."""
    return len(name) <= h.MAX_VALUE and bool(re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", name))


def _plain_address(address: str) -> bool:
    """local@domain written as given: dot-atom local part, plain domain, not cut."""
    local, at, domain = address.rpartition("@")
    atext = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
    return len(address) <= h.MAX_VALUE and bool(
        at and re.fullmatch(rf"{atext}(\.{atext})*", local)
        and re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", domain))


def check_received_spf(value: str, res: SPFResult, *, client_ip: str, helo: str,
                       envelope_from: str, receiver: str | None, inputs_ascii: bool) -> None:
    assert_header_safe("Received-SPF", value)
    if inputs_ascii:
        assert value.isascii(), value
    assert all(len(line) <= 998 for line in f"Received-SPF: {value}".split("\n"))
    # RFC 5322 §2.2.3 unfolding: a line break followed by WSP is removed, the WSP stays
    result, comment, pairs = parse_received_spf(value.replace("\n\t", "\t"))
    assert result == res.result
    assert pairs.get("identity") == res.identity
    assert "client-ip" in pairs
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError:
        pass
    else:
        assert ipaddress.ip_address(pairs["client-ip"]) == ip
    if receiver:
        assert pairs.get("receiver") == receiver
        assert comment is not None and comment.startswith(f"{receiver}: ")
        # spfmilter's own reading of receiver= (used to remove forged copies) agrees
        assert forged.received_spf_receivers(value) == [receiver.lower().rstrip(".")], value
        assert forged.claims_to_be_ours(h.RECEIVED_SPF, value, receiver)
    else:
        assert "receiver" not in pairs
    if res.identity == "mailfrom":
        assert "envelope-from" in pairs
        if _plain_address(envelope_from or res.sender):
            assert pairs["envelope-from"] == (envelope_from or res.sender)
    if helo and _plain_domain(helo):
        assert pairs.get("helo") == helo
    if res.result in ("permerror", "temperror"):
        assert "problem" in pairs
    assert len(value) < 4096, len(value)


def check_authentication_results(value: str, authserv_id: str,
                                 results: list[SPFResult], helo: str) -> None:
    assert_header_safe("Authentication-Results", value)
    assert value.isascii(), value     # RFC 8601 values are ASCII; parsers read ASCII only
    parsed = authres.AuthenticationResultsHeader.parse_value(value)
    assert parsed.authserv_id.lower() == authserv_id.lower()
    assert forged.ar_authserv_id(value) == authserv_id.lower().rstrip(".")
    assert forged.claims_to_be_ours(h.AUTH_RESULTS, value, authserv_id)
    # one spf clause per identity, each with exactly its property (clause order is
    # not significant in RFC 8601, so it is not checked)
    clauses = {}
    for clause in parsed.results:
        assert clause.method == "spf", value
        props = [(p.type, p.name, p.value) for p in clause.properties]
        assert len(props) == 1 and props[0][0] == "smtp" and props[0][1] in ("mailfrom", "helo"), value
        assert props[0][1] not in clauses, f"two clauses for smtp.{props[0][1]}: {value}"
        clauses[props[0][1]] = (clause.result, props[0][2])
    assert {k: r for k, (r, _) in clauses.items()} == {r.identity: r.result for r in results}, value
    for res in results:
        if res.identity == "mailfrom" and _plain_address(res.sender):
            # smtp.mailfrom is the identity's domain (RFC 7208 §9.2; what OpenDMARC reads)
            assert clauses["mailfrom"][1] == res.sender.rpartition("@")[2]
        if res.identity == "helo" and _plain_domain(helo):
            assert clauses["helo"][1] == helo
    # (No check of authres re-serialising what it parsed: authres unquotes a
    # quoted-string pvalue such as "postmaster@[192.0.2.1]" and then writes it
    # back unquoted because it contains '@', which it cannot parse again; that
    # is authres's own asymmetry, not a property of the value we wrote.)
    assert len(value) < 2048, len(value)


# --- properties ------------------------------------------------------------------------

@PROPERTY
@given(result=st.sampled_from(RESULTS), identity=st.sampled_from(["mailfrom", "helo"]),
       sender=senders, helo=helos, ip=ips, explanation=texts, mechanism=mechanisms,
       receiver=st.one_of(st.none(), authserv_ids.map(str.lower)))
@example(result="pass", identity="mailfrom", sender='x receiver=evil.example@example.com',
         helo="mail.example.com", ip="192.0.2.1", explanation="", mechanism=None,
         receiver="mx.test")
@example(result="fail", identity="mailfrom", sender='a(b@example.com', helo='")";receiver=x',
         ip="2001:db8::1", explanation="", mechanism="-all", receiver="mx.test")
def test_received_spf_matches_rfc7208_grammar(result, identity, sender, helo, ip, explanation,
                                              mechanism, receiver):
    checked = sender if identity == "mailfrom" and sender else f"postmaster@{helo}"
    res = _result(identity, result, checked, explanation, mechanism)
    value = h.received_spf(res, client_ip=ip, helo=helo, envelope_from=sender, receiver=receiver)
    inputs = [sender, helo, ip, explanation, mechanism or "", receiver or ""]
    check_received_spf(value, res, client_ip=ip, helo=helo, envelope_from=sender,
                       receiver=receiver, inputs_ascii=all(t.isascii() for t in inputs))


@PROPERTY
@given(results=st.lists(st.sampled_from(RESULTS), min_size=1, max_size=2), sender=senders,
       helo=helos, authserv_id=authserv_ids)
@example(results=["pass", "fail"], sender='"odd local"@example.com', helo="[192.0.2.1]",
         authserv_id="MX.Example.COM")
@example(results=["none"], sender="üser@exämple.com", helo="mail.exämple.com", authserv_id="mx.test")
@example(results=["fail", "none"], sender="ceo@bank.example",        # a HELO must not add a clause
         helo="x; dkim=pass header.i=@bank.example", authserv_id="mx.test")
@example(results=["pass"], sender="a b", helo="h.example", authserv_id="mx.test")  # quoted once
@example(results=["pass"], sender="", helo=".", authserv_id="mx.test")  # the root is no empty pvalue
def test_authentication_results_parse_and_round_trip(results, sender, helo, authserv_id):
    clauses = [_result("mailfrom", results[0], sender or f"postmaster@{helo}", "", None)]
    if len(results) > 1 and helo:   # the milter checks HELO only when one was given
        clauses.append(_result("helo", results[1], f"postmaster@{helo}", "", None))
    value = h.authentication_results(authserv_id, clauses, helo=helo)
    check_authentication_results(value, authserv_id, clauses, helo)


@PROPERTY
@given(client_ip=ips, helo=helos, sender=senders, helo_result=st.sampled_from(RESULTS + (None,)),
       mailfrom_result=st.sampled_from(RESULTS + (None,)),
       explanation=texts, mechanism=mechanisms, authserv_id=authserv_ids,
       header_type=st.sampled_from(["SPF", "AR", "both", "None"]), hide_receiver=st.booleans())
@example(client_ip="192.0.2.1", helo="x; dkim=pass header.i=@bank.example", sender="",
         helo_result="none", mailfrom_result="none", explanation="", mechanism=None,
         authserv_id="mx.test", header_type="both", hide_receiver=False)
@example(client_ip="192.0.2.1", helo="h.example", sender='"x receiver=evil.example"@bank.example',
         helo_result="pass", mailfrom_result="fail", explanation="", mechanism="-all",
         authserv_id="mx.test", header_type="both", hide_receiver=False)
def test_message_headers_conform(client_ip, helo, sender, helo_result, mailfrom_result,
                                 explanation, mechanism, authserv_id, header_type, hide_receiver):
    s = cfg.from_mapping({"Authserv_Id": authserv_id, "Header_Type": header_type,
                          "Hide_Receiver": str(hide_receiver)}).policy
    facts = Facts(client_ip=client_ip, helo=helo, sender=sender)
    helo_res = None if helo_result is None or not helo else \
        _result("helo", helo_result, f"postmaster@{helo}", explanation, mechanism)
    if mailfrom_result is None:  # not checked
        mf_res = None
    else:
        mf_res = _result("mailfrom", mailfrom_result, sender or f"postmaster@{helo}",
                         explanation, mechanism)
    out = h.result_headers(facts, helo_res, mf_res, s)

    reported = [r for r in (mf_res, helo_res) if r is not None]
    want = []
    if header_type in ("AR", "both") and reported:
        want.append(h.AUTH_RESULTS)
    if header_type in ("SPF", "both"):
        want += [h.RECEIVED_SPF] * len(reported)
    assert [n for n, _ in out] == want
    receiver = None if hide_receiver else s.authserv_id
    spf_values = [v for n, v in out if n == h.RECEIVED_SPF]
    for value, res in zip(spf_values, reported):
        inputs = [sender, helo, client_ip, explanation, mechanism or ""]
        check_received_spf(value, res, client_ip=client_ip, helo=helo, envelope_from=sender,
                           receiver=receiver, inputs_ascii=all(t.isascii() for t in inputs))
        if hide_receiver:
            assert not forged.claims_to_be_ours(h.RECEIVED_SPF, value, s.authserv_id), value
    for name, value in out:
        if name == h.AUTH_RESULTS:
            check_authentication_results(value, s.authserv_id, reported, helo)


@PROPERTY
@given(text=st.one_of(_hostile, _overlong(st.sampled_from(["a", "\r\n", "\udcff", "ü"]))),
       limit=st.integers(1, 1000))
def test_clean_leaves_nothing_unsafe(text, limit):
    out = h.clean(text, limit)
    assert_header_safe("clean", out)
    assert len(out) <= limit + 3
    assert h.clean(out, limit + 3) == out


def test_received_spf_lines_fit_rfc5322_limit_with_legal_names():
    # Legal extremes: RFC 5321 §4.5.3.1: local part 64 octets, path 256 octets with
    # its brackets (so 254 for the address); a HELO name is a domain of up to 253.
    sender = "l" * 64 + "@" + ".".join(["d" * 62] * 3)[:189]
    helo = ".".join(["h" * 62] * 4)[:253]
    too_long = []
    for ip in ("192.0.2.1", "2001:db8:1234:5678:9abc:def0:1234:5678"):
        for result in RESULTS:
            for identity in ("mailfrom", "helo"):
                checked = sender if identity == "mailfrom" else f"postmaster@{helo}"
                problem = f"SPF Temporary Error: DNS timeout looking up {checked.split('@')[1]}/TXT"
                res = _result(identity, result, checked, problem, "ip4:192.0.2.0/24")
                value = h.received_spf(res, client_ip=ip, helo=helo, envelope_from=sender,
                                       receiver="mx.example.com")
                # measured per line, so a value folded the libmilter way (LF + TAB) counts right
                longest = max(len(line.encode()) for line in f"{h.RECEIVED_SPF}: {value}".split("\n"))
                if longest > 998:
                    too_long.append(f"{identity} {result} {ip}: {longest}")
    assert too_long == []


# --- Authentication-Results written as authres writes it ------------------------------
#
# The core renders the field with the standard library; authres (the package it was
# rendered with before) is the oracle for every piece of it, over hostile text.

_pvalues = st.one_of(texts, senders, helos, st.text(max_size=40))


@PROPERTY
@given(value=_pvalues)
@example(value="a@b c")                  # '@': verbatim, whatever else
@example(value='quote" and back\\slash')  # escaped inside the quotes
@example(value="token.with-dots_~")      # a token: verbatim
@example(value="ends in a newline\n")    # authres's `$` matches before a final newline
def test_values_are_quoted_as_authres_quotes_them(value):
    assert h._ar_value(value) == authres.core.QuotableValue(value).quote_if_needed()


@PROPERTY
@given(method=st.sampled_from(["spf", "dkim", "SPF"]), result=st.sampled_from(RESULTS + ("PASS",)),
       comment=st.one_of(st.none(), st.just(""), texts.map(h._comment_text)),
       first=st.one_of(st.none(), st.just(""), _pvalues),
       second=st.one_of(st.none(), st.just(""), _pvalues))
def test_clauses_are_written_as_authres_writes_them(method, result, comment, first, second):
    ours = h._ar_clause(method, result, comment, [("header.d", first), ("header.s", second)])
    theirs = authres.DKIMAuthenticationResult(result=result, result_comment=comment or None,
                                              header_d=first or None, header_s=second or None)
    theirs.method = method.lower()
    assert ours == str(theirs)


@PROPERTY
@given(results=st.lists(st.sampled_from(RESULTS), max_size=3), sender=senders, helo=helos,
       authserv_id=authserv_ids)
def test_authentication_results_are_byte_identical_to_authres(results, sender, helo, authserv_id):
    """The whole field, clause by clause as authres wrote it before the core wrote it."""
    identities = ["mailfrom", "helo", "mailfrom"]
    clauses = [_result(identities[i], res, sender or f"postmaster@{helo}", "", None)
               for i, res in enumerate(results)]
    ours = h.authentication_results(authserv_id, clauses, helo=helo)
    theirs = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=[
        authres.SPFAuthenticationResult(
            result=c.result,
            smtp_mailfrom=h._mailfrom_pvalue(c.sender) if c.identity == "mailfrom" else None,
            smtp_helo=h._pvalue_domain(helo) if c.identity == "helo" else None,
            result_comment=h._comment_text(c.note) if c.identity == "mailfrom" and c.note
            else None)
        for c in clauses])
    assert ours == str(theirs.header_value())
