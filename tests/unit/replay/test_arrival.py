"""The arrival of a delivered message, read back from the headers the site's MTA wrote --
never from what the sending side put into them."""

import pytest

from spfmilter.config_values import networks as _networks
from spfmilter.frontends.check import split_message
from spfmilter.replay.arrival import Arrival, NotReplayable, read
from tests.kit import mailstore as ms

NAMES = ("mx.test",)


def arrival(raw: bytes, **kw):
    fields, _ = split_message(raw)
    return read(fields, kw.pop("names", NAMES), **kw)


@pytest.mark.parametrize("header,ip,helo", [
    (ms.postfix("192.0.2.1", "mail.bank.test"), "192.0.2.1", "mail.bank.test"),
    (ms.postfix("2001:db8::25", "v6.bank.test"), "2001:db8::25", "v6.bank.test"),
    (ms.sendmail("198.51.100.7", "fwd.test"), "198.51.100.7", "fwd.test"),
    (ms.exim("192.0.2.2", "helo.bank.test"), "192.0.2.2", "helo.bank.test"),
    (ms.exim("192.0.2.3", "bare.bank.test", rdns=None), "192.0.2.3", "bare.bank.test"),
    (ms.exim("2001:db8::3", "v6.exim.test"), "2001:db8::3", "v6.exim.test"),
    (ms.exchange("192.0.2.4", "EXCH01.bank.test"), "192.0.2.4", "EXCH01.bank.test"),
    (ms.exchange("2001:db8::4", "EXCH01.bank.test"), "2001:db8::4", "EXCH01.bank.test"),
])
def test_the_four_mtas_formats_folded_and_ipv6(header, ip, helo):
    found = arrival(ms.delivered(ms.simple(), [header]))
    assert isinstance(found, Arrival)
    assert (found.client_ip, found.helo, found.sender, found.recipients) == \
        (ip, helo, "user@bank.test", ("rcpt@mx.test",))


def test_a_helo_imitating_an_address_comment_is_never_the_client():
    hostile = "x (y [192.0.2.10]) by mx.test (Postfix) with ESMTPSA id 1; (z [192.0.2.11])"
    found = arrival(ms.delivered(ms.simple(), [ms.postfix("203.0.113.66", hostile)]))
    assert isinstance(found, Arrival)
    assert found.client_ip == "203.0.113.66" and not found.authenticated


def test_a_header_forged_below_ours_is_not_reached():
    forged = ms.postfix("192.0.2.1", "mail.bank.test")     # claims bank.test's own server
    found = arrival(ms.delivered(ms.simple(), [ms.postfix("203.0.113.66", "evil.test"), forged]))
    assert isinstance(found, Arrival) and found.client_ip == "203.0.113.66"


def test_reinjections_on_loopback_are_skipped():
    raw = ms.delivered(ms.simple(), [ms.reinjection(), ms.reinjection(),
                                     ms.postfix("192.0.2.1", "mail.bank.test")])
    found = arrival(raw)
    assert isinstance(found, Arrival) and found.client_ip == "192.0.2.1"
    assert split_message(raw)[0][found.index][0] == "Received"
    assert found.index == 4   # Return-Path, Delivered-To, two re-injections, then ours


def test_dovecot_lmtp_delivery_on_this_host_is_skipped():
    lmtp = f"from mx.test\r\n\tby mx.test with LMTP\r\n\tid abc\r\n\t(envelope-from <u@b>); {ms.DATE}"
    found = arrival(ms.delivered(ms.simple(), [lmtp, ms.postfix("192.0.2.1", "h.test")]))
    assert isinstance(found, Arrival) and found.client_ip == "192.0.2.1"


def test_a_hop_through_a_trusted_relay_or_skip_address_reads_the_relays_header():
    chain = [ms.postfix("10.0.0.5", "relay.internal"),
             ms.postfix("192.0.2.7", "mail.bank.test", by="relay.internal")]
    raw = ms.delivered(ms.simple(), chain)
    found = arrival(raw, trusted=_networks("10.0.0.0/8"))
    assert isinstance(found, Arrival) and found.client_ip == "192.0.2.7"
    found = arrival(raw, skip=_networks("10.0.0.0/8"))
    assert isinstance(found, Arrival) and found.client_ip == "192.0.2.7"
    found = arrival(raw)   # without: the relay is the client
    assert isinstance(found, Arrival) and found.client_ip == "10.0.0.5"


def test_a_header_written_by_another_host_is_not_replayable():
    found = arrival(ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "h.test", by="other.test")]))
    assert isinstance(found, NotReplayable)
    assert "written by other.test, not by mx.test" in found.reason
    found = arrival(ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "h.test", by="other.test")]),
                    names=("MX.test.", "other.test"))
    assert isinstance(found, Arrival)


@pytest.mark.parametrize("raw,reason", [
    (ms.delivered(ms.simple(), []), "no Received header"),
    (ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "h.test")], return_path=None),
     "no Return-Path"),
    (ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "h.test")], return_path="user@bank.test"),
     "not an address in <>"),
    (ms.delivered(ms.simple(), ["by mx.test (Postfix, from userid 0) id 1; " + ms.DATE]),
     "submitted on mx.test itself"),
    (ms.delivered(ms.simple(), [ms.reinjection()]), "name only this host"),
    (ms.delivered(ms.simple(), ["from h.test by mx.test with ESMTP; " + ms.DATE]),
     "names no client address"),
    (ms.delivered(ms.simple(), ["from " + "h" * 100_000 + " (x [192.0.2.1]) by mx.test"]),
     "longer than"),
])
def test_facts_that_cannot_be_recovered_are_not_guessed(raw, reason):
    found = arrival(raw)
    assert isinstance(found, NotReplayable) and reason in found.reason


def test_a_100k_header_section_still_reads():
    raw = ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "h.test")])
    raw = raw.replace(b"Subject:", b"X-Junk: " + b"j" * 100_000 + b"\r\nSubject:")
    found = arrival(raw)
    assert isinstance(found, Arrival) and found.client_ip == "192.0.2.1"


def test_null_sender_and_recipient_fields():
    raw = ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "h.test")], return_path="<>",
                       recipient="a@mx.test, b@mx.test", field="Envelope-To")
    found = arrival(raw)
    assert isinstance(found, Arrival) and found.sender == "" and found.recipients == ("a@mx.test",)
    raw = b"X-Original-To: orig@mx.test\r\n" + raw
    found = arrival(raw)
    assert isinstance(found, Arrival) and found.recipients == ("orig@mx.test",)
    found = arrival(ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "h.test")], recipient=None))
    assert isinstance(found, Arrival) and found.recipients == ()


def test_an_authenticated_submission_is_recorded_as_such():
    found = arrival(ms.delivered(ms.simple(), [ms.postfix("192.0.2.1", "h.test",
                                                          protocol="ESMTPSA")]))
    assert isinstance(found, Arrival) and found.authenticated
