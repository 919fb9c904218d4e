"""The client behind a trusted relay, read from the Received headers the relays wrote.

Why: when spfmilter's MTA is not the first hop (a border gateway, a backup
MX), the connecting client is the relay and SPF must be checked for the
host that handed the message to it.  That host is named in the topmost
Received header -- the one the relay wrote -- in the forms the common MTAs
use:

* Postfix, Sendmail: ``from HELO (rdns [192.0.2.1])``, ``(unknown [IPv6:2001:db8::1])``,
  ``(rdns [192.0.2.1] (may be forged))``, ``(user@rdns [192.0.2.1])``;
* Exim: ``from rdns ([192.0.2.1] helo=HELO)``, ``from [192.0.2.1] (helo=HELO)``;
* Microsoft Exchange: ``from HELO (192.0.2.1)``, ``from HELO (2001:db8::1)``.

When that address is itself a trusted relay the walk goes one header down.
Everything here is hostile input: a header that does not parse is no hop,
and the walk is bounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spfmilter.core.addresses import IPNetwork, client_address, in_networks

#: Received headers examined, top down; a relay chain longer than this is not walked.
MAX_HOPS = 20
_MAX_LEN = 2000  # characters of one header read

_FROM = re.compile(r"^\s*from\s+(\S+)\s*(?:\((.*?)\))?", re.I | re.S)
_BRACKETED = re.compile(r"\[((?:IPv6:)?[0-9A-Fa-f:.]+)\]", re.I)
_BARE = re.compile(r"^\s*((?:IPv6:)?[0-9A-Fa-f:.]+)\s*$", re.I)
_EXIM_HELO = re.compile(r"\bhelo=([^\s)\]]+)", re.I)


@dataclass(frozen=True)
class Hop:
    """The host that handed the message to the first untrusted hop down the chain."""

    client_ip: str
    helo: str


def parse(value: str) -> Hop | None:
    """The (address, HELO) a Received header names as where it came from, or None."""
    text = re.sub(r"\s+", " ", value[:_MAX_LEN])
    m = _FROM.match(text)
    if not m:
        return None
    name, comment = m.group(1), m.group(2) or ""
    helo = name
    ip = ""
    if name.startswith("[") and name.endswith("]"):  # Exim without a PTR: from [IP] (helo=...)
        ip, helo = client_address(name), ""
    found = _BRACKETED.search(comment)
    if found:
        ip = client_address(found.group(1))
    else:
        bare = _BARE.match(comment)
        if bare:  # Exchange: from HELO (192.0.2.1)
            ip = client_address(bare.group(1))
    exim = _EXIM_HELO.search(comment)
    if exim:  # Exim's "from" is the reverse name; the HELO is in the comment
        helo = exim.group(1)
    if not ip:
        return None
    return Hop(ip, helo.strip("[]") if not client_address(helo) else "")


def client_behind(received: Sequence[str], trusted: Iterable[IPNetwork]) -> Hop | None:
    """The first hop, top down, whose address is not a trusted relay (None if the
    relays left none that parses)."""
    nets = tuple(trusted)
    for value in received[:MAX_HOPS]:
        hop = parse(value)
        if hop is None:
            return None
        if not in_networks(hop.client_ip, nets):
            return hop
    return None
