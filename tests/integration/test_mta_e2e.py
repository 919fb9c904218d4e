"""spfmilter end to end through a real Postfix and a real Sendmail.

Each case runs on both MTAs (module-scoped lab per MTA, see tests/mta.py):
an SMTP client -> the MTA (configured with init/postfix-main.cf or
init/sendmail.mc) -> the real spfmilter process (conftest's ``spfmilter``
factory, DNS from ``dns_server``) -> the MTA relays to a capture server, where
the stored message is inspected.  Postfix sees the client address through
XCLIENT, Sendmail through a network namespace with documentation addresses.

Under CI (CI=true) a missing MTA fails the run; elsewhere these tests skip and
name the install command (``make mta-deps``).
"""

from __future__ import annotations

import re
import socket

import pytest

from tests.kit import mta

pytestmark = pytest.mark.mta

AUTH_V4, AUTH_V6 = "192.0.2.10", "2001:db8:1::10"
UNAUTH_V4, UNAUTH_V6 = "198.51.100.7", "2001:db8:bad::7"


only = mta.only


def pytest_generate_tests(metafunc):
    mta.parametrize_labs(metafunc)


@pytest.fixture(scope="module")
def lab(request, tmp_path_factory):
    with mta.lab_without_milter(request.param, tmp_path_factory, "e2e") as running:
        yield running


@pytest.fixture
def mx(lab):
    """The lab with the capture emptied and earlier deliveries drained."""
    lab.mta.wait_idle()
    lab.capture.clear()
    return lab


@pytest.fixture
def use(mx, spfmilter):
    """use(**settings): start (or reuse) spfmilter with these settings and point the MTA at it."""
    def start(**settings):
        milter = spfmilter(**settings)
        mx.mta.set_milter(milter.socket_spec)
        return milter
    return start


def send(lab, client, helo, mail_from, rcpts, *, headers=(), login=None, more=()):
    msg = mta.make_message(mail_from, list(rcpts), extra_headers=headers)
    return lab.mta.send(client, helo, mail_from, list(rcpts), msg, login=login, more=more)


def spf_headers(m: mta.CapturedMessage, identity: str = "mailfrom") -> list[str]:
    return [v for v in m.headers("Received-SPF") if f"identity={identity}" in v]


def our_ar(m: mta.CapturedMessage) -> list[str]:
    return [v for v in m.headers("Authentication-Results") if v.lower().startswith("mx.test;")]


def assert_no_delivery(lab):
    # the transaction got no 250 at end of data, so nothing may have been queued
    assert lab.mta.queue_files() == []
    assert lab.capture.count() == 0


# --------------------------------------------------------------------------


@pytest.mark.parametrize("client", [AUTH_V4, AUTH_V6])
def test_authorized_sender_delivered_with_both_headers(mx, use, client):
    milter = use()
    tr = send(mx, client, "helo.test", "user@allowed.test", ["rcpt@example.com"])
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = mx.capture.wait_for(1)
    [rspf] = spf_headers(m)
    assert rspf.startswith("pass (mx.test: ")
    client_ip = client if ":" not in client else f'"{client}"'
    assert f"client-ip={client_ip};" in rspf
    assert 'envelope-from="user@allowed.test"' in rspf
    assert "helo=helo.test" in rspf and "receiver=mx.test" in rspf
    [ar] = our_ar(m)
    assert "spf=pass smtp.mailfrom=allowed.test" in ar
    assert "spf=pass smtp.helo=helo.test" in ar
    # RFC 7208 9.1: above the Received: field the receiving MTA adds
    names = m.header_names()
    received = names.index("Received")
    assert names.index("Received-SPF") < received
    assert names.index("Authentication-Results") < received
    milter.wait_for_log(rf"action=accept .*client_ip={re.escape(client)}\b")


@pytest.mark.parametrize("client", [UNAUTH_V4, UNAUTH_V6])
def test_forged_sender_refused_at_rcpt_with_explanation(mx, use, client):
    use()
    tr = send(mx, client, "unknown.test", "user@allowed.test", ["rcpt@example.com"])
    r = tr.rcpt("rcpt@example.com")
    assert r.code == 550 and r.enhanced == "5.7.23", str(tr)
    if client == UNAUTH_V4:
        assert "198.51.100.7 is not one of allowed.test's designated mail servers" in r.text
    else:  # %{i} of an IPv6 address is dotted nibbles (RFC 7208 7.3)
        assert "2.0.0.1.0.D.B.8.0.B.A.D." in r.text and "designated mail servers" in r.text
    assert tr.get("DATA") is None
    assert_no_delivery(mx)


def test_softfail_delivered_with_header(mx, use):
    use()
    tr = send(mx, UNAUTH_V4, "unknown.test", "user@soft.test", ["rcpt@example.com"])
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = mx.capture.wait_for(1)
    [rspf] = spf_headers(m)
    assert rspf.startswith("softfail (mx.test: ")
    assert "spf=softfail smtp.mailfrom=soft.test" in our_ar(m)[0]


def test_dns_timeout_deferred_then_accepted_once_dns_answers(mx, spfmilter, dns_server):
    # a daemon of its own: its DNS cache must not remember the other MTA's run
    milter = spfmilter(fresh=True, TempError_Defer="True", Lookup_Time="1")
    mx.mta.set_milter(milter.socket_spec)
    tr = send(mx, UNAUTH_V4, "unknown.test", "user@slow.test", ["rcpt@example.com"])
    r = tr.rcpt("rcpt@example.com")
    assert r.code == 451 and r.enhanced == "4.7.24", str(tr)
    assert_no_delivery(mx)
    dns_server.update({"slow.test": [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}]})
    tr = send(mx, UNAUTH_V4, "unknown.test", "user@slow.test", ["rcpt@example.com"])
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = mx.capture.wait_for(1)
    assert spf_headers(m)[0].startswith("pass ")


def test_permerror_rejected_when_configured(mx, use):
    use(PermError_reject="True")
    tr = send(mx, UNAUTH_V4, "unknown.test", "user@perm.test", ["rcpt@example.com"])
    r = tr.rcpt("rcpt@example.com")
    assert r.code == 550 and r.enhanced == "5.7.24", str(tr)
    assert_no_delivery(mx)


def test_permerror_accepted_with_header_by_default(mx, use):
    use()
    tr = send(mx, UNAUTH_V4, "unknown.test", "user@perm.test", ["rcpt@example.com"])
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = mx.capture.wait_for(1)
    assert spf_headers(m)[0].startswith("permerror ")
    assert "spf=permerror smtp.mailfrom=perm.test" in our_ar(m)[0]


def test_null_sender_checked_on_helo(mx, use):
    use()
    tr = send(mx, UNAUTH_V4, "badhelo.test", "", ["rcpt@example.com"])
    r = tr.rcpt("rcpt@example.com")
    assert r.code == 550 and "postmaster@badhelo.test" in r.text, str(tr)
    assert_no_delivery(mx)
    tr = send(mx, AUTH_V4, "helo.test", "", ["rcpt@example.com"])
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = mx.capture.wait_for(1)
    assert m.mail_from == ""
    assert 'envelope-from="postmaster@helo.test"' in spf_headers(m)[0]
    assert spf_headers(m, "helo")[0].startswith("pass ")
    assert "spf=pass smtp.helo=helo.test" in our_ar(m)[0]


def test_messages_on_one_connection_get_their_own_verdicts(mx, use):
    use()
    more = [(s, ["rcpt@example.com"], mta.make_message(s, "rcpt@example.com"))
            for s in ("user@soft.test", "user@forwarder.test")]
    tr = send(mx, UNAUTH_V4, "unknown.test", "user@allowed.test", ["rcpt@example.com"], more=more)
    assert len(tr.all("CONNECT")) == 1
    assert [r.code for r in tr.all("RCPT")] == [550, 250, 250], str(tr)
    assert [r.code for r in tr.all("DOT")] == [250, 250], str(tr)
    msgs = {m.mail_from: m for m in mx.capture.wait_for(2)}
    assert set(msgs) == {"user@soft.test", "user@forwarder.test"}
    [soft] = spf_headers(msgs["user@soft.test"])
    [fwd] = spf_headers(msgs["user@forwarder.test"])
    assert soft.startswith("softfail ") and 'envelope-from="user@soft.test"' in soft
    assert fwd.startswith("pass ") and 'envelope-from="user@forwarder.test"' in fwd


def test_exempt_recipient_gets_the_message_others_refused(mx, use):
    use(Exempt_Recipients="postmaster@")
    tr = send(mx, UNAUTH_V4, "unknown.test", "user@allowed.test",
              ["staff@example.com", "postmaster@example.com"])
    assert tr.rcpt("staff@example.com").code == 550, str(tr)
    assert tr.rcpt("staff@example.com").enhanced == "5.7.23"
    assert tr.rcpt("postmaster@example.com").code == 250, str(tr)
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = mx.capture.wait_for(1)
    assert m.rcpt_tos == ["postmaster@example.com"]
    assert spf_headers(m)[0].startswith("fail ")


def test_forged_authentication_results_removed_before_delivery(mx, use):
    use()
    forged = [
        ("Authentication-Results", "mx.test; spf=pass smtp.mailfrom=ceo@allowed.test (forged-1)"),
        ("Authentication-Results", "(forged-2)\r\n\tMX.TEST; dkim=pass header.d=allowed.test"),
        ("Authentication-Results", "other.example; spf=fail smtp.mailfrom=x@y"),
        ("Received-SPF", "pass (forged-3) client-ip=192.0.2.10; receiver=mx.test; identity=mailfrom"),
        ("X-Keep", "after the forged ones"),
    ]
    tr = send(mx, AUTH_V4, "helo.test", "ceo@allowed.test", ["rcpt@example.com"], headers=forged)
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = mx.capture.wait_for(1)
    assert "forged-" not in m.text
    assert m.headers("Authentication-Results")[-1] == "other.example; spf=fail smtp.mailfrom=x@y"
    [ar] = our_ar(m)
    assert ar.startswith("mx.test; ") and "spf=pass smtp.mailfrom=allowed.test" in ar
    assert len(m.headers("Received-SPF")) == len(spf_headers(m)) + len(spf_headers(m, "helo"))
    assert m.headers("X-Keep") == ["after the forged ones"]
    assert m.headers("Subject") == ["lab test"]


@only("postfix")  # SMTP AUTH through XCLIENT LOGIN
def test_authenticated_client_never_refused(mx, use):
    milter = use()
    # would be refused on HELO and on MAIL FROM if it were checked
    tr = send(mx, UNAUTH_V4, "badhelo.test", "user@allowed.test", ["rcpt@example.com"], login="alice")
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = mx.capture.wait_for(1)
    assert spf_headers(m) == [] and our_ar(m) == []
    milter.wait_for_log(r"action=accept reason=\"skipped \(authenticated\)\"")


def test_spfmilter_not_running_tempfails(mx, tmp_path):
    # nothing at the path at all, then a stale socket file nobody listens on
    missing = tmp_path / "gone" / "spfmilter.sock"
    missing.parent.mkdir()
    stale_dir = tmp_path / "stale"
    stale_dir.mkdir()
    stale = stale_dir / "spfmilter.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    for path in (missing, stale):
        mx.mta.set_milter(f"unix:{path}")
        tr = send(mx, AUTH_V4, "helo.test", "user@allowed.test", ["rcpt@example.com"])
        temp = [r for r in tr if 400 <= r.code < 500]
        assert temp and temp[0].command in ("MAIL", "RCPT", "DATA", "DOT"), str(tr)
        assert not any(r.command == "DOT" and r.code == 250 for r in tr), str(tr)
        assert_no_delivery(mx)
