"""A connection and a milter negotiation, possibly as another user inside a chroot.

What the MTA would see when it connects: the facts the reach rules judge.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any, NoReturn

from spfmilter import milter_protocol
from spfmilter.doctor.parsers import identity
from spfmilter.endpoint import Endpoint

PROBE_TIMEOUT = 10.0


def negotiate(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """Connect and send SMFIC_OPTNEG as an MTA does; the milter's version, actions, flags."""
    sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    start = time.monotonic()
    try:
        try:
            sock.connect(endpoint.address)
        except OSError as exc:
            return {"connected": False, "errno": exc.errno or 0,
                    "error": exc.strerror or str(exc) or type(exc).__name__}
        try:
            # what Postfix 3 offers, so spfmilter answers exactly as it answers the MTA
            sock.sendall(milter_protocol.optneg())
            version, actions, protocol = milter_protocol.parse_optneg(
                *milter_protocol.read_packet(sock, 65536))
            with contextlib.suppress(OSError):
                sock.sendall(milter_protocol.packet(b"Q"))
        except (OSError, milter_protocol.ProtocolError, struct.error) as exc:
            text = "no answer" if isinstance(exc, TimeoutError) else str(exc)
            return {"connected": True, "error": text or type(exc).__name__}
        return {"connected": True, "version": version, "actions": actions,
                "protocol": protocol, "ms": (time.monotonic() - start) * 1000}
    finally:
        sock.close()


def blocked_at(path: str) -> str | None:
    """The first folder this process may not enter on the way to ``path``, or the
    socket itself if it may not write to it (what EACCES means, made precise)."""
    parts = Path(path).parts
    for i in range(1, len(parts)):
        folder = str(Path(*parts[:i]))
        if not os.access(folder, os.X_OK):
            return folder
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return path
    return None


def probe(endpoint: Endpoint, user: str | None = None, chroot: str | None = None,
          timeout: float = PROBE_TIMEOUT) -> dict[str, Any]:
    """Look at and connect to ``endpoint`` as ``user`` inside ``chroot``, as the MTA does.

    A forked child chroots (the socket's identity is taken there, still as
    root), becomes the user, finds which folder or file would refuse it and
    negotiates; the result comes back as JSON over a pipe.  Without root (or
    without a user or chroot) it runs in this process as this user.
    """
    if os.geteuid() != 0 or (user is None and chroot is None):
        result: dict[str, Any] = {"as": pwd.getpwuid(os.geteuid()).pw_name, "blocked": None}
        if endpoint.kind == "unix":
            result["identity"] = identity(endpoint.path)
            result["blocked"] = blocked_at(endpoint.path)
        result.update(negotiate(endpoint, timeout))
        return result
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(write_fd, endpoint, user, chroot, timeout)
    os.close(write_fd)
    try:
        data = _read_until(read_fd, time.monotonic() + timeout + 5)
    finally:
        os.close(read_fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    try:
        out: dict[str, Any] = json.loads(data)
    except ValueError:
        return {"connected": False, "errno": 0, "error": "the probe did not finish in time",
                "as": user or "root"}
    if out.get("identity") is not None:
        out["identity"] = tuple(out["identity"])
    return out


def _child(write_fd: int, endpoint: Endpoint, user: str | None, chroot: str | None,
           timeout: float) -> NoReturn:
    """The forked child's probe: into the chroot, then the user; its result as JSON."""
    status = 0
    result: dict[str, Any]
    try:
        result = {"as": user or "root"}
        pw = pwd.getpwnam(user) if user else None
        if pw is not None:  # as Postfix's chroot_uid(): groups first, from the real /etc
            os.setgid(pw.pw_gid)
            os.initgroups(pw.pw_name, pw.pw_gid)
        if chroot:
            os.chroot(chroot)
            os.chdir("/")
        if endpoint.kind == "unix":  # still root: the socket's identity whatever the modes
            result["identity"] = identity(endpoint.path)
        if pw is not None:
            os.setuid(pw.pw_uid)
        result["blocked"] = blocked_at(endpoint.path) if endpoint.kind == "unix" else None
        result.update(negotiate(endpoint, timeout))
    except BaseException as exc:  # reported by the parent, never a traceback
        result = {"connected": False, "errno": 0, "error": f"probe failed: {exc}"}
        status = 1
    finally:
        with contextlib.suppress(BaseException):
            os.write(write_fd, json.dumps(result).encode())
        os._exit(status)


def _read_until(fd: int, deadline: float) -> bytes:
    """What the child writes, until it closes the pipe or the deadline passes."""
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data
