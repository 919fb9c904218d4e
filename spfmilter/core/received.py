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

Everything here is hostile input, and so is most of the header itself: the
relay copies the client's HELO into it verbatim (Postfix and Exchange even
keep spaces and parentheses), and the envelope addresses (``for <...>``,
Exim's ``envelope-from``).  A HELO of ``x (y [192.0.2.10])`` makes Postfix
write ``from x (y [192.0.2.10]) (evil.example [203.0.113.66]) by relay ...``.
So the address is read only from the part the relay itself wrote: the
*last* address comment of the from clause, which is the one followed --
after nothing but ordinary comments (TLS details) -- by the relay's
``by`` clause.  Whatever a HELO contains, it stands before that comment;
the envelope addresses, which come after it, are blanked first (the caller
knows them exactly).  Where the relay copied in an address that is not this
message's envelope (a recipient its aliases rewrote), text that imitates the
comment could stand on both sides of it: with more than one candidate such a
header is ambiguous.  A header that does not read is no hop: the transaction
then decides with Trusted_Relays_Unreadable, never as if it were clean.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from spfmilter.core.addresses import IPNetwork, client_address, in_networks

#: Received headers examined, top down; a relay chain longer than this is not walked.
MAX_HOPS = 20
#: Characters of one header read: more than any HELO line an MTA accepts (Postfix's
#: line_length_limit is 2048) plus everything the relay adds around it.
MAX_LEN = 16384

_IP = r"(?:IPv6:)?[0-9A-Fa-f:.]+"
# The comments a relay writes about the client: Postfix/Sendmail "(rdns [ip])" with an
# ident user and Sendmail's "(may be forged)"; Exim "([ip] helo=name)"; Exchange "(ip)".
_ADDRESS_COMMENT = re.compile(
    r"\(\s*(?:(?:[^\s()\[\]@]+@)?[^\s()\[\]]+\s+)?\[(?P<bracketed>" + _IP + r")\]"
    r"(?::\d+)?(?:\s+helo=(?P<exim_helo>[^\s()]*))?(?:\s*\(may be forged\))?\s*\)"
    r"|\(\s*(?P<bare>" + _IP + r")\s*\)", re.I)
# Exim when the client has no reverse name: "from [ip] (helo=name)" or "from [ip]:port".
_EXIM_BARE = re.compile(r"\[(?P<ip>" + _IP + r")\](?::\d+)?\s+\(helo=(?P<helo>[^\s()]*)\)\s*",
                        re.I)
_BY = re.compile(r"by\s", re.I)
_FROM = re.compile(r"\s*from\s", re.I)
# What a relay writes for mail it originated itself (no client): Postfix's
# "by host (Postfix, from userid N)", Sendmail's "(from user@localhost) by host".
_LOCAL = re.compile(r"\s*(?:\(from [^()]*\)\s*)?by\s", re.I)


@dataclass(frozen=True)
class Hop:
    """The host that handed the message to the first untrusted hop down the chain."""

    client_ip: str
    helo: str


@dataclass(frozen=True)
class Unreadable:
    """A header the relay wrote that names no client (``reason`` says what is wrong),
    or ``local``: the relay originated the message itself."""

    reason: str
    local: bool = False


def _skip_comment(text: str, pos: int) -> int | None:
    """The end of the balanced comment starting at ``pos`` (which is '('), or None."""
    depth = 0
    for i in range(pos, len(text)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _by_position(text: str, pos: int) -> int | None:
    """Where the ``by`` keyword stands when only ordinary comments (no address in
    them) and white space stand between ``pos`` and it -- true of the relay's own
    comment -- else None."""
    while True:
        while pos < len(text) and text[pos] == " ":
            pos += 1
        if pos < len(text) and text[pos] == "(":
            end = _skip_comment(text, pos)
            if end is None or _ADDRESS_COMMENT.match(text, pos):
                return None
            pos = end
            continue
        return pos if _BY.match(text, pos) else None


def _followed_by_by(text: str, pos: int) -> bool:
    return _by_position(text, pos) is not None


def _blank(text: str, envelope: Iterable[str]) -> str:
    """``text`` with the envelope addresses, where the relays write them (``<address>``,
    Exim's ``for address``), replaced by spaces."""
    for address in sorted({a for a in envelope if a}, key=len, reverse=True):
        if text.isascii() and address.isascii():
            text = _blank_ascii(text, address)
            continue
        where = re.escape(address)
        text = re.sub(rf"(?<=<){where}(?=>)|(?<=\bfor ){where}(?=;|\s|$)",
                      lambda m: " " * len(m.group()), text, flags=re.I)
    return text


def _blank_ascii(text: str, address: str) -> str:
    """_blank's regular expression for one address, by string search: an expression per
    address would be compiled anew for nearly every message (one sender each)."""
    lower, wanted = text.lower(), address.lower()
    out, start, size = [], 0, len(wanted)
    i = lower.find(wanted)
    while i >= 0:
        j = i + size
        bracketed = i > 0 and text[i - 1] == "<" and j < len(text) and text[j] == ">"
        after_for = lower[max(i - 4, 0):i] == "for " and \
            (i == 4 or not (lower[i - 5].isalnum() or lower[i - 5] == "_")) and \
            (j == len(text) or text[j] in "; ")
        if bracketed or after_for:
            out += [text[start:i], " " * size]
            start = j
            i = lower.find(wanted, j)
        else:
            i = lower.find(wanted, i + 1)
    out.append(text[start:])
    return "".join(out)


# What is left of an envelope address the relay wrote after its comment and _blank did
# not know: text between angle brackets, or after Exim's "for".
_UNKNOWN_ADDRESS = re.compile(r"<\s*[^\s>]|[^\s<]\s*>|\bfor\s+[^\s;<]", re.I)


def read(value: str, envelope: Iterable[str] = ()) -> Hop | Unreadable:
    """The (address, HELO) the relay that wrote ``value`` names as its client.

    ``envelope``: the message's envelope addresses, which the relay may have
    copied into the header after its own comment and which the sender chose.
    """
    return _read(value, envelope)[0]


@dataclass(frozen=True)
class Writer:
    """What the relay says of itself in its ``by`` clause: its name and the ``with``
    protocol (``ESMTPSA``: the client authenticated, RFC 3848), "" when not given."""

    name: str
    protocol: str = ""

    @property
    def authenticated(self) -> bool:
        return bool(_AUTHENTICATED.fullmatch(self.protocol))


# "by NAME", the relay's comments ("(Postfix)", Exchange's "(10.0.0.1)", Sendmail's
# version), "via", then "with PROTOCOL"
_WRITER = re.compile(r"by\s+(?P<name>[^\s();]+)(?:\s*\((?:[^()]|\([^()]*\))*\))*"
                     r"(?:\s+via\s+[^\s();]+)?(?:\s+with\s+(?P<protocol>[^\s();]+))?", re.I)
_AUTHENTICATED = re.compile(r"(?:UTF8)?(?:E?SMTP|LMTP)S?A", re.I)


def written(value: str, envelope: Iterable[str] = ()) -> tuple[Hop | Unreadable, Writer | None]:
    """``read``, and who wrote the header: the ``by`` clause that follows the part the
    relay wrote about its client (never a ``by`` a HELO or an address carries),
    None when that part cannot be told."""
    found, text, by = _read(value, envelope)
    if by is None:
        return found, None
    m = _WRITER.match(text, by)
    if not m:
        return found, None
    return found, Writer(m.group("name").rstrip(".").lower(), m.group("protocol") or "")


def _read(value: str, envelope: Iterable[str]) -> tuple[Hop | Unreadable, str, int | None]:
    """The hop, the text read (white space folded, envelope blanked) and where the
    relay's ``by`` clause starts in it (None when not known)."""
    text = re.sub(r"\s+", " ", value[:MAX_LEN])
    local = _LOCAL.match(text)
    if local:
        by = local.end() - 3 if text[local.end() - 3:local.end() - 1].lower() == "by" else None
        return Unreadable("the relay originated the message", local=True), text, by
    start = _FROM.match(text)
    if not start:
        return Unreadable("its Received header has no from clause"), text, None
    text = _blank(text, envelope)
    clause = text[:text.rfind(";")] if ";" in text else text   # the date is the relay's
    chosen: re.Match[str] | None = None
    count = 0
    for m in _ADDRESS_COMMENT.finditer(clause, start.end()):
        if _followed_by_by(clause, m.end()):
            chosen, count = m, count + 1
    if count > 1 and chosen is not None and _UNKNOWN_ADDRESS.search(clause, chosen.end()):
        # an address the relay copied in after its comment that is not this message's
        # envelope (rewritten by an alias, say), beside more than one comment: which
        # one the relay wrote cannot be told
        return Unreadable("its Received header is ambiguous: an address comment in the "
                          "HELO or an envelope address"), text, None
    name_end = chosen.start() if chosen else len(clause)
    exim = _EXIM_BARE.match(clause, start.end())
    if exim and (chosen is None or exim.end() > chosen.start()) and \
            _followed_by_by(clause, exim.end()):
        ip = client_address(exim.group("ip"))
        by = _by_position(clause, exim.end())
        return (Hop(ip, exim.group("helo")) if ip else
                Unreadable("its Received header names no valid address")), text, by
    if chosen is None:
        if len(value) > MAX_LEN:
            return Unreadable(f"its Received header is longer than {MAX_LEN} characters"), \
                text, None
        return Unreadable("its Received header names no client address"), text, None
    by = _by_position(clause, chosen.end())
    ip = client_address(chosen.group("bracketed") or chosen.group("bare"))
    if not ip:
        return Unreadable("its Received header names no valid address"), text, by
    if chosen.group("exim_helo") is not None:   # Exim: the reverse name comes first
        return Hop(ip, chosen.group("exim_helo")), text, by
    helo = clause[start.end():name_end].strip()
    if helo.startswith("[") and helo.endswith("]") and client_address(helo):
        helo = ""                                  # an address literal names no domain
    return Hop(ip, helo), text, by


def parse(value: str, envelope: Iterable[str] = ()) -> Hop | None:
    """The hop ``value`` names, or None when it names none."""
    found = read(value, envelope)
    return found if isinstance(found, Hop) else None


def client_behind(received: Sequence[str], trusted: Iterable[IPNetwork],
                  envelope: Iterable[str] = ()) -> Hop | Unreadable:
    """The first hop, top down, whose address is not a trusted relay; Unreadable
    when the relays left none that reads (the first header that does not read
    decides, so a forged header further down is never reached)."""
    nets = tuple(trusted)
    addresses = tuple(envelope)
    for value in received[:MAX_HOPS]:
        hop = read(value, addresses)
        if isinstance(hop, Unreadable):
            return hop
        if not in_networks(hop.client_ip, nets):
            return hop
    if not received:
        return Unreadable("it wrote no Received header")
    return Unreadable(f"the first {MAX_HOPS} Received headers name only trusted relays"
                      if len(received) >= MAX_HOPS else "its Received headers name only "
                      "trusted relays")
