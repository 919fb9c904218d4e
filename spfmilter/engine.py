"""The engine: the steps every front end takes around a decision, in one place.

Why: the milter, the policy service and ``spfmilter check`` each need the same
sequence -- evaluate a message once at its first recipient, report that
evaluation, decide each recipient and report each decision, read the
headers, evaluate behind a trusted relay at end of headers, let DKIM rescue
a held refusal at end of message, remove forged result headers and add ours
-- and each copy of it was a chance to differ (the client address was once
normalised two ways).  A front end now only translates its protocol into
calls on a :class:`Session`; what happened is reported to :class:`Observer`
values (the decision line, the metrics, a benchmark's probe) wired in by
whoever builds the :class:`Engine` (``runtime``) -- and so is what a front
end meets beside a decision (bad input, a closed client, a start or stop,
connections in flight): a front end writes no line and counts nothing.

The engine imports only the core: the checkers it drives are the core's
protocols, handed in by the runtime, so it knows no DNS, libmilter or
configuration file.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from spfmilter.core.addresses import client_address
from spfmilter.core.policy import Policy
from spfmilter.core.transaction import Connection, DKIMChecker, SPFChecker, Transaction
from spfmilter.core.values import Action, Verdict

# An observer's own fault is logged here, without the log module (an observer itself).
_log = logging.getLogger("spfmilter")


class Observer(Protocol):
    """What an engine reports, as it happens.  ``log.DecisionLog`` writes the lines,
    ``metrics.Counting`` counts; each method is called with the transaction as it
    stands (read it, never change it)."""

    def evaluated(self, txn: Transaction) -> None:
        """A message's SPF evaluation ran (or was skipped: ``txn.skipped`` says why)."""

    def decided(self, txn: Transaction, verdict: Verdict, recipient: str,
                extra: Mapping[str, object]) -> None:
        """A verdict for ``recipient`` (at end of message: every accepted recipient,
        joined by ", "); ``extra``: the front end's own fields for the decision line."""

    def not_checked(self, txn: Transaction, reason: str) -> None:
        """Behind a trusted relay: no client to check (why in ``reason``)."""

    def forged_removed(self, txn: Transaction, name: str, index: int, queue_id: str) -> None:
        """An incoming header that claimed to be our verdict was removed."""

    def fault(self, action: str, error: str, fields: Mapping[str, object],
              exc: BaseException | None) -> None:
        """A fault in spfmilter that a front end answered for (a tempfail, a closed
        client); ``fields`` say where, ``exc`` (when given) is the exception, for
        its traceback."""

    def event(self, level: int, action: str, fields: Mapping[str, object]) -> None:
        """Something a front end met that is no decision and no fault of ours: bad
        input, a client closed or gone, a server started or stopped, a socket option
        that could not be set.  ``level``: a ``logging`` level, how much it matters."""

    def connections_moved(self, by: int) -> None:
        """Connections in flight in this process opened (+1) or closed (-1)."""


@functools.lru_cache(maxsize=4)
def without_the_message(policy: Policy) -> Policy:
    """The policy as a front end that never sees the message applies it: what needs
    the message -- DKIM_Rescue (a held refusal would be lost) and Trusted_Relays
    (the hop is in the Received headers) -- is off."""
    if not (policy.dkim_rescue or policy.trusted_relays):
        return policy
    return dataclasses.replace(policy, dkim_rescue=False, trusted_relays=())


@dataclass(frozen=True)
class EndOfMessage:
    """What end of message asks of the front end: a refusal (``refusal`` set: nothing
    else happens), or the forged headers to remove and ours to add, top down."""

    refusal: Verdict | None = None
    removals: tuple[tuple[str, int], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()


class Reporter:
    """Where what happened goes: each observer, in turn.

    Why apart from the engine: a front end also reports where no connection's
    engine is at hand (a listener tuned, a server started, the gauge of
    connections in flight); ``runtime.reporter()`` gives it the current engine
    or, before any is installed, a reporter of the standard observers.  Either
    way a front end writes no line and counts nothing itself."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = tuple(observers)

    def fault(self, action: str, error: str, *, exc: BaseException | None = None,
              **fields: object) -> None:
        """Report a fault a front end answered for (see ``Observer.fault``)."""
        self._notify("fault", action, error, fields, exc)

    def event(self, level: int, action: str, **fields: object) -> None:
        """Report what a front end met that is no decision (see ``Observer.event``)."""
        self._notify("event", level, action, fields)

    def connections_moved(self, by: int) -> None:
        """Report connections in flight opened (+1) or closed (-1)."""
        self._notify("connections_moved", by)

    def _notify(self, event: str, *args: object) -> None:
        """Tell every observer.  An observer that fails is logged and passed over:
        it reports an outcome, it does not make one (the verdict stands)."""
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception as exc:
                _log.error("observer %s failed on %s: %s: %s", type(observer).__name__,
                           event, type(exc).__name__, exc)


class Engine(Reporter):
    """One process's way to decide (a reload builds a new one; connections keep theirs)."""

    def __init__(self, policy: Policy, spf: SPFChecker, dkim: DKIMChecker,
                 org_domain: Callable[[str], str], observers: Sequence[Observer] = ()) -> None:
        super().__init__(observers)
        self.policy = policy
        self.spf = spf
        self.dkim = dkim
        self.org_domain = org_domain

    def session(self, *, sees_message: bool = True) -> Session:
        """A session for one connection; ``sees_message=False`` for a front end that
        decides without the message (see ``without_the_message``)."""
        return Session(self, self.policy if sees_message else without_the_message(self.policy))


class Session:
    """One connection: its client, its HELO and the message in progress."""

    def __init__(self, engine: Engine, policy: Policy) -> None:
        self.engine = engine
        self.policy = policy
        self.connection = Connection()
        self.txn: Transaction | None = None

    # --- the envelope -------------------------------------------------------------

    def connect(self, address: object) -> str:
        """The client's address as the MTA reports it ('[192.0.2.1]', 'IPv6:...',
        '::ffff:192.0.2.1', a (host, port) tuple, 'unknown'): normalised here, for
        every front end the same (an IPv4-mapped address is IPv4; what is no IP
        address is '')."""
        self.connection.client_ip = client_address(address)
        return self.connection.client_ip

    @property
    def client_ip(self) -> str:
        return self.connection.client_ip

    def hello(self, name: str) -> None:
        self.connection.hello(name)

    def mail(self, sender: str, *, auth_user: str = "", queue_id: str = "") -> Transaction:
        """A new message from ``sender`` (the one in progress, if any, is dropped)."""
        self.txn = Transaction(self.connection, self.policy, sender, auth_user=auth_user,
                               queue_id=queue_id)
        return self.txn

    def transaction(self) -> Transaction:
        """The message in progress (one is started if the MTA skipped MAIL FROM)."""
        if self.txn is None:
            self.txn = Transaction(self.connection, self.policy)
        return self.txn

    def evaluate(self, queue_id: str = "") -> Transaction:
        """Evaluate the message once (behind a trusted relay: at end of headers) and
        report it; ``queue_id`` names it when MAIL FROM did not."""
        txn = self.transaction()
        if txn.plan is None and not txn.via_relay:
            if not txn.queue_id:
                txn.queue_id = queue_id
            txn.evaluate(self.engine.spf)
            self.engine._notify("evaluated", txn)
        return txn

    def rcpt(self, recipient: str, *, queue_id: str = "", **extra: object) -> Verdict:
        """The verdict for one recipient (the message is evaluated at its first),
        reported with ``extra`` (the front end's fields for the decision line)."""
        txn = self.evaluate(queue_id)
        verdict = txn.rcpt(recipient)
        self.engine._notify("decided", txn, verdict, recipient, extra)
        return verdict

    # --- the message ----------------------------------------------------------------

    @property
    def wants_message(self) -> bool:
        """Whether end of message will need the message itself (DKIM_Rescue with a held
        refusal, or a relayed message whose refusal may be held at end of headers)."""
        if not self.policy.dkim_rescue:
            return False
        txn = self.transaction()
        return txn.held is not None or txn.via_relay

    @property
    def needs_body(self) -> bool:
        return self.txn is not None and self.txn.needs_body

    def header(self, name: str, value: str) -> None:
        self.transaction().header(name, value)

    def end_of_headers(self) -> None:
        """Behind a trusted relay: evaluate for the host behind it, and report that
        (or that there is none to check)."""
        txn = self.transaction()
        if txn.end_of_headers(self.engine.spf):
            self.engine._notify("evaluated", txn)
        elif txn.no_hop:
            self.engine._notify("not_checked", txn, txn.no_hop)

    def end_of_message(self, message: bytes | None, *, queue_id: str = "",
                       **extra: object) -> EndOfMessage:
        """Decide what end of message decides (a held refusal, a relayed message) and
        report it; ``message`` is the whole message, None when it was not kept
        (larger than DKIM_Max_Bytes).  The message is done afterwards."""
        txn = self.evaluate(queue_id)  # no RCPT reached us (e.g. milter added late): now
        if txn.via_relay and txn.plan is None:  # an MTA that would not send end of headers
            self.end_of_headers()
        verdict = txn.end_of_message(self.engine.dkim, self.engine.org_domain, message)
        if verdict is not None:
            self.engine._notify("decided", txn, verdict, ", ".join(txn.recipients), extra)
            if verdict.action is not Action.ACCEPT:
                self.txn = None
                return EndOfMessage(refusal=verdict)
        removals = tuple(txn.forged.removals())
        for name, index in removals:
            self.engine._notify("forged_removed", txn, name, index, txn.queue_id or queue_id)
        self.txn = None
        return EndOfMessage(removals=removals, headers=txn.result_headers())

    def abort(self) -> None:
        """The message ended without end of message (RSET, a refusal elsewhere)."""
        self.txn = None

    def fault(self, action: str, error: str, *, exc: BaseException | None = None,
              **fields: object) -> None:
        self.engine.fault(action, error, exc=exc, **fields)
