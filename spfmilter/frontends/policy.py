"""Postfix's SMTPD policy delegation protocol: the second thin front end over the engine.

(One module at about the limit: the request translation, the bounded framing loop
and its two transports are one protocol whose limits -- sizes, timeouts, the stop
flag -- each part enforces for the others.)

Why a second front end: most Postfix sites check SPF as a policy service
(python policyd-spf, postfix-policyd-spf-perl), where the check sits at a
chosen place in smtpd_recipient_restrictions.  This adapter gives them the
milter's engine -- the same session (``spfmilter.engine``), decision, headers,
resolver, log line and metrics -- behind Postfix's protocol: ``name=value`` lines, an empty
line ends a request, one ``action=...`` line and an empty line answer it.

Translation only, no policy: the verdict of ``Session.rcpt`` becomes

* REJECT -> ``550 5.7.23 <text>`` (the milter's reply: code, status, text);
* DEFER  -> ``DEFER_IF_PERMIT <status> <text>``;
* ACCEPT -> ``PREPEND <one result header>`` for the first accepted recipient
  of a message (Postfix's ``instance``), ``DUNNO`` for the others and when
  nothing was checked; ``HELO_pass_restriction`` / ``Mail_From_pass_restriction``
  (policyd-spf's keys) name a restriction class answered instead on a pass.

The protocol allows one header per answer: ``Header_Type = both`` prepends
Authentication-Results, the field that carries both identities.

Bad input is bounded and answered (see ``_BAD_*`` and README "Policy
service"): nothing a client sends can crash the process, hold an answer
past Lookup_Time, or reach another connection (each has its own thread and
state).  Two transports share the one loop: ``spfmilter policy`` on
stdin/stdout (Postfix's ``spawn``) and ``Policy_Socket`` in the daemon's
workers (a listener the supervisor opened before forking).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from spfmilter import engine, runtime
from spfmilter.config import Settings
from spfmilter.core.headers import AUTH_RESULTS, RECEIVED_SPF, clean
from spfmilter.core.policy import HeaderType
from spfmilter.core.transaction import Transaction
from spfmilter.core.values import Action, Verdict
from spfmilter.frontends import listener
from spfmilter.frontends.inflight import InFlight

MAX_LINE = 8192          # bytes in one name=value line (Postfix's longest are certificates)
MAX_REQUEST = 65536      # bytes in one request
MAX_ATTRIBUTES = 256     # lines in one request (far more than Postfix sends)
MAX_CONNECTIONS = 512    # policy clients per worker at once; more are closed at once
REQUEST_TIMEOUT = 10.0   # seconds a started request may stall before the connection is closed
POLL = 0.5               # seconds between checks for a stop while waiting for a client

DUNNO = "DUNNO"
_BAD_REQUEST = "DEFER_IF_PERMIT 4.3.0 spfmilter: malformed policy request"
_TOO_LARGE = "DEFER_IF_PERMIT 4.3.0 spfmilter: policy request too large"
_INCOMPLETE = "DEFER_IF_PERMIT 4.3.0 spfmilter: policy request without {}"
_INTERNAL = "DEFER_IF_PERMIT 4.3.0 spfmilter: internal error, try again later"


class Session:
    """One policy client (a Postfix smtpd process, or the stdin of ``spfmilter policy``).

    The runtime is taken for each new message, so a reload applies to the
    next message of a long-lived policy connection (Postfix keeps one for up
    to 1000 s); each message is an engine session of its own, which never sees
    the message (DKIM_Rescue and Trusted_Relays off).
    """

    def __init__(self, via: str = "policy") -> None:
        self.via = via
        self.session: engine.Session | None = None
        self.key: tuple[str, ...] | None = None
        self.prepended = False
        self._runtime: runtime.Runtime | None = None

    @property
    def txn(self) -> Transaction | None:
        return self.session.txn if self.session is not None else None

    def answer(self, attrs: dict[str, str]) -> str:
        """The action for one complete request; never raises."""
        try:
            return self._answer(attrs)
        except Exception as exc:
            _fault(self._runtime, "tempfail", f"{type(exc).__name__}: {exc}", exc=exc,
                   callback="policy", queue_id=attrs.get("queue_id") or None)
            return _INTERNAL

    def _answer(self, attrs: dict[str, str]) -> str:
        request = attrs.get("request", "")
        if request != "smtpd_access_policy":
            _event(logging.INFO, "bad-input", error="unknown request type", request=request,
                   via=self.via, answer=DUNNO)
            return DUNNO
        if attrs.get("protocol_state", "").upper() != "RCPT":
            return DUNNO  # evaluated at RCPT only, as policyd-spf does
        for name in ("client_address", "sender"):
            if name not in attrs:
                _event(logging.INFO, "bad-input", error=f"no {name}", via=self.via)
                return _INCOMPLETE.format(name)
        session = self._session(attrs)
        verdict = session.rcpt(attrs.get("recipient", ""), via=self.via)
        assert session.txn is not None
        return self._translate(session.txn, verdict)

    def _session(self, attrs: dict[str, str]) -> engine.Session:
        """The message's session: the same for every recipient of one ``instance``."""
        key = (attrs.get("instance", ""), attrs["client_address"], attrs.get("helo_name", ""),
               attrs["sender"], attrs.get("sasl_username", ""))
        if self.session is None or not key[0] or key != self.key:
            self._runtime = runtime.current()
            self.session = session = self._runtime.engine.session(sees_message=False)
            session.connect(attrs["client_address"])  # "unknown" is no address, as in the milter
            session.hello(attrs.get("helo_name", ""))
            session.mail(attrs["sender"], auth_user=attrs.get("sasl_username", ""),
                         queue_id=attrs.get("queue_id", ""))
            self.key, self.prepended = key, False
        return self.session

    def _translate(self, txn: Transaction, verdict: Verdict) -> str:
        if verdict.action is not Action.ACCEPT:
            assert verdict.reply is not None
            r = verdict.reply
            if verdict.action is Action.REJECT:
                return f"{r.code} {r.status} {r.text}"
            return f"DEFER_IF_PERMIT {r.status} {r.text}"
        assert self._runtime is not None
        s = self._runtime.settings  # the runtime the transaction was started with
        if not txn.skipped:
            m, h = txn.mailfrom_result, txn.helo_result
            if s.mail_from_pass_restriction and m is not None and m.result == "pass":
                return s.mail_from_pass_restriction
            if s.helo_pass_restriction and h is not None and h.result == "pass":
                return s.helo_pass_restriction
        if self.prepended:
            return DUNNO  # one header per message, on its first accepted recipient
        header = result_header(txn)
        if header is None:
            return DUNNO
        self.prepended = True
        return f"PREPEND {header[0]}: {header[1]}"


def _fault(current: runtime.Runtime | None, action: str, error: str, *,
           exc: BaseException | None = None, **fields: object) -> None:
    """A fault answered for, reported by the engine (counted and logged): the message's
    own runtime's, else the current one (``runtime.reporter``)."""
    reporter = current.engine if current is not None else runtime.reporter()
    reporter.fault(action, error, exc=exc, **fields)


def _event(level: int, action: str, **fields: object) -> None:
    """What the protocol met (bad input, a closed client, a start or stop): a line the
    engine's observers write, not this module (``runtime.reporter``)."""
    runtime.reporter().event(level, action, **fields)


def result_header(txn: Transaction) -> tuple[str, str] | None:
    """The one header a policy answer can prepend: Received-SPF for Header_Type SPF
    (MAIL FROM's, else HELO's), Authentication-Results for AR and for both (it
    reports both identities in one field); folded lines joined into one."""
    wanted = RECEIVED_SPF if txn.policy.header_type is HeaderType.SPF else AUTH_RESULTS
    for name, value in txn.result_headers():
        if name == wanted:
            return name, " ".join(part.strip() for part in value.splitlines())
    return None


# --- the wire: bounded requests over any byte stream ---------------------------------------

class _Idle(Exception):
    """The client sent nothing for too long."""


# recv(seconds, between_requests): the next bytes within that many seconds, b"" at end of
# input (or, between requests, when the server stops); _Idle when nothing came.
Recv = Callable[[float, bool], bytes]


def _decode(raw: bytes) -> str:
    # undecodable bytes survive as lone surrogates, which clean() turns into '?'
    return raw.decode("utf-8", "surrogateescape")


def _reply(action: str) -> bytes:
    return ("action=" + clean(action, 900) + "\n\n").encode("utf-8", "replace")


def converse(session: Session, recv: Recv, send: Callable[[bytes], None], *,
             idle_timeout: float, stopping: Callable[[], bool] = lambda: False) -> str:
    """Serve requests until end of input, a stop between requests, an idle client or
    bad framing; returns why it ended (for the log line)."""
    buf = bytearray()
    attrs: dict[str, str] = {}
    size = lines = 0
    bad: str | None = None
    began = 0.0  # when the request being read started: it must be complete within the limit
    limit = min(REQUEST_TIMEOUT, idle_timeout)
    while True:
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > MAX_LINE:
                return _refuse(send, "line too long", len(buf), session.via)
            started = bool(buf or attrs or bad)
            if not started and stopping():
                return "stop"
            try:
                if started and time.monotonic() - began >= limit:
                    raise _Idle
                chunk = recv(began + limit - time.monotonic() if started else idle_timeout,
                             not started)
            except _Idle:
                _event(logging.INFO, "policy-close",
                       reason="idle" if not started else "request stalled", via=session.via)
                return "idle"
            if not chunk:
                if started:
                    _event(logging.INFO, "bad-input", error="end of input inside a request",
                           via=session.via)
                return "end of input"
            if not started:
                began = time.monotonic()
            buf += chunk
            continue
        line = bytes(buf[:nl])
        del buf[:nl + 1]
        size += nl + 1
        lines += 1
        if size > MAX_REQUEST or lines > MAX_ATTRIBUTES:
            return _refuse(send, "request too large", size, session.via)
        if line.endswith(b"\r"):
            line = line[:-1]
        if line:
            name, sep, value = line.partition(b"=")
            if not sep or not name:
                bad = bad or "line without '='"
            else:
                attrs[_decode(name)] = _decode(value)
            continue
        if bad:
            _event(logging.INFO, "bad-input", error=bad, via=session.via, answer=_BAD_REQUEST)
            action = _BAD_REQUEST
        else:
            action = session.answer(attrs)
        send(_reply(action))
        attrs, size, lines, bad = {}, 0, 0, None
        began = time.monotonic()  # for what is already buffered of the next request


def _refuse(send: Callable[[bytes], None], why: str, size: int, via: str) -> str:
    """Answer a request we will not read to its end, then close: the rest of it
    cannot be told apart from the next request."""
    _event(logging.INFO, "bad-input", error=why, size=size, via=via, answer=_TOO_LARGE)
    send(_reply(_TOO_LARGE))
    return why


# --- stdin/stdout: `spfmilter policy`, for Postfix's spawn --------------------------------

def serve_stdio(settings: Settings, stdin: int = 0, stdout: int = 1) -> int:
    """Serve requests on stdin until end of input; 0 unless the output went away."""
    runtime.install(runtime.Runtime.create(settings))

    def recv(timeout: float, between_requests: bool) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Idle
            try:
                ready, _, _ = select.select([stdin], [], [], left)
            except InterruptedError:
                continue
            if ready:
                try:
                    return os.read(stdin, 65536)
                except ConnectionResetError:
                    return b""

    def send(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(stdout, view):]

    try:
        converse(Session("policy-stdin"), recv, send, idle_timeout=settings.policy_idle_timeout)
    except (BrokenPipeError, ConnectionResetError):
        _event(logging.INFO, "policy-close", reason="client went away", via="policy-stdin")
        return 1
    return 0


# --- Policy_Socket: served by every daemon worker --------------------------------------------

# the gauge is the process's, as the count is: moved through the current engine's observers
connections = InFlight(limit=MAX_CONNECTIONS,
                       moved=lambda by: runtime.reporter().connections_moved(by))


class PolicyService:
    """Policy_Socket in one daemon: the listener the supervisor opened (its workers
    inherit it with this object) and, in a worker, the accept thread.

    Each start has its own stop flag, so a service stopped and started again serves
    again, and a thread of the earlier start never mistakes the new one for its own.
    """

    def __init__(self, listening: listener.Listening) -> None:
        assert listening.sock is not None
        self.listening = listening
        self.sock: socket.socket = listening.sock
        self._stopping: threading.Event | None = None
        self._accepting: threading.Thread | None = None

    def serve_in_background(self) -> None:
        """In a worker: accept policy clients on the inherited listener, one thread each."""
        stopping = self._stopping = threading.Event()
        self.sock.setblocking(False)  # workers share the listener: another may take a client first
        self._accepting = threading.Thread(target=_accept_loop, args=(self.sock, stopping),
                                           name="spfmilter-policy", daemon=True)
        self._accepting.start()
        _event(logging.INFO, "policy-start",
               policy_socket=runtime.current().settings.policy_socket, pid=os.getpid())

    def drain(self, grace: float) -> bool:
        """Stop accepting policy clients; wait for those in flight (a request being
        answered finishes; an idle client is closed).  True if all closed in time."""
        if self._stopping is None:
            return True
        self._stopping.set()
        deadline = time.monotonic() + grace
        if self._accepting is not None:  # it notices the flag within POLL
            self._accepting.join(grace)
        idle = connections.wait_idle(max(0.0, deadline - time.monotonic()))
        _event(logging.INFO, "stop", policy_in_flight=0 if idle else connections.count,
               pid=os.getpid())
        return idle


def open_listener(settings: Settings, *, owner: tuple[int, int] | None = None,
                  make_dir: Callable[[Path], None] | None = None) -> PolicyService | None:
    """Open Policy_Socket (see ``listener.listen``) in the supervisor, before the
    workers fork; None when it is not configured."""
    if settings.policy_socket is None:
        return None
    return PolicyService(listener.listen(settings.policy_socket, "Policy_Socket",
                                         mask=settings.umask, owner=owner, make_dir=make_dir))


def _accept_loop(sock: socket.socket, stopping: threading.Event) -> None:
    # The listener stays open when this loop ends: the supervisor holds it anyway (it
    # outlives the workers), and a service started again accepts on it.
    while not stopping.is_set():
        try:
            ready, _, _ = select.select([sock], [], [], POLL)
            if not ready:
                continue
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:
            if stopping.is_set():
                break
            _event(logging.ERROR, "policy-accept-failed", error=exc.strerror or str(exc))
            time.sleep(POLL)  # e.g. out of descriptors: let connections close
            continue
        if not connections.opened():
            _event(logging.WARNING, "policy-close", reason="too many connections",
                   limit=MAX_CONNECTIONS)
            conn.close()
            continue
        try:
            threading.Thread(target=_serve_connection, args=(conn, stopping),
                             name="spfmilter-policy-conn", daemon=True).start()
        except RuntimeError:  # no thread to be had: close, as above
            connections.closed()
            conn.close()


def _serve_connection(conn: socket.socket, stopping: threading.Event) -> None:
    try:
        def recv(timeout: float, between_requests: bool) -> bytes:
            waited = 0.0
            while True:  # in slices, so a stop is noticed between requests
                conn.settimeout(min(POLL, timeout - waited))
                try:
                    return conn.recv(65536)
                except TimeoutError:
                    waited += POLL
                    if waited >= timeout:
                        raise _Idle from None
                    if between_requests and stopping.is_set():
                        return b""

        def send(data: bytes) -> None:
            conn.settimeout(REQUEST_TIMEOUT)
            conn.sendall(data)

        idle = runtime.current().settings.policy_idle_timeout
        converse(Session(), recv, send, idle_timeout=idle, stopping=stopping.is_set)
        _linger(conn)
    except OSError as exc:
        _event(logging.INFO, "policy-close", reason="client went away",
               error=exc.strerror or str(exc))
    except Exception as exc:  # never let a connection's fault reach the worker
        _fault(runtime.current_or_none(), "policy-close", f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
        connections.closed()


def _linger(conn: socket.socket) -> None:
    """Close so the last answer arrives: unread input would make close() send a
    reset that can discard it; read (briefly, boundedly) what the client still sends."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(1.0)
        for _ in range(64):
            if not conn.recv(65536):
                break
    except OSError:
        pass
