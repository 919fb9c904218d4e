"""The MTAs' spellings of sockets and times, and when two of them name the same socket."""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat

from spfmilter.doctor.findings import Identity
from spfmilter.endpoint import Endpoint


def postfix_endpoint(spec: str, queue_directory: str) -> Endpoint | None:
    """A Postfix milter entry: unix:/p, /p, inet:host:port, inet:[v6]:port (Postfix's
    syntax, a relative path in its queue folder: not libmilter's, so read here)."""
    spec = spec.strip()
    if spec.startswith("{"):
        spec = spec.strip("{} ").split(",")[0].strip()
    kind, sep, rest = spec.partition(":")
    if not sep:
        kind, rest = "unix", spec
    if kind in ("unix", "local"):
        return Endpoint("unix", path=rest if rest.startswith("/") else
                        os.path.join(queue_directory, rest))
    if kind == "inet":
        m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d+)", rest)
        if m:
            return Endpoint("inet", host=m.group(1), port=int(m.group(2)))
    return None


def postfix_milters(value: str) -> list[str]:
    """Split a milter list: commas/space separated, ``{ ... }`` groups kept whole."""
    return [m.group(0) for m in re.finditer(r"\{[^}]*\}|[^\s,{}]+", value)]


def sendmail_endpoint(spec: str) -> Endpoint | None:
    """A filter's S= (libmilter's syntax, as spfmilter's Socket), None if it is none."""
    try:
        return Endpoint.parse(spec).connectable()
    except ValueError:
        return None


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(text: str) -> float | None:
    """A Postfix or Sendmail time value (30s, 5m, 60) in seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


_LOCAL = {"", "127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}


def same_endpoint(a: Endpoint, b: Endpoint, b_identity: Identity | None,
                  a_identity: Identity | None) -> bool:
    """Whether ``a`` and ``b`` are one socket: by identity when both have one (bind
    mounts, symlinks), else by the resolved path; inet by port and local host."""
    if a.kind != b.kind:
        return False
    if a.kind == "inet":
        return a.port == b.port and (a.host == b.host or (a.host in _LOCAL and b.host in _LOCAL))
    if a_identity is not None and b_identity is not None:
        return a_identity == b_identity
    return os.path.realpath(a.path) == os.path.realpath(b.path)


def identity(path: str) -> Identity | None:
    """The socket's folder (device, inode) and its name: the same socket whatever
    the path (bind mounts, symlinks), even while nothing listens on it."""
    real = os.path.realpath(path)
    try:
        st = os.stat(os.path.dirname(real))
    except OSError:
        return None
    return st.st_dev, st.st_ino, os.path.basename(real)


def identity_or_none(ep: Endpoint) -> Identity | None:
    return identity(ep.path) if ep.kind == "unix" else None


def mode(st: os.stat_result) -> str:
    return f"{stat.filemode(st.st_mode)} {owner(st)} ({stat.S_IMODE(st.st_mode):04o})"


def owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"
