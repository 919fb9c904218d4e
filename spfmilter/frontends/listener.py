"""The listening socket libmilter opened: finding it, tuning it, retiring it.

pymilter does not expose libmilter's listening descriptor, so it is found
among the process's open descriptors: the socket listening on the configured
TCP port or unix path.  Two things need it:

* TCP_NODELAY.  Over TCP, libmilter writes the end-of-message modifications
  and the final reply as separate small packets.  With Nagle's algorithm on,
  the kernel holds the second packet until the MTA acknowledges the first,
  and the MTA (which is only waiting) delays that ACK by up to ~40 ms: every
  message over an inet socket would stall for one delayed-ACK timeout.  On
  Linux a socket returned by accept() inherits TCP_NODELAY from its listener,
  so setting it once covers every MTA connection.  Failing to set it is not
  fatal (only slower), so failures are logged and swallowed.
* A graceful stop.  libmilter (built with its worker pool, as Debian's is)
  drops every session that is not inside a callback the moment it is told to
  stop, so a stop that lets transactions finish must first stop *accepting*
  while libmilter keeps serving: the listening descriptor is replaced (dup2)
  by a listening socket nobody can reach, and libmilter is stopped only once
  the connections in flight are done.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile

from spfmilter.log import kv, log


def _inet_port(spec: str) -> int | None:
    """The TCP port of an ``inet:PORT[@HOST]`` / ``inet6:PORT[@HOST]`` spec, else None."""
    kind, _, rest = spec.partition(":")
    if kind.lower() not in ("inet", "inet6"):
        return None
    port = rest.partition("@")[0]
    return int(port) if port.isdigit() else None


def _open_fds() -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir("/proc/self/fd") if name.isdigit())
    except OSError:  # no /proc: try the usual range
        return list(range(3, 1024))


def _listening(fd: int) -> socket.socket | None:
    """A duplicate of ``fd`` if it is a listening stream socket (caller closes it)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET,
                                                               socket.SO_ACCEPTCONN):
            return sock
    except OSError:
        pass
    sock.close()
    return None


def listening_sockets(port: int) -> list[int]:
    """Descriptors of this process's TCP sockets listening on ``port``."""
    found = []
    for fd in _open_fds():
        sock = _listening(fd)
        if sock is None:
            continue
        with sock:  # closes our duplicate only
            try:
                if sock.family in (socket.AF_INET, socket.AF_INET6) and \
                        sock.getsockname()[1] == port:
                    found.append(fd)
            except OSError:
                continue
    return found


def listener_fds(spec: str) -> list[int]:
    """Descriptors of this process's sockets listening where ``spec`` says."""
    port = _inet_port(spec)
    if port is not None:
        return listening_sockets(port)
    path = spec.partition(":")[2]
    found = []
    for fd in _open_fds():
        sock = _listening(fd)
        if sock is None:
            continue
        with sock:
            try:
                if sock.family == socket.AF_UNIX and sock.getsockname() == path:
                    found.append(fd)
            except OSError:
                continue
    return found


def tune_listener(spec: str) -> int:
    """Set TCP_NODELAY on the socket libmilter listens on for ``spec``.

    Returns how many listening sockets were changed (0 for a unix socket).
    Call it after ``milter.opensocket()`` and before ``milter.main()``.
    """
    port = _inet_port(spec)
    if port is None:
        return 0
    tuned = 0
    for fd in listening_sockets(port):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tuned += 1
        except OSError as exc:
            log.warning("%s", kv(action="sockopt-failed", option="TCP_NODELAY", socket=spec,
                                 error=exc.strerror))
        finally:
            sock.close()
    if not tuned:
        log.warning("%s", kv(action="sockopt-failed", option="TCP_NODELAY", socket=spec,
                             error="listening socket not found"))
    return tuned


def unreachable_listener() -> socket.socket:
    """A listening socket nobody can connect to (bound in a private folder, then
    unlinked), non-blocking: libmilter polls it forever and never accepts."""
    with tempfile.TemporaryDirectory(prefix="spfmilter-drain-") as folder:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.path.join(folder, "s"))
        sock.listen(1)
    sock.setblocking(False)
    return sock


def retire(fds: list[int]) -> socket.socket:
    """Make libmilter's listening descriptors point at an unreachable listener, so
    this process accepts no new connection while libmilter serves those it has.
    Returns that listener (keep it open until the process ends)."""
    dead = unreachable_listener()
    for fd in fds:
        os.dup2(dead.fileno(), fd, inheritable=False)
    return dead
