"""The policy front end in-process: requests -> the one core -> Postfix actions, DNS from the
test server.  The transports (stdin/stdout, Policy_Socket) and Postfix are in
tests/integration/test_policy.py."""

import logging
import socket
import tempfile

import pytest

from spfmilter import config as cfg
from spfmilter import engine, metrics, runtime
from spfmilter.frontends import policy


def req(**attrs: str) -> dict[str, str]:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
            "client_address": "192.0.2.10", "helo_name": "helo.test",
            "sender": "user@allowed.test", "recipient": "rcpt@example.com", "instance": "i1"}
    base.update(attrs)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def use(dns_server):
    """use(**settings) installs a runtime with these settings; gives a fresh Session."""
    previous = runtime.current_or_none()

    def start(**settings: str) -> policy.Session:
        base = {"Nameservers": dns_server.nameserver, "Authserv_Id": "mx.test",
                "skip_addresses": "", "Lookup_Time": "2"}
        base.update(settings)
        runtime.install(runtime.Runtime.create(cfg.from_mapping(base)))
        return policy.Session()

    yield start
    if previous is not None:
        runtime.install(previous)


def test_pass_prepends_one_authentication_results_for_header_type_both(use):
    action = use().answer(req())
    assert action == ("PREPEND Authentication-Results: mx.test; spf=pass smtp.helo=helo.test; "
                      "spf=pass smtp.mailfrom=allowed.test")


def test_header_type_spf_prepends_the_mail_from_received_spf(use):
    action = use(Header_Type="SPF").answer(req())
    assert action.startswith("PREPEND Received-SPF: pass (mx.test: domain of user@allowed.test ")
    assert "identity=mailfrom" in action and "\n" not in action


def test_header_type_none_answers_dunno(use):
    assert use(Header_Type="None").answer(req()) == "DUNNO"


def test_fail_is_the_milters_reply(use):
    action = use().answer(req(client_address="198.51.100.7", helo_name="unknown.test"))
    assert action.startswith("550 5.7.23 ")
    assert "198.51.100.7 is not one of allowed.test's designated mail servers" in action


def test_settings_that_need_the_message_do_not_weaken_refusals(use):
    """DKIM_Rescue and Trusted_Relays need the message, which a policy service never
    sees: a fail is still refused at RCPT, and a relay's client is checked as it is."""
    s = use(DKIM_Rescue="yes", Trusted_Relays="198.51.100.0/24")
    action = s.answer(req(client_address="198.51.100.7", helo_name="unknown.test"))
    assert action.startswith("550 5.7.23 ")


def test_enhanced_status_switch_and_reason_message(use):
    s = use(SPF_Enhanced_Status_Codes="False", Reason_Message="SPF says no: {result} {sender}")
    action = s.answer(req(client_address="198.51.100.7", helo_name="unknown.test"))
    assert action == "550 5.7.1 SPF says no: fail user@allowed.test"


def test_permerror_reject_uses_5_7_24(use):
    action = use(PermError_reject="True").answer(
        req(client_address="198.51.100.7", helo_name="unknown.test", sender="u@perm.test"))
    assert action.startswith("550 5.7.24 ")


def test_temperror_under_tempError_defer_is_defer_if_permit(use):
    action = use(TempError_Defer="True", Lookup_Time="1").answer(
        req(helo_name="unknown.test", sender="u@slow.test"))
    assert action.startswith("DEFER_IF_PERMIT 4.7.24 ")


def test_recipients_of_one_instance_share_one_evaluation_and_one_header(use, dns_server):
    s = use(Metrics="127.0.0.1:9100")   # counted only with the endpoint set
    metrics_before = metrics.TRANSACTIONS._value.get()
    first = s.answer(req(recipient="a@example.com"))
    queries = len(dns_server.queries)
    assert first.startswith("PREPEND Authentication-Results: ")
    assert s.answer(req(recipient="b@example.com")) == "DUNNO"
    assert s.answer(req(recipient="c@example.com")) == "DUNNO"
    assert len(dns_server.queries) == queries  # no second evaluation
    assert metrics.TRANSACTIONS._value.get() == metrics_before + 1
    # a new message on the same connection gets its own header
    assert s.answer(req(instance="i2")).startswith("PREPEND ")


def test_exempt_recipient_of_a_failing_message_gets_the_header(use):
    s = use(Exempt_Recipients="postmaster@")
    bad = req(client_address="198.51.100.7", helo_name="unknown.test")
    assert s.answer({**bad, "recipient": "rcpt@example.com"}).startswith("550 5.7.23 ")
    action = s.answer({**bad, "recipient": "postmaster@example.com"})
    assert action.startswith("PREPEND Authentication-Results: mx.test; ")
    assert "spf=fail smtp.mailfrom=allowed.test" in action


def test_recipient_sections_apply(use, dns_server):
    s = use()
    runtime.install(runtime.Runtime.create(cfg.parse_text(
        f"Nameservers = {dns_server.nameserver}\nskip_addresses =\nMail_From_reject = False\n"
        "[recipient strict@example.com]\nMail_From_reject = Fail\n")))
    bad = req(client_address="198.51.100.7", helo_name="unknown.test", instance="r")
    assert s.answer({**bad, "recipient": "strict@example.com"}).startswith("550 5.7.23 ")
    assert s.answer({**bad, "recipient": "other@example.com"}).startswith("PREPEND ")


def test_sasl_user_is_not_checked(use, dns_server):
    dns_server.clear_queries()
    action = use().answer(req(client_address="198.51.100.7", sasl_username="alice"))
    assert action == "DUNNO" and dns_server.queries == []


def test_null_sender_is_checked_as_postmaster_at_helo(use):
    s = use(Header_Type="SPF")
    action = s.answer(req(sender=""))
    assert action.startswith("PREPEND Received-SPF: pass ")
    assert "postmaster@helo.test" in action


def test_only_rcpt_state_of_an_access_policy_request_is_evaluated(use, dns_server):
    s = use()
    dns_server.clear_queries()
    assert s.answer(req(protocol_state="DATA")) == "DUNNO"
    assert s.answer(req(protocol_state="END-OF-MESSAGE")) == "DUNNO"
    assert s.answer(req(request="junk")) == "DUNNO"
    assert dns_server.queries == []


@pytest.mark.parametrize("missing", ["client_address", "sender"])
def test_request_without_client_or_sender_is_deferred(use, missing, caplog):
    with caplog.at_level(logging.INFO, logger="spfmilter"):
        action = use().answer(req(**{missing: None}))
    assert action == f"DEFER_IF_PERMIT 4.3.0 spfmilter: policy request without {missing}"
    assert f"action=bad-input error=\"no {missing}\"" in caplog.text


def test_pass_restrictions_answer_the_restriction_class(use):
    s = use(Mail_From_pass_restriction="spf_passed", HELO_pass_restriction="helo_passed")
    assert s.answer(req()) == "spf_passed"
    assert s.answer(req(recipient="b@example.com")) == "spf_passed"  # every recipient
    helo_only = req(instance="h", sender="u@none.test")
    assert s.answer(helo_only) == "helo_passed"


def test_decision_line_is_the_milters_with_via(use, caplog):
    with caplog.at_level(logging.INFO, logger="spfmilter"):
        use().answer(req(queue_id="ABC123"))
    assert ("action=accept reason=\"spf pass\" identity=mailfrom result=pass helo_result=pass "
            "client_ip=192.0.2.10 helo=helo.test envelope_from=user@allowed.test "
            "rcpt=rcpt@example.com receiver=mx.test queue_id=ABC123 via=policy") in caplog.text


def test_queueid_false_keeps_the_queue_id_out_of_the_decision_line(use, caplog):
    with caplog.at_level(logging.INFO, logger="spfmilter"):
        use(QueueID="False").answer(req(queue_id="ABC123"))
    assert "action=accept " in caplog.text and "receiver=mx.test via=policy" in caplog.text
    assert "ABC123" not in caplog.text


def test_a_fault_in_the_engine_is_a_tempfail_not_a_crash(use, monkeypatch):
    s = use()

    def boom(*a, **k):
        raise RuntimeError("resolver exploded")

    monkeypatch.setattr(engine.Session, "rcpt", boom)
    assert s.answer(req()) == "DEFER_IF_PERMIT 4.3.0 spfmilter: internal error, try again later"


# --- framing: converse() over an in-memory stream -----------------------------------------

def run(data: bytes, session: policy.Session, chunk: int = 7, idle: float = 5) -> tuple[str, bytes]:
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    out = bytearray()

    def recv(timeout: float, between: bool) -> bytes:
        if pieces:
            return pieces.pop(0)
        return b""

    why = policy.converse(session, recv, out.extend, idle_timeout=idle)
    return why, bytes(out)


def encode(*requests: dict[str, str]) -> bytes:
    return b"".join("".join(f"{k}={v}\n" for k, v in r.items()).encode() + b"\n"
                    for r in requests)


def test_several_requests_in_small_pieces_get_one_answer_each(use):
    why, out = run(encode(req(), req(recipient="b@example.com"), req(protocol_state="DATA")),
                   use())
    assert why == "end of input"
    answers = out.split(b"\n\n")
    assert answers[0].startswith(b"action=PREPEND Authentication-Results: ")
    assert answers[1:] == [b"action=DUNNO", b"action=DUNNO", b""]


def test_line_without_equals_is_a_malformed_request(use):
    why, out = run(b"request=smtpd_access_policy\ngarbage\n\n" + encode(req()), use())
    assert out.startswith(b"action=DEFER_IF_PERMIT 4.3.0 spfmilter: malformed policy request\n\n")
    assert out.count(b"action=") == 2  # the next request is served normally


def test_overlong_line_is_answered_and_closes(use):
    why, out = run(b"request=" + b"x" * (1 << 20), use(), chunk=65536)
    assert why == "line too long"
    assert out == b"action=DEFER_IF_PERMIT 4.3.0 spfmilter: policy request too large\n\n"


def test_too_many_attributes_is_answered_and_closes(use):
    why, out = run(b"".join(b"x%d=1\n" % i for i in range(1000)), use(), chunk=4096)
    assert why == "request too large" and out.endswith(b"too large\n\n")


def test_binary_data_never_reaches_the_answer_raw(use):
    nasty = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.10\n"
             b"helo_name=helo.test\nsender=us\xff\x00er\r@allowed.test\nrecipient=a\x1b@b\n"
             b"instance=z\n\n")
    why, out = run(nasty, use(Header_Type="SPF"))
    assert why == "end of input"
    text = out.decode("ascii")  # clean() replaced every control and undecodable byte
    assert text.startswith("action=PREPEND Received-SPF: ") and text.endswith("\n\n")
    assert text.count("\n") == 2


def test_end_of_input_inside_a_request_is_logged_without_an_answer(use, caplog):
    with caplog.at_level(logging.INFO, logger="spfmilter"):
        why, out = run(b"request=smtpd_access_policy\nprotocol_state=RCPT\n", use())
    assert why == "end of input" and out == b""
    assert "error=\"end of input inside a request\"" in caplog.text


def test_idle_client_is_closed(use):
    def recv(timeout: float, between: bool) -> bytes:
        raise policy._Idle

    assert policy.converse(use(), recv, lambda b: None, idle_timeout=0.1) == "idle"


def test_config_takes_policy_keys():
    s = cfg.parse_text("Policy_Socket = inet:9999@127.0.0.1\nHELO_pass_restriction = helo_ok\n"
                       "Mail_From_pass_restriction = mf_ok\nPolicy_Idle_Timeout = 60\n")
    assert str(s.policy_socket) == "inet:9999@127.0.0.1" and s.policy_idle_timeout == 60
    assert (s.helo_pass_restriction, s.mail_from_pass_restriction) == ("helo_ok", "mf_ok")
    with pytest.raises(cfg.ConfigError, match=r"x:1: Mail_From_pass_restriction: expected the name"):
        cfg.parse_text("Mail_From_pass_restriction = permit mynetworks\n", "x")
    with pytest.raises(cfg.ConfigError, match=r"x:2: Policy_Socket: must differ from Socket"):
        cfg.parse_text("Socket = unix:/a/s\nPolicy_Socket = unix:/a/s\n", "x")
    with pytest.raises(cfg.ConfigError, match=r"x:1: Policy_Socket: "):
        cfg.parse_text("Policy_Socket = tcp:1\n", "x")


def test_a_request_trickling_in_is_closed_when_its_time_is_up(use, monkeypatch):
    monkeypatch.setattr(policy, "REQUEST_TIMEOUT", 0.3)
    import time

    def recv(timeout: float, between: bool) -> bytes:
        time.sleep(min(timeout, 0.05))  # a byte now and then, each within the per-read limit
        return b"x"

    started = time.monotonic()
    assert policy.converse(use(), recv, lambda b: None, idle_timeout=30) == "idle"
    assert time.monotonic() - started < 2


def test_skipped_client_gets_dunno_without_evaluation(use, dns_server):
    s = use(skip_addresses="192.0.2.0/24")
    dns_server.clear_queries()
    assert s.answer(req()) == "DUNNO" and dns_server.queries == []


def test_policy_command_with_a_refused_key_says_so_in_one_line_and_in_its_log(tmp_path):
    import subprocess
    import sys

    from tests.kit import ROOT

    conf = tmp_path / "policyd-spf.conf"
    conf.write_text("debugLevel = 1\nPer_User = /etc/x\n")
    logfile = tmp_path / "policy.log"
    res = subprocess.run([sys.executable, "-m", "spfmilter", "policy", "-c", str(conf),
                          "--log-file", str(logfile)], input=b"", capture_output=True,
                         cwd=ROOT, timeout=30)
    assert res.returncode == 1 and res.stdout == b""
    line = f"{conf}:2: Per_User: not supported by spfmilter: put per-recipient settings in"
    assert res.stderr.decode().count("\n") == 1 and line in res.stderr.decode()
    assert "action=config-error" in logfile.read_text() and line in logfile.read_text()


def _ask_over(path: str, request: dict[str, str]) -> str:
    """One request over Policy_Socket's unix socket; the answer's action."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(path)
        client.sendall(encode(request))
        answer = b""
        while not answer.endswith(b"\n\n"):
            chunk = client.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer.decode()


def test_a_service_stopped_and_started_again_serves_again(use):
    with tempfile.TemporaryDirectory(prefix="spfm-") as folder:
        path = f"{folder}/policy.sock"
        use(Policy_Socket=f"unix:{path}")
        settings = runtime.current().settings
        service = policy.open_listener(settings, owner=None)
        assert service is not None
        try:
            service.serve_in_background()
            assert _ask_over(path, req()).startswith("action=PREPEND Authentication-Results: ")
            assert service.drain(5)
            service.serve_in_background()
            # the second start accepts and answers, not only the first
            assert _ask_over(path, req()).startswith("action=PREPEND Authentication-Results: ")
            assert service.drain(5)
        finally:
            service.listening.remove()
