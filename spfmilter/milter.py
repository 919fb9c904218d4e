"""The libmilter glue: collect facts per callback, run the plan, apply the decision.

No policy lives here.  Every callback that can fail is guarded: an exception
becomes a 451 tempfail, so a fault in spfmilter never lets mail through
unlabelled.  Settings and resolver are taken once per connection from the
current ``Runtime``, so a reload applies to new connections only.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import Milter

from spfmilter import decision as dec
from spfmilter import headers as hdr
from spfmilter import metrics
from spfmilter.config import Settings
from spfmilter.log import kv, log
from spfmilter.resolver import Resolver
from spfmilter.spfcheck import SPFResult, evaluate, not_checked


@dataclass(frozen=True)
class Runtime:
    """The settings and the one resolver every new connection uses."""

    settings: Settings
    resolver: Resolver


_runtime_lock = threading.Lock()
_runtime: Runtime | None = None


def set_runtime(runtime: Runtime) -> None:
    global _runtime
    with _runtime_lock:
        _runtime = runtime


def get_runtime() -> Runtime:
    with _runtime_lock:
        if _runtime is None:
            raise RuntimeError("spfmilter runtime not configured")
        return _runtime


class _Connections:
    """Connections in flight, so a stop can wait for them (and metrics can show them)."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def opened(self) -> None:
        with self._cond:
            self._count += 1

    def closed(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def wait_idle(self, timeout: float) -> bool:
        """True once no connection is open; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count <= 0, timeout)


connections = _Connections()


def normalize_ip(hostaddr: Any) -> str:
    """The client IP from libmilter's hostaddr, '' for a non-IP (unix) client."""
    raw = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else hostaddr
    if not isinstance(raw, str):
        return ""
    raw = raw.strip().strip("[]")
    if raw.lower().startswith("ipv6:"):
        raw = raw[5:]
    raw = raw.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        return ""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return str(addr)


def strip_brackets(address: str) -> str:
    """'<user@example.com>' -> 'user@example.com'; drops an RFC 5321 source route."""
    address = (address or "").strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if address.startswith("@") and ":" in address:
        address = address.split(":", 1)[1]
    return address


_REPLYING = frozenset({"envrcpt", "eom"})


def guarded(callback: Callable[..., int]) -> Callable[..., int]:
    """Turn any exception in a callback into a logged 451 tempfail.

    Callbacks negotiated as no-reply cannot refuse anything, so a fault there is
    remembered and the next callback that can reply (RCPT, end of message)
    tempfails instead.
    """
    @functools.wraps(callback)
    def wrapper(self: "SPFMilter", *args: Any) -> int:
        try:
            if self.fault and callback.__name__ in _REPLYING:
                raise RuntimeError(f"earlier fault: {self.fault}")
            return callback(self, *args)
        except Exception as exc:  # noqa: BLE001 - this is the safety net
            metrics.ERRORS.inc()
            self.fault = f"{type(exc).__name__}: {exc}"
            log.error("%s", kv(action="tempfail", error=self.fault, callback=callback.__name__,
                               queue_id=getattr(self, "queue_id", "") or None))
            log.debug("traceback", exc_info=True)
            if callback.__name__ not in _REPLYING:
                return Milter.CONTINUE
            try:
                self.setreply("451", "4.3.0", "spfmilter: internal error, try again later")
            except Exception:  # noqa: BLE001 - the MTA may be gone already
                pass
            return Milter.TEMPFAIL
    return wrapper


class SPFMilter(Milter.Base):
    """One instance per SMTP connection."""

    def __init__(self) -> None:
        self._counted = False
        self.runtime = get_runtime()
        self.settings = self.runtime.settings
        self.client_ip = ""
        self.mta = self.daemon = ""
        self.helo = ""
        self.helo_result: SPFResult | None = None
        self.queue_id = ""
        self.fault: str | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self.sender: str | None = None
        self.auth_user = ""
        self.recipients: list[str] = []
        self.headers: tuple[tuple[str, str], ...] | None = None  # from the first accepted RCPT
        self.plan: dec.Plan | None = None
        self.mailfrom_result: SPFResult | None = None
        self.whitelisted_by: str | None = None
        self.forged: list[tuple[str, int]] = []
        self.header_counts: dict[str, int] = {}

    def _facts(self, recipient: str = "") -> dec.Facts:
        return dec.Facts(client_ip=self.client_ip, helo=self.helo, sender=self.sender or "",
                         recipient=recipient, auth_user=self.auth_user, queue_id=self.queue_id)

    def _macro(self, name: str) -> str:
        try:
            value = self.getsymval(name)
        except UnicodeDecodeError:
            # present but not UTF-8 (e.g. a Latin-1 SASL login): still present
            return "?"
        return value if isinstance(value, str) else ""

    @Milter.noreply
    @guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        if not self._counted:
            self._counted = True
            connections.opened()
        self.client_ip = normalize_ip(hostaddr)
        # which MTA and which of its listeners (MX or submission): for the log line
        self.mta = self._macro("j")
        self.daemon = self._macro("{daemon_name}")
        return Milter.CONTINUE

    # Not @noreply: pymilter decodes the HELO before calling us, and a name that
    # is not UTF-8 fails there; with a reply the MTA then refuses that HELO (451)
    # instead of the milter silently keeping the previous one.
    @guarded
    def hello(self, heloname: str) -> int:
        if heloname != self.helo:
            self.helo_result = None
        self.helo = heloname or ""
        return Milter.CONTINUE

    @Milter.noreply
    @guarded
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._reset_message()
        self.sender = strip_brackets(mailfrom)
        self.auth_user = self._macro("{auth_authen}")
        self.queue_id = self._macro("i")
        return Milter.CONTINUE

    def _evaluate(self) -> None:
        """Run the plan once per message (the first RCPT), not per recipient."""
        rt, facts = self.runtime, self._facts()
        self.plan = plan = dec.plan(facts, self.settings)
        metrics.TRANSACTIONS.inc()
        if plan.skip:
            metrics.SKIPS.labels(plan.skip).inc()
            return
        s = self.settings
        started = time.monotonic()
        deadline = started + s.lookup_time  # one budget for all of this message's checks

        def run(identity: str, sender: str, limit: float = s.lookup_time,
                local: bool = True) -> SPFResult:
            return evaluate(identity, self.client_ip, sender, self.helo, resolver=rt.resolver,
                            receiver=s.authserv_id,
                            lookup_time=min(limit, deadline - time.monotonic()),
                            void_limit=s.void_limit,
                            local_rules=s.local_rules if local else "",
                            best_guess=s.best_guess if local and identity == "mailfrom" else "")

        if plan.check_helo and self.helo:  # no HELO at all: nothing to check or report
            if self.helo_result is None:
                self.helo_result = run("helo", "")
        if plan.check_mailfrom:
            if not self.sender and self.helo_result is not None:
                # RFC 7208 §2.4: the null sender's MAIL FROM identity is postmaster@HELO,
                # which is exactly the HELO evaluation: reuse it, no second lookup.
                self.mailfrom_result = dataclasses.replace(self.helo_result, identity="mailfrom")
            else:
                self.mailfrom_result = run("mailfrom", self.sender or "")
        elif self.sender is not None:
            self.mailfrom_result = not_checked("mailfrom", self.sender)
        for domain in plan.whitelist_domains:
            if run("mailfrom", f"postmaster@{domain}", s.whitelist_lookup_time,
                   local=False).result == "pass":
                self.whitelisted_by = domain
                break
        metrics.DECISION.observe(time.monotonic() - started)
        for res in (self.helo_result if plan.check_helo else None, self.mailfrom_result):
            if res is not None and res.mechanism != "not-checked":
                metrics.RESULTS.labels(res.identity, res.result).inc()

    @guarded
    def envrcpt(self, to: str, *params: str) -> int:
        recipient = strip_brackets(to)
        if self.plan is None:
            if not self.queue_id:
                self.queue_id = self._macro("i")
            self._evaluate()
        verdict = self._decide(recipient)
        self._log(verdict, recipient)
        metrics.ACTIONS.labels(verdict.action).inc()
        if verdict.action == dec.ACCEPT:
            self.recipients.append(recipient)
            if self.headers is None:
                self.headers = verdict.headers
            return Milter.CONTINUE
        self.setreply(verdict.code, verdict.status, (verdict.text or "").replace("%", "%%"))
        return Milter.REJECT if verdict.action == dec.REJECT else Milter.TEMPFAIL

    def _decide(self, recipient: str) -> dec.Decision:
        assert self.plan is not None
        helo_res = self.helo_result if self.plan.check_helo else None
        return dec.decide(self._facts(recipient), helo_res, self.mailfrom_result, self.settings,
                          skip=self.plan.skip, whitelisted_by=self.whitelisted_by)

    def _log(self, verdict: dec.Decision, recipient: str) -> None:
        m, h = self.mailfrom_result, self.helo_result if (self.plan and self.plan.check_helo) else None
        main = m if m is not None and m.mechanism != "not-checked" else h
        log.info("%s", kv(
            action=verdict.action, reason=verdict.reason,
            identity=main.identity if main else None, result=main.result if main else None,
            helo_result=h.result if h else None,
            client_ip=self.client_ip, helo=self.helo, envelope_from=self.sender,
            rcpt=recipient, receiver=self.settings.authserv_id,
            queue_id=(self.queue_id or None) if self.settings.log_queue_id else None,
            mta=self.mta or None, daemon=self.daemon or None,
            reply=f"{verdict.code} {verdict.status}" if verdict.code else None))

    @Milter.noreply
    @guarded
    def header(self, name: str, value: str) -> int:
        key = name.lower()
        if key in (hdr.AUTH_RESULTS.lower(), hdr.RECEIVED_SPF.lower()):
            index = self.header_counts.get(key, 0) + 1
            self.header_counts[key] = index
            if hdr.claims_to_be_ours(name, value, self.settings.authserv_id):
                self.forged.append((name, index))
        return Milter.CONTINUE

    @Milter.nocallback
    def body(self, chunk: bytes) -> int:  # pragma: no cover - negotiated away
        return Milter.CONTINUE

    def data(self) -> int:
        """DATA, with a reply on purpose: Postfix flushes its DATA-stage macros as a
        lone packet; left unanswered over TCP, its next write waits for the peer's
        delayed ACK (~40 ms a message).  The reply carries the ACK back at once."""
        return Milter.CONTINUE

    def negotiate(self, opts: list[int]) -> int:
        # pymilter's version also walks every callback for @symlist on each
        # connection; spfmilter declares none, so only the masks matter.
        self._actions, protocol, _, _ = opts
        opts[1] = self._protocol = protocol & ~type(self).protocol_mask()
        opts[2] = opts[3] = 0
        return Milter.CONTINUE

    @guarded
    def eom(self) -> int:
        if self.plan is None:  # no RCPT reached us (e.g. milter added late); decide now
            self._evaluate()
        assert self.plan is not None
        for name, index in sorted(self.forged, key=lambda f: -f[1]):
            self.chgheader(name, index, "")
            metrics.FORGED.inc()
            log.info("%s", kv(action="removed-forged-header", header=name, index=index,
                                queue_id=self.queue_id or self._macro("i") or None))
        headers = self.headers if self.headers is not None else self._decide("").headers
        for name, value in reversed(headers):
            self.addheader(name, value, 0)
        self._reset_message()
        return Milter.ACCEPT

    def abort(self) -> int:
        self._reset_message()
        return Milter.CONTINUE

    def close(self) -> int:
        if self._counted:
            self._counted = False
            connections.closed()
        return Milter.CONTINUE


FLAGS = Milter.ADDHDRS | Milter.CHGHDRS
