"""One transaction through the real milter class, without an MTA.

Used by ``spfmilter check``: pymilter's TestCtx plays the MTA, and we record
every reply and header change the milter asks for, in the order it asks.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import Milter
from Milter.testctx import TestCtx

from spfmilter.config import Settings
from spfmilter.milter import Runtime, SPFMilter, get_runtime, set_runtime
from spfmilter import resolver as resolver_mod
from spfmilter.resolver import Resolver
from spfmilter.spfcheck import SPFResult

_CODES = {Milter.CONTINUE: "continue", Milter.ACCEPT: "accept", Milter.REJECT: "reject",
          Milter.TEMPFAIL: "tempfail", Milter.DISCARD: "discard"}


_NO_REPLY = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT
             | Milter.P_NR_DATA | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY
             | Milter.P_NR_HDR)


class RecordingCtx(TestCtx):
    """TestCtx that keeps header edits with their positions, as libmilter would get them."""

    def __init__(self) -> None:
        super().__init__()
        self.header_ops: list[tuple[str, str, str, int]] = []

    def _negotiate(self) -> int:
        # TestCtx offers every no-reply flag but then treats NOREPLY as a refusal;
        # an MTA that waits for replies is what we want to show.
        rc = super()._negotiate()
        if self._priv is not None:
            self._priv._protocol &= ~_NO_REPLY
        self._protocol &= ~_NO_REPLY
        return rc

    def addheader(self, field: str, value: str, idx: int) -> None:
        super().addheader(field, value, idx)
        self.header_ops.append(("insert" if idx >= 0 else "add", field, value, idx))

    def chgheader(self, field: str, idx: int, value: str) -> None:
        super().chgheader(field, idx, value)
        self.header_ops.append(("delete" if value == "" else "change", field, value, idx))


@dataclass
class Outcome:
    """What the MTA would have seen."""

    helo: str | None = None
    mailfrom: str | None = None
    replies: list[tuple[str, str, str]] = field(default_factory=list)   # rcpt, rc, reply
    end: str | None = None
    header_ops: list[tuple[str, str, str, int]] = field(default_factory=list)
    trace: list[str] | None = None

    def render(self) -> str:
        lines = [f"HELO result:      {self.helo or 'not checked'}",
                 f"MAIL FROM result: {self.mailfrom or 'not checked'}"]
        for rcpt, rc, reply in self.replies:
            lines.append(f"RCPT TO:<{rcpt}>: {rc}" + (f" -> {reply}" if reply else ""))
        if self.end:
            lines.append(f"End of message: {self.end}")
            for op, name, value, idx in self.header_ops:
                if op == "delete":
                    lines.append(f"  removes forged {name} (occurrence {idx})")
            inserted = [(n, v) for op, n, v, _ in self.header_ops if op != "delete"]
            if inserted:
                lines.append("Headers added (top of the message first):")
            # each is inserted at position 0, so the last inserted ends up on top
            lines.extend(f"  {n}: {v}" for n, v in reversed(inserted))
        if self.trace is not None:
            lines.append("Trace:")
            lines.extend(f"  {t}" for t in self.trace or ["(no DNS lookups)"])
        return "\n".join(lines)


def _explain(res: SPFResult, void_limit: int) -> str:
    """Why this result: the mechanism that decided it and the RFC 7208 §4.6.4 counters."""
    how = f"mechanism {res.mechanism}" if res.mechanism else "no mechanism matched"
    if res.result in ("permerror", "temperror"):
        how = res.explanation
    guess = f"; best guess record gives {res.best_guess}" if res.best_guess else ""
    return (f"{res.identity.upper()} {res.sender or '-'}: {res.result} ({how}{guess}); "
            f"{res.lookups} of 10 DNS-querying terms, {res.void_lookups} of {void_limit} "
            f"void lookups; {res.seconds * 1000:.1f} ms")


def play(settings: Settings, resolver: Resolver, *, ip: str, helo: str, sender: str,
         recipients: list[str], auth_user: str = "",
         message: bytes = b"Subject: spfmilter check\n\ntest\n", trace: bool = False) -> Outcome:
    """Run connect, HELO, MAIL, RCPT…, headers and end of message through SPFMilter.

    With ``trace``, every DNS lookup is recorded (cached or not) and each
    identity's deciding mechanism and lookup counts are added to the outcome.
    """
    try:
        previous: Runtime | None = get_runtime()
    except RuntimeError:
        previous = None
    set_runtime(Runtime(settings, resolver))
    saved_factory = Milter.factory
    Milter.factory = SPFMilter
    trace_lines: list[str] | None = [] if trace else None
    trace_token = resolver_mod.trace.set(trace_lines)
    try:
        ctx = RecordingCtx()
        ctx._setsymval("j", settings.authserv_id)
        if auth_user:
            ctx._setsymval("{auth_authen}", auth_user)
        out = Outcome()
        rc = ctx._connect(host=f"[{ip}]", helo=helo, ip=ip)
        if rc != Milter.CONTINUE:
            out.end = _CODES.get(rc, str(rc))
            return out
        sender = "" if sender in ("<>", "") else sender
        ctx._envfrom(f"<{sender}>")
        accepted = 0
        for rcpt in recipients:
            ctx._reply = None
            rc = ctx._envrcpt(f"<{rcpt}>")
            reply = " ".join(str(p) for p in ctx._reply) if ctx._reply else ""
            out.replies.append((rcpt, _CODES.get(rc, str(rc)), reply))
            accepted += rc == Milter.CONTINUE
        milter = ctx.getpriv()
        if milter.helo_result is not None and milter.plan and milter.plan.check_helo:
            out.helo = f"{milter.helo_result.result} ({milter.helo_result.sender})"
        if milter.mailfrom_result is not None and milter.mailfrom_result.mechanism != "not-checked":
            out.mailfrom = f"{milter.mailfrom_result.result} ({milter.mailfrom_result.sender})"
        if milter.plan and milter.plan.skip:
            out.helo = out.mailfrom = f"skipped ({milter.plan.skip})"
        if trace_lines is not None:
            out.trace = trace_lines
            for res in (milter.helo_result, milter.mailfrom_result):
                if res is not None and res.mechanism != "not-checked":
                    trace_lines.append(_explain(res, settings.void_limit))
        if accepted:
            import mime
            ctx._msg = mime.message_from_file(io.BytesIO(message))
            for name, value in ctx._msg.items():
                ctx._header(name, value)
            ctx._eoh()
            rc = ctx._eom()
            out.end = _CODES.get(rc, str(rc))
            out.header_ops = list(ctx.header_ops)
        ctx._close()
        return out
    finally:
        resolver_mod.trace.reset(trace_token)
        Milter.factory = saved_factory
        if previous is not None:
            set_runtime(previous)
