"""What an address, a domain and a recipient pattern are: the one definition of each.

Why one module: the configuration validates these forms, the decision
matches them, the header renderer quotes them and both front ends parse
them from the MTA; each reading its own way would let, say, a recipient
pattern mean one thing in a ``[recipient ...]`` section and another in
Exempt_Recipients.  This is a leaf: it imports nothing of spfmilter.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A host or domain name as configuration accepts it and headers write it bare:
# LDH labels (and "_", which SPF and DKIM names use) of at most 63 characters.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}\Z)(?:{_LABEL}\.)*{_LABEL}\Z")


def is_domain(name: str) -> bool:
    """True for a syntactically valid domain name without a trailing dot."""
    return bool(_DOMAIN.match(name))


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"   # ASCII digits, no leading zero
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}\Z")


@functools.lru_cache(maxsize=1024)
def parse_ip(text: str) -> IPAddress | None:
    """The address in ``text`` (an IPv4-mapped IPv6 address as IPv4), None if it is none.

    The same client address is parsed by the plan, by the check and by pyspf
    for every message; parsing is a pure function of the text, so it is kept.
    """
    quad = _IPV4.match(text)
    if quad:   # ipaddress would parse and check each octet in Python: one regex does it
        return ipaddress.IPv4Address(bytes(map(int, quad.groups())))
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def client_address(raw: object) -> str:
    """The client IP from what an MTA reports ('[192.0.2.1]', 'IPv6:2001:db8::1',
    'fe80::1%eth0', an IPv4-mapped address), '' when it is no IP (a unix client)."""
    if isinstance(raw, tuple):
        raw = raw[0] if raw else ""
    if not isinstance(raw, str):
        return ""
    text = raw.strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    addr = parse_ip(text.split("%", 1)[0])
    return str(addr) if addr is not None else ""


def escape_non_ascii(text: str) -> str:
    """Text with every non-ASCII character as ``\\x{HEX}`` (RFC 6533's form of a UTF-8
    address in ASCII), for an SMTP reply: a reply is ASCII whatever the session."""
    if text.isascii():
        return text
    return "".join(ch if ch.isascii() else f"\\x{{{ord(ch):X}}}" for ch in text)


def ascii_domain(name: str) -> str:
    """A domain in ASCII: its A-labels (IDNA) when it is a valid internationalized
    name, else with its non-ASCII characters escaped."""
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return escape_non_ascii(name)


def ascii_address(address: str) -> str:
    """A mail address in ASCII (``jürgen@bücher.example`` ->
    ``j\\x{FC}rgen@xn--bcher-kva.example``): the domain in A-labels, non-ASCII
    characters of the local part escaped, and a backslash beside them as
    ``\\x{5C}``, so an escape in the text cannot pass for a character."""
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at:
        return escape_non_ascii(address.replace("\\", "\\x{5C}"))
    return escape_non_ascii(local.replace("\\", "\\x{5C}")) + "@" + ascii_domain(domain)


def in_networks(ip: str, networks: Iterable[IPNetwork]) -> bool:
    """Whether ``ip`` (any form client_address accepts) lies in one of ``networks``."""
    addr = parse_ip(ip.split("%", 1)[0])
    if addr is None:
        return False
    return any(addr in net for net in networks if net.version == addr.version)


def strip_brackets(address: str) -> str:
    """'<user@example.com>' -> 'user@example.com'; drops an RFC 5321 source route."""
    address = (address or "").strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if address.startswith("@") and ":" in address:
        address = address.split(":", 1)[1]
    return address


def domain_of(address: str) -> str:
    """The domain of an address: what follows its last '@' (RFC 7208 §4.3)."""
    return address.rpartition("@")[2]


def recipient_pattern(text: str) -> str:
    """A recipient pattern, lower case: 'user@domain', 'user@' (any domain) or
    '@domain' (any user); ValueError for anything else."""
    item = text.strip().strip("<>").lower()
    local, at, domain = item.rpartition("@")
    if not at or (not local and not domain) or (domain and not is_domain(domain)):
        raise ValueError(f"{item!r} is not 'user@domain', 'user@' or '@domain'")
    return item


def recipient_matches(recipient: str, pattern: str) -> bool:
    """Whether a recipient address matches a pattern from recipient_pattern()."""
    local, _, domain = recipient.strip().strip("<>").lower().rpartition("@")
    plocal, _, pdomain = pattern.rpartition("@")
    return (not plocal or plocal == local) and (not pdomain or pdomain == domain)
