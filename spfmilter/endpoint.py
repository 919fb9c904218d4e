"""Where a socket listens or connects: the one reading of libmilter's socket syntax.

Why one value type: ``Socket`` and ``Policy_Socket`` are written as libmilter
writes them (``unix:/path``, ``local:/path``, ``inet:PORT@HOST``,
``inet6:PORT@HOST``), and the daemon, the listeners and ``doctor`` each need
the parts (a path to remove, a port to find the listener by, an address to
bind or connect to).  Splitting the text again wherever a part is needed let
those readings drift apart; here it is read once, when the file is, and the
rest of the code asks the value.

This is a leaf beside ``core.addresses`` (whose host name rule it shares):
it imports no ``socket`` at import time, because the configuration -- which
the pure core reads -- holds these values.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spfmilter.core.addresses import is_domain

if TYPE_CHECKING:
    import socket

UNIX, INET, INET6 = "unix", "inet", "inet6"


@dataclass(frozen=True)
class Endpoint:
    """A unix socket's path, or a TCP port and host (empty host: every address)."""

    kind: str                   # "unix", "inet" or "inet6"
    path: str = ""
    host: str = ""              # as written (an IPv6 address may keep its brackets)
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Read a libmilter socket spec; ValueError (a line for the administrator) when it
        is not one, so that a typo fails when the file is read, not at bind."""
        spec = text.strip()
        kind, sep, rest = spec.partition(":")
        kind = kind.lower()
        if not sep or not rest:
            raise ValueError(f"expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path, got {text!r}")
        if kind in ("unix", "local"):
            if not rest.startswith("/"):
                raise ValueError(f"a unix socket needs an absolute path, got {text!r}")
            return cls(UNIX, path=rest)
        if kind in (INET, INET6):
            port, _, host = rest.partition("@")
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bad port in {text!r}")
            if host:
                try:
                    addr = ipaddress.ip_address(host.strip("[]"))
                except ValueError:
                    if not is_domain(host):
                        raise ValueError(f"bad host in {text!r}") from None
                else:
                    if (addr.version == 6) != (kind == INET6):
                        raise ValueError(f"{kind} does not take the address {host!r}")
            return cls(kind, host=host, port=int(port))
        raise ValueError(f"unknown socket type {kind!r}: use inet:, inet6: or unix:")

    def __str__(self) -> str:
        """The spec as libmilter (and Sendmail's S=) takes it."""
        if self.kind == UNIX:
            return f"unix:{self.path}"
        return f"{self.kind}:{self.port}@{self.host}" if self.host else f"{self.kind}:{self.port}"

    def postfix(self) -> str:
        """The entry as Postfix's smtpd_milters writes it (``inet:HOST:PORT``)."""
        if self.kind == UNIX:
            return f"unix:{self.path}"
        return f"inet:{self.host}:{self.port}"

    @property
    def unix_path(self) -> Path | None:
        """The socket file, for a unix socket."""
        return Path(self.path) if self.kind == UNIX else None

    @property
    def tcp_port(self) -> int | None:
        """The TCP port, for an inet or inet6 socket."""
        return None if self.kind == UNIX else self.port

    def connectable(self) -> Endpoint:
        """Where a client on this host reaches it, in the MTA's terms: a socket on every
        address is reached on the loopback address, and inet6 is written inet."""
        if self.kind == UNIX:
            return self
        return Endpoint(INET, host=self.host or "127.0.0.1", port=self.port)

    @property
    def family(self) -> socket.AddressFamily:
        """The address family to make its socket with."""
        import socket
        if self.kind == UNIX:
            return socket.AF_UNIX
        return socket.AF_INET6 if self.kind == INET6 or ":" in self.host else socket.AF_INET

    @property
    def address(self) -> str | tuple[str, int]:
        """What bind() and connect() take (an empty host: every address)."""
        if self.kind == UNIX:
            return self.path
        host = self.host.strip("[]") or ("::" if self.kind == INET6 else "0.0.0.0")
        return host, self.port
