"""One stored message through the real milter class, as it arrived.

Why ``frontends.check.check``: it drives SPFMilter callback by callback as
libmilter would, so a replayed message gets exactly the replies the MTA would
have got -- DKIM_Rescue on the message's own headers and body included --
and no decision is re-implemented here.  What the message is given as is
what the MTA passed at arrival: the header fields from its own Received
header down (the ones above it were added later: Return-Path, Delivered-To,
content filters, result headers of a milter already running) and the body.

Refusal is always on here (TestOnly = 1): the question replay answers is
what enforcement would refuse, and a ``TestOnly = 0`` file would refuse
nothing.  ``[recipient ...]`` sections keep theirs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from spfmilter.config import Settings
from spfmilter.core.policy import gethostname
from spfmilter.frontends.check import Outcome, check, split_message
from spfmilter.replay import arrival
from spfmilter.replay.stores import Message
from spfmilter.resolver import Resolver

#: What a recipient gets when no header names one (as ``spfmilter check``).
DEFAULT_RECIPIENT = "postmaster@localhost"

Record = dict[str, Any]


def enforcing(settings: Settings) -> Settings:
    """``settings`` with refusal on (TestOnly = 1)."""
    return dataclasses.replace(settings,
                               policy=dataclasses.replace(settings.policy, never_refuse=False))


def receivers(settings: Settings, names: list[str] | None) -> tuple[str, ...]:
    """The names the receiving MTA writes after ``by``."""
    chosen = names or [settings.policy.authserv_id, gethostname()]
    return tuple(dict.fromkeys(n.rstrip(".").lower() for n in chosen if n))


def _record(message: Message, **fields: Any) -> Record:
    base: Record = {"source": message.source, "message_id": None, "client_ip": None,
                    "helo": None, "envelope_from": None, "envelope_to": None,
                    "helo_result": None, "mailfrom_result": None, "action": "not-replayable",
                    "reply": "", "rescued": False, "reason": ""}
    base.update(fields)
    return base


def _result(text: str | None) -> str | None:
    """"fail (user@example.com)" -> "fail"; "skipped (...)" and not checked -> None."""
    if not text or text.startswith("skipped"):
        return None
    return text.split(" ", 1)[0]


def _action(out: Outcome) -> tuple[str, str]:
    """(action, reply) from what the MTA would have got."""
    for _rcpt, rc, reply in out.replies:
        if rc != "continue":
            return _translate(rc, reply), reply
    if out.end is None:
        return "tempfail", ""
    return _translate(out.end, out.end_reply), out.end_reply


def _translate(code: str, reply: str) -> str:
    if code == "tempfail":   # a deliberate deferral carries its reply; a fault does not
        return "defer" if reply else "tempfail"
    return code if code in ("accept", "reject", "continue") else "tempfail"


def _reason(out: Outcome) -> str:
    if out.helo and out.helo.startswith("skipped"):
        return out.helo
    if out.held:
        if not out.rescued:
            return out.held + ", not rescued"
        signer = next((n.split()[1] for n in out.notes
                       if n.startswith("DKIM d=") and n.endswith(": pass")), "")
        return f"{out.held}, rescued by DKIM {signer}".rstrip()
    return "; ".join(n for n in out.notes if not n.startswith("DKIM "))


def replay(settings: Settings, resolver: Resolver, names: tuple[str, ...],
           message: Message) -> Record:
    """The record of one message: its arrival facts and what spfmilter would do.  A fault
    in reading one message is that message's record, never the end of the run."""
    try:
        return _replay(settings, resolver, names, message)
    except Exception as exc:   # reported in the record, as the milter would tempfail
        return _record(message, action="tempfail",
                       reason=f"internal error: {type(exc).__name__}: {exc}")


def _replay(settings: Settings, resolver: Resolver, names: tuple[str, ...],
            message: Message) -> Record:
    if message.raw is None:
        return _record(message, reason="message larger than the replay limit")
    if message.note:
        return _record(message, reason=message.note)
    fields, _ = split_message(message.raw)
    mid = next((v.decode("utf-8", "replace").strip()[:998] for n, v in fields
                if n.lower() == "message-id"), None)
    policy = settings.policy
    found = arrival.read(fields, names, (*policy.skip_addresses, *policy.internal_hosts),
                         policy.trusted_relays)
    if isinstance(found, arrival.NotReplayable):
        return _record(message, message_id=mid, reason=found.reason)
    rcpts = list(found.recipients) or [DEFAULT_RECIPIENT]
    as_arrived = _from_header(message.raw, found.index)
    try:
        out = check(settings, resolver, ip=found.client_ip, helo=found.helo,
                    sender=found.sender, recipients=rcpts, message=as_arrived,
                    auth_user="authenticated" if found.authenticated else "")
    except ValueError as exc:   # an address check() refuses: never guessed around
        return _record(message, message_id=mid, reason=str(exc))
    action, reply = _action(out)
    return _record(message, message_id=mid, client_ip=found.client_ip, helo=found.helo,
                   envelope_from=found.sender, envelope_to=rcpts[0],
                   helo_result=_result(out.helo), mailfrom_result=_result(out.mailfrom),
                   action="accept" if action == "continue" else action, reply=reply,
                   rescued=out.rescued, reason=_reason(out))


def _from_header(raw: bytes, index: int) -> bytes:
    """The message from its ``index``-th header field down (fields as split_message counts
    them: a line with a colon starts one, a line starting with white space continues it)."""
    data = raw.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    lines = head.split(b"\n")
    count = -1
    for i, line in enumerate(lines):
        if line[:1] in (b" ", b"\t") and count >= 0:
            continue
        if b":" in line:
            count += 1
            if count == index:
                return b"\n".join(lines[i:]) + sep + body
    return raw
