"""``spfmilter doctor``: find, on the live host, the set-up mistakes that break milters.

The failures administrators report most are around the milter, not in it: the
MTA cannot reach the socket (a chrooted smtpd, a folder or socket the MTA's
user may not enter, a restart that recreated it differently), a default action
that lets mail through unchecked while the milter is down, trimmed macro
lists, a resolver that does not answer.  Each is tested here for real where it
can be (a connection as the MTA's user, inside the chroot when smtpd is
chrooted, a milter-protocol negotiation, a DNS query through spfmilter's own
resolver) and reported as one line with the setting and the command that fix
it.  Every check is wrapped: whatever the input, the administrator gets lines,
never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import json
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spfmilter import config as cfg
from spfmilter import milter_protocol
from spfmilter.endpoint import Endpoint
from spfmilter.resolver import Resolver, TempFailure, resolv_conf

OK, NOTE, WARNING, PROBLEM = "ok", "note", "warning", "problem"
DEFAULT_SENDMAIL_CF = "/etc/mail/sendmail.cf"
PROBE_TIMEOUT = 10.0
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"



@dataclass
class Finding:
    """One line of the report; ``fix`` is a command to run, when there is one."""

    level: str
    area: str
    message: str
    fix: str | None = None

    def line(self) -> str:
        return f"{self.level}: {self.message}" + (f"; run: {self.fix}" if self.fix else "")


@dataclass
class Context:
    """What the checks share: the settings, and what earlier checks learnt."""

    config_path: str | None
    postfix_dir: str | None
    sendmail_cf: str | None
    settings: cfg.Settings | None = None
    endpoint: Endpoint | None = None
    identity: tuple[int, int, str] | None = None   # socket folder (dev, ino) + name
    running: bool | None = None
    findings: list[Finding] = field(default_factory=list)

    def add(self, level: str, area: str, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(level, area, message, fix))

    @property
    def conf(self) -> str:
        return self.config_path or cfg.DEFAULT_PATH


# --- small parsers -----------------------------------------------------------------

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


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def seconds(text: str) -> float | None:
    """A Postfix or Sendmail time value (30s, 5m, 60) in seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def _same_endpoint(a: Endpoint, b: Endpoint, b_identity: tuple[int, int, str] | None,
                   a_identity: tuple[int, int, str] | None) -> bool:
    if a.kind != b.kind:
        return False
    if a.kind == "inet":
        local = {"", "127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}
        return a.port == b.port and (a.host == b.host or (a.host in local and b.host in local))
    if a_identity is not None and b_identity is not None:
        return a_identity == b_identity
    return os.path.realpath(a.path) == os.path.realpath(b.path)


def _identity(path: str) -> tuple[int, int, str] | None:
    """The socket's folder (device, inode) and its name: the same socket whatever
    the path (bind mounts, symlinks), even while nothing listens on it."""
    real = os.path.realpath(path)
    try:
        st = os.stat(os.path.dirname(real))
    except OSError:
        return None
    return st.st_dev, st.st_ino, os.path.basename(real)


def _mode(st: os.stat_result) -> str:
    return f"{stat.filemode(st.st_mode)} {_owner(st)} ({stat.S_IMODE(st.st_mode):04o})"


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


# --- a connection and a milter negotiation, possibly as another user in a chroot ---------

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


def _blocked_at(path: str) -> str | None:
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
            result["identity"] = _identity(endpoint.path)
            result["blocked"] = _blocked_at(endpoint.path)
        result.update(negotiate(endpoint, timeout))
        return result
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 0
        try:
            os.close(read_fd)
            result = {"as": user or "root"}
            pw = pwd.getpwnam(user) if user else None
            if pw is not None:  # as Postfix's chroot_uid(): groups first, from the real /etc
                os.setgid(pw.pw_gid)
                os.initgroups(pw.pw_name, pw.pw_gid)
            if chroot:
                os.chroot(chroot)
                os.chdir("/")
            if endpoint.kind == "unix":  # still root: the socket's identity whatever the modes
                result["identity"] = _identity(endpoint.path)
            if pw is not None:
                os.setuid(pw.pw_uid)
            result["blocked"] = _blocked_at(endpoint.path) if endpoint.kind == "unix" else None
            result.update(negotiate(endpoint, timeout))
        except BaseException as exc:  # reported by the parent, never a traceback
            result = {"connected": False, "errno": 0, "error": f"probe failed: {exc}"}
            status = 1
        finally:
            with contextlib.suppress(BaseException):
                os.write(write_fd, json.dumps(result).encode())
            os._exit(status)
    os.close(write_fd)
    data = b""
    deadline = time.monotonic() + timeout + 5
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                break
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
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


# --- the checks ----------------------------------------------------------------------

def check_config(ctx: Context) -> None:
    path = ctx.config_path
    if path is None and not Path(cfg.DEFAULT_PATH).exists():
        ctx.add(OK, "config", f"no {cfg.DEFAULT_PATH}: spfmilter runs with built-in defaults")
    try:
        ctx.settings = cfg.load(path)
    except cfg.ConfigError as exc:
        ctx.add(PROBLEM, "config", f"{exc}" + ("; correct that line, then check it"
                                                if exc.line is not None else ""),
                f"spfmilter --check-config -c {shlex.quote(ctx.conf)}")
        return
    if path is not None or Path(cfg.DEFAULT_PATH).exists():
        ctx.add(OK, "config", f"{ctx.conf} is valid")


def check_socket(ctx: Context) -> None:
    assert ctx.settings is not None
    ep = ctx.endpoint = ctx.settings.socket.connectable()
    start = "systemctl start spfmilter"
    if ep.kind == "unix":
        folder = os.path.dirname(ep.path)
        try:
            st = os.lstat(ep.path)
        except FileNotFoundError:
            ctx.running = False
            where = (f"its folder {folder} does not exist" if not os.path.isdir(folder)
                     else "nothing is there")
            ctx.add(PROBLEM, "socket", f"spfmilter is not running: Socket = {ctx.settings.socket} "
                    f"in {ctx.conf}, but {where}", start)
            return
        if not stat.S_ISSOCK(st.st_mode):
            ctx.running = False
            ctx.add(PROBLEM, "socket", f"{ep.path} is not a socket ({stat.filemode(st.st_mode)}); "
                    "remove it and restart spfmilter",
                    f"rm {shlex.quote(ep.path)} && systemctl restart spfmilter")
            return
        fst = os.stat(folder)
        ctx.identity = _identity(ep.path)
        ctx.add(OK, "socket", f"{ep.path} is a socket, {_mode(st)}, in {folder} {_mode(fst)}")
    result = negotiate(ep)
    if not result.get("connected"):
        ctx.running = False
        why = result.get("error", "")
        ctx.add(PROBLEM, "milter", f"spfmilter is not running: connecting to {ctx.settings.socket} "
                f"failed ({why})", start)
        return
    if "version" not in result:
        ctx.running = False
        ctx.add(PROBLEM, "milter", f"{ctx.settings.socket} accepts connections but does not "
                f"negotiate the milter protocol ({result.get('error')}): is another program "
                "listening there?", "systemctl restart spfmilter")
        return
    ctx.running = True
    ctx.add(OK, "milter", f"spfmilter answers on {ctx.settings.socket}: milter protocol version "
            f"{result['version']} (actions 0x{result['actions']:x}, protocol 0x"
            f"{result['protocol']:x}) in {result['ms']:.0f} ms")


def _user_fix(mta_user: str, result: dict[str, Any], ctx: Context,
              chroot: str | None) -> tuple[str, str | None]:
    """What to change when ``mta_user`` is refused: the folder or the socket's group."""
    blocked = result.get("blocked")
    if blocked and chroot:  # the child saw it inside the chroot; we look from outside
        blocked = os.path.join(chroot, blocked.lstrip("/"))
    if blocked and os.path.isdir(blocked):
        with contextlib.suppress(OSError):
            st = os.stat(blocked)
            group = grp.getgrgid(st.st_gid).gr_name
            return (f"user {mta_user} may not enter the folder {blocked} ({_mode(st)}); "
                    f"let it in through the folder's group",
                    f"usermod -aG {group} {mta_user} && chmod g+x {shlex.quote(blocked)}")
    assert ctx.endpoint is not None
    try:
        st = os.stat(ctx.endpoint.path)
    except OSError:
        return f"user {mta_user} is refused", None
    group = grp.getgrgid(st.st_gid).gr_name
    text = f"the socket is {_mode(st)}"
    if (st.st_mode & 0o060) != 0o060:
        text += f"; set UMask = 007 in {ctx.conf} so that its group may use it"
    text += f"; put {mta_user} in the socket's group {group} (UserID = user:group in {ctx.conf} chooses it)"
    return text, f"usermod -aG {group} {mta_user}"   # the MTA's next process has it


def check_reach(ctx: Context, area: str, who: str, mta_user: str, ep: Endpoint,
                chroot: str | None, name_fix: Callable[[], tuple[str, str | None]]) -> None:
    """The MTA's view: does its milter entry name spfmilter's socket, and may its user connect?"""
    assert ctx.settings is not None and ctx.endpoint is not None
    result = probe(ep, None, chroot) if ep.kind == "unix" and chroot else {
        "identity": _identity(ep.path) if ep.kind == "unix" else None}
    seen = f"{ep.postfix()} inside the chroot {chroot}" if chroot else ep.postfix()
    inside = result.get("identity")
    if (chroot and inside is None) or not _same_endpoint(
            ep, ctx.endpoint, ctx.identity or _identity_or_none(ctx.endpoint), inside):
        text, fix = name_fix()
        ctx.add(PROBLEM, area, f"{who} looks for the milter at {seen}, which is not spfmilter's "
                f"Socket = {ctx.settings.socket}; {text}", fix)
        return
    if ctx.running is False:
        ctx.add(NOTE, area, f"{who} names spfmilter's socket ({seen}); connection as {mta_user} "
                "not tried: spfmilter is not running")
        return
    result = probe(ep, mta_user, chroot)
    if not result.get("connected") or "version" not in result:
        tried = result.get("as", mta_user)
        if tried != mta_user:
            who += f"; tried as {tried}: run doctor as root to try as {mta_user}"
        if result.get("errno") in (errno.EACCES, errno.EPERM) or result.get("blocked"):
            text, fix = _user_fix(mta_user, result, ctx, chroot)
            ctx.add(PROBLEM, area, f"user {mta_user} ({who}) cannot connect to {seen}: "
                    f"{result.get('error')}; {text}", fix)
        else:
            ctx.add(PROBLEM, area, f"user {mta_user} ({who}) cannot talk to spfmilter at {seen}: "
                    f"{result.get('error')}", "systemctl restart spfmilter")
        return
    as_user = result.get("as")
    ctx.add(OK, area, f"{who} names spfmilter's socket ({seen}), and user {as_user} "
            f"connects and negotiates milter protocol {result['version']}"
            + (f" (run doctor as root to connect as {mta_user})" if as_user != mta_user else ""))


def _identity_or_none(ep: Endpoint) -> tuple[int, int, str] | None:
    return _identity(ep.path) if ep.kind == "unix" else None


# --- Postfix --------------------------------------------------------------------------

class Postfix:
    """One Postfix instance, read through postconf (so its own defaults apply)."""

    NAMES = ("mail_owner", "queue_directory", "smtpd_milters", "non_smtpd_milters",
             "milter_default_action", "milter_mail_macros", "milter_protocol",
             "milter_connect_timeout", "milter_command_timeout", "milter_content_timeout")

    def __init__(self, postconf: str, config_dir: str | None) -> None:
        self.postconf = postconf
        self.dir = config_dir
        self.c = ["-c", config_dir] if config_dir else []
        self.values = self._parse(self._run("-x", *self.NAMES))
        self.services = [line.split() for line in self._run("-M").splitlines() if line.strip()]

    def _run(self, *args: str) -> str:
        proc = subprocess.run([self.postconf, *self.c, *args], capture_output=True, text=True,
                              timeout=30, env={**os.environ, "PATH": SBIN_PATH})
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"postconf exited {proc.returncode}")
        return proc.stdout

    @staticmethod
    def _parse(text: str) -> dict[str, str]:
        out = {}
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep:
                out[name.strip()] = value.strip()
        return out

    def cmd(self, *args: str) -> str:
        """The command an administrator types for this instance."""
        c = f"-c {shlex.quote(self.dir)} " if self.dir else ""
        return f"postconf {c}{' '.join(args)} && postfix {c}reload"

    def smtpds(self) -> Iterator[tuple[str, bool, dict[str, str]]]:
        """Each smtpd service: its name/type, whether chrooted, its -o overrides."""
        for fields in self.services:
            if len(fields) < 8 or fields[7] != "smtpd":
                continue
            overrides = {}
            args = fields[8:]
            for i, arg in enumerate(args):
                if arg == "-o" and i + 1 < len(args):
                    name, _, value = args[i + 1].partition("=")
                    overrides[name] = value
            yield f"{fields[0]}/{fields[1]}", fields[4] == "y", overrides


def _find(tool: str) -> str | None:
    return shutil.which(tool, path=SBIN_PATH + ":" + os.environ.get("PATH", ""))


def check_postfix(ctx: Context) -> None:
    assert ctx.settings is not None and ctx.endpoint is not None
    postconf = _find("postconf")
    if ctx.postfix_dir is None and (postconf is None or not Path("/etc/postfix/main.cf").exists()):
        ctx.add(OK, "postfix", "Postfix not installed (no postconf or /etc/postfix/main.cf)")
        return
    if postconf is None:
        ctx.add(PROBLEM, "postfix", "postconf not found: install Postfix to check "
                f"{ctx.postfix_dir}", "apt-get install postfix")
        return
    if ctx.postfix_dir is not None and not Path(ctx.postfix_dir, "main.cf").exists():
        ctx.add(PROBLEM, "postfix", f"no main.cf in {ctx.postfix_dir} (-C names Postfix's "
                "configuration folder)")
        return
    pf = Postfix(postconf, ctx.postfix_dir)
    v = pf.values
    where = f" in {ctx.postfix_dir}" if ctx.postfix_dir else ""
    queue = v.get("queue_directory", "/var/spool/postfix")
    owner = v.get("mail_owner", "postfix")
    lookup = ctx.settings.policy.lookup_time

    _wrap(ctx, "postfix", lambda: _postfix_smtpds(ctx, pf, queue, owner, where))

    action = v.get("milter_default_action", "")
    if action == "tempfail":
        ctx.add(OK, "postfix", "milter_default_action = tempfail: mail waits (4xx) while "
                "spfmilter is down")
    else:
        ctx.add(PROBLEM, "postfix", f"milter_default_action = {action}{where} "
                + ("lets mail through unchecked" if action == "accept" else "refuses mail")
                + " while spfmilter is down", pf.cmd("-e", "milter_default_action=tempfail"))

    macros = v.get("milter_mail_macros", "").split()
    missing = [m for m in ("i", "{auth_authen}") if m not in macros]
    if missing:
        value = " ".join(macros + missing)
        ctx.add(PROBLEM, "postfix", f"milter_mail_macros{where} lacks {' and '.join(missing)} "
                "({auth_authen}: SMTP AUTH clients are then checked and may be refused; "
                "i: no queue id in the log)", pf.cmd("-e", shlex.quote(f"milter_mail_macros={value}")))
    else:
        ctx.add(OK, "postfix", "milter_mail_macros carries {auth_authen} and i")

    non_smtpd = v.get("non_smtpd_milters", "")
    if not non_smtpd:
        ctx.add(OK, "postfix", "non_smtpd_milters is empty: local submissions (sendmail(1), "
                "pickup) have no client to check and do not go through spfmilter")
    elif any(_same_endpoint(e, ctx.endpoint, ctx.identity, _identity_or_none(e))
             for e in (postfix_endpoint(m, queue) for m in postfix_milters(non_smtpd)) if e):
        ctx.add(WARNING, "postfix", f"non_smtpd_milters = {non_smtpd}{where} sends local mail "
                "through spfmilter, which has no SMTP client or HELO to check and only adds "
                "headers; remove it unless another milter in that list needs it",
                pf.cmd("-e", "non_smtpd_milters="))
    else:
        ctx.add(OK, "postfix", f"non_smtpd_milters = {non_smtpd} does not include spfmilter")

    protocol = v.get("milter_protocol", "6")
    if protocol.isdigit() and int(protocol) >= 6:
        ctx.add(OK, "postfix", f"milter_protocol = {protocol}")
    else:
        ctx.add(PROBLEM, "postfix", f"milter_protocol = {protocol}{where}: spfmilter needs 6",
                pf.cmd("-e", "milter_protocol=6"))

    for name in ("milter_connect_timeout", "milter_command_timeout", "milter_content_timeout"):
        value = v.get(name, "")
        secs = seconds(value)
        if secs is not None and secs > lookup:
            ctx.add(OK, "postfix", f"{name} = {value} is longer than Lookup_Time = {lookup:g}s")
        else:
            wanted = {"milter_connect_timeout": "30s", "milter_command_timeout": "60s"}.get(
                name, "300s")
            if (seconds(wanted) or 0) <= lookup:
                wanted = f"{int(lookup) * 2 + 10}s"
            ctx.add(PROBLEM, "postfix", f"{name} = {value}{where} is not longer than spfmilter's "
                    f"Lookup_Time = {lookup:g}s: Postfix gives up (and applies "
                    "milter_default_action) while an SPF check may still be waiting for DNS",
                    pf.cmd("-e", f"{name}={wanted}"))


def _postfix_smtpds(ctx: Context, pf: Postfix, queue: str, owner: str, where: str) -> None:
    assert ctx.settings is not None and ctx.endpoint is not None
    services = list(pf.smtpds())
    if not services:
        ctx.add(WARNING, "postfix", f"master.cf{where} runs no smtpd: nothing receives mail by SMTP")
        return
    for name, chrooted, overrides in services:
        milters = overrides.get("smtpd_milters", pf.values.get("smtpd_milters", ""))
        who = f"smtpd {name}"
        action = overrides.get("milter_default_action")
        if action is not None and action != "tempfail":
            ctx.add(PROBLEM, "postfix", f"master.cf{where} overrides milter_default_action = "
                    f"{action} for {who} (-o), so it does not tempfail while spfmilter is down",
                    pf.cmd("-PX", f"{name}/milter_default_action"))
        entries = [e for e in (postfix_endpoint(m, queue) for m in postfix_milters(milters)) if e]
        ours = [e for e in entries if e.kind == ctx.endpoint.kind]
        chroot = queue if chrooted else None
        if not entries or not ours:
            spec = ctx.endpoint.postfix() if not chrooted else _chroot_spec(ctx, queue)
            ctx.add(PROBLEM, "postfix", f"smtpd_milters{where} ({who}) = {milters or '(empty)'} "
                    "does not name spfmilter: mail is not checked",
                    pf.cmd("-e", shlex.quote(f"smtpd_milters={spec}")))
            continue

        name_fix = functools.partial(_postfix_name_fix, ctx, pf, name, chrooted, queue)
        _wrap(ctx, "postfix", functools.partial(check_reach, ctx, "postfix", who, owner,
                                                ours[0], chroot, name_fix))


def _postfix_name_fix(ctx: Context, pf: Postfix, name: str, chrooted: bool,
                      queue: str) -> tuple[str, str | None]:
    """How to make smtpd find spfmilter's socket: the socket folder inside the chroot
    with a symlink to it (what the Debian package sets up), or the chroot off."""
    assert ctx.endpoint is not None
    if chrooted:
        folder = os.path.dirname(ctx.endpoint.path)
        inside = os.path.join(queue, "spfmilter", "spfmilter.sock")
        text = (f"it runs chrooted in {queue} (master.cf chroot column y); let the socket's "
                f"folder be {queue.rstrip('/')}{folder} with {folder} a symlink to it (as the "
                f"Debian package does), or set Socket = unix:{inside} in {ctx.conf} and "
                "smtpd_milters = unix:/spfmilter/spfmilter.sock, or turn the chroot off")
        if ctx.endpoint.kind == "unix" and _tmpfiles_link(folder, queue):
            return text, f"systemd-tmpfiles --create {TMPFILES_SNIPPET} && systemctl restart spfmilter"
        return text, pf.cmd("-F", f"{name}/chroot=n")
    return "point smtpd_milters at it", pf.cmd(
        "-e", shlex.quote(f"smtpd_milters={ctx.endpoint.postfix()}"))


TMPFILES_SNIPPET = "spfmilter.conf"
TMPFILES_DIRS = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/lib/tmpfiles.d")


def _tmpfiles_link(folder: str, queue: str) -> bool:
    """Whether spfmilter's tmpfiles.d snippet makes ``folder`` a symlink into the queue
    folder (the Debian package's set-up): then recreating it is the fix."""
    for d in TMPFILES_DIRS:  # the first one found wins, as for systemd-tmpfiles
        snippet = Path(d, TMPFILES_SNIPPET)
        if snippet.exists():
            for line in snippet.read_text(errors="replace").splitlines():
                f = line.split()
                if len(f) >= 7 and f[0] in ("L", "L+") and f[1] == folder and \
                        f[6].startswith(queue.rstrip("/") + "/"):
                    return True
            return False
    return False


def _chroot_spec(ctx: Context, queue: str) -> str:
    assert ctx.endpoint is not None
    if ctx.endpoint.kind == "unix" and ctx.endpoint.path.startswith(queue.rstrip("/") + "/"):
        return "unix:" + ctx.endpoint.path[len(queue.rstrip("/")):]
    return ctx.endpoint.postfix()


# --- Sendmail -------------------------------------------------------------------------

def check_sendmail(ctx: Context) -> None:
    assert ctx.settings is not None and ctx.endpoint is not None
    cf = ctx.sendmail_cf or DEFAULT_SENDMAIL_CF
    if not Path(cf).exists():
        if ctx.sendmail_cf:
            ctx.add(PROBLEM, "sendmail", f"{cf} does not exist (--sendmail-cf)")
        else:
            ctx.add(OK, "sendmail", f"Sendmail not installed (no {cf})")
        return
    text = Path(cf).read_text(errors="replace")
    # the default file has Debian's Makefile; another one: its .mc is not known here
    rebuild: str | None = "make -C /etc/mail && systemctl restart sendmail"
    then = ""
    if cf != DEFAULT_SENDMAIL_CF:
        rebuild, then = None, f"; then rebuild {cf} from its .mc (m4) and restart sendmail"
    options = {m.group(1): m.group(2).strip() for m in
               re.finditer(r"(?m)^O\s*([\w.]+)\s*=(.*)$", text)}
    filters: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"(?m)^X([^,\s]+)\s*,\s*(.*)$", text):
        fields: dict[str, str] = {}
        for part in re.split(r",\s*(?=[A-Z]=)", m.group(2)):
            key, _, value = part.partition("=")
            fields[key.strip()] = value.strip()
        filters[m.group(1)] = fields
    user = options.get("RunAsUser", "").split(":")[0] or "root"
    mine = None
    for name, fields in filters.items():
        ep = _sendmail_endpoint(fields.get("S", ""))
        if ep and _same_endpoint(ep, ctx.endpoint, ctx.identity, _identity_or_none(ep)):
            mine = (name, fields, ep)
            break
    mc_line = (f"INPUT_MAIL_FILTER(`spfmilter', `S={ctx.endpoint}, F=T, "
               f"T=S:30s;R:60s;E:5m')")
    if mine is None:
        ctx.add(PROBLEM, "sendmail", f"{cf} has no X (INPUT_MAIL_FILTER) line for spfmilter's "
                f"Socket = {ctx.settings.socket}"
                + (" (filters: " + ", ".join(f"{n} S={f.get('S')}" for n, f in filters.items())
                   + ")" if filters else "") + f"; add {mc_line} to the .mc" + then, rebuild)
        return
    name, fields, ep = mine
    used = [f.strip() for f in options.get("InputMailFilters", "").split(",")]
    if name not in used:
        ctx.add(PROBLEM, "sendmail", f"{cf}: filter {name} is defined but not in "
                f"InputMailFilters ({options.get('InputMailFilters', '')}); declare it with "
                f"{mc_line} (not MAIL_FILTER)" + then, rebuild)
    else:
        ctx.add(OK, "sendmail", f"{cf}: InputMailFilters uses {name}")
    flags = fields.get("F", "")
    if "T" in flags:
        ctx.add(OK, "sendmail", f"{name}: F=T: mail waits (4xx) while spfmilter is down")
    else:
        effect = ("rejects mail (5xx)" if "R" in flags else
                  "lets mail through unchecked (Sendmail silently skips the filter)")
        ctx.add(PROBLEM, "sendmail", f"{cf}: filter {name} has F={flags or '(none)'}: Sendmail "
                f"{effect} while spfmilter is down; write F=T in its INPUT_MAIL_FILTER: "
                f"{mc_line}" + then, rebuild)
    timeouts = dict(t.partition(":")[::2] for t in fields.get("T", "").split(";") if ":" in t)
    lookup = ctx.settings.policy.lookup_time
    for key, default, what in (("R", "10s", "reading a reply"), ("E", "5m", "end of message")):
        value = timeouts.get(key, default)
        secs = seconds(value)
        if secs is not None and secs > lookup:
            ctx.add(OK, "sendmail", f"{name}: T={key}:{value} ({what}) is longer than "
                    f"Lookup_Time = {lookup:g}s")
        else:
            ctx.add(PROBLEM, "sendmail", f"{name}: T={key}:{value} ({what}"
                    + (", Sendmail's default" if key not in timeouts else "")
                    + f") is not longer than Lookup_Time = {lookup:g}s: Sendmail gives up while "
                    f"an SPF check waits for DNS; use T=S:30s;R:60s;E:5m: {mc_line}" + then,
                    rebuild)
    macros = options.get("Milter.macros.envfrom")
    if macros is not None:
        have = [m.strip() for m in macros.split(",")]
        missing = [m for m in ("i", "{auth_authen}") if m not in have]
        if missing:
            ctx.add(PROBLEM, "sendmail", f"{cf}: Milter.macros.envfrom lacks "
                    f"{' and '.join(missing)}; add them to confMILTER_MACROS_ENVFROM" + then,
                    rebuild)
        else:
            ctx.add(OK, "sendmail", "Milter.macros.envfrom carries {auth_authen} and i")
    if ep.kind == "unix":
        folder = os.path.dirname(os.path.realpath(ep.path))
        with contextlib.suppress(OSError):
            st = os.stat(folder)
            if st.st_mode & 0o022:
                ctx.add(PROBLEM, "sendmail", f"the socket's folder {folder} is group- or "
                        f"world-writable ({_mode(st)}): Sendmail refuses such a socket",
                        f"chmod go-w {shlex.quote(folder)}")
    _wrap(ctx, "sendmail", lambda: check_reach(
        ctx, "sendmail", f"Sendmail filter {name}", user, ep, None,
        lambda: (f"point S= at it: {mc_line}" + then, rebuild)))


def _sendmail_endpoint(spec: str) -> Endpoint | None:
    """A filter's S= (libmilter's syntax, as spfmilter's Socket), None if it is none."""
    try:
        return Endpoint.parse(spec).connectable()
    except ValueError:
        return None


# --- DNS and privileges -----------------------------------------------------------------

def check_dns(ctx: Context) -> None:
    assert ctx.settings is not None
    s = ctx.settings
    resolver = Resolver(s.nameservers, timeout=s.policy.lookup_time)
    # which servers, and from where: the daemon logs the same at start and reload
    servers = (", ".join(resolver.servers) if s.nameservers else
               f"the servers of {resolver.source} ({', '.join(resolver.servers) or 'none'})")
    name = "localhost"
    start = time.monotonic()
    try:
        answer = resolver.resolve(name, "A", s.policy.lookup_time)
    except TempFailure as exc:
        took = time.monotonic() - start
        why = f"{exc}: {exc.detail}" if exc.detail else str(exc)
        ctx.add(PROBLEM, "dns", f"DNS: {servers} did not answer '{name} A' within Lookup_Time = "
                f"{s.policy.lookup_time:g}s ({why}, after {took:.1f}s): every SPF check would "
                f"temperror; set Nameservers in {ctx.conf} to a resolver that answers "
                f"(empty: the servers of {resolv_conf()}); try one with `dig A localhost @IP`")
        return
    took = (time.monotonic() - start) * 1000
    what = (", ".join(r.to_text() for r in answer.rrset) if answer is not None and answer.rrset
            else "no such name")
    ctx.add(OK, "dns", f"DNS: {servers} answered '{name} A' in {took:.0f} ms ({what}), within "
            f"Lookup_Time = {s.policy.lookup_time:g}s")


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


def check_privileges(ctx: Context) -> None:
    assert ctx.settings is not None and ctx.endpoint is not None
    s = ctx.settings
    if s.pid_file:
        try:
            pid = int(Path(s.pid_file).read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            pid, cmdline = 0, ""
        if "spfmilter" not in cmdline:
            if ctx.running:
                ctx.add(WARNING, "privileges", f"PidFile {s.pid_file} does not name a running "
                        "spfmilter, but one answers on the socket: is another instance running, "
                        "or did it start with another configuration?")
            else:
                ctx.add(NOTE, "privileges", f"PidFile {s.pid_file} names no running spfmilter")
            return
        pids, source = [pid, *_children(pid)], f"PidFile {s.pid_file}"
    else:
        pids, source = _socket_holders(ctx.endpoint), "the processes holding its socket"
        if not pids:
            ctx.add(NOTE, "privileges", "no process holds spfmilter's socket here"
                    + (" (in another namespace or container?)" if ctx.running else "")
                    + ": its user is not checked")
            return
    want_uid = -1
    if s.user_id:
        name = s.user_id.partition(":")[0]
        try:
            want_uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            ctx.add(PROBLEM, "privileges", f"UserID = {s.user_id} in {ctx.conf}: no such user",
                    f"adduser --system --group {shlex.quote(name)}")
            return
    uids = {p: ids[0] for p in pids if (ids := _status_ids(p)) is not None}
    wrong = [f"pid {p} runs as {_user_name(u)}" for p, u in uids.items()
             if u == 0 or (want_uid >= 0 and u != want_uid)]
    if wrong and not s.user_id:
        ctx.add(PROBLEM, "privileges", f"spfmilter runs as root ({', '.join(wrong)}): set "
                f"UserID = spfmilter in {ctx.conf} (or User= in its systemd unit), create that "
                "user and restart spfmilter", "adduser --system --group spfmilter")
    elif wrong:
        ctx.add(PROBLEM, "privileges", f"spfmilter is not running as UserID = {s.user_id} "
                f"({', '.join(wrong)}); restart it", "systemctl restart spfmilter")
    else:
        users = ", ".join(sorted({_user_name(u) for u in uids.values()}))
        ctx.add(OK, "privileges", f"spfmilter ({len(uids)} process(es), from {source}) runs as "
                f"{users}, not root")


# --- driver -----------------------------------------------------------------------------

def _wrap(ctx: Context, area: str, check: Callable[[], None]) -> None:
    try:
        check()
    except Exception as exc:  # one line, never a traceback
        ctx.add(PROBLEM, area, f"doctor could not check {area}: {type(exc).__name__}: {exc}")


def diagnose(config_path: str | None, postfix_dir: str | None = None,
             sendmail_cf: str | None = None) -> list[Finding]:
    """Every finding, in order.  With -C or --sendmail-cf alone only that MTA is
    checked (the administrator named it); with neither, every installed one."""
    ctx = Context(config_path, postfix_dir, sendmail_cf)
    _wrap(ctx, "config", lambda: check_config(ctx))
    if ctx.settings is None:
        ctx.add(NOTE, "config", "the other checks need a valid configuration")
        return ctx.findings
    _wrap(ctx, "socket", lambda: check_socket(ctx))
    if ctx.endpoint is not None:
        if postfix_dir is not None or sendmail_cf is None:
            _wrap(ctx, "postfix", lambda: check_postfix(ctx))
        if sendmail_cf is not None or postfix_dir is None:
            _wrap(ctx, "sendmail", lambda: check_sendmail(ctx))
    _wrap(ctx, "dns", lambda: check_dns(ctx))
    _wrap(ctx, "privileges", lambda: check_privileges(ctx))
    return ctx.findings


def main(config_path: str | None, postfix_dir: str | None, sendmail_cf: str | None,
         as_json: bool) -> int:
    """Print the findings; 0 without a problem, 1 otherwise."""
    try:
        findings = diagnose(config_path, postfix_dir, sendmail_cf)
    except Exception as exc:  # the last guard: still one line
        findings = [Finding(PROBLEM, "doctor", f"doctor failed: {type(exc).__name__}: {exc}")]
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
    else:
        for f in findings:
            print(f.line())
    sys.stdout.flush()
    return 1 if any(f.level == PROBLEM for f in findings) else 0
