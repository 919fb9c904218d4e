"""The host around spfmilter: DNS through its own resolver, and the user its processes run as.

``collect_*`` ask the resolver and read /proc; ``judge_*`` are pure over the
frozen facts they return.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from spfmilter import config as cfg
from spfmilter.doctor.findings import NOTE, OK, PROBLEM, WARNING, Finding
from spfmilter.endpoint import Endpoint
from spfmilter.resolver import Resolver, TempFailure, resolv_conf

QUERY = "localhost"


@dataclass(frozen=True)
class DnsFacts:
    """One query through spfmilter's resolver, with its settings."""

    servers: str             # which servers, and from where, as the daemon logs them
    lookup_time: float
    took: float              # seconds
    answer: str | None       # the records, or "no such name"; None when it failed
    error: str | None = None
    resolv_conf: str = "/etc/resolv.conf"


def collect_dns(s: cfg.Settings) -> DnsFacts:
    resolver = Resolver(s.nameservers, timeout=s.policy.lookup_time)
    # which servers, and from where: the daemon logs the same at start and reload
    servers = (", ".join(resolver.servers) if s.nameservers else
               f"the servers of {resolver.source} ({', '.join(resolver.servers) or 'none'})")
    start = time.monotonic()
    try:
        answer = resolver.resolve(QUERY, "A", s.policy.lookup_time)
    except TempFailure as exc:
        why = f"{exc}: {exc.detail}" if exc.detail else str(exc)
        return DnsFacts(servers, s.policy.lookup_time, time.monotonic() - start, None, why,
                        resolv_conf())
    took = time.monotonic() - start
    what = (", ".join(r.to_text() for r in answer.rrset) if answer is not None and answer.rrset
            else "no such name")
    return DnsFacts(servers, s.policy.lookup_time, took, what)


def judge_dns(d: DnsFacts, conf: str) -> list[Finding]:
    if d.answer is None:
        return [Finding(PROBLEM, "dns", f"DNS: {d.servers} did not answer '{QUERY} A' within "
                        f"Lookup_Time = {d.lookup_time:g}s ({d.error}, after {d.took:.1f}s): "
                        "every SPF check would temperror; set Nameservers in "
                        f"{conf} to a resolver that answers (empty: the servers of "
                        f"{d.resolv_conf}); try one with `dig A localhost @IP`")]
    return [Finding(OK, "dns", f"DNS: {d.servers} answered '{QUERY} A' in {d.took * 1000:.0f} ms "
                    f"({d.answer}), within Lookup_Time = {d.lookup_time:g}s")]


# --- privileges ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PrivilegeFacts:
    """spfmilter's processes and their users, found from PidFile or from its socket."""

    pid_file: str | None
    user_id: str | None                # UserID = ..., as written
    found: bool                        # PidFile names a spfmilter / something holds the socket
    source: str = ""
    want_uid: int | None = -1          # UserID's uid; -1 without UserID, None: no such user
    uids: Mapping[int, int] = field(default_factory=dict)    # pid -> effective uid
    names: Mapping[int, str] = field(default_factory=dict)   # uid -> user name


def _status_ids(pid: int) -> tuple[int, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    uid = gid = -1
    for line in text.splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[2])   # effective
        elif line.startswith("Gid:"):
            gid = int(line.split()[2])
    return uid, gid


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            if ppid == pid:
                out.append(int(entry.name))
    return out


def _listening_inodes(ep: Endpoint) -> set[int]:
    """Inodes of the listening sockets at ``ep``, from /proc/net (this namespace's view)."""
    found: set[int] = set()
    if ep.kind == "unix":
        with contextlib.suppress(OSError):
            for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
                f = line.split(None, 7)
                # Flags 00010000 = __SO_ACCEPTCON: listening
                if len(f) == 8 and f[7] == ep.path and int(f[3], 16) & 0x10000:
                    found.add(int(f[6]))
        return found
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == ep.port:
                    found.add(int(f[9]))
    return found


def _socket_holders(ep: Endpoint) -> list[int]:
    """The processes that hold spfmilter's listening socket: the supervisor and its
    workers, found without a PidFile (the shipped systemd unit sets none)."""
    links = {f"socket:[{inode}]" for inode in _listening_inodes(ep)}
    pids: list[int] = []
    if not links:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in links:
                        pids.append(int(entry.name))
                        break
    return sorted(pids)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _from_pid_file(pid_file: str) -> list[int]:
    """The process PidFile names and its children; none unless it is a spfmilter."""
    try:
        pid = int(Path(pid_file).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        pid, cmdline = 0, ""
    return [pid, *_children(pid)] if "spfmilter" in cmdline else []


def collect_privileges(s: cfg.Settings, ep: Endpoint) -> PrivilegeFacts:
    if s.pid_file:
        pids, source = _from_pid_file(s.pid_file), f"PidFile {s.pid_file}"
    else:
        pids, source = _socket_holders(ep), "the processes holding its socket"
    if not pids:
        return PrivilegeFacts(s.pid_file, s.user_id, False)
    want_uid: int | None = -1
    if s.user_id:
        try:
            want_uid = pwd.getpwnam(s.user_id.partition(":")[0]).pw_uid
        except KeyError:
            want_uid = None
    uids = {p: ids[0] for p in pids if (ids := _status_ids(p)) is not None}
    names = {u: _user_name(u) for u in uids.values()}
    return PrivilegeFacts(s.pid_file, s.user_id, True, source, want_uid, uids, names)


def judge_not_found(p: PrivilegeFacts, running: bool | None) -> list[Finding]:
    if p.pid_file and running:
        return [Finding(WARNING, "privileges", f"PidFile {p.pid_file} does not name a running "
                        "spfmilter, but one answers on the socket: is another instance running, "
                        "or did it start with another configuration?")]
    if p.pid_file:
        return [Finding(NOTE, "privileges", f"PidFile {p.pid_file} names no running spfmilter")]
    return [Finding(NOTE, "privileges", "no process holds spfmilter's socket here"
                    + (" (in another namespace or container?)" if running else "")
                    + ": its user is not checked")]


def judge_privileges(p: PrivilegeFacts, running: bool | None, conf: str) -> list[Finding]:
    """spfmilter runs as UserID (or at least not as root)."""
    if not p.found:
        return judge_not_found(p, running)
    if p.want_uid is None:
        name = (p.user_id or "").partition(":")[0]
        return [Finding(PROBLEM, "privileges", f"UserID = {p.user_id} in {conf}: no such user",
                        f"adduser --system --group {shlex.quote(name)}")]
    want = p.want_uid
    wrong = [f"pid {pid} runs as {p.names[u]}" for pid, u in p.uids.items()
             if u == 0 or (want >= 0 and u != want)]
    if wrong and not p.user_id:
        return [Finding(PROBLEM, "privileges", f"spfmilter runs as root ({', '.join(wrong)}): set "
                        f"UserID = spfmilter in {conf} (or User= in its systemd unit), create "
                        "that user and restart spfmilter", "adduser --system --group spfmilter")]
    if wrong:
        return [Finding(PROBLEM, "privileges", f"spfmilter is not running as UserID = "
                        f"{p.user_id} ({', '.join(wrong)}); restart it",
                        "systemctl restart spfmilter")]
    users = ", ".join(sorted(set(p.names.values())))
    return [Finding(OK, "privileges", f"spfmilter ({len(p.uids)} process(es), from {p.source}) "
                    f"runs as {users}, not root")]
