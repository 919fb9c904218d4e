"""DKIM_Rescue over the milter protocol: real dkimpy signatures, keys in the tests' DNS server.

A forwarder (198.51.100.7, authorized by forwarder.test only) relays mail of
bank.test without rewriting the envelope, so SPF fails for bank.test; the
refusal is held, and at end of message a signature of bank.test's
organizational domain rescues it -- or the message is refused then with the
reply it would have had at RCPT.
"""

from __future__ import annotations

import re

import pytest

from spfmilter.frontends.check import split_message
from tests.kit import dkimkeys, mta
from tests.kit.answertimes import AnswerTimes
from tests.kit.milterclient import MilterSession

pytestmark = pytest.mark.e2e

FORWARDER, FWD_HELO = "198.51.100.7", "forwarder.test"
RESCUE = {"DKIM_Rescue": "True"}
ZONES = {
    "bank.test": [{"TXT": "v=spf1 ip4:192.0.2.0/24 -all"}],
    "sel1._domainkey.bank.test": [{"TXT": dkimkeys.key_record()}],
    "sel1._domainkey.mail.bank.test": [{"TXT": dkimkeys.key_record()}],
    "sel1._domainkey.other.test": [{"TXT": dkimkeys.key_record()}],
    "slow._domainkey.bank.test": ["TIMEOUT"],
    "junk._domainkey.bank.test": [{"TXT": "v=DKIM1; k=rsa; p=bm90IGEga2V5IGF0IGFsbA=="}],
}


@pytest.fixture
def zones(dns_server):
    dns_server.update(ZONES)
    return dns_server


def message(body: str = "Hello, forwarded.\r\n", sender: str = "user@bank.test") -> bytes:
    return mta.make_message(sender, "rcpt@mx.test", subject="statement", body=body)


def deliver(milter, raw: bytes, *, sender: str = "user@bank.test", rcpts=("rcpt@mx.test",),
            client: str = FORWARDER, helo: str = FWD_HELO):
    """One SMTP transaction as an MTA passes it: RCPT replies, and the end-of-message result."""
    fields, body = split_message(raw)
    with MilterSession(milter.socket_path) as s:
        s.connect(client)
        s.helo(helo)
        s.mail(sender)
        replies = [s.rcpt(r) for r in rcpts]
        if not any(r.kind == "continue" for r in replies):
            return replies, None, s
        headers = [(n, (v if s.leading_space else v.lstrip(b" ")).decode("latin-1"))
                   for n, v in fields]
        return replies, s.data(headers, body), s


def our_ar(eom) -> str:
    [value] = [v for n, v in eom.headers_on_top() if n == "Authentication-Results"]
    return re.sub(r"\s+", " ", value)


def test_forward_signed_by_the_sender_domain_is_accepted_with_dkim_pass(spfmilter, zones):
    milter = spfmilter(**RESCUE)
    replies, eom, session = deliver(milter, dkimkeys.sign(message(), "bank.test"))
    assert [r.kind for r in replies] == ["continue"]             # held, not refused at RCPT
    assert eom.final.kind == "accept"
    ar = our_ar(eom)
    assert "dkim=pass header.d=bank.test header.s=sel1" in ar
    assert ar.endswith("spf=fail smtp.mailfrom=bank.test")       # the SPF result as it was
    spf = [v for n, v in eom.headers_on_top() if n == "Received-SPF" and "identity=mailfrom" in v]
    # SMFIP_HDR_LEADSPC negotiated: the MTA writes "Name:" + value, so the value
    # brings the space after the colon itself
    assert session.leading_space and spf and spf[0].startswith(" fail ")
    milter.wait_for_log(r"action=accept reason=\"mailfrom fail rescued by DKIM d=bank\.test\"")


def test_unsigned_forward_is_refused_at_end_of_message_with_the_rcpt_reply(spfmilter, zones):
    plain = spfmilter()
    at_rcpt, _, _ = deliver(plain, message())
    assert at_rcpt[0].code == "550"
    milter = spfmilter(**RESCUE)
    replies, eom, _ = deliver(milter, message())
    assert replies[0].kind == "continue"
    assert (eom.final.code, eom.final.text) == ("550", at_rcpt[0].text)
    assert eom.final.text.startswith("5.7.23 ")
    assert not eom.inserted                                       # refused: no headers added
    milter.wait_for_log(r"action=reject reason=\"mailfrom fail, not rescued")


@pytest.mark.parametrize("signer,rescued", [("mail.bank.test", True), ("other.test", False)])
def test_only_the_refused_domains_organization_rescues(spfmilter, zones, signer, rescued):
    milter = spfmilter(**RESCUE)
    _, eom, _ = deliver(milter, dkimkeys.sign(message(), signer))
    if rescued:
        assert eom.final.kind == "accept"
        assert f"dkim=pass header.d={signer} header.s=sel1" in our_ar(eom)
    else:
        assert eom.final.code == "550"


def test_body_changed_after_signing_is_refused(spfmilter, zones):
    milter = spfmilter(**RESCUE)
    signed = dkimkeys.sign(message(), "bank.test").replace(b"Hello, forwarded.", b"Pay to IBAN X.")
    _, eom, _ = deliver(milter, signed)
    assert eom.final.code == "550"
    milter.wait_for_log(r"not rescued: body hash mismatch")


def test_key_lookup_timeout_defers_with_451(spfmilter, zones):
    milter = spfmilter(**RESCUE, Lookup_Time="1")
    _, eom, _ = deliver(milter, dkimkeys.sign(message(), "bank.test", selector="slow"))
    assert (eom.final.code, eom.final.text[:6]) == ("451", "4.7.24")
    milter.wait_for_log(r"action=defer reason=\"mailfrom fail, DKIM key lookup failed\"")


def _fifty_signatures() -> bytes:
    raw = message()
    for _ in range(50):
        raw = dkimkeys.sign(raw, "bank.test")
    return raw


@pytest.mark.parametrize("case", ["fifty", "malformed", "md5", "not-a-key", "missing-key"])
def test_hostile_signatures_never_rescue_and_never_crash(spfmilter, zones, case):
    milter = spfmilter(**RESCUE)
    good = dkimkeys.sign(message(), "bank.test")
    raw = {
        "fifty": _fifty_signatures,
        "malformed": lambda: b"DKIM-Signature: v=1; d=bank.test; s=sel1; b=;;;===\r\n" + message(),
        "md5": lambda: good.replace(b"a=rsa-sha256", b"a=rsa-md5"),
        "not-a-key": lambda: dkimkeys.sign(message(), "bank.test", selector="junk"),
        "missing-key": lambda: dkimkeys.sign(message(), "bank.test", selector="nokey"),
    }[case]()
    _, eom, _ = deliver(milter, raw)
    assert eom.final.code == "550", case
    assert "Traceback" not in milter.log_text()
    _, again, _ = deliver(milter, good)                            # and it still serves
    assert again.final.kind == "accept"


def test_message_larger_than_dkim_max_bytes_is_not_rescued(spfmilter, zones):
    milter = spfmilter(**RESCUE, DKIM_Max_Bytes="65536")
    big = dkimkeys.sign(message(body=("y" * 998 + "\r\n") * 100), "bank.test")
    _, eom, _ = deliver(milter, big)
    assert eom.final.code == "550"
    milter.wait_for_log(r"not rescued: message larger than DKIM_Max_Bytes \(65536\)")


def test_messages_without_a_held_refusal_skip_the_body(spfmilter, zones):
    milter = spfmilter(**RESCUE)
    _, eom, session = deliver(milter, message(sender="user@allowed.test"), sender="user@allowed.test",
                              client="192.0.2.10", helo="helo.test")
    assert eom.final.kind == "accept"
    assert session.body_replies == ["skip"]                         # nothing of the body kept
    # without DKIM_Rescue the body is not even asked for
    with MilterSession(spfmilter().socket_path) as s:
        s.connect("192.0.2.10")
        assert s.protocol & 0x10                                    # SMFIP_NOBODY


def test_recipients_with_another_course_are_deferred_for_a_transaction_of_their_own(spfmilter, zones):
    milter = spfmilter(**RESCUE, Exempt_Recipients="postmaster@")
    # the first recipient is exempt (accepted as is); the next would be held: 452 4.5.3
    replies, eom, _ = deliver(milter, message(), rcpts=("postmaster@mx.test", "user@mx.test"))
    assert [r.kind for r in replies] == ["continue", "reply"]
    assert (replies[1].code, replies[1].text[:5]) == ("452", "4.5.3")
    assert eom.final.kind == "accept"
    # the other way round: held first, then the exempt one waits for its own transaction
    replies, eom, _ = deliver(milter, message(), rcpts=("user@mx.test", "postmaster@mx.test"))
    assert [r.code for r in replies] == ["", "452"]
    assert eom.final.code == "550"


def test_check_message_shows_a_rescue(tmp_path, zones):
    import subprocess
    import sys

    from tests.kit import ROOT
    conf = tmp_path / "c.conf"
    conf.write_text(f"Nameservers = {zones.nameserver}\nAuthserv_Id = mx.test\nDKIM_Rescue = yes\n")
    eml = tmp_path / "forward.eml"
    eml.write_bytes(dkimkeys.sign(message(), "bank.test"))
    res = subprocess.run([sys.executable, "-m", "spfmilter", "check", "-c", str(conf),
                          "--ip", FORWARDER, "--helo", FWD_HELO, "--from", "user@bank.test",
                          "--rcpt", "rcpt@mx.test", "--message", str(eml)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "MAIL FROM result: fail (user@bank.test)" in res.stdout
    assert "DKIM d=bank.test s=sel1: pass" in res.stdout
    assert "End of message: accept" in res.stdout
    assert "dkim=pass header.d=bank.test header.s=sel1" in res.stdout
    eml.write_bytes(message())
    res = subprocess.run([sys.executable, "-m", "spfmilter", "check", "-c", str(conf),
                          "--ip", FORWARDER, "--helo", FWD_HELO, "--from", "user@bank.test",
                          "--message", str(eml)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "End of message: reject -> 550 5.7.23 " in res.stdout, res.stdout


def test_a_refusal_behind_a_trusted_relay_is_held_and_rescued_too(spfmilter, zones):
    milter = spfmilter(**RESCUE, Trusted_Relays="10.0.0.0/8")
    hop = "from forwarder.test (forwarder.test [198.51.100.7]) by gw.mx.test (Postfix) with ESMTP\r\n"
    signed = b"Received: " + hop.encode() + dkimkeys.sign(message(), "bank.test")
    replies, eom, _ = deliver(milter, signed, client="10.0.0.25", helo="gw.mx.test")
    assert replies[0].kind == "continue" and eom.final.kind == "accept"
    assert "dkim=pass header.d=bank.test" in our_ar(eom)
    milter.wait_for_log(r"rescued by DKIM d=bank\.test.* client_ip=198\.51\.100\.7 "
                        r"helo=forwarder\.test .*relay=10\.0\.0\.25")
    unsigned = b"Received: " + hop.encode() + message()
    _, eom, _ = deliver(milter, unsigned, client="10.0.0.25", helo="gw.mx.test")
    assert eom.final.code == "550" and eom.final.text.startswith("5.7.23 ")


# --- what a sender may not do with its own key, signature or body -------------------

HUGE_KEY = {"huge._domainkey.bank.test": [{"TXT": dkimkeys.public_key_record(
    dkimkeys.odd_number(16384, 1), dkimkeys.odd_number(16384, 2))}]}


@pytest.fixture
def attack_zones(zones):
    """The attacker's keys: a 16,384-bit modulus with a 16,384-bit exponent (dkimpy
    needed seconds of CPU for one exponentiation with it), a 4,096-bit modulus with a
    4,096-bit exponent, a 512-bit key, and a real 4,096-bit key (the largest allowed)."""
    zones.update({
        **ZONES, **HUGE_KEY,
        "fat._domainkey.bank.test": [{"TXT": dkimkeys.public_key_record(
            dkimkeys.odd_number(4096, 3), dkimkeys.odd_number(4096, 4))}],
        "tiny._domainkey.bank.test": [{"TXT": dkimkeys.public_key_record(
            dkimkeys.odd_number(512, 5), 65537)}],
        "big._domainkey.bank.test": [{"TXT": dkimkeys.key_record("big", 4096)}],
    })
    return zones


@pytest.mark.parametrize("selector,why", [
    ("huge", "key too large: 16384 bits (at most 4096)"),
    ("fat", "key exponent of 4096 bits (at most 65537)"),
    ("tiny", "key too small: 512 bits (at least 1024)"),
])
def test_an_oversized_key_or_exponent_is_a_permerror_and_never_rescues(spfmilter, attack_zones,
                                                                         selector, why):
    milter = spfmilter(**RESCUE)
    _, eom, _ = deliver(milter, dkimkeys.sign(message(), "bank.test", selector=selector))
    assert (eom.final.code, eom.final.text[:6]) == ("550", "5.7.23")
    milter.wait_for_log(r"action=reject reason=\"mailfrom fail, not rescued: " + re.escape(why))


def test_the_largest_allowed_key_still_rescues(spfmilter, attack_zones):
    milter = spfmilter(**RESCUE)
    _, eom, _ = deliver(milter, dkimkeys.sign(message(), "bank.test", selector="big", tag="big",
                                              bits=4096))
    assert eom.final.kind == "accept"
    assert "dkim=pass header.d=bank.test header.s=big" in our_ar(eom)


def test_an_l_signature_with_content_appended_is_not_rescued(spfmilter, zones):
    milter = spfmilter(**RESCUE)
    signed = dkimkeys.sign(message(), "bank.test", length=True)
    signed_length = int(re.search(rb"[;\s]l=(\d+)", signed).group(1))
    appended = b"PAY INVOICE TO IBAN XX00 1234 5678 9000\r\n"
    _, eom, _ = deliver(milter, signed + appended)
    assert (eom.final.code, eom.final.text[:6]) == ("550", "5.7.23")
    milter.wait_for_log(r"action=reject reason=\"mailfrom fail, not rescued: l= covers "
                        f"{signed_length} of {signed_length + len(appended)} body bytes\"")
    # the same signature over the whole body, nothing appended, is a pass
    _, eom, _ = deliver(milter, signed)
    assert eom.final.kind == "accept"
    assert "dkim=pass header.d=bank.test header.s=sel1" in our_ar(eom)


def _worst_allowed_message() -> bytes:
    """A message at every limit, whose eight signatures all verify: a 4,096-bit key, a
    body of nearly DKIM_Max_Bytes made of long runs of blanks (dkimpy's canonicalization
    is quadratic in each run), and one signature field of 8 KiB folded with runs of 63
    blanks (dkimpy's b= pattern is quadratic in each run)."""
    line = b"a" + b" \t" * 40_000 + b"b\r\n"
    body = line * 50                                   # 4,000,200 bytes
    raw = message(body="a b\n" * 50)                   # what relaxed makes of that body
    for _ in range(7):
        raw = dkimkeys.sign(raw, "bank.test", selector="big", tag="big", bits=4096)
    signed = dkimkeys.sign(raw, "bank.test", selector="big", tag="big", bits=4096)
    name, _, value = signed[:len(signed) - len(raw)].partition(b":")
    b64 = re.search(rb"b=([A-Za-z0-9+/=\s]+)$", value.rstrip()).group(1)
    letters = b"".join(b64.split())
    fold = b"\r\n" + b" " * 61
    padded = b""
    while len(value) - len(b64) + len(padded) + len(letters) + len(fold) + 2 <= 8192 and letters:
        padded, letters = padded + letters[:1] + fold, letters[1:]
    value = value.replace(b64, padded + letters)
    assert len(value) <= 8192 and not re.search(rb"\s{65}", value)
    headers, _ = raw.split(b"\r\n\r\n", 1)
    return name + b":" + value + headers + b"\r\n\r\n" + body


def test_an_attack_message_does_not_delay_another_connections_answers(spfmilter, attack_zones):
    """One worker: while it verifies the attacker's messages, another client's
    transactions are answered as usual (a huge key or a long run of blanks held the
    interpreter, and so every other connection of the worker, for seconds)."""
    import time

    milter = spfmilter(**RESCUE, Workers="1")
    attacks = [("huge key", dkimkeys.sign(message(), "bank.test", selector="huge"), "550"),
               ("worst allowed", _worst_allowed_message(), "")]
    deliver(milter, message(sender="user@allowed.test"), sender="user@allowed.test",
            client="192.0.2.10", helo="helo.test")       # SPF of allowed.test cached
    with AnswerTimes(milter.socket_path) as ordinary:
        for name, raw, code in attacks:
            started = time.monotonic()
            _, eom, _ = deliver(milter, raw)
            ended = time.monotonic()
            assert eom.final.code == code, (name, milter.decisions()[-1])
            during = ordinary.during(started, ended)
            assert len(during) >= 2, (name, ended - started)
            slowest = max(s.took for s in during)
            assert slowest < 0.5, (name, slowest, ended - started)
    milter.wait_for_log(r"rescued by DKIM d=bank\.test")
