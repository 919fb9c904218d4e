"""Tests of the real-MTA lab itself (tests/mta.py), with a throwaway no-op milter.

They prove, for Postfix and Sendmail, that the lab delivers, that a milter's
RCPT rejection reaches the SMTP client, that a missing milter makes the MTA
tempfail (init/ snippets: milter_default_action = tempfail, F=T), where a
milter's headers land relative to the MTA's own Received: header, and which
macros the init/ snippets deliver.

Under CI (CI=true) a missing MTA is a failure; elsewhere the tests skip and
say how to install them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kit import mta

pytestmark = pytest.mark.mta

AUTHORIZED_V4 = "192.0.2.10"
AUTHORIZED_V6 = "2001:db8:1::10"
UNAUTHORIZED_V4 = "198.51.100.7"
UNAUTHORIZED_V6 = "2001:db8:bad::7"

LAB_MILTER_SOURCE = r'''
"""No-op milter for the MTA lab tests: records what it sees (JSON lines),
adds "X-Lab: seen" at the end of the header and "X-Lab-Top: seen" at index 0,
and rejects RCPT TO:<reject@...> with 550 5.7.1."""
import json
import os
import sys

import Milter

SOCKET, EVENTS = sys.argv[1], sys.argv[2]


def record(**kw):
    with open(EVENTS, "a") as f:
        f.write(json.dumps(kw) + "\n")


class LabMilter(Milter.Base):
    def __init__(self):
        self.id = Milter.uniqueID()

    def connect(self, hostname, family, hostaddr):
        record(id=self.id, ev="connect", hostname=hostname,
               addr=str(hostaddr[0]) if hostaddr else None,
               j=self.getsymval("j"), daemon_name=self.getsymval("{daemon_name}"))
        return Milter.CONTINUE

    def hello(self, heloname):
        record(id=self.id, ev="helo", helo=heloname)
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        record(id=self.id, ev="mail", mail_from=mailfrom, i=self.getsymval("i"),
               auth_authen=self.getsymval("{auth_authen}"))
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        record(id=self.id, ev="rcpt", rcpt=to, i=self.getsymval("i"))
        if to.strip("<>").lower().startswith("reject@"):
            self.setreply("550", "5.7.1", "lab milter refuses this recipient")
            return Milter.REJECT
        return Milter.CONTINUE

    def eom(self):
        record(id=self.id, ev="eom", i=self.getsymval("i"))
        self.addheader("X-Lab", "seen")
        self.addheader("X-Lab-Top", "seen", 0)
        return Milter.ACCEPT


# Postfix's smtpd (user postfix) must be able to connect to the socket.
os.umask(0)
_opensocket = Milter.milter.opensocket


def _opensocket_then_ready(rmsock):
    result = _opensocket(rmsock)
    print("READY", flush=True)
    return result


Milter.milter.opensocket = _opensocket_then_ready
Milter.factory = LabMilter
Milter.set_flags(Milter.ADDHDRS)
Milter.runmilter("labmilter", "unix:" + SOCKET, timeout=30)
'''


require = mta.require_or_skip


class LabMilter:
    """The no-op milter as a subprocess listening on ``folder/lab.sock``."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.socket_path = folder / "lab.sock"
        self.spec = f"unix:{self.socket_path}"
        self.events_file = folder / "events.jsonl"
        self.script = folder / "labmilter.py"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15) -> None:
        self.script.write_text(LAB_MILTER_SOURCE)
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script), str(self.socket_path), str(self.events_file)],
            stdout=subprocess.PIPE, stderr=open(self.folder / "labmilter.stderr", "ab"),
            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.stop()
                raise mta.LabError("lab milter did not get ready: "
                                   + (self.folder / "labmilter.stderr").read_text())
            chunk = os.read(self.proc.stdout.fileno(), 1)
            if not chunk:
                self.stop()
                raise mta.LabError("lab milter exited: " + (self.folder / "labmilter.stderr").read_text())
            line += chunk
        assert line.strip() == b"READY"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # libmilter takes ~5 s to notice SIGTERM (its listener polls);
            # this throwaway milter has nothing to flush, so kill it
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self) -> list[dict]:
        try:
            return [json.loads(x) for x in self.events_file.read_text().splitlines() if x.strip()]
        except FileNotFoundError:
            return []

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.events_file.unlink()

    def session(self, addr: str) -> list[dict]:
        """Events of the last milter connection from ``addr``."""
        evs = self.events()
        ids = [e["id"] for e in evs if e["ev"] == "connect" and e["addr"] == addr]
        assert ids, f"milter saw no connection from {addr}: {evs}"
        return [e for e in evs if e["id"] == ids[-1]]


@dataclass
class Lab:
    name: str
    mta: object  # PostfixLab | SendmailLab
    capture: mta.CaptureSMTP
    milter: LabMilter


@pytest.fixture(scope="module")
def lab_milter(tmp_path_factory):
    m = LabMilter(tmp_path_factory.mktemp("labmilter"))
    m.start()
    yield m
    m.stop()


only = mta.only


def pytest_generate_tests(metafunc):
    mta.parametrize_labs(metafunc)


@pytest.fixture(scope="module")
def lab(request, lab_milter, tmp_path_factory):
    require(request.param)
    work = tmp_path_factory.mktemp(request.param)
    with contextlib.ExitStack() as stack:
        if request.param == "postfix":
            cap = stack.enter_context(mta.CaptureSMTP())
            server = stack.enter_context(mta.PostfixLab(work, lab_milter.spec, cap.port))
        else:
            ns = stack.enter_context(mta.Netns())
            cap = stack.enter_context(mta.CaptureSMTP(netns=ns))
            server = stack.enter_context(mta.SendmailLab(work, lab_milter.spec, cap.port, netns=ns))
        yield Lab(request.param, server, cap, lab_milter)


@pytest.fixture(autouse=True)
def _fresh(request):
    if "lab" not in request.fixturenames:
        yield
        return
    lab = request.getfixturevalue("lab")
    if not lab.milter.running:
        lab.milter.start()
    lab.mta.wait_idle()  # deliveries of earlier tests are in, not in this test's capture
    lab.capture.clear()
    lab.milter.clear()
    yield


def send(lab, client=AUTHORIZED_V4, helo="helo.test", mail_from="sender@allowed.test",
         rcpts=("user@example.com",), **kw):
    msg = mta.make_message(mail_from, list(rcpts))
    return lab.mta.send(client, helo, mail_from, list(rcpts), msg, **kw)


# --------------------------------------------------------------------------


def test_delivered_with_milter_header(lab):
    tr = send(lab)
    assert tr.final is not None and tr.final.code == 250, str(tr)
    [m] = lab.capture.wait_for(1, timeout=20)
    assert m.mail_from == "sender@allowed.test"
    assert m.rcpt_tos == ["user@example.com"]
    assert m.headers("X-Lab") == ["seen"]
    assert m.headers("Subject") == ["lab test"]


@pytest.mark.parametrize("client", [AUTHORIZED_V4, UNAUTHORIZED_V4, AUTHORIZED_V6, UNAUTHORIZED_V6])
def test_milter_sees_client_address_and_helo(lab, client):
    tr = send(lab, client=client, helo="client.example")
    assert tr.final.code == 250, str(tr)
    session = lab.milter.session(client)
    assert [e["helo"] for e in session if e["ev"] == "helo"][-1] == "client.example"
    [m] = lab.capture.wait_for(1, timeout=20)
    received = m.headers("Received")[0]
    assert client.split("::")[-1] in received.replace("0:0:0:0:0:", ":").lower() or client in received


def test_macros_from_init_snippet(lab):
    tr = send(lab)
    assert tr.final.code == 250, str(tr)
    session = lab.milter.session(AUTHORIZED_V4)
    connect = session[0]
    assert connect["j"] == "mx.test"
    assert connect["daemon_name"]
    mail = [e for e in session if e["ev"] == "mail"][-1]
    rcpt = [e for e in session if e["ev"] == "rcpt"][-1]
    eom = [e for e in session if e["ev"] == "eom"][-1]
    assert mail["mail_from"] == "<sender@allowed.test>"
    assert mail["auth_authen"] is None
    # the queue id reaches the milter by end of message and is the one the
    # MTA reports to the client
    assert eom["i"] and eom["i"] in tr.final.text
    if lab.name == "sendmail":
        assert mail["i"] == eom["i"]  # Sendmail knows it at MAIL FROM already
    else:
        # Postfix assigns it when the queue file is opened: after the first
        # accepted RCPT (smtpd_delay_open_until_valid_rcpt = yes)
        assert mail["i"] is None
        assert rcpt["i"] is None or rcpt["i"] == eom["i"]


@only("postfix")  # SMTP AUTH through XCLIENT LOGIN
def test_auth_login_reaches_milter(lab):
    tr = send(lab, client=UNAUTHORIZED_V4, login="alice")
    assert tr.final.code == 250, str(tr)
    mail = [e for e in lab.milter.session(UNAUTHORIZED_V4) if e["ev"] == "mail"][-1]
    assert mail["auth_authen"] == "alice"


def test_milter_reject_reaches_client(lab):
    tr = send(lab, rcpts=["reject@example.com"])
    r = tr.rcpt("reject@example.com")
    assert r.code == 550, str(tr)
    assert r.enhanced == "5.7.1" or "5.7.1" in r.text
    assert "lab milter refuses this recipient" in r.text
    assert tr.get("DATA") is None  # nothing to send the message to
    # mixed: only the good recipient gets the message
    tr = send(lab, rcpts=["reject@example.com", "user@example.com"])
    assert tr.rcpt("reject@example.com").code == 550
    assert tr.rcpt("user@example.com").code == 250
    assert tr.final.code == 250, str(tr)
    [m] = lab.capture.wait_for(1, timeout=20)
    assert m.rcpt_tos == ["user@example.com"]


def test_two_messages_on_one_connection(lab):
    msg2 = mta.make_message("other@allowed.test", "user2@example.com", subject="second")
    tr = send(lab, more=[("other@allowed.test", ["user2@example.com"], msg2)])
    assert [r.code for r in tr.all("DOT")] == [250, 250], str(tr)
    assert len(tr.all("CONNECT")) == 1
    msgs = lab.capture.wait_for(2, timeout=20)
    assert sorted(m.mail_from for m in msgs) == ["other@allowed.test", "sender@allowed.test"]
    for m in msgs:
        assert m.headers("X-Lab") == ["seen"]  # once each, not carried over


def test_header_positions_relative_to_received(lab):
    """addheader() lands at the end of the header block, below the MTA's own
    Received:; insheader(0) lands above it, at the very top."""
    tr = send(lab)
    assert tr.final.code == 250, str(tr)
    [m] = lab.capture.wait_for(1, timeout=20)
    names = m.header_names()
    received = names.index("Received")
    assert names.count("Received") == 1
    assert names[0] == "X-Lab-Top", names
    assert received == 1, names
    assert names[-1] == "X-Lab", names
    assert names.index("X-Lab") > names.index("Subject") > received


def test_milter_down_tempfails_and_delivers_nothing(lab):
    lab.milter.stop()
    try:
        tr = send(lab)
        print(f"{lab.name} without milter:\n{tr}")
        codes = [r.code for r in tr if r.command not in ("QUIT", "DISCONNECT")]
        assert any(400 <= c < 500 for c in codes), str(tr)
        assert not any(r.command == "DOT" and r.code == 250 for r in tr), str(tr)
        temp = next(r for r in tr if 400 <= r.code < 500)
        assert temp.command in ("CONNECT", "EHLO", "XCLIENT", "MAIL", "RCPT", "DATA", "DOT"), temp
        # nothing was accepted, so nothing may be relayed
        assert lab.capture.count() == 0
    finally:
        lab.milter.start()
    # and it recovers as soon as the milter is back
    tr = send(lab)
    assert tr.final is not None and tr.final.code == 250, str(tr)
    lab.capture.wait_for(1, timeout=20)


def test_set_milter_switches_socket(lab, tmp_path):
    other = LabMilter(tmp_path)
    other.start()
    try:
        lab.mta.set_milter(other.spec)
        tr = send(lab, client=UNAUTHORIZED_V4)
        assert tr.final.code == 250, str(tr)
        assert other.session(UNAUTHORIZED_V4)
        assert not [e for e in lab.milter.events() if e.get("addr") == UNAUTHORIZED_V4]
    finally:
        lab.mta.set_milter(lab.milter.spec)
        other.stop()
    tr = send(lab, client=UNAUTHORIZED_V4)
    assert tr.final.code == 250, str(tr)
    assert lab.milter.session(UNAUTHORIZED_V4)


def test_init_snippet_is_what_runs(lab):
    if lab.name == "postfix":
        settings = mta.postfix_snippet_settings()
        names = [n for n, _ in settings]
        for required in ("smtpd_milters", "non_smtpd_milters", "milter_default_action",
                         "milter_protocol", "milter_connect_macros", "milter_mail_macros",
                         "milter_rcpt_macros"):
            assert required in names
        for name, value in settings:
            running = lab.mta.postconf("-h", name).stdout.strip()
            if name == "smtpd_milters":
                assert value == mta.DOC_SOCKET_SPEC
                assert running == f"unix:{lab.mta.ns(lab.mta.milter_link)}"
            else:
                assert running.split() == value.split(), name
        assert lab.mta.postconf("-h", "milter_default_action").stdout.strip() == "tempfail"
        mail_macros = dict(settings)["milter_mail_macros"].split()
        assert "{auth_authen}" in mail_macros and "i" in mail_macros
    else:
        mc = lab.mta.mc_file.read_text()
        for line in mta.sendmail_snippet_lines():
            assert line.replace(mta.DOC_SOCKET_PATH, "/srv/milter/lab.sock") in mc
        cf = lab.mta.cf_file.read_text()
        xline = [x for x in cf.splitlines() if x.startswith("Xspfmilter")]
        assert xline == ["Xspfmilter, S=unix:/srv/milter/lab.sock, F=T, T=S:30s;R:60s;E:5m"], xline
        envfrom = [x for x in cf.splitlines() if x.startswith("O Milter.macros.envfrom")]
        assert envfrom and "{auth_authen}" in envfrom[0] and re.search(r"=\s*i\b", envfrom[0])
