"""The libmilter front end: each callback becomes a call on the engine's session.

No policy lives here: the session (``spfmilter.engine``) evaluates, decides
and reports; this translates its verdicts into libmilter's replies and
header edits.  Every callback that can fail is guarded: an exception becomes
a 451 tempfail, so a fault in spfmilter never lets mail through unlabelled.
The runtime (settings and its engine) is taken once per connection, so a
reload applies to new connections only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import Milter
import milter as libmilter

from spfmilter import runtime
from spfmilter.config import Settings
from spfmilter.core.addresses import strip_brackets
from spfmilter.core.policy import Policy
from spfmilter.core.transaction import Connection, Transaction
from spfmilter.core.values import Action, Verdict
from spfmilter.frontends import listener
from spfmilter.frontends.inflight import InFlight

# the gauge is the process's, as the count is: moved through the current engine's observers
connections = InFlight(moved=lambda by: runtime.reporter().connections_moved(by))

_F = TypeVar("_F", bound=Callable[..., int])
# pymilter's decorators (they mark a callback for protocol negotiation), with types
noreply: Callable[[_F], _F] = Milter.noreply

_REPLYING = frozenset({"envrcpt", "eom"})


def guarded(callback: Callable[..., int]) -> Callable[..., int]:
    """Turn any exception in a callback into a reported 451 tempfail (the engine's
    observers log it, with its traceback at debug level, and count it).

    Callbacks negotiated as no-reply cannot refuse anything, so a fault there is
    remembered and the next callback that can reply (RCPT, end of message)
    tempfails instead.
    """
    name = callback.__name__

    @functools.wraps(callback)
    def wrapper(self: SPFMilter, *args: Any) -> int:
        try:
            if self.fault and name in _REPLYING:
                raise RuntimeError(f"earlier fault: {self.fault}")
            return callback(self, *args)
        except Exception as exc:
            return self._failed(name, exc)
    return wrapper


class _MessageCopy:
    """The message as the MTA passed it, kept for DKIM while it fits in DKIM_Max_Bytes.

    Header values arrive with their leading space (SMFIP_HDR_LEADSPC is
    negotiated when DKIM_Rescue is on) and folds as the MTA stored them; lines
    end in CRLF again here, as RFC 6376 canonicalization expects.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.in_body = False

    def _add(self, data: bytes) -> None:
        if self.too_large:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.too_large = True
            self.parts = []
        else:
            self.parts.append(data)

    def header(self, name: str, value: bytes, leading_space: bool) -> None:
        value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self._add(name.encode("ascii", "surrogateescape") + b":" + (b"" if leading_space else b" ")
                  + value + b"\r\n")

    def body(self, chunk: bytes) -> None:
        if not self.in_body:
            self.in_body = True
            self._add(b"\r\n")  # the empty line that ends the header block
        self._add(chunk)

    def bytes(self) -> bytes | None:
        if not self.in_body:
            self.body(b"")
        return None if self.too_large else b"".join(self.parts)


class SPFMilter(Milter.Base):  # type: ignore[misc]  # pymilter has no type hints
    """One instance per SMTP connection."""

    def __init__(self) -> None:
        self._counted = False
        self.runtime = runtime.current()
        self.session = self.runtime.engine.session()
        self.policy: Policy = self.session.policy
        self.mta = self.daemon = ""
        self.fault: str | None = None
        self.message_copy: _MessageCopy | None = None  # for DKIM_Rescue

    def _failed(self, callback: str, exc: Exception) -> int:
        """What ``guarded`` answers for a callback that raised ``exc``."""
        self.fault = f"{type(exc).__name__}: {exc}"
        txn = self.session.txn
        self.session.fault("tempfail", self.fault, exc=exc, callback=callback,
                           queue_id=(txn.queue_id if txn else "") or None)
        if callback not in _REPLYING:
            return int(Milter.CONTINUE)
        try:
            self.setreply("451", "4.3.0", "spfmilter: internal error, try again later")
        except Exception:
            pass
        return int(Milter.TEMPFAIL)

    def _macro(self, name: str) -> str:
        try:
            value = self.getsymval(name)
        except UnicodeDecodeError:
            # present but not UTF-8 (e.g. a Latin-1 SASL login): still present
            return "?"
        return value if isinstance(value, str) else ""

    @property
    def connection(self) -> Connection:
        return self.session.connection

    @property
    def txn(self) -> Transaction | None:
        """The message in progress (``spfmilter check`` reads it)."""
        return self.session.txn

    @noreply
    @guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        if not self._counted:
            self._counted = True
            connections.opened()
        self.session.connect(hostaddr)
        # which MTA and which of its listeners (MX or submission): for the log line
        self.mta = self._macro("j")
        self.daemon = self._macro("{daemon_name}")
        return int(Milter.CONTINUE)

    # Not @noreply: pymilter decodes the HELO before calling us, and a name that
    # is not UTF-8 fails there; with a reply the MTA then refuses that HELO (451)
    # instead of the milter silently keeping the previous one.
    @guarded
    def hello(self, heloname: str) -> int:
        self.session.hello(heloname)
        return int(Milter.CONTINUE)

    @noreply
    @guarded
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self.session.mail(strip_brackets(mailfrom), auth_user=self._macro("{auth_authen}"),
                          queue_id=self._macro("i"))
        self.message_copy = None
        return int(Milter.CONTINUE)

    @guarded
    def envrcpt(self, to: str, *params: str) -> int:
        verdict = self.session.rcpt(strip_brackets(to), queue_id=self._queue_id(),
                                    **self._where())
        if verdict.action is Action.ACCEPT:
            return int(Milter.CONTINUE)
        return self._refuse(verdict)

    def _refuse(self, verdict: Verdict) -> int:
        assert verdict.reply is not None
        r = verdict.reply
        self.setreply(r.code, r.status, r.text.replace("%", "%%"))
        return int(Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL)

    def _queue_id(self) -> str:
        """Macro i, asked only when the message has no queue id yet (it names it then)."""
        txn = self.session.txn
        return "" if txn is not None and (txn.queue_id or txn.plan is not None) \
            else self._macro("i")

    def _where(self) -> dict[str, object]:
        """Which MTA and which of its listeners (MX or submission): for the decision line."""
        return {"mta": self.mta or None, "daemon": self.daemon or None}

    def header_bytes(self, name: str, value: bytes) -> int:
        """pymilter's entry point for a header: the raw bytes are what DKIM verifies.
        It does what pymilter's own would (the value decoded as UTF-8, undecodable
        bytes kept as surrogates, then ``header`` guarded and without reply) in one
        call, not three: a message has a dozen headers or more."""
        try:
            if self.session.wants_message:
                if self.message_copy is None:
                    self.message_copy = _MessageCopy(self.policy.dkim_max_bytes)
                self.message_copy.header(name, value,
                                         bool(self._protocol & Milter.P_HDR_LEADSPC))
            self.session.header(name, value.decode("utf-8", "surrogateescape"))
        except Exception as exc:
            self._failed("header", exc)
        return int(Milter.NOREPLY if self._protocol & Milter.P_NR_HDR else Milter.CONTINUE)

    @noreply
    @guarded
    def header(self, name: str, value: str) -> int:
        """A header already decoded (its ``@noreply`` asks the MTA for no reply; the
        MTA's headers come through ``header_bytes``)."""
        self.session.header(name, value)
        return int(Milter.CONTINUE)

    @noreply
    @guarded
    def eoh(self) -> int:
        """Negotiated only with Trusted_Relays: the hop behind a relay is known now."""
        self.session.end_of_headers()
        return int(Milter.CONTINUE)

    @guarded
    def body(self, chunk: bytes) -> int:
        """Negotiated only with DKIM_Rescue: a message with a held refusal is kept for
        DKIM; every other message ends the body stage at once."""
        if not self.session.needs_body or self.message_copy is None:
            return int(Milter.SKIP if self._protocol & Milter.P_SKIP else Milter.CONTINUE)
        self.message_copy.body(chunk)
        return int(Milter.CONTINUE)

    def data(self) -> int:
        """DATA, with a reply on purpose: Postfix flushes its DATA-stage macros as a
        lone packet; left unanswered over TCP, its next write waits for the peer's
        delayed ACK (one delayed-ACK timeout a message).  The reply carries the ACK
        back at once."""
        return int(Milter.CONTINUE)

    def negotiate(self, opts: list[int]) -> int:
        """Ask only for the stages these settings use: the end of headers for
        Trusted_Relays, the body (with a reply, to SKIP it) and header values with
        their leading space for DKIM_Rescue; without them no message pays for
        either.  (pymilter's version also walks every callback for @symlist on
        each connection; spfmilter declares none, so only the masks matter.)"""
        self._actions, protocol, _, _ = opts
        wanted = type(self).protocol_mask()
        if not self.policy.trusted_relays:
            wanted &= ~Milter.P_NOEOH
        if self.policy.dkim_rescue:
            wanted &= ~Milter.P_HDR_LEADSPC
        else:
            wanted &= ~Milter.P_NOBODY
        opts[1] = self._protocol = protocol & ~wanted
        opts[2] = opts[3] = 0
        return int(Milter.CONTINUE)

    @guarded
    def eom(self) -> int:
        message = self.message_copy.bytes() if self.message_copy is not None else None
        self.message_copy = None
        # macro i names a message MAIL FROM did not name (and its forged-header lines)
        end = self.session.end_of_message(message, queue_id=self._macro("i"), **self._where())
        if end.refusal is not None:
            return self._refuse(end.refusal)
        for name, index in end.removals:
            self.chgheader(name, index, "")
        # With SMFIP_HDR_LEADSPC negotiated (DKIM_Rescue) the MTA writes "Name:" and
        # the value as given, so the space after the colon is ours to send.
        lead = " " if self._protocol & Milter.P_HDR_LEADSPC else ""
        for name, value in reversed(end.headers):
            self.addheader(name, lead + value, 0)
        return int(Milter.ACCEPT)

    def abort(self) -> int:
        self.session.abort()
        self.message_copy = None
        return int(Milter.CONTINUE)

    def close(self) -> int:
        if self._counted:
            self._counted = False
            connections.closed()
        return int(Milter.CONTINUE)


FLAGS = Milter.ADDHDRS | Milter.CHGHDRS


@contextlib.contextmanager
def factory_installed(cls: type[Any] = SPFMilter) -> Iterator[None]:
    """pymilter makes each connection's object with the process-wide ``Milter.factory``:
    ``open_listener`` sets it once for a process that serves; whatever else drives
    pymilter's callbacks (pymilter's test harness) sets it only for a while, here, and
    gets the previous one back."""
    saved = Milter.factory
    Milter.factory = cls
    try:
        yield
    finally:
        Milter.factory = saved


def on_context(ctx: Any) -> SPFMilter:
    """One connection's SPFMilter talking to ``ctx``, as libmilter's negotiate callback
    makes it: ``ctx`` needs only what SPFMilter calls on libmilter's context
    (getsymval, setreply, addheader, chgheader, setpriv).  ``spfmilter check``
    passes a recording one instead of an MTA's."""
    m = SPFMilter()
    m._setctx(ctx)
    return m


# --- serving ------------------------------------------------------------------------

def _register_callbacks() -> None:
    """The callback wiring that Milter.runmilter does before it opens the socket."""
    def priv(ctx: Any) -> SPFMilter:
        # An MTA that skips option negotiation (or connect) reaches us without the
        # per-connection object that negotiate creates: make it, as connect_callback does.
        m = ctx.getpriv()
        if m is None:
            m = Milter.factory()
            m._setctx(ctx)
        return m  # type: ignore[no-any-return]

    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: priv(ctx).hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: priv(ctx).envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: priv(ctx).envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: priv(ctx).header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: priv(ctx).eoh())
    libmilter.set_body_callback(lambda ctx, chunk: priv(ctx).body(chunk))
    libmilter.set_eom_callback(lambda ctx: priv(ctx).eom())
    libmilter.set_abort_callback(lambda ctx: priv(ctx).abort())
    libmilter.set_close_callback(Milter.close_callback)


def open_listener(settings: Settings, *, owner: tuple[int, int] | None = None,
                  make_dir: Callable[[Path], None] | None = None) -> listener.Listening:
    """Register with libmilter and open its listening socket (see ``listener.listen``).

    Done before any worker starts, by the process that keeps the socket open:
    libmilter's main loop in a worker serves a socket that is already open.  It sets
    pymilter's ``Milter.factory`` for good: this process serves SPFMilter only.
    """
    Milter.factory = SPFMilter
    Milter.set_flags(FLAGS)
    _register_callbacks()

    def opensocket() -> None:
        libmilter.setconn(str(settings.socket))
        libmilter.settimeout(600)
        libmilter.register("spfmilter", data=lambda ctx: ctx.getpriv().data(),
                           unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                           negotiate=Milter.negotiate_callback)
        # Defence in depth: an exception escaping our own guard still tempfails.
        libmilter.set_exception_policy(libmilter.TEMPFAIL)
        libmilter.opensocket(True)

    return listener.listen(settings.socket, "Socket", mask=settings.umask, owner=owner,
                           make_dir=make_dir, opensocket=opensocket)


def serve() -> None:
    """Serve the listener ``open_listener`` opened until libmilter is told to stop."""
    libmilter.main()
