"""The floor: a pymilter milter that does nothing but add one header at end of message.

It is wired like spfmilter's daemon (pymilter's libmilter module, one process,
a thread per connection) and, like spfmilter, sets TCP_NODELAY on an inet
listener, so it is the least any pymilter milter can cost per message.
Usage: floor_milter.py SOCKET_SPEC [--shape]

With ``--shape`` it asks for exactly the events spfmilter asks for (CONNECT and
MAIL without reply; HELO, RCPT and DATA with a reply; every header without
reply; end of message) and adds three headers, but does no work: the cost of
spfmilter's protocol shape through pymilter, i.e. the best spfmilter itself
could reach.
"""

from __future__ import annotations

import os
import sys

import Milter
import milter as libmilter

from spfmilter.endpoint import Endpoint
from spfmilter.frontends.listener import tune_listener


class Floor(Milter.Base):
    def eom(self) -> int:
        self.addheader("X-Floor", "1", 0)
        return Milter.ACCEPT


class Shape(Milter.Base):
    """spfmilter's negotiated events and header edits, with no work in them."""

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def hello(self, heloname):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom, *params):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def envrcpt(self, to, *params):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def data(self) -> int:
        return Milter.CONTINUE

    def eom(self) -> int:
        for name in ("Received-SPF", "Received-SPF", "Authentication-Results"):
            self.addheader(name, "pass (shape floor)", 0)
        return Milter.ACCEPT


def main() -> int:
    spec = sys.argv[1]
    shape = "--shape" in sys.argv[2:]
    Milter.factory = Shape if shape else Floor
    Milter.set_flags(Milter.ADDHDRS | (Milter.CHGHDRS if shape else 0))
    libmilter.set_connect_callback(Milter.connect_callback)
    if shape:  # wired like spfmilter's daemon
        libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
        libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
        libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
        libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    libmilter.setconn(spec)
    libmilter.settimeout(600)
    if shape:
        libmilter.register("floor", data=lambda ctx: ctx.getpriv().data(),
                           negotiate=Milter.negotiate_callback)
    else:
        libmilter.register("floor", negotiate=Milter.negotiate_callback)
    old = os.umask(0)
    libmilter.opensocket(True)
    os.umask(old)
    tune_listener(Endpoint.parse(spec))
    print("floor milter ready", flush=True)
    libmilter.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
