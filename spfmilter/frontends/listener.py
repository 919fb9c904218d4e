"""Listening sockets: opening them, finding libmilter's, tuning, retiring, removing.

The milter's socket, Policy_Socket and the daemon that opens both share one
way of doing it: the supervisor opens each before the workers fork (under
UMask, as root, a unix socket's file then given to UserID, a previous run's
stale file removed first), and removes a unix socket's file at exit only if it
is still the one it made (a restart may already have made another).  Every
failure is one line naming the setting.

pymilter does not expose libmilter's listening descriptor, so it is found
among the process's open descriptors: the socket listening on the configured
TCP port or unix path.  Two things need it:

* TCP_NODELAY.  Over TCP, libmilter writes the end-of-message modifications
  and the final reply as separate small packets.  With Nagle's algorithm on,
  the kernel holds the second packet until the MTA acknowledges the first,
  and the MTA (which is only waiting) delays that ACK: every
  message over an inet socket would stall for one delayed-ACK timeout.  On
  Linux a socket returned by accept() inherits TCP_NODELAY from its listener,
  so setting it once covers every MTA connection.  Failing to set it is not
  fatal (only slower), so failures are reported (a warning line) and swallowed.
* A graceful stop.  libmilter (built with its worker pool, as Debian's is)
  drops every session that is not inside a callback the moment it is told to
  stop, so a stop that lets transactions finish must first stop *accepting*
  while libmilter keeps serving: the listening descriptor is replaced (dup2)
  by a listening socket nobody can reach, and libmilter is stopped only once
  the connections in flight are done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from spfmilter import runtime
from spfmilter.config import ConfigError
from spfmilter.endpoint import Endpoint

BACKLOG = 128


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """UMask for what is created inside (a unix socket's file takes its mode from it)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@dataclass
class Listening:
    """A socket this process opened to listen on, and what it takes to remove it."""

    endpoint: Endpoint
    sock: socket.socket | None = None   # ours to close; None: libmilter holds the descriptor
    inode: int | None = None            # the unix socket's file as made here

    def remove(self) -> None:
        """Close the socket and remove a unix socket's file if it is still the one made
        here: a stale one would make the MTA wait for a timeout, not fail fast."""
        if self.sock is not None:
            self.sock.close()
        path = self.endpoint.unix_path
        if path is None or self.inode is None:
            return
        try:
            st = path.stat()
            if stat.S_ISSOCK(st.st_mode) and st.st_ino == self.inode:
                path.unlink()
        except OSError:
            pass


def listen(endpoint: Endpoint, key: str, *, mask: int, owner: tuple[int, int] | None = None,
           make_dir: Callable[[Path], None] | None = None,
           opensocket: Callable[[], None] | None = None) -> Listening:
    """Listen at ``endpoint`` under UMask ``mask``, a unix socket's file owned by
    ``owner`` (uid, gid) and made in a folder ``make_dir`` creates if need be.

    ``opensocket``: libmilter opens the socket (it removes a stale file itself);
    without it the socket is opened here.  A failure is a ConfigError naming ``key``.
    """
    opened = Listening(endpoint)
    path = endpoint.unix_path
    try:
        if path is not None and make_dir is not None:
            make_dir(path.parent)
        with umask(mask):
            if opensocket is not None:
                opensocket()
            else:
                opened.sock = _bind(endpoint)
        if path is not None:
            opened.inode = path.stat().st_ino
            if owner is not None:
                os.chown(path, *owner)
        if opensocket is not None:
            tune_listener(endpoint)  # TCP_NODELAY: no delayed-ACK stall at end of message
    except ConfigError:
        opened.remove()
        raise
    except Exception as exc:
        opened.remove()
        if opensocket is not None:  # libmilter's errors are its own line (it logs the cause)
            raise ConfigError(f"cannot listen: {exc}", key=key) from None
        if not isinstance(exc, OSError):
            raise
        raise ConfigError(f"cannot listen on {endpoint}: {exc.strerror or exc}",
                          key=key) from None
    return opened


def _bind(endpoint: Endpoint) -> socket.socket:
    path = endpoint.unix_path
    if path is not None and path.is_socket():  # a previous run's: nobody serves it any more
        path.unlink()
    sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
    try:
        if path is None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accept()
        sock.bind(endpoint.address)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


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


def listener_fds(endpoint: Endpoint) -> list[int]:
    """Descriptors of this process's sockets listening at ``endpoint``."""
    port = endpoint.tcp_port
    if port is not None:
        return listening_sockets(port)
    path = endpoint.path
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


def tune_listener(endpoint: Endpoint) -> int:
    """Set TCP_NODELAY on the socket libmilter listens on at ``endpoint``.

    Returns how many listening sockets were changed (0 for a unix socket).
    Call it after ``milter.opensocket()`` and before ``milter.main()``.
    """
    port = endpoint.tcp_port
    if port is None:
        return 0
    tuned = 0
    for fd in listening_sockets(port):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tuned += 1
        except OSError as exc:
            runtime.reporter().event(logging.WARNING, "sockopt-failed", option="TCP_NODELAY",
                                     socket=endpoint, error=exc.strerror)
        finally:
            sock.close()
    if not tuned:
        runtime.reporter().event(logging.WARNING, "sockopt-failed", option="TCP_NODELAY",
                                 socket=endpoint, error="listening socket not found")
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
