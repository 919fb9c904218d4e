"""Hostile input: what an SMTP client (through the MTA) can put in HELO, MAIL FROM, addresses,
macros and headers, at the milter protocol's byte level and through the milter class.

Every case must end in a well-formed header (no raw line break, our authserv-id
only, parseable) or a clean refusal, with a decision log line, and never a
traceback.  Raw milter packets (tests/kit/rawmilter.py) carry what miltertest
cannot: non-UTF-8 bytes, bare CR/LF, 64 KiB values.  The hypothesis tests drive
the milter class through pymilter's test context (tests/unit/frontends/
test_milter_hostile.py) with DNS from the test server; a bounded random-packet
fuzz runs against the real daemon.  The longer fuzz runs are ``make fuzz`` (tests/fuzz/).

Security properties also checked here: the socket's mode comes from UMask
and is never world-accessible by default; forged Authentication-Results and
Received-SPF for our authserv-id are removed in every spelling an MTA passes
on.  (That the daemon runs without root after start-up when UserID is set is
tests/test_daemon.py::test_root_start_binds_then_drops_to_userid.)
"""

from __future__ import annotations

import os
import random
import re
import stat
import struct
import time

import authres
import pytest

from tests.fuzz import protocol
from tests.fuzz.invariants import CONTROL_BUT_TAB, check_header
from tests.kit.rawmilter import ProtocolError, RawSession, packet, z
from tests.kit.wait import wait_for

pytestmark = pytest.mark.e2e

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ spfmilter\[\d+\]: \S")


class LogWatch:
    """The daemon's log lines written since this object was made."""

    def __init__(self, milter) -> None:
        self.milter = milter
        self.offset = len(milter.log_text())

    def text(self) -> str:
        return self.milter.log_text()[self.offset:]

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def assert_clean(self) -> None:
        """Only spfmilter's own one-line records: no traceback, no bare exception text."""
        bad = [line for line in self.lines() if not LOG_LINE.match(line)]
        assert not bad, bad[:5]
        assert "action=tempfail" not in self.text()      # the internal-error safety net


# --- hostile envelopes over the real protocol ----------------------------------------

HOSTILE = {
    # name: (helo, MAIL FROM args, expected mailfrom result or None for "any")
    "crlf-in-helo": (b"helo.test\r\nX-Injected: 1", [b"<user@allowed.test>"], "pass"),
    "lf-in-helo-fake-header": (b"helo.test\nAuthentication-Results: mx.test; spf=pass",
                               [b"<user@allowed.test>"], "pass"),
    "crlf-in-sender": (b"helo.test", [b"<user@allowed.test>\r\nReceived-SPF: pass receiver=mx.test"],
                       None),
    "nul-splits-sender": (b"helo.test", [b"<user@allowed.test>\0SIZE=10"], "pass"),
    "controls": (b"he\tlo\x01.test\x7f", [b"<us\ter\x1b@allowed.test>"], None),
    "non-utf8-sender": (b"helo.test", [b"<\xff\xfe\x80@allowed.test>"], None),
    "latin1-sender": (b"helo.test", [b"<j\xf6rg@allowed.test>"], None),
    "64k-helo": (b"h" * 65000, [b"<user@allowed.test>"], "pass"),
    "64k-sender": (b"helo.test", [b"<" + b"u" * 65000 + b"@allowed.test>"], None),
    "64k-labels": (b"a." * 20000 + b"test", [b"<user@" + b"b." * 30000 + b"test>"], None),
    "quoted-local-part": (b"helo.test", [b'<"john doe"@allowed.test>'], "pass"),
    "quoted-local-injection": (b"helo.test",
                               [b'<"x\\"; receiver=evil.test; spf=pass (\\"@allowed.test>'], "pass"),
    "quoted-at-sign": (b"helo.test", [b'<"a@b"@allowed.test>'], None),   # see the xfail below
    "ip-literal-helo": (b"[192.0.2.10]", [b"<user@allowed.test>"], "pass"),
    "ipv6-literal-helo": (b"[IPv6:2001:db8:1::10]", [b"<user@allowed.test>"], "pass"),
    "ip-literal-sender": (b"helo.test", [b"<user@[192.0.2.10]>"], None),
    "trailing-dots": (b"helo.test.", [b"<user@allowed.test.>"], None),     # see the xfail below
    "upper-case": (b"HELO.TEST", [b"<USER@ALLOWED.TEST>"], "pass"),
    "smtputf8-local-part": (b"helo.test", ["<用户@allowed.test>".encode(), b"SMTPUTF8"], "pass"),
    "smtputf8-idn-domain": ("hélo.hostile.test".encode(), ["<user@bücher.hostile.test>".encode(),
                                                           b"SMTPUTF8"], None),
    "source-route": (b"helo.test", [b"<@relay.test,@other.test:user@allowed.test>"], "pass"),
    "no-angle-brackets": (b"helo.test", [b"user@allowed.test"], "pass"),
    "null-sender": (b"helo.test", [b"<>"], "pass"),
    "empty-helo": (b"", [b"<user@allowed.test>"], "pass"),
    "spf-macro-text": (b"%{i}.%{d}.test", [b"<%{l}%%-@allowed.test>"], None),
    "header-syntax-in-helo": (b"x; receiver=mx.test; spf=pass (", [b"<user@allowed.test>"], "pass"),
    "comment-breakout": (b"helo.test) (", [b"<a)(b\\@allowed.test>"], None),
    "many-params": (b"helo.test", [b"<user@allowed.test>"] + [b"X%d=%s" % (i, b"y" * 200)
                                                                for i in range(200)], "pass"),
}


def hostile_transaction(milter, helo: bytes, mail_args: list[bytes], tag: str,
                        ip: bytes = b"192.0.2.10", macros: dict | None = None,
                        headers: list | None = None):
    with RawSession(milter.socket_path, timeout=15) as s:
        s.connect(ip, macros=macros)
        s.helo(helo)
        s.mail(*mail_args)
        reply = s.rcpt(f"<rcpt-{tag}@mx.test>".encode())
        if reply.kind != "continue":
            s.abort()
            return reply, None
        return reply, s.message(headers or [(b"Subject", b"hostile")])


def check_outcome(reply, eom) -> None:
    if eom is None:       # a refusal: a proper SMTP reply, one line
        assert reply.kind == "reply" and reply.code[:1] in "45", reply
        assert not CONTROL_BUT_TAB.search(reply.text), reply
        return
    assert eom.final.kind == "accept", eom
    for name, value in eom.inserted():
        check_header(name.decode(), value.decode("utf-8"))


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_envelope_over_the_protocol(spfmilter, dns_server, case):
    dns_server.update({"xn--bcher-kva.hostile.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
                       "xn--hlo-bma.hostile.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}]})
    milter = spfmilter()
    watch = LogWatch(milter)
    helo, args, expected = HOSTILE[case]
    reply, eom = hostile_transaction(milter, helo, args, case)
    check_outcome(reply, eom)
    if expected:
        mailfrom = [v for n, v in eom.inserted() if n == b"Received-SPF" and b"identity=mailfrom" in v]
        assert len(mailfrom) == 1 and mailfrom[0].startswith(expected.encode() + b" "), mailfrom
    milter.wait_for_log(rf"action=\w+ .*rcpt=rcpt-{re.escape(case)}@mx.test")
    watch.assert_clean()
    decision = [line for line in watch.lines() if f"rcpt=rcpt-{case}@mx.test" in line]
    assert len(decision) == 1 and len(decision[0]) < 4096, decision


@pytest.mark.parametrize("sender", [b'<"a@b"@allowed.test>', b'<"ceo@allowed.test"@allowed.test>'])
def test_quoted_at_sign_in_local_part_cannot_escape_a_fail(spfmilter, sender):
    milter = spfmilter()
    reply, eom = hostile_transaction(milter, b"unknown.test", [sender], "quoted-at",
                                     ip=b"198.51.100.7")
    assert (reply.code, reply.text[:6]) == ("550", "5.7.23"), (reply, eom and eom.inserted())


@pytest.mark.parametrize("helo,sender", [(b"unknown.test", b"<user@allowed.test.>"),
                                         (b"badhelo.test.", b"<user@soft.test>")])
def test_trailing_dot_cannot_escape_a_fail(spfmilter, helo, sender):
    reply, eom = hostile_transaction(spfmilter(), helo, [sender], "trailing-dot",
                                     ip=b"198.51.100.7")
    assert (reply.code, reply.text[:6]) == ("550", "5.7.23"), (reply, eom and eom.inserted())


PTR_VOID_ZONES = {
    "ptrvoid.hostile.test": [{"TXT": "v=spf1 ptr -all"}],
    "ptrterms.hostile.test": [{"TXT": "v=spf1 ptr:a.test ptr:b.test ptr:c.test -all"}],
    # the client's own reverse DNS: three names without an address (one a CNAME to nowhere)
    "35.100.51.198.in-addr.arpa": [{"PTR": ["n1.ptrvoid.test", "n2.ptrvoid.test",
                                            "n3.ptrvoid.test"]}],
    "n3.ptrvoid.test": [{"CNAME": "gone.ptrvoid.test"}],
}


@pytest.mark.parametrize("sender,ip", [(b"<user@ptrvoid.hostile.test>", b"198.51.100.35"),
                                       (b"<user@ptrterms.hostile.test>", b"198.51.100.36")],
                         ids=["three-dead-ptr-names", "no-ptr-three-ptr-terms"])
def test_client_reverse_dns_cannot_turn_a_fail_into_an_accepted_permerror(spfmilter, dns_server,
                                                                         sender, ip):
    """PTR names (or their absence) are the client's to choose: they are no void lookups
    of the sender's record, so the fail stands and is refused (PermError_reject is off)."""
    dns_server.update(PTR_VOID_ZONES)
    milter = spfmilter()
    reply, eom = hostile_transaction(milter, b"unknown.test", [sender], "ptr-void", ip=ip)
    assert (reply.code, reply.text[:6]) == ("550", "5.7.23"), (reply, eom and eom.inserted())
    milter.wait_for_log(r'action=reject reason="mailfrom fail" .*envelope_from=user@ptr')


@pytest.mark.parametrize("sender,shown", [
    ("jürgen@bücher.reply.test", r"j\x{FC}rgen@xn--bcher-kva.reply.test"),
    ("用户@bücher.reply.test", r"\x{7528}\x{6237}@xn--bcher-kva.reply.test"),
], ids=["latin", "cjk"])
def test_refusal_of_a_utf8_sender_is_an_ascii_reply_that_names_it(spfmilter, dns_server,
                                                                  sender, shown):
    """SMTP replies are ASCII whatever the session: a UTF-8 sender's domain is written in
    A-labels and its local part with \\x{HEX} escapes, recognisably, never raw."""
    dns_server.update({"xn--bcher-kva.reply.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}]})
    reply, eom = hostile_transaction(spfmilter(), b"unknown.test",
                                     [f"<{sender}>".encode(), b"SMTPUTF8"], "utf8-reply",
                                     ip=b"198.51.100.7")
    assert (reply.code, reply.text[:6]) == ("550", "5.7.23"), (reply, eom and eom.inserted())
    assert reply.text.isascii(), reply.text
    assert f"SPF fail for MAIL FROM {shown}: xn--bcher-kva.reply.test does not authorize " \
           "198.51.100.7" in reply.text, reply.text


# --- records that authorize every address (BreakSPF): a pass that designates nothing -----------

PASS_ALL = {
    # name: (the record, client, the term reported)
    "plus-all": ("v=spf1 +all", "203.0.113.5", "+all"),
    "bare-all": ("v=spf1 all", "203.0.113.5", "all"),
    "ip4-zero": ("v=spf1 ip4:0.0.0.0/0 -all", "203.0.113.5", "ip4:0.0.0.0/0"),
    "ip6-zero": ("v=spf1 ip6:::/0 -all", "2001:db8:5::5", "ip6:::/0"),
    "ip4-halves": ("v=spf1 -ip4:192.0.2.1 ip4:0.0.0.0/1 ip4:128.0.0.0/1 -all", "203.0.113.5",
                   "ip4:128.0.0.0/1"),
    "a-zero": ("v=spf1 a/0 -all", "203.0.113.5", "a/0"),
    "include": ("v=spf1 include:all.passall.test -all", "203.0.113.5",
                "include:all.passall.test: +all"),
}


def _pass_all_zones() -> dict:
    zones = {f"{name}.passall.test": [{"TXT": record}, {"A": "192.0.2.200"}]
             for name, (record, _, _) in PASS_ALL.items()}
    zones["all.passall.test"] = [{"TXT": "v=spf1 +all"}]
    return zones


def _pass_all_message(milter, name: str, tag: str):
    _, client, _ = PASS_ALL[name]
    return hostile_transaction(milter, b"unknown.test", [f"<ceo@{name}.passall.test>".encode()],
                               tag, ip=client.encode())


@pytest.mark.parametrize("name", list(PASS_ALL))
def test_record_authorizing_every_address_gives_neutral_not_a_forged_pass(spfmilter, dns_server,
                                                                          name):
    """A sender's record that authorizes every address (published so that forged mail passes
    SPF, and with it DMARC) is reported as neutral, with the reason, in both headers and the log."""
    dns_server.update(_pass_all_zones())
    milter = spfmilter()
    _, _, term = PASS_ALL[name]
    reply, eom = _pass_all_message(milter, name, f"passall-{name}")
    check_outcome(reply, eom)
    [received] = [v.decode() for n, v in eom.inserted()
                  if n == b"Received-SPF" and b"identity=mailfrom" in v]
    [ar] = [v.decode() for n, v in eom.inserted() if n == b"Authentication-Results"]
    assert received.startswith("neutral (mx.test: ") and \
        f"; its record authorizes every address: {term}) " in " ".join(received.split()), received
    assert f"spf=neutral (record authorizes every address: {term}) " \
           f"smtp.mailfrom={name}.passall.test" in " ".join(ar.split()), ar
    line = milter.wait_for_log(rf"action=accept .*result=neutral .*envelope_from=ceo@{name}\.")
    assert f"authorizes_all={term}" in line.group(0) or f'authorizes_all="{term}"' in line.group(0)


def test_pass_all_records_pass_reports_the_pass_the_record_claims(spfmilter, dns_server):
    dns_server.update(_pass_all_zones())
    milter = spfmilter(Pass_All_Records="pass")
    reply, eom = _pass_all_message(milter, "plus-all", "passall-kept")
    check_outcome(reply, eom)
    [ar] = [v.decode() for n, v in eom.inserted() if n == b"Authentication-Results"]
    assert "spf=pass (record authorizes every address: +all) smtp.mailfrom=plus-all.passall.test" \
        in " ".join(ar.split()), ar


def test_record_authorizing_every_address_is_refused_where_neutral_is(spfmilter, dns_server):
    dns_server.update(_pass_all_zones())
    milter = spfmilter(Mail_From_reject="Neutral")
    reply, eom = _pass_all_message(milter, "plus-all", "passall-refused")
    assert (reply.code, reply.text[:6]) == ("550", "5.7.23"), (reply, eom and eom.inserted())
    assert "SPF neutral for MAIL FROM ceo@plus-all.passall.test: plus-all.passall.test: its " \
           "record authorizes every address (+all)" in reply.text, reply.text


def test_quoted_local_part_with_trailing_dot_gives_a_parseable_header(spfmilter):
    reply, eom = hostile_transaction(spfmilter(), b"helo.test", [b'<"a b"@allowed.test.>'],
                                     "quoted-trailing-dot")
    check_outcome(reply, eom)


def test_64_kib_packets_are_refused_by_closing(spfmilter):
    """A HELO over libmilter's 64 KiB packet limit: libmilter drops the connection (the MTA then
    applies milter_default_action, tempfail in init/postfix-main.cf); the daemon serves on."""
    milter = spfmilter()
    watch = LogWatch(milter)
    with pytest.raises((ProtocolError, OSError)):
        hostile_transaction(milter, b"h" * 65536, [b"<user@allowed.test>"], "toobig")
    reply, eom = hostile_transaction(milter, b"helo.test", [b"<user@allowed.test>"], "after-toobig")
    assert eom.final.kind == "accept"
    watch.assert_clean()


CLIENT_ADDRESSES = {
    # connect address (family from ':'), expected client-ip in our header, or None: libmilter
    # itself refuses the address and drops the connection (the MTA's default action applies)
    "v4-mapped": (b"::ffff:192.0.2.10", "192.0.2.10"),
    "ipv6-prefix": (b"IPv6:2001:db8:1::10", '"2001:db8:1::10"'),
    "ipv6-upper-case": (b"2001:DB8:1::10", '"2001:db8:1::10"'),
    "ipv6-scope": (b"fe80::1%eth0", None),
    "ipv6-garbage": (b"2001:db8::zz", None),
    "ipv4-garbage": (b"192.0.2.999", None),
}


@pytest.mark.parametrize("case", list(CLIENT_ADDRESSES))
def test_client_address_forms(spfmilter, case):
    milter = spfmilter()
    watch = LogWatch(milter)
    address, client_ip = CLIENT_ADDRESSES[case]
    if client_ip is None:
        with pytest.raises((ProtocolError, OSError)):
            hostile_transaction(milter, b"helo.test", [b"<user@allowed.test>"], case, ip=address)
    else:
        reply, eom = hostile_transaction(milter, b"helo.test", [b"<user@allowed.test>"], case,
                                         ip=address)
        check_outcome(reply, eom)
        mailfrom = [v for n, v in eom.inserted() if n == b"Received-SPF" and b"mailfrom" in v]
        assert mailfrom[0].startswith(b"pass ") and f"client-ip={client_ip};".encode() in mailfrom[0]
    reply, eom = hostile_transaction(milter, b"helo.test", [b"<user@allowed.test>"], case + "-next")
    assert eom.final.kind == "accept"
    watch.assert_clean()


@pytest.mark.parametrize("family", [b"L", b"U"])
def test_connection_without_an_ip_address(spfmilter, family):
    """A unix-socket or unknown-family client (no IP to check): none, not checked, and a
    header saying so (as the policy service for client_address=unknown)."""
    milter = spfmilter()
    watch = LogWatch(milter)
    with RawSession(milter.socket_path) as s:
        data = z(b"localhost") + family + (struct.pack("!H", 0) + z(b"/tmp/x") if family == b"L" else b"")
        s.step(b"C", data)
        s.helo(b"helo.test")
        s.mail(b"<user@allowed.test>")
        reply = s.rcpt(f"<rcpt-nofamily-{family.decode()}@mx.test>".encode())
        eom = s.message([(b"Subject", b"x")]) if reply.kind == "continue" else None
    check_outcome(reply, eom)
    assert eom is not None  # none under the default policy: accepted, and labelled
    mailfrom = [v for n, v in eom.inserted() if n == b"Received-SPF" and b"mailfrom" in v]
    assert mailfrom[0].startswith(b"none (mx.test: the MTA reported no client IP address; "
                                  b"not checked)"), mailfrom
    milter.wait_for_log(rf"rcpt=rcpt-nofamily-{family.decode()}@mx.test")
    watch.assert_clean()


MACRO_CASES = {
    "none-at-all": {},
    "empty-values": {b"j": b"", b"i": b"", b"{auth_authen}": b""},
    "crlf-queue-id": {b"i": b"ABC\r\n2026-01-01 00:00:00,000 spfmilter[1]: action=accept forged"},
    "huge-queue-id": {b"i": b"Q" * 60000},
}


@pytest.mark.parametrize("case", list(MACRO_CASES))
def test_missing_empty_and_hostile_macros(spfmilter, case):
    milter = spfmilter()
    watch = LogWatch(milter)
    with RawSession(milter.socket_path) as s:
        s.step(b"C", z(b"[192.0.2.10]") + b"4" + struct.pack("!H", 25) + z(b"192.0.2.10"))
        s.helo(b"helo.test")
        s.mail(b"<user@allowed.test>", macros=MACRO_CASES[case])
        reply = s.rcpt(f"<rcpt-macro-{case}@mx.test>".encode())
        eom = s.message([(b"Subject", b"x")])
    check_outcome(reply, eom)
    assert len(eom.inserted()) == 3          # an empty {auth_authen} is not an authenticated client
    milter.wait_for_log(rf"rcpt=rcpt-macro-{case}@mx.test")
    watch.assert_clean()


@pytest.mark.parametrize("macros,headers", [({b"{auth_authen}": b"j\xf6rg"}, 0),
                                            ({b"i": b"\xff\xfeQID"}, 3)])
def test_non_utf8_macro_values(spfmilter, macros, headers):
    milter = spfmilter()
    watch = LogWatch(milter)
    with RawSession(milter.socket_path) as s:
        s.connect(b"192.0.2.10")
        s.helo(b"helo.test")
        s.mail(b"<user@allowed.test>", macros=macros)
        reply = s.rcpt(b"<rcpt-macro-bytes@mx.test>")
        assert reply.kind == "continue", reply
        eom = s.message([(b"Subject", b"x")])
    assert eom.final.kind == "accept" and len(eom.inserted()) == headers
    watch.assert_clean()


def test_session_without_option_negotiation_logs_no_traceback(spfmilter):
    """libmilter does not answer a peer that skips option negotiation (no MTA does
    that): the MTA's own timeout and milter_default_action then decide.  spfmilter
    must log no traceback for it and keep serving everybody else."""
    milter = spfmilter(fresh=True)
    watch = LogWatch(milter)
    s = RawSession(milter.socket_path, negotiate=False)
    s.sock.settimeout(2)
    try:
        s.protocol = 0          # nothing negotiated: every step waits for a reply
        try:
            s.connect(b"192.0.2.10")
            s.helo(b"helo.test")
            s.mail(b"<user@allowed.test>")
            reply = s.rcpt(b"<rcpt@mx.test>")
            assert reply.kind in ("continue", "reply", "tempfail")
        except (TimeoutError, ProtocolError):
            pass                # no answer at all: the MTA applies milter_default_action
    finally:
        s.close()
    reply, eom = hostile_transaction(milter, b"helo.test", [b"<user@allowed.test>"], "after")
    assert reply.kind == "continue" and eom is not None
    watch.assert_clean()


def test_hostile_auth_macro_skips_but_logs_one_line(spfmilter):
    milter = spfmilter()
    watch = LogWatch(milter)
    reply, eom = hostile_transaction(milter, b"helo.test", [b"<user@allowed.test>"], "auth",
                                     ip=b"198.51.100.7")
    assert reply.code == "550"
    with RawSession(milter.socket_path) as s:
        s.connect(b"198.51.100.7")
        s.helo(b"helo.test")
        s.mail(b"<user@allowed.test>", macros={b"{auth_authen}": b"alice\r\nX-Forged: 1"})
        assert s.rcpt(b"<rcpt-auth2@mx.test>").kind == "continue"
        eom = s.message([(b"Subject", b"x")])
    assert eom.final.kind == "accept" and eom.inserted() == []
    milter.wait_for_log(r"rcpt=rcpt-auth2@mx.test")
    watch.assert_clean()


# --- known bugs: pymilter decodes these as strict UTF-8 before spfmilter sees them -----

NON_UTF8_BUG = ("pymilter (upstream) decodes a header NAME in its C layer, before "
                "SPFMilter.header runs; a name that is not UTF-8 raises there, and the stage "
                "being no-reply (one reply per header would cost a round trip each), "
                "libmilter drops the TEMPFAIL. Postfix and Sendmail do not pass such names. "
                "The HELO case is fixed: hello() has a reply, so such a HELO gets 451")


def test_non_utf8_helo_is_refused_or_reported_never_replaced_by_the_previous_one(spfmilter):
    milter = spfmilter(fresh=True)
    watch = LogWatch(milter)
    with RawSession(milter.socket_path) as s:
        s.connect(b"198.51.100.7")
        s.helo(b"forwarder.test")            # authorised for 198.51.100.7 ...
        second = s.helo(b"badhelo.test\xff")  # ... but this is the HELO the mail comes with
        if second.refused:                    # the MTA refuses that EHLO: fine
            eom = None
        else:
            s.mail(b"<>")
            reply = s.rcpt(b"<rcpt-nonutf8@mx.test>")
            eom = s.message([(b"Subject", b"x")]) if reply.kind == "continue" else None
            if eom is not None:
                check_outcome(reply, eom)
                assert not any(b"forwarder.test" in v for _, v in eom.inserted()), eom.inserted()
            else:
                assert reply.code[:1] in "45"
    watch.assert_clean()


@pytest.mark.xfail(strict=True, reason=NON_UTF8_BUG + "; libmilter then ignores end of "
                   "message and the MTA waits for milter_content_timeout")
def test_non_utf8_header_name_gets_an_answer_at_end_of_message(spfmilter):
    milter = spfmilter(fresh=True)
    watch = LogWatch(milter)
    with RawSession(milter.socket_path, timeout=5) as s:
        s.connect(b"192.0.2.10")
        s.helo(b"helo.test")
        s.mail(b"<user@allowed.test>")
        assert s.rcpt(b"<rcpt@mx.test>").kind == "continue"
        try:
            eom = s.message([(b"X-\xff", b"1"), (b"Subject", b"x")])
        except (ProtocolError, OSError) as exc:   # no reply within 5 s
            pytest.fail(f"no answer at end of message: {exc!r}")
    assert eom.final.kind in ("accept", "tempfail", "reply")
    watch.assert_clean()


# --- forged result headers -------------------------------------------------------------

AR, RSPF = b"Authentication-Results", b"Received-SPF"
FORGED = [   # (name, value, is it a claim to be us?)
    (AR, b"mx.test; spf=pass smtp.mailfrom=ceo@allowed.test", True),
    (AR, b"other.example; spf=fail smtp.mailfrom=x@y.example", False),
    (AR, b"MX.Test; dkim=pass header.d=allowed.test", True),
    (AR, b"mx.test.; spf=pass", True),
    (AR, b'"mx.test"; spf=pass', True),
    (AR, b"(ours, trust me) mx.test; spf=pass", True),
    (AR, b"(a (nested) comment)\r\n\tmx.test;\r\n\tspf=pass smtp.mailfrom=ceo@allowed.test", True),
    (AR, b"\r\n\tmx.test;\r\n\tdmarc=pass header.from=allowed.test", True),
    (AR, b"\n mx.test 1; spf=pass", True),
    (AR, b"mx.test(c);spf=pass", True),
    (AR, b"mx.test.evil.example; spf=pass", False),
    (AR, b"evil-mx.test; spf=pass", False),
    (AR, b"(mx.test) other.example; spf=pass", False),
    (b"authentication-results", b"mx.test; spf=pass", True),
    (RSPF, b"pass (forged) client-ip=192.0.2.10; receiver=mx.test; identity=mailfrom", True),
    (RSPF, b"Pass (x)\r\n\tclient-ip=192.0.2.10;\r\n\treceiver=MX.TEST;\r\n\tidentity=mailfrom", True),
    (RSPF, b'pass receiver="mx.test"; identity=helo', True),
    (RSPF, b"pass receiver=other.example; identity=mailfrom", False),
    (RSPF, b"pass (receiver=mx.test) receiver=other.example", False),
    (b"X-Authentication-Results", b"mx.test; spf=pass", False),
]


def expected_deletions(headers) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    out = []
    for name, _, forged in headers:
        key = name.decode().lower()
        counts[key] = counts.get(key, 0) + 1
        if forged:
            out.append((key, counts[key]))
    return sorted(out)


def test_forged_result_headers_for_our_id_are_removed(spfmilter):
    milter = spfmilter()
    watch = LogWatch(milter)
    rng = random.Random(7208)
    for attempt in range(5):       # several orders: the indexes must follow the headers
        headers = FORGED[:] if attempt == 0 else rng.sample(FORGED, len(FORGED))
        reply, eom = hostile_transaction(milter, b"helo.test", [b"<ceo@allowed.test>"],
                                         f"forged-{attempt}",
                                         headers=[(n, v) for n, v, _ in headers])
        check_outcome(reply, eom)
        deleted = sorted((n.decode().lower(), i) for n, i in eom.deleted())
        assert deleted == expected_deletions(headers)
        # deletions first, highest index first, then our own headers on top
        ops = [op for op, *_ in eom.ops]
        assert ops.index("ins") > max(i for i, op in enumerate(ops) if op == "chg")
        ar = [v for n, v in eom.inserted() if n == AR]
        assert len(ar) == 1 and ar[0].startswith(b"mx.test; ")
        assert b"spf=pass smtp.mailfrom=allowed.test" in ar[0]
    watch.assert_clean()


def test_forged_header_behind_deeply_nested_comments_is_removed(spfmilter):
    value = b"((((((deep)))))) mx.test; spf=pass smtp.mailfrom=ceo@allowed.test"
    assert authres.AuthenticationResultsHeader.parse_value(value.decode()).authserv_id == "mx.test"
    reply, eom = hostile_transaction(spfmilter(), b"helo.test", [b"<ceo@allowed.test>"], "deep",
                                     headers=[(AR, value)])
    assert eom.deleted() == [(AR, 1)]


# --- socket permissions -----------------------------------------------------------------

@pytest.mark.parametrize("umask,forbidden,required", [
    (None, 0o007, 0o770),      # the default (UMask = 007): owner and group (the MTA) only
    ("077", 0o077, 0o700),
    ("002", 0o002, 0o775),
])
def test_socket_mode_comes_from_umask_and_is_never_world_writable_by_default(
        spfmilter, umask, forbidden, required):
    # its own daemon: the MTA lab widens the mode of the shared daemons' sockets
    milter = spfmilter(fresh=True, **({} if umask is None else {"UMask": umask}))
    st_ = os.stat(milter.socket_path)
    assert stat.S_ISSOCK(st_.st_mode)
    mode = stat.S_IMODE(st_.st_mode)
    assert mode & forbidden == 0, oct(mode)
    assert mode & required == required, oct(mode)
    assert st_.st_uid == os.geteuid()       # owner: the user it runs as (UserID: test_daemon.py)


# --- bounded fuzz of the real protocol -------------------------------------------------------

FUZZ_SESSIONS = 1000
FUZZ_SECONDS = 40


def test_malformed_macro_packet_does_not_take_the_milter_down(spfmilter):
    milter = spfmilter(fresh=True)
    # The HELO buffer (36 x 'A', freed after HELO) is where libmilter then puts the macro
    # array: reading past its end, smfi_getsymval compares 'AAAAAAAA' as a pointer.
    wire = (packet(b"O", struct.pack("!LLL", 6, 0x1FF, 0x1FFFFF))
            + packet(b"C", z(b"[192.0.2.10]") + b"4" + struct.pack("!H", 25) + z(b"192.0.2.10"))
            + packet(b"H", z(b"A" * 36))
            + packet(b"D", b"M" + z(b"a", b"b", b"c"))        # a name without a value
            + packet(b"M", z(b"<user@allowed.test>")) + packet(b"R", z(b"<rcpt@mx.test>")))
    protocol.run_session(milter.socket_path, wire)

    def serves() -> bool:
        try:
            reply, eom = hostile_transaction(milter, b"helo.test", [b"<user@allowed.test>"], "x")
            return eom is not None and eom.final.kind == "accept"
        except (ProtocolError, OSError):
            return False
    wait_for(serves, 10, "spfmilter to serve again", interval=0.2)


def test_fuzz_the_real_daemon_with_mutated_milter_streams(spfmilter):
    """Mutated sessions (junk commands, dropped and repeated steps, cut streams, bad bytes): the
    daemon never dies, never logs a traceback, never writes a header with a raw line break,
    and answers a normal transaction correctly afterwards.  (Malformed macro lists crash
    libmilter: that is the xfail test above; ``make fuzz`` runs every mutation.)"""
    milter = spfmilter(fresh=True)
    rng = random.Random(20240601)
    started = time.monotonic()
    sessions = 0
    headers_seen = 0
    while sessions < FUZZ_SESSIONS and time.monotonic() - started < FUZZ_SECONDS:
        session = protocol.mutate(rng, protocol.valid_session(rng), malformed_macros=False)
        headers_seen += protocol.run_session(milter.socket_path, session)
        sessions += 1
        if sessions % 50 == 0:
            assert milter.proc.poll() is None, milter.log_text()[-2000:]
            reply, eom = hostile_transaction(milter, b"helo.test", [b"<user@allowed.test>"],
                                             f"fuzz-{sessions}")
            assert eom is not None and eom.final.kind == "accept"
    assert sessions >= 100, sessions
    assert headers_seen > 0       # the mutations left some sessions whole enough to be labelled
    assert milter.proc.poll() is None
    log = milter.log_text()
    assert "Traceback" not in log
    # Non-UTF-8 HELOs and macro values are the known bugs of the xfail tests above
    # (test_non_utf8_helo_..., test_non_utf8_macro_values); any other internal error is new.
    other_faults = [line for line in log.splitlines()
                    if "action=tempfail" in line and "UnicodeDecodeError" not in line]
    assert not other_faults, other_faults[:5]
    reply, eom = hostile_transaction(milter, b"helo.test", [b"<user@allowed.test>"], "fuzz-end")
    assert eom.final.kind == "accept" and len(eom.inserted()) == 3
    wait_for(lambda: len(os.listdir(f"/proc/{_child(milter)}/fd")) < 30, 20, "fuzz connections closed")


def _child(milter) -> int:
    pid = milter.proc.pid
    return int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])
