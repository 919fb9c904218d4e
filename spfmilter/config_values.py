"""The value of each configuration key: text in, a typed value out.

Each parser takes the raw text after ``=`` and returns the value the key sets,
or raises ValueError with a message meant for the administrator (``config``
adds file, line and key).  Apart from ``config`` so that the file's structure
(keys, sections, Settings) reads on its own, and a new key's syntax has one
obvious home.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import string
from collections.abc import Callable

from spfmilter.core.addresses import IPNetwork, is_domain, recipient_pattern
from spfmilter.core.policy import REASON_FIELDS, gethostname
from spfmilter.endpoint import Endpoint

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"expected True or False, got {text!r}")


def enum_of(kind: type[enum.Enum]) -> Callable[[str], enum.Enum]:
    by_lower = {m.value.lower(): m for m in kind}

    def parse(text: str) -> enum.Enum:
        try:
            return by_lower[text.strip().lower()]
        except KeyError:
            allowed = " | ".join(m.value for m in kind)
            raise ValueError(f"expected one of {allowed}, got {text!r}") from None
    return parse


def items(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def networks(text: str) -> tuple[IPNetwork, ...]:
    nets = []
    for item in items(text):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(nets)


def domains(text: str) -> tuple[str, ...]:
    out = []
    for item in items(text):
        name = item.rstrip(".").lower()
        if not is_domain(name):
            raise ValueError(f"{item!r} is not a domain name")
        out.append(name)
    return tuple(out)


def recipients(text: str) -> tuple[str, ...]:
    return tuple(recipient_pattern(item) for item in items(text))


def hostname(text: str) -> str:
    name = text.strip().rstrip(".").lower()
    if not is_domain(name):
        raise ValueError(f"{text!r} is not a host name")
    return name


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise ValueError(f"expected seconds between 0 and 3600, got {text!r}")
    return value


MAX_WORKERS = 256


def workers(text: str) -> int:
    # "auto" is kept as 0 and resolved where the workers start (the daemon),
    # so a config file means the same on every host it is copied to.
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a number of processes or auto, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"expected 1 to {MAX_WORKERS} processes or auto, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise ValueError(f"expected a whole number >= 0, got {text!r}")
    return value


def byte_count(text: str) -> int:
    value = nonneg_int(text)
    if not 64 * 1024 <= value <= 1024 ** 3:
        raise ValueError(f"expected bytes between 65536 and 1073741824, got {text!r}")
    return value


def umask(text: str) -> int:
    try:
        value = int(text.strip(), 8)
    except ValueError:
        raise ValueError(f"expected an octal mask such as 007, got {text!r}") from None
    if not 0 <= value <= 0o777:
        raise ValueError(f"expected an octal mask between 000 and 777, got {text!r}")
    return value


def parse_policy_socket(text: str) -> Endpoint | None:
    """Policy_Socket: empty (off), ``unix:/path`` or ``inet:PORT@HOST``, as for Socket."""
    return Endpoint.parse(text) if text.strip() else None


_RESTRICTION = re.compile(r"^[A-Za-z0-9_.-]+$")


def restriction(text: str) -> str:
    """A Postfix restriction class name (smtpd_restriction_classes), as policyd-spf takes."""
    value = text.strip()
    if value and not _RESTRICTION.match(value):
        raise ValueError(f"expected the name of a Postfix restriction class (one word), got {text!r}")
    return value


def nameservers(text: str) -> tuple[tuple[str, int], ...]:
    out = []
    for item in items(text):
        host, port = item, 53
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", item)
        if m:
            host, port = m.group(1), int(m.group(2) or 53)
        elif item.count(":") == 1:
            host, _, p = item.partition(":")
            if not p.isdigit():
                raise ValueError(f"bad port in {item!r}")
            port = int(p)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{item!r} is not IP[:port] (IPv6 with a port: [addr]:port)") from None
        if not 0 < port < 65536:
            raise ValueError(f"bad port in {item!r}")
        out.append((host, port))
    return tuple(out)


def reason(text: str) -> str:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}") from None
    unknown = fields - REASON_FIELDS
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}; known: "
                         + ", ".join("{%s}" % f for f in sorted(REASON_FIELDS)))
    return text


def authserv_id(text: str) -> str:
    # policyd-spf's placeholders for "this host's name"
    if text.strip().upper() in ("HOSTNAME", "HEADER"):
        return gethostname()
    return hostname(text)


def reason_url(text: str) -> str:
    try:
        text.format("mfrom", "user@example.com", "192.0.2.1", "mx.example")
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(f"bad template ({exc}); use {{0}} identity, {{1}} sender, "
                         "{2} ip, {3} receiver") from None
    return text.strip()


def host_port(text: str) -> tuple[str, int] | None:
    value = text.strip()
    if value.lower() in ("", "off", "none", "false", "no"):
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s]+):(\d+)", value)
    if not m:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9095) or off, got {text!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, port


_MECHANISM = re.compile(r"^[-+?~]?(all|include:\S+|a(:\S+)?(/\d+)?(//\d+)?|mx(:\S+)?(/\d+)?(//\d+)?|"
                        r"ptr(:\S+)?|ip4:[0-9./]+|ip6:[0-9A-Fa-f:./]+|exists:\S+)$", re.I)


def mechanisms(text: str) -> str:
    terms = text.split()
    for term in terms:
        if not _MECHANISM.match(term):
            raise ValueError(f"{term!r} is not an SPF mechanism")
    return " ".join(terms)


def record(text: str) -> str:
    value = text.strip()
    if not value:
        return ""
    if not value.lower().startswith("v=spf1"):
        raise ValueError(f"expected an SPF record starting with v=spf1, got {text!r}")
    mechanisms(value[6:])
    return value


def optional_text(text: str) -> str | None:
    return text.strip() or None


def never_refuse(text: str) -> bool:
    # policyd-spf: TestOnly = 1 is normal operation, 0 means "never reject".
    return not boolean(text)
