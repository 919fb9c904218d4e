"""The SMTP facts of a delivered message's arrival, read back from its headers.

Why from the headers: the receiving MTA wrote them at the time -- its own
Received header names the client address and HELO, the delivery agent's
Return-Path the envelope sender, Delivered-To / X-Original-To / Envelope-To
the recipient.  Everything below that header was written by the sending side
and may be forged, so the walk goes top down and trusts only headers that
this site's hosts wrote:

* a header written by one of the receiver names (``--receiver``, else
  Authserv_Id and the host name) whose client is on loopback is the host's
  own re-injection (a content filter, LMTP delivery): the walk goes one
  header down, which the same host wrote;
* one whose client is in skip_addresses or Trusted_Relays came from another
  of the site's hosts, so the header below it is that host's, whatever name
  it gives itself;
* the first other one is the arrival.  A header that does not read, or whose
  writer is not one of ours, stops the walk: the message is not replayable,
  and the reason says why -- nothing is guessed.

The client address is read by ``spfmilter.core.received``, only from the part
the MTA itself wrote (a HELO that imitates an address comment is never taken
for the address), and so is the writer's name (a ``by`` in a HELO is never
taken for it).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spfmilter.core import received
from spfmilter.core.addresses import IPNetwork, in_networks

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
#: Header fields read for the recipient, the one closest to RCPT TO first.
RECIPIENT_FIELDS = ("x-original-to", "envelope-to", "delivered-to")
_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"]+@[^\s<>()\[\]\\,;:\"@]+|[^\s<>()\[\]\\,;:\"@]+")
#: A header that delivery on this host writes without a client: Dovecot's LMTP
#: ("from mx.example.org by mx.example.org with LMTP").
_LOCAL_DELIVERY = re.compile(r"\s*from\s+(?P<from>[^\s()]+)\s+by\s+(?P<by>[^\s();]+)\s+with\s+"
                             r"(?:LMTP|local)\b", re.I)


@dataclass(frozen=True)
class Arrival:
    """The SMTP facts of one message's arrival, and where its arrival header stands."""

    client_ip: str
    helo: str
    sender: str                  # "" for the null sender
    recipients: tuple[str, ...]  # empty when no header names one
    authenticated: bool          # the MTA recorded an authenticated session (ESMTPA...)
    index: int                   # position of the arrival header among the header fields


@dataclass(frozen=True)
class NotReplayable:
    reason: str


def _value(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def envelope_sender(value: str) -> str | None:
    """The address in a Return-Path value ("" for ``<>``), None when it is not one."""
    text = value.strip()
    if not (text.startswith("<") and text.endswith(">")) or len(text) > 1024:
        return None
    address = text[1:-1].strip()
    if address and not re.fullmatch(r"[^\s<>]+", address):
        return None
    return address


def recipients(fields: Sequence[tuple[str, bytes]]) -> tuple[str, ...]:
    """The recipient the delivery agent recorded: the topmost of the first of
    X-Original-To, Envelope-To, Delivered-To that is present."""
    for wanted in RECIPIENT_FIELDS:
        for name, raw in fields:
            if name.lower() == wanted:
                m = _ADDRESS.search(_value(raw)[:2048])
                if m and "@" in m.group():
                    return (m.group(),)
    return ()


def read(fields: Sequence[tuple[str, bytes]], receivers: Iterable[str],
         skip: Iterable[IPNetwork] = (), trusted: Iterable[IPNetwork] = ()) -> Arrival | NotReplayable:
    """The arrival of the message whose header fields (top down) are ``fields``."""
    names = {n.rstrip(".").lower() for n in receivers if n}
    own_hosts = (*_LOOPBACK, *skip)
    relays = tuple(trusted)
    path = [v for n, v in fields if n.lower() == "return-path"]
    if not path:
        return NotReplayable("no Return-Path header: the envelope sender is unknown")
    sender = envelope_sender(_value(path[0]))
    if sender is None:
        return NotReplayable("its Return-Path header is not an address in <>")
    rcpts = recipients(fields)
    envelope = (sender, *rcpts)
    hops = [(i, _value(v)) for i, (n, v) in enumerate(fields) if n.lower() == "received"]
    if not hops:
        return NotReplayable("no Received header")
    any_writer = False        # True: the header is another site host's (a relay's), any name
    for count, (index, value) in enumerate(hops):
        if count >= received.MAX_HOPS:
            return NotReplayable(f"no arrival from outside in the first {received.MAX_HOPS} "
                                 "Received headers")
        hop, writer = received.written(value, envelope)
        local = _LOCAL_DELIVERY.match(value[:received.MAX_LEN])
        if isinstance(hop, received.Unreadable) and local and not any_writer and \
                local.group("by").rstrip(".").lower() in names:
            continue              # delivery on this host (LMTP): no client to read
        if not any_writer and (writer is None or writer.name not in names):
            who = f"by {writer.name}" if writer else "by a host that cannot be told"
            if isinstance(hop, received.Unreadable) and writer is None:
                return NotReplayable(f"Received header {count + 1}: {hop.reason}")
            return NotReplayable(f"Received header {count + 1} was written {who}, not by "
                                 f"{' or '.join(sorted(names)) or 'a receiver name'} "
                                 "(see --receiver)")
        if isinstance(hop, received.Unreadable):
            if hop.local:
                return NotReplayable(f"submitted on {writer.name if writer else 'this site'} "
                                     "itself (no SMTP client)")
            return NotReplayable(f"Received header {count + 1}: {hop.reason}")
        if in_networks(hop.client_ip, _LOOPBACK):
            continue              # a re-injection on loopback: the header below is the same host's
        if in_networks(hop.client_ip, own_hosts) or (relays and in_networks(hop.client_ip, relays)):
            any_writer = True     # from another of this site's hosts: the header below is its own
            continue
        return Arrival(hop.client_ip, hop.helo, sender, rcpts,
                       bool(writer and writer.authenticated), index)
    return NotReplayable("its Received headers name only this host and its relays")
