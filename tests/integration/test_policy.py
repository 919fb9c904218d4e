"""The policy service end to end: `spfmilter policy` on stdin/stdout and the daemon's
Policy_Socket, directly and through a real Postfix (master.cf spawn service and
check_policy_service, as python policyd-spf is set up), with hostile clients.

DNS comes from the tests' server; Postfix sees the client address through
XCLIENT (LOGIN= for a SASL user).  Under CI a missing Postfix fails the run.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kit import ROOT, mta
from tests.kit.net import free_port
from tests.kit.wait import wait_for

AUTH, UNAUTH = "192.0.2.10", "198.51.100.7"
EXEMPT = "exempt@example.com"
SETTINGS = {"TempError_Defer": "True", "Exempt_Recipients": EXEMPT}
BIN = Path(sys.executable).parent / "spfmilter"   # the venv's console script


def request(**attrs: str | None) -> dict[str, str]:
    base: dict[str, str | None] = {
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": AUTH, "client_name": "unknown", "helo_name": "helo.test",
        "sender": "user@allowed.test", "recipient": "rcpt@example.com", "instance": "1f.2e.3d"}
    base.update(attrs)
    return {k: v for k, v in base.items() if v is not None}


def encode(*reqs: dict[str, str]) -> bytes:
    return b"".join(("".join(f"{k}={v}\n" for k, v in r.items()) + "\n").encode() for r in reqs)


def answers(out: bytes) -> list[str]:
    assert out.endswith(b"\n\n") or out == b"", out[-200:]
    return [a.decode() for a in out.split(b"\n\n")[:-1]]


# --- the cases every transport must get right -------------------------------------------------

#: name -> (request attributes, what the one answer starts with)
CASES: dict[str, tuple[dict[str, str], str]] = {
    "pass": ({}, "action=PREPEND Authentication-Results: mx.test; spf=pass smtp.helo=helo.test; "
                 "spf=pass smtp.mailfrom=allowed.test"),
    "fail": ({"client_address": UNAUTH, "helo_name": "unknown.test"},
             "action=550 5.7.23 Message rejected due to SPF fail for MAIL FROM user@allowed.test: "
             "198.51.100.7 is not one of allowed.test's designated mail servers"),
    "softfail": ({"client_address": UNAUTH, "helo_name": "unknown.test", "sender": "u@soft.test"},
                 "action=PREPEND Authentication-Results: mx.test; spf=none smtp.helo=unknown.test;"
                 " spf=softfail smtp.mailfrom=soft.test"),
    "neutral": ({"sender": "u@neutral.test"}, "action=PREPEND Authentication-Results: mx.test; "
                "spf=pass smtp.helo=helo.test; spf=neutral smtp.mailfrom=neutral.test"),
    "none": ({"sender": "u@none.test"}, "action=PREPEND Authentication-Results: mx.test; "
             "spf=pass smtp.helo=helo.test; spf=none smtp.mailfrom=none.test"),
    "permerror": ({"sender": "u@perm.test"}, "action=PREPEND Authentication-Results: mx.test; "
                  "spf=pass smtp.helo=helo.test; spf=permerror smtp.mailfrom=perm.test"),
    "temperror": ({"sender": "u@slow.test"}, "action=DEFER_IF_PERMIT 4.7.24 Message deferred due "
                  "to SPF temperror for MAIL FROM u@slow.test"),
    "null sender": ({"sender": ""}, "action=PREPEND Authentication-Results: mx.test; "
                    "spf=pass smtp.helo=helo.test; spf=pass smtp.mailfrom=helo.test"),
    "sasl user": ({"client_address": UNAUTH, "sasl_username": "alice"}, "action=DUNNO"),
    "exempt recipient": ({"client_address": UNAUTH, "helo_name": "unknown.test",
                          "recipient": EXEMPT}, "action=PREPEND Authentication-Results: mx.test; "
                         "spf=none smtp.helo=unknown.test; spf=fail smtp.mailfrom=allowed.test"),
}
THREE = [request(recipient=r) for r in ("a@example.com", "b@example.com", "c@example.com")]


class Stdio:
    """`spfmilter policy -c FILE --log-file FILE` as Postfix's spawn runs it."""

    def __init__(self, folder: Path, settings: dict[str, str]) -> None:
        self.conf = folder / "policy.conf"
        self.conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        self.log = folder / "policy.log"

    def popen(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(BIN), "policy", "-c", str(self.conf), "--log-file",
                                 str(self.log)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=ROOT)

    def exchange(self, data: bytes, timeout: float = 20) -> tuple[bytes, int]:
        proc = self.popen()
        out, err = proc.communicate(data, timeout)
        assert err == b"", err  # nothing but the protocol leaves the process
        return out, proc.returncode

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class SocketClient:
    """A policy client of a running daemon's Policy_Socket (unix or inet)."""

    def __init__(self, spec: str, log_text: Callable[[], str]) -> None:
        self.spec, self.log_text = spec, log_text

    def connect(self, timeout: float = 20) -> socket.socket:
        kind, _, rest = self.spec.partition(":")
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(timeout)
            sock.connect(rest)
        else:
            port, _, host = rest.partition("@")
            sock = socket.create_connection((host, int(port)), timeout)
        return sock

    def exchange(self, data: bytes, timeout: float = 20) -> tuple[bytes, int]:
        """Send everything, half-close, read to the end: what the server answered."""
        with self.connect(timeout) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            return _read_all(sock), 0


def _read_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(65536):
        out += chunk
    return bytes(out)


def settings_for(dns_server) -> dict[str, str]:
    return {"Nameservers": dns_server.nameserver, "skip_addresses": "", "Authserv_Id": "mx.test",
            "Lookup_Time": "3", **SETTINGS}


@pytest.fixture(scope="module")
def sockets(tmp_path_factory) -> dict[str, str]:
    """The module's Policy_Socket specs: one daemon per kind serves all its tests."""
    return {"unix": f"unix:{tmp_path_factory.mktemp('pol')}/policy.sock",
            "inet": f"inet:{free_port()}@127.0.0.1"}


@pytest.fixture(params=["stdio", "unix", "inet"])
def transport(request, dns_server, spfmilter, sockets, tmp_path_factory):
    """A way to talk to the policy service: stdin/stdout, or the daemon's Policy_Socket."""
    if request.param == "stdio":
        return Stdio(tmp_path_factory.mktemp("policy"), settings_for(dns_server))
    spec = sockets[request.param]
    daemon = spfmilter(Policy_Socket=spec, **SETTINGS)
    return SocketClient(spec, daemon.log_text)


@pytest.mark.parametrize("case", list(CASES))
def test_each_result(transport, case):
    attrs, expected = CASES[case]
    started = time.monotonic()
    out, rc = transport.exchange(encode(request(**attrs)))
    assert rc == 0
    [answer] = answers(out)
    assert answer.startswith(expected), answer
    assert "\n" not in answer
    assert time.monotonic() - started < 3 + 2  # Lookup_Time plus a small margin


def test_three_recipients_one_header_one_evaluation(transport):
    out, _ = transport.exchange(encode(*THREE, request(instance="other", recipient="d@x.test")))
    first, second, third, other = answers(out)
    assert first.startswith("action=PREPEND Authentication-Results: mx.test; ")
    assert second == third == "action=DUNNO"
    assert other.startswith("action=PREPEND ")  # a new message gets its own header
    wait_for(lambda: len(re.findall(r"action=accept .*rcpt=[abc]@example.com",
                                    transport.log_text())) >= 3, 10, "three decision lines")


def test_other_states_and_request_types_answer_dunno(transport):
    out, _ = transport.exchange(encode(request(protocol_state="DATA"),
                                       request(protocol_state="END-OF-MESSAGE"),
                                       request(request="junk_policy")))
    assert answers(out) == ["action=DUNNO"] * 3


# --- hostile clients ----------------------------------------------------------------------

HOSTILE: dict[str, tuple[bytes, list[str]]] = {
    "line without =": (b"request=smtpd_access_policy\nthis is not an attribute\n\n",
                       ["action=DEFER_IF_PERMIT 4.3.0 spfmilter: malformed policy request"]),
    "1 MiB line": (b"request=" + b"A" * (1 << 20) + b"\n\n",
                   ["action=DEFER_IF_PERMIT 4.3.0 spfmilter: policy request too large"]),
    "binary data": (bytes(range(256)) * 64 + b"\n\n",
                    ["action=DEFER_IF_PERMIT 4.3.0 spfmilter: malformed policy request"]),
    "no client_address": (encode(request(client_address=None)),
                          ["action=DEFER_IF_PERMIT 4.3.0 spfmilter: policy request without "
                           "client_address"]),
    "no sender": (encode(request(sender=None)),
                  ["action=DEFER_IF_PERMIT 4.3.0 spfmilter: policy request without sender"]),
    "unknown request": (encode(request(request="bogus")), ["action=DUNNO"]),
    "end of input mid-request": (b"request=smtpd_access_policy\nprotocol_state=RCPT\n", []),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_gets_its_defined_answer_and_a_log_line(transport, case):
    data, expected = HOSTILE[case]
    before = transport.log_text().count("action=bad-input")
    out, rc = transport.exchange(data)
    got = answers(out)
    assert rc == 0
    assert got == expected
    wait_for(lambda: transport.log_text().count("action=bad-input") > before, 10,
             "a bad-input log line")
    assert "Traceback" not in transport.log_text()


def test_service_still_answers_after_hostile_clients(transport):
    for data, _ in HOSTILE.values():
        transport.exchange(data)
    out, _ = transport.exchange(encode(request()))
    assert answers(out)[0].startswith(CASES["pass"][1])


def test_stdio_idle_client_is_closed(dns_server, tmp_path):
    policy = Stdio(tmp_path, {**settings_for(dns_server), "Policy_Idle_Timeout": "1"})
    proc = policy.popen()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(encode(request()))
        proc.stdin.flush()
        assert proc.stdout.readline().startswith(b"action=PREPEND ")
        assert proc.wait(10) == 0  # stdin still open: it left because the client was idle
        assert "action=policy-close reason=idle" in policy.log_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.communicate()


def test_socket_idle_and_stalled_clients_are_closed_others_served(spfmilter, tmp_path_factory):
    spec = f"unix:{tmp_path_factory.mktemp('pol')}/idle.sock"
    daemon = spfmilter(fresh=True, Policy_Socket=spec, Policy_Idle_Timeout="1")
    client = SocketClient(spec, daemon.log_text)
    idle = client.connect()
    stalled = client.connect()
    stalled.sendall(b"request=smtpd_access_policy\nprotocol_")
    # meanwhile another client is served at once
    out, _ = client.exchange(encode(request()))
    assert answers(out)[0].startswith(CASES["pass"][1])
    for sock in (idle, stalled):
        started = time.monotonic()
        assert _read_all(sock) == b""  # closed by the server
        assert time.monotonic() - started < 5
        sock.close()
    daemon.wait_for_log(r"action=policy-close reason=idle")
    daemon.wait_for_log(r'action=policy-close reason="request stalled"')


def test_stop_waits_for_a_policy_answer_in_flight_then_removes_the_socket(
        spfmilter, tmp_path_factory, dns_server):
    path = tmp_path_factory.mktemp("pol") / "drain.sock"
    daemon = spfmilter(fresh=True, Policy_Socket=f"unix:{path}", Lookup_Time="4",
                       TempError_Defer="True")
    client = SocketClient(f"unix:{path}", daemon.log_text)
    slow = client.connect()
    slow.sendall(encode(request(sender="u@slow.test")))  # takes Lookup_Time (4 s) to answer
    wait_for(lambda: any(q[0].lower().startswith("slow.test") for q in dns_server.queries),
             10, "the slow lookup to start")
    idle = client.connect()
    daemon.proc.send_signal(15)
    out = slow.recv(65536)
    assert out.startswith(b"action=DEFER_IF_PERMIT 4.7.24 "), out
    assert _read_all(idle) == b""  # an idle client is closed, not waited for
    assert daemon.proc.wait(20) == 0
    assert not path.exists()
    assert "policy_in_flight=0" in daemon.log_text()


def test_policy_socket_in_use_is_one_line(spfmilter, tmp_path_factory, dns_server):
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen(1)
        folder = tmp_path_factory.mktemp("busy")
        conf = folder / "c.conf"
        conf.write_text(f"Socket = unix:{folder}/m.sock\nPolicy_Socket = inet:{port}@127.0.0.1\n"
                        f"Nameservers = {dns_server.nameserver}\n")
        res = subprocess.run([str(BIN), "-c", str(conf), "--log", "stderr"], capture_output=True,
                             text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 1
    assert re.fullmatch(r"spfmilter: <settings>: Policy_Socket: cannot listen on "
                        rf"inet:{port}@127.0.0.1: Address already in use\n", res.stderr), res.stderr


def test_reload_applies_to_the_next_message_of_an_open_connection(spfmilter, tmp_path_factory):
    spec = f"unix:{tmp_path_factory.mktemp('pol')}/reload.sock"
    daemon = spfmilter(fresh=True, Policy_Socket=spec)
    with SocketClient(spec, daemon.log_text).connect() as sock:
        bad = request(client_address=UNAUTH, helo_name="unknown.test")
        sock.sendall(encode(bad))
        assert sock.recv(65536).startswith(b"action=550 5.7.23 ")
        text = daemon.config_path.read_text()
        daemon.config_path.write_text(text + "TestOnly = 0\n")
        daemon.proc.send_signal(1)
        daemon.wait_for_log(r"action=reload result=ok")
        sock.sendall(encode({**bad, "instance": "next"}))
        assert sock.recv(65536).startswith(b"action=PREPEND ")


# --- through a real Postfix -----------------------------------------------------------------

POLICY_PORT = free_port()


@pytest.fixture(scope="module")
def postfix(tmp_path_factory, _dns_session) -> Iterator[tuple[mta.PostfixLab, mta.CaptureSMTP,
                                                                  int, Stdio]]:
    """One Postfix: its main port asks `spfmilter policy` (spawn, private/policyd-spf), a
    second port asks the daemon's Policy_Socket (inet:127.0.0.1:POLICY_PORT)."""
    mta.require_or_skip("postfix")
    work = tmp_path_factory.mktemp("policy-postfix")
    os.chmod(work, 0o755)
    files = work / "spawn"
    files.mkdir()
    os.chmod(files, 0o777)  # the spawned command runs as nobody and writes its log here
    stdio = Stdio(files, settings_for(_dns_session))
    os.chmod(stdio.conf, 0o644)
    second = free_port()
    spawn_argv = f"{BIN} policy -c {_ns(work, stdio.conf)} --log-file {_ns(work, stdio.log)}"
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(mta.CaptureSMTP())
        lab = stack.enter_context(mta.PostfixLab(
            work, None, cap.port, services={"socket": (second, "")},
            extra_settings={
                "smtpd_recipient_restrictions":
                    "reject_unauth_destination, check_policy_service unix:private/policyd-spf",
                "policyd-spf_time_limit": "3600"},
            master_entries={"policyd-spf/unix":
                            f"policyd-spf unix - n n - 0 spawn user=nobody argv={spawn_argv}"},
            master_params={f"127.0.0.1:{second}/inet/smtpd_recipient_restrictions":
                           "reject_unauth_destination,check_policy_service,"
                           f"inet:127.0.0.1:{POLICY_PORT}"},
            # the venv's interpreter and the checkout (its .venv, its code) for user nobody,
            # also when they are under /root
            expose=[sys.base_prefix, str(ROOT)]))
        yield lab, cap, second, stdio


def _ns(work: Path, path: Path) -> str:
    """Where Postfix (in its mount namespace) sees a file of the lab's work folder."""
    return mta.PostfixLab.NS_ROOT + "/" + str(path.relative_to(work))


@pytest.fixture(params=["spawn", "Policy_Socket"])
def mx(request, postfix, spfmilter):
    """(send, capture, log_text): the Postfix port that asks this kind of policy service."""
    lab, cap, second, stdio = postfix
    lab.wait_idle()
    cap.clear()
    if request.param == "spawn":
        port, log_text = lab.port, stdio.log_text
    else:
        daemon = spfmilter(Policy_Socket=f"inet:{POLICY_PORT}@127.0.0.1", **SETTINGS)
        port, log_text = second, daemon.log_text

    def send(client: str, helo: str, sender: str, rcpts: list[str],
             login: str | None = None) -> mta.Transcript:
        xc = {"ADDR": client, "NAME": "[UNAVAILABLE]"}
        if login:
            xc["LOGIN"] = login
        return mta.smtp_transaction(lab.host, port, helo, sender, rcpts,
                                    mta.make_message(sender, rcpts), xclient=xc)
    return send, cap, log_text, lab


def our_headers(m: mta.CapturedMessage) -> list[str]:
    return [f"{n}: {v}" for n in ("Authentication-Results", "Received-SPF")
            for v in m.headers(n) if n == "Received-SPF" or v.lower().startswith("mx.test;")]


MTA_CASES = {  # name -> (client, helo, sender, expected header or RCPT reply)
    "pass": (AUTH, "helo.test", "user@allowed.test",
             "Authentication-Results: mx.test; spf=pass smtp.helo=helo.test; "
             "spf=pass smtp.mailfrom=allowed.test"),
    "softfail": (UNAUTH, "unknown.test", "u@soft.test", "spf=softfail smtp.mailfrom=soft.test"),
    "neutral": (AUTH, "helo.test", "u@neutral.test", "spf=neutral smtp.mailfrom=neutral.test"),
    "none": (AUTH, "helo.test", "u@none.test", "spf=none smtp.mailfrom=none.test"),
    "permerror": (AUTH, "helo.test", "u@perm.test", "spf=permerror smtp.mailfrom=perm.test"),
    "null sender": (AUTH, "helo.test", "", "spf=pass smtp.mailfrom=helo.test"),
}


@pytest.mark.mta
@pytest.mark.parametrize("case", list(MTA_CASES))
def test_postfix_delivers_with_the_one_header(mx, case):
    send, cap, log_text, lab = mx
    client, helo, sender, expected = MTA_CASES[case]
    tr = send(client, helo, sender, ["rcpt@example.com"])
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = cap.wait_for(1)
    [header] = our_headers(m)
    assert expected in header, header
    wait_for(lambda: re.search(rf"action=accept .*client_ip={re.escape(client)} .*via=policy",
                               log_text()), 10, "the decision line")


@pytest.mark.mta
def test_postfix_refuses_fail_at_rcpt_with_the_text(mx):
    send, cap, log_text, lab = mx
    tr = send(UNAUTH, "unknown.test", "user@allowed.test", ["rcpt@example.com"])
    r = tr.rcpt("rcpt@example.com")
    assert r is not None and r.code == 550 and r.enhanced == "5.7.23", str(tr)
    assert "198.51.100.7 is not one of allowed.test's designated mail servers" in r.text
    assert tr.get("DATA") is None and cap.count() == 0


@pytest.mark.mta
def test_postfix_defers_temperror(mx):
    send, cap, log_text, lab = mx
    started = time.monotonic()
    tr = send(AUTH, "helo.test", "u@slow.test", ["rcpt@example.com"])
    r = tr.rcpt("rcpt@example.com")
    assert r is not None and r.code == 450 and r.enhanced == "4.7.24", str(tr)
    assert "SPF temperror" in r.text
    assert time.monotonic() - started < 3 + 3  # Lookup_Time + margin: no policy timeout


@pytest.mark.mta
def test_postfix_three_recipients_get_exactly_one_header(mx):
    send, cap, log_text, lab = mx
    rcpts = ["a@example.com", "b@example.com", "c@example.com"]
    tr = send(AUTH, "helo.test", "user@allowed.test", rcpts)
    assert tr.final and tr.final.code == 250, str(tr)
    assert all(tr.rcpt(r).code == 250 for r in rcpts)
    messages = cap.wait_for(1)
    assert sum(len(our_headers(m)) for m in messages) == 1
    assert sorted(r for m in messages for r in m.rcpt_tos) == rcpts


@pytest.mark.mta
def test_postfix_sasl_user_is_not_checked(mx):
    send, cap, log_text, lab = mx
    tr = send(UNAUTH, "unknown.test", "user@allowed.test", ["rcpt@example.com"], login="alice")
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = cap.wait_for(1)
    assert our_headers(m) == []
    wait_for(lambda: 'reason="skipped (authenticated)"' in log_text(), 10, "the skip line")


@pytest.mark.mta
def test_postfix_exempt_recipient_accepted_others_refused(mx):
    send, cap, log_text, lab = mx
    tr = send(UNAUTH, "unknown.test", "user@allowed.test", ["rcpt@example.com", EXEMPT])
    assert tr.rcpt("rcpt@example.com").code == 550
    assert tr.rcpt(EXEMPT).code == 250
    assert tr.final and tr.final.code == 250, str(tr)
    [m] = cap.wait_for(1)
    [header] = our_headers(m)
    assert "spf=fail smtp.mailfrom=allowed.test" in header
    assert m.rcpt_tos == [EXEMPT]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to test the privilege drop (CI runs as root)")
def test_policy_socket_under_umask_owned_by_userid_served_after_the_drop(dns_server):
    import pwd
    import stat
    import tempfile

    from tests.kit.daemon import SpfmilterProcess

    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory(prefix="spfmilter-policy-") as top:
        os.chmod(top, 0o755)
        path = Path(top) / "run" / "policy.sock"   # a folder the daemon creates, owned by UserID
        proc = SpfmilterProcess(Path(top), {"Nameservers": dns_server.nameserver,
                                            "UserID": "nobody", "UMask": "007",
                                            "Policy_Socket": f"unix:{path}", "skip_addresses": "",
                                            "Authserv_Id": "mx.test"}).start()
        try:
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode) and st.st_uid == nobody.pw_uid
            assert stat.S_IMODE(st.st_mode) & 0o007 == 0 and st.st_mode & 0o060 == 0o060
            assert os.stat(path.parent).st_uid == nobody.pw_uid
            out, _ = SocketClient(f"unix:{path}", proc.log_text).exchange(encode(request()))
            assert answers(out)[0].startswith(CASES["pass"][1])
        finally:
            assert proc.stop() == 0
        assert not path.exists()  # the dropped supervisor could remove it: its folder is UserID's


def test_policy_socket_decisions_are_counted_in_the_daemons_metrics(spfmilter, tmp_path_factory):
    import urllib.request

    port = free_port()
    spec = f"unix:{tmp_path_factory.mktemp('pol')}/metrics.sock"
    daemon = spfmilter(fresh=True, Policy_Socket=spec, Metrics=f"127.0.0.1:{port}")
    bad = request(client_address=UNAUTH, helo_name="unknown.test", instance="m2")
    out, _ = SocketClient(spec, daemon.log_text).exchange(encode(*THREE, bad))
    assert len(answers(out)) == 4
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    assert float(m["spfmilter_transactions_total"]) == 2   # one per message, not per recipient
    assert float(m['spfmilter_actions_total{action="accept"}']) == 3
    assert float(m['spfmilter_actions_total{action="reject"}']) == 1
    assert float(m['spfmilter_spf_results_total{identity="mailfrom",result="fail"}']) == 1


# --- one client address, one header, whichever front end asked ---------------------------------

#: name -> (the milter's connect: address and family, the policy's client_address, result)
SAME_CLIENT = {
    "ipv4-mapped": ((b"::ffff:192.0.2.10", b"6"), "::ffff:192.0.2.10", "pass"),
    "ipv6-upper-case": ((b"2001:DB8:1::10", b"6"), "2001:DB8:1::10", "pass"),
    "unknown": ((b"", b"U"), "unknown", "none"),
    # libmilter drops a connect with an unparseable address; its closest is a unix client
    "unparseable": ((b"/run/x.sock", b"L"), "192.0.2.999", "none"),
}


def _milter_headers(milter, connect: tuple[bytes, bytes], tag: str) -> dict[str, str]:
    from tests.kit.rawmilter import RawSession, z
    address, family = connect
    with RawSession(milter.socket_path) as s:
        if family == b"U":
            s.step(b"C", z(b"localhost") + b"U", {b"j": b"mx.test"})
        elif family == b"L":
            s.connect(address, b"localhost", family=family)
        else:
            s.connect(address, family=family)
        s.helo(b"helo.test")
        s.mail(b"<user@allowed.test>")
        assert s.rcpt(f"<rcpt-{tag}@example.com>".encode()).kind == "continue"
        eom = s.message([(b"Subject", b"same client")])
    assert eom.final.kind == "accept", eom
    out = {}
    for name, value in eom.inserted():
        text = value.decode()
        if name == b"Received-SPF" and "identity=helo" in text:
            continue  # the policy answer carries MAIL FROM's only
        out[name.decode()] = " ".join(part.strip() for part in text.splitlines())
    return out


@pytest.mark.parametrize("case", list(SAME_CLIENT))
@pytest.mark.parametrize("header_type", ["SPF", "AR"])
def test_both_front_ends_write_the_same_header_for_the_same_client(spfmilter, sockets, case,
                                                                   header_type):
    """The milter and the policy service read the client address by one definition: an
    IPv4-mapped address is IPv4 in both, and no address (a unix or unknown-family
    connection, Postfix's client_address=unknown) is reported as none, unchecked, in both."""
    connect, client, result = SAME_CLIENT[case]
    spec = f"{sockets['unix'].rpartition('/')[0]}/same-{header_type}.sock"
    daemon = spfmilter(Policy_Socket=spec, Header_Type=header_type)
    wanted = "Received-SPF" if header_type == "SPF" else "Authentication-Results"
    milter = _milter_headers(daemon, connect, f"{case}-{header_type}")[wanted]
    out, _ = SocketClient(spec, daemon.log_text).exchange(encode(request(client_address=client)))
    [answer] = answers(out)
    assert answer == f"action=PREPEND {wanted}: {milter}"
    if header_type == "SPF":
        assert milter.startswith(f"{result} (mx.test: ")
        if result == "none":
            assert "the MTA reported no client IP address; not checked" in milter
        else:
            assert "client-ip=192.0.2.10;" in milter or 'client-ip="2001:db8:1::10";' in milter
    else:
        assert re.search(rf"spf={result} (\(the MTA reported no client IP address\) )?"
                         r"smtp.mailfrom=allowed.test", milter), milter
