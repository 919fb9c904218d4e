"""``spfmilter check``: one transaction through the real milter class, without an MTA.

The connection's SPFMilter is driven callback by callback, as libmilter would
(negotiation, connect, HELO, MAIL, RCPT..., headers, end of headers, body, end
of message), and talks to a recording stand-in for libmilter's context: every
reply and header change it asks for is kept in the order it asks, so what
``check`` prints is what the MTA would get, not a re-implementation of the
decision.  Only pymilter's public callbacks and constants are used, so a
pymilter release that reworks its test harness cannot break the command.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from socket import AF_INET, AF_INET6

import Milter
from Milter import utils as milter_utils

from spfmilter import resolver as resolver_mod
from spfmilter import runtime
from spfmilter.config import Settings
from spfmilter.core.transaction import Transaction
from spfmilter.core.values import SPFResult
from spfmilter.frontends import milter as milter_frontend
from spfmilter.resolver import Resolver

_CODES = {Milter.CONTINUE: "continue", Milter.ACCEPT: "accept", Milter.REJECT: "reject",
          Milter.TEMPFAIL: "tempfail", Milter.DISCARD: "discard"}

#: What the MTA offers at negotiation: every action and protocol step, but no
#: callback without a reply -- an MTA that waits for replies is what we show.
_NO_REPLY = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT
             | Milter.P_NR_DATA | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY
             | Milter.P_NR_HDR)
_OFFER = (Milter.CURR_ACTS, 0x1FFFFF & ~_NO_REPLY)
_BODY_CHUNK = 8192


class Recorder:
    """The part of libmilter's per-connection context that SPFMilter calls, recording
    the replies and header edits it asks for (header edits with their positions, as
    libmilter would get them)."""

    def __init__(self, macros: dict[str, str]) -> None:
        self.macros = macros
        self.protocol = 0            # the protocol steps negotiated
        self.priv: object = None
        self.reply: tuple[str, ...] | None = None
        self.header_ops: list[tuple[str, str, str, int]] = []

    def getpriv(self) -> object:
        return self.priv

    def setpriv(self, priv: object) -> None:
        self.priv = priv

    def getsymval(self, name: str) -> str | None:
        return self.macros.get(name)

    def setreply(self, rcode: str, xcode: str, *msg: str) -> None:
        self.reply = (rcode, xcode, *msg)

    def take_reply(self) -> str:
        """The reply set since the last call, as one line ('' when none)."""
        reply, self.reply = self.reply, None
        return " ".join(str(p) for p in reply) if reply else ""

    def addheader(self, field: str, value: str, idx: int) -> None:
        # With SMFIP_HDR_LEADSPC (negotiated with DKIM_Rescue) the value brings its
        # own space after the colon; shown here as the MTA writes it.
        if self.protocol & Milter.P_HDR_LEADSPC:
            value = value[1:] if value.startswith(" ") else value
        self.header_ops.append(("insert" if idx >= 0 else "add", field, value, idx))

    def chgheader(self, field: str, idx: int, value: str) -> None:
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
    held: str = ""        # a refusal held for DKIM_Rescue ("mailfrom fail"), "" for none
    rescued: bool = False  # that refusal was lifted at end of message by a DKIM signature

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
    if milter_utils.ip4re.match(ip):
        family = AF_INET
    elif milter_utils.ip6re.match(ip):
        family = AF_INET6
    else:
        raise ValueError(f"invalid client IP address: {ip}")
    previous = runtime.install(runtime.Runtime.create(settings, resolver=resolver))
    trace_lines: list[str] | None = [] if trace else None
    trace_token = resolver_mod.trace.set(trace_lines)
    try:
        macros = {"j": settings.policy.authserv_id}
        if auth_user:
            macros["{auth_authen}"] = auth_user
        ctx = Recorder(macros)
        milter = milter_frontend.on_context(ctx)
        opts = list(_OFFER) + [0, 0]
        milter.negotiate(opts)
        ctx.protocol = protocol = opts[1]
        out = Outcome()
        rc = Milter.CONTINUE
        if not protocol & Milter.P_NOCONNECT:
            rc = milter.connect(f"[{ip}]", family, ip)
        if rc == Milter.CONTINUE and not protocol & Milter.P_NOHELO:
            rc = milter.hello(helo)
        if rc != Milter.CONTINUE:
            milter.close()
            out.end = _CODES.get(rc, str(rc))
            return out
        sender = "" if sender in ("<>", "") else sender
        if not protocol & Milter.P_NOMAIL:
            milter.envfrom(f"<{sender}>")
        accepted = 0
        for rcpt in recipients:
            ctx.reply = None
            rc = Milter.CONTINUE if protocol & Milter.P_NORCPT else milter.envrcpt(f"<{rcpt}>")
            out.replies.append((rcpt, _CODES.get(rc, str(rc)), ctx.take_reply()))
            accepted += rc == Milter.CONTINUE
        txn = milter.txn
        if accepted:
            fields, body = split_message(message)
            for name, value in fields:   # values as given, leading space kept
                milter.header_bytes(name, value)
            if not protocol & Milter.P_NOEOH:
                milter.eoh()
            if not protocol & Milter.P_NOBODY:
                chunks = io.BytesIO(body)
                while chunk := chunks.read(_BODY_CHUNK):
                    if milter.body(chunk) != Milter.CONTINUE:
                        break
            ctx.reply = None
            rc = milter.eom()
            out.end = _CODES.get(rc, str(rc))
            out.end_reply = ctx.take_reply()
            out.header_ops = list(ctx.header_ops)
        if txn is not None:
            _describe(out, txn, milter.session.client_ip, settings, trace_lines)
        milter.close()
        return out
    finally:
        resolver_mod.trace.reset(trace_token)
        if previous is not None:
            runtime.install(previous)


def _describe(out: Outcome, txn: Transaction, client_ip: str, settings: Settings,
              trace_lines: list[str] | None) -> None:
    """The results the session's message ended with, as ``check`` prints them."""
    if txn.helo_result is not None:
        out.helo = f"{txn.helo_result.result} ({txn.helo_result.sender})"
    if txn.mailfrom_result is not None:
        out.mailfrom = f"{txn.mailfrom_result.result} ({txn.mailfrom_result.sender})"
    if txn.skipped:
        out.helo = out.mailfrom = f"skipped ({txn.skipped})"
    if txn.held is not None:
        out.held = txn.held.reason
        out.rescued = out.end == "accept"   # a held refusal is only ever lifted by a rescue
    if txn.via_relay:
        hop = txn.hop
        out.notes.append(f"Trusted relay {client_ip}: "
                         + (f"checked the client behind it, {hop.client_ip} (HELO {hop.helo or '-'})"
                            if hop else f"not checked ({txn.no_hop})"))
    for d in txn.dkim_results:
        out.notes.append(f"DKIM d={d.domain} s={d.selector}: {d.result}")
    if trace_lines is not None:
        out.trace = trace_lines
        for res in txn.results():
            trace_lines.append(_explain(res, settings.policy.void_limit))
