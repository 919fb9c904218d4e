"""``spfmilter check``: one transaction through the real milter class, without an MTA.

pymilter's TestCtx plays the MTA, and every reply and header change the
milter asks for is recorded in the order it asks, so what ``check`` prints
is what the MTA would get, not a re-implementation of the decision.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import Milter
from Milter.testctx import TestCtx

from spfmilter import resolver as resolver_mod
from spfmilter import runtime
from spfmilter.config import Settings
from spfmilter.core.transaction import Transaction
from spfmilter.core.values import SPFResult
from spfmilter.frontends.milter import SPFMilter
from spfmilter.resolver import Resolver

_CODES = {Milter.CONTINUE: "continue", Milter.ACCEPT: "accept", Milter.REJECT: "reject",
          Milter.TEMPFAIL: "tempfail", Milter.DISCARD: "discard"}


_NO_REPLY = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT
             | Milter.P_NR_DATA | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY
             | Milter.P_NR_HDR)


class RecordingCtx(TestCtx):  # type: ignore[misc]  # pymilter has no type hints
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
        return int(rc)

    def addheader(self, field: str, value: str, idx: int) -> None:
        # With SMFIP_HDR_LEADSPC (set below to feed header values as given) the value
        # brings its own space after the colon; shown here as the MTA writes it.
        if self._priv is not None and self._priv._protocol & Milter.P_HDR_LEADSPC:
            value = value[1:] if value.startswith(" ") else value
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
    end_reply: str = ""
    header_ops: list[tuple[str, str, str, int]] = field(default_factory=list)
    trace: list[str] | None = None
    notes: list[str] = field(default_factory=list)   # relay hop, DKIM results

    def render(self) -> str:
        lines = [f"HELO result:      {self.helo or 'not checked'}",
                 f"MAIL FROM result: {self.mailfrom or 'not checked'}"]
        for rcpt, rc, reply in self.replies:
            lines.append(f"RCPT TO:<{rcpt}>: {rc}" + (f" -> {reply}" if reply else ""))
        lines.extend(self.notes)
        if self.end:
            lines.append(f"End of message: {self.end}" + (f" -> {self.end_reply}" if self.end_reply else ""))
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


def split_message(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """A message file's header fields (name, value as the MTA passes it: with its
    leading space and folds) and its body with CRLF line ends."""
    data = raw.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    if not sep and not head.strip():
        head, body = b"", data
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        elif b":" in line:
            name_bytes, _, value = line.partition(b":")
            fields.append((name_bytes.decode("ascii", "replace").strip(), value))
    return fields, body.replace(b"\n", b"\r\n")


def check(settings: Settings, resolver: Resolver, *, ip: str, helo: str, sender: str,
          recipients: list[str], auth_user: str = "",
          message: bytes = b"Subject: spfmilter check\n\ntest\n", trace: bool = False) -> Outcome:
    """Run connect, HELO, MAIL, RCPT…, the message's headers and body and end of message
    through SPFMilter, as an MTA would (headers with their leading space).

    With ``trace``, every DNS lookup is recorded (cached or not) and each
    identity's deciding mechanism and lookup counts are added to the outcome.
    """
    previous = runtime.install(runtime.Runtime.create(settings, resolver=resolver))
    saved_factory = Milter.factory
    Milter.factory = SPFMilter
    trace_lines: list[str] | None = [] if trace else None
    trace_token = resolver_mod.trace.set(trace_lines)
    try:
        ctx = RecordingCtx()
        ctx._setsymval("j", settings.policy.authserv_id)
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
        txn = milter.txn
        if accepted:
            fields, body = split_message(message)
            import mime  # TestCtx keeps its own parsed copy, which header edits change
            ctx._msg = mime.message_from_file(io.BytesIO(message))
            ctx._priv._protocol |= Milter.P_HDR_LEADSPC  # values as given, leading space kept
            for name, value in fields:
                milter.header_bytes(name, value)
            ctx._eoh()
            ctx._feed_body(io.BytesIO(body))
            ctx._reply = None
            rc = ctx._eom()
            out.end = _CODES.get(rc, str(rc))
            out.end_reply = " ".join(str(p) for p in ctx._reply) if ctx._reply else ""
            out.header_ops = list(ctx.header_ops)
        if txn is not None:
            _describe(out, txn, settings, trace_lines)
        ctx._close()
        return out
    finally:
        resolver_mod.trace.reset(trace_token)
        Milter.factory = saved_factory
        if previous is not None:
            runtime.install(previous)


def _describe(out: Outcome, txn: Transaction, settings: Settings,
              trace_lines: list[str] | None) -> None:
    if txn.helo_result is not None:
        out.helo = f"{txn.helo_result.result} ({txn.helo_result.sender})"
    if txn.mailfrom_result is not None:
        out.mailfrom = f"{txn.mailfrom_result.result} ({txn.mailfrom_result.sender})"
    if txn.skipped:
        out.helo = out.mailfrom = f"skipped ({txn.skipped})"
    if txn.via_relay:
        hop = txn.hop
        out.notes.append(f"Trusted relay {txn.connection.client_ip}: "
                         + (f"checked the client behind it, {hop.client_ip} (HELO {hop.helo or '-'})"
                            if hop else f"not checked ({txn.no_hop})"))
    for d in txn.dkim_results:
        out.notes.append(f"DKIM d={d.domain} s={d.selector}: {d.result}")
    if trace_lines is not None:
        out.trace = trace_lines
        for res in txn.results():
            trace_lines.append(_explain(res, settings.policy.void_limit))
