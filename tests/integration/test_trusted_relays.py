"""Trusted_Relays through real hops: Postfix relays (no milter) in front of the Postfix that
runs spfmilter, each writing its own Received header.

    client --XCLIENT--> relay2 --> relay --> mx (spfmilter, Trusted_Relays = 127.0.0.1) --> capture

The MX sees every relay as 127.0.0.1; spfmilter must check SPF for the client
the first relay names, report that hop's client-ip and HELO, and refuse at end
of message -- which makes the relay bounce the message with our reply.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import pytest

from tests.kit import mta
from tests.kit.wait import wait_for

pytestmark = pytest.mark.mta

RELAYED = {"Trusted_Relays": "127.0.0.1/32"}


@dataclass
class Hops:
    mx: mta.PostfixLab
    relay: mta.PostfixLab
    relay2: mta.PostfixLab
    capture: mta.CaptureSMTP


@pytest.fixture(scope="module")
def hops(tmp_path_factory):
    mta.require_or_skip("postfix")
    work = tmp_path_factory.mktemp("relays")
    placeholder = tmp_path_factory.mktemp("no-milter") / "spfmilter.sock"
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(mta.CaptureSMTP())
        mx = stack.enter_context(mta.PostfixLab(work / "mx", f"unix:{placeholder}", cap.port))
        relay = stack.enter_context(mta.PostfixLab(work / "relay", None, mx.port,
                                                   myhostname="relay.test"))
        relay2 = stack.enter_context(mta.PostfixLab(work / "relay2", None, relay.port,
                                                    myhostname="relay2.test"))
        yield Hops(mx, relay, relay2, cap)


@pytest.fixture
def mx(hops, spfmilter):
    """use(**settings): the MX's spfmilter with these settings (and Trusted_Relays)."""
    for lab in (hops.relay2, hops.relay, hops.mx):
        lab.wait_idle(30)
    hops.capture.clear()

    def use(**settings):
        milter = spfmilter(**{**RELAYED, **settings})
        hops.mx.set_milter(milter.socket_spec)
        return milter
    return use


def send(lab, client, helo, sender, rcpt="rcpt@example.com"):
    msg = mta.make_message(sender, rcpt)
    return lab.send(client, helo, sender, [rcpt], msg)


def delivered(hops, sender):
    msgs = hops.capture.wait_for(1, timeout=30)
    [m] = [m for m in msgs if m.mail_from == sender]
    return m


def spf(m, identity="mailfrom"):
    return next(v for v in m.headers("Received-SPF") if f"identity={identity}" in v)


@pytest.mark.parametrize("client,shown", [("192.0.2.10", "192.0.2.10"),
                                          ("2001:db8:1::10", '"2001:db8:1::10"')])
def test_spf_is_checked_for_the_client_behind_the_relay(hops, mx, client, shown):
    milter = mx()
    tr = send(hops.relay, client, "helo.test", "user@allowed.test")
    assert tr.final.code == 250, str(tr)
    m = delivered(hops, "user@allowed.test")
    value = spf(m)
    assert value.startswith("pass ")
    assert f"client-ip={shown};" in value and "helo=helo.test;" in value
    assert "spf=pass smtp.helo=helo.test; spf=pass smtp.mailfrom=allowed.test" in \
        re.sub(r"\s+", " ", m.header("Authentication-Results"))
    milter.wait_for_log(rf"action=accept .*client_ip={re.escape(client)} helo=helo\.test "
                        r".*relay=127\.0\.0\.1")


def test_a_fail_behind_the_relay_is_refused_at_end_of_message(hops, mx):
    milter = mx()
    tr = send(hops.relay, "198.51.100.7", "unknown.test", "user@allowed.test")
    assert tr.final.code == 250, str(tr)          # the relay took it; the MX refuses it
    bounce = hops.relay.wait_for_log(r"status=bounced \(host 127\.0\.0\.1\[127\.0\.0\.1\] said: "
                                     r"550 5\.7\.23 ", timeout=30)
    assert "198.51.100.7 is not one of allowed.test's designated mail servers" in \
        hops.relay.log_text()[bounce.start():bounce.start() + 600]
    milter.wait_for_log(r"action=reject reason=\"mailfrom fail\" .*client_ip=198\.51\.100\.7")
    hops.relay.wait_idle(30)
    assert all(m.mail_from != "user@allowed.test" for m in hops.capture.messages)


def test_two_trusted_hops_are_walked(hops, mx):
    mx()
    tr = send(hops.relay2, "192.0.2.10", "helo.test", "user@plain.test")
    assert tr.final.code == 250, str(tr)
    m = delivered(hops, "user@plain.test")
    assert spf(m).startswith("pass ") and "client-ip=192.0.2.10;" in spf(m)


def test_a_relay_that_wrote_no_hop_defers_the_message(hops, mx):
    milter = mx()
    # straight to the MX from 127.0.0.1, a trusted relay that wrote nothing (the MX does not
    # show milters its own Received header)
    msg = mta.make_message("user@allowed.test", "rcpt@example.com")
    tr = mta.smtp_transaction(hops.mx.host, hops.mx.port, "relay.test", "user@allowed.test",
                              ["rcpt@example.com"], msg)
    assert tr.final.code == 451 and tr.final.text.startswith("4.7.24 "), str(tr)
    assert "trusted relay 127.0.0.1: it wrote no Received header" in tr.final.text
    wait_for(lambda: "action=not-checked" in milter.log_text(), 10, "the warning")
    milter.wait_for_log(r"action=defer ")


def test_no_readable_hop_gets_a_header_that_says_so_when_accepted(hops, mx):
    milter = mx(Trusted_Relays_Unreadable="Accept")
    msg = mta.make_message("user@allowed.test", "rcpt@example.com")
    tr = mta.smtp_transaction(hops.mx.host, hops.mx.port, "relay.test", "user@allowed.test",
                              ["rcpt@example.com"], msg)
    assert tr.final.code == 250, str(tr)
    m = delivered(hops, "user@allowed.test")
    assert spf(m).startswith("none (mx.test: trusted relay 127.0.0.1: it wrote no Received "
                             "header; not checked)")
    assert "spf=none (trusted relay 127.0.0.1: it wrote no Received header)" in \
        re.sub(r"\s+", " ", m.header("Authentication-Results"))
    wait_for(lambda: "action=not-checked" in milter.log_text(), 10, "the warning")


# --- attacks: the client's HELO is copied into the relay's Received header ------------

@pytest.mark.parametrize("helo", [
    "x (y [192.0.2.10])",                    # Postfix/Sendmail's comment, an allowed address
    "mail.allowed.test (192.0.2.10)",        # Exchange's form
    "x (y [192.0.2.10]) by relay.test (Postfix) with ESMTP id Q",
    "x ()",                                  # an empty first comment
    "h" * 1990,                              # the relay's address far into the header
], ids=["postfix-comment", "exchange-form", "with-by-clause", "empty-comment", "long"])
def test_a_helo_written_into_the_relays_header_cannot_save_a_forged_sender(hops, mx, helo):
    milter = mx()
    sender = f"forged-{len(helo)}-{helo[:2].strip()}@allowed.test"
    tr = send(hops.relay, "198.51.100.7", helo, sender)
    assert tr.final.code == 250, str(tr)          # the relay took it; the MX must refuse it
    qid = hops.relay.wait_for_log(rf"(\w+): from=<{re.escape(sender)}>", timeout=30).group(1)
    bounce = hops.relay.wait_for_log(rf"{qid}: to=<[^>]*>.* status=bounced \(host 127\.0\.0\.1"
                                     r"\[127\.0\.0\.1\] said: 550 5\.7\.23 ", timeout=30)
    assert "198.51.100.7 is not one of allowed.test's designated mail servers" in \
        hops.relay.log_text()[bounce.start():bounce.start() + 600]
    milter.wait_for_log(r"action=reject reason=\"mailfrom fail\" .*client_ip=198\.51\.100\.7 "
                        rf".*envelope_from={re.escape(sender)}")
    hops.relay.wait_idle(30)
    assert all(m.mail_from != sender for m in hops.capture.messages)
