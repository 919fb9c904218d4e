"""Real-MTA test lab for spfmilter: private Postfix and Sendmail instances.

Plain context managers (no pytest fixtures here), used by tests/test_mta_lab.py
and the end-to-end tests:

* :class:`CaptureSMTP` -- an aiosmtpd server that stores every message the MTA
  relays to it (bytes + envelope), with :meth:`CaptureSMTP.wait_for`.
* :class:`PostfixLab` -- a private Postfix 3.x instance (``postfix -c DIR``).
* :class:`SendmailLab` -- a private Sendmail 8.17 from ``/opt/spfmilter-lab``
  in its own mount namespace (and usually its own network namespace).
* :func:`smtp_transaction` -- an SMTP client that returns every reply.
* :class:`Netns` -- a network namespace with documentation addresses on ``lo``.

Both labs apply the user-facing snippets ``init/postfix-main.cf`` and
``init/sendmail.mc`` verbatim (only the milter socket path is replaced), so the
documentation is what is tested.

How the client address seen by the MTA (and so by the milter) is varied
-----------------------------------------------------------------------
*Postfix* listens on 127.0.0.1 in the host's namespace and the client uses
XCLIENT (``smtpd_authorized_xclient_hosts = 127.0.0.0/8``): ``ADDR=192.0.2.10``,
``ADDR=IPV6:2001:db8:1::10``, and ``LOGIN=user`` to appear as an SMTP AUTH
client (the milter then gets ``{auth_authen}``).  On XCLIENT Postfix closes
its milter connection and opens a new one that announces the new client, so
the milter sees what a real remote client produces (after one short session
from 127.0.0.1 with the first EHLO); it is also the only cheap way to get an
authenticated session.
*Sendmail* has no XCLIENT, so it runs inside a network namespace that the lab
creates (``ip netns add``) with documentation addresses (192.0.2.10,
198.51.100.7, 2001:db8:1::10, 2001:db8:bad::7, ...) on its ``lo``; the test
client opens its socket inside that namespace (``setns`` in a short-lived
thread) bound to the wanted source address, and connects to Sendmail on
127.0.0.1 or ::1.  127.x source addresses would have been simpler but cannot
be authorised by the test zones (which use the RFC 5737/3849 ranges), nor test
IPv6.  The capture server for Sendmail is created in the same namespace, so no
packet ever leaves loopback interfaces; the milter is reached over a unix
socket, which works across network namespaces.

Namespaces and permissions: both MTAs run in a private mount namespace
(``unshare -m``) with a tmpfs on /srv, their work folder bind-mounted at
/srv/lab and the milter socket's folder at /srv/milter.  For Sendmail this
keeps its file-safety checks happy (it refuses sockets below world-writable
/tmp); for Postfix it lets smtpd (user ``postfix``) reach the socket and the
queue whatever the modes of the folders above (pytest's /tmp/pytest-of-root
is 0700 and pytest resets it at every session start), and it lets the
private instance be listed in alternate_config_directories of a private copy
of /etc/postfix/main.cf: nothing on the host is changed.  The socket folder
gets o+x and :meth:`PostfixLab.grant_socket` adds o+rw to the socket itself
(spfmilter's default UMask 007 leaves it to its group only).  ``set_milter``
switches the bind mount inside the running namespace (``nsenter``), so one
MTA instance serves many milter processes.
``in_namespace(cmd)`` (both labs) prefixes a command with ``nsenter -m`` into
the lab's mount namespace, where the MTA's own paths resolve: the
``spfmilter doctor`` tests run the real command there.

``python -m tests.kit.mta syslog-wrap LOGFILE -- CMD...`` is the helper used
inside Sendmail's mount namespace (syslog listener on /dev/log + CMD).
"""

from __future__ import annotations

import contextlib
import ctypes
import email.parser
import email.policy
import email.utils
import ipaddress
import os
import re
import select
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tests.kit import ROOT
from tests.kit.net import free_port, is_listening
from tests.kit.wait import WaitTimeout, wait_for

POSTFIX_SNIPPET = ROOT / "init" / "postfix-main.cf"
SENDMAIL_SNIPPET = ROOT / "init" / "sendmail.mc"
#: Socket path used in the init/ snippets; the labs replace only this.
DOC_SOCKET_PATH = "/run/spfmilter/spfmilter.sock"
DOC_SOCKET_SPEC = "unix:" + DOC_SOCKET_PATH

SENDMAIL_ROOT = Path(os.environ.get("SPFMILTER_LAB_SENDMAIL", "/opt/spfmilter-lab/sendmail"))
SENDMAIL_BIN = SENDMAIL_ROOT / "usr/libexec/sendmail/sendmail"
SENDMAIL_CF_DIR = SENDMAIL_ROOT / "usr/share/sendmail/cf"

INSTALL_HINT = "make mta-deps  (as root; runs scripts/install-mtas.sh)"

#: Documentation addresses put on the Sendmail namespace's lo.
DEFAULT_CLIENT_ADDRESSES = (
    "192.0.2.10", "192.0.2.11", "198.51.100.7", "198.51.100.10", "203.0.113.5",
    "2001:db8:1::10", "2001:db8:bad::7",
)

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


# --------------------------------------------------------------------------
# small utilities


class LabError(RuntimeError):
    """A lab component failed to start or behave."""


def missing_components(which: str = "both") -> list[str]:
    """What is missing to run the MTA lab ('postfix', 'sendmail' or 'both')."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root privileges")
    if which in ("postfix", "both"):
        for tool in ("postfix", "postconf", "unshare", "nsenter"):
            if not shutil.which(tool, path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")):
                missing.append(tool)
        if not Path("/etc/postfix/master.cf").exists():
            missing.append("/etc/postfix/master.cf")
    if which in ("sendmail", "both"):
        if not SENDMAIL_BIN.exists():
            missing.append(str(SENDMAIL_BIN))
        if not (SENDMAIL_CF_DIR / "m4/cf.m4").exists():
            missing.append(str(SENDMAIL_CF_DIR / "m4/cf.m4"))
        for tool in ("m4", "unshare", "nsenter", "ip", "mount"):
            if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
                missing.append(tool)
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        missing.append("python package aiosmtpd")
    return missing


def require_or_skip(which: str = "both") -> None:
    """In a pytest test or fixture: fail (under CI=true) or skip (elsewhere)
    when a component of the MTA lab is missing, naming the install command."""
    import importlib.util

    import pytest

    missing = missing_components(which)
    if importlib.util.find_spec("Milter") is None:
        missing.append("python package pymilter")
    if missing:
        msg = f"MTA lab for {which}: missing {', '.join(missing)}. Install with: {INSTALL_HINT}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


def _run(cmd: Sequence[str], *, check=True, timeout=60, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                       f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def parse_socket_spec(spec: str) -> tuple[str, object]:
    """'unix:/p' | 'local:/p' | '/p' -> ('unix', '/p'); 'inet:PORT@HOST' -> ('inet', (host, port));
    'inet:HOST:PORT' (Postfix style) -> ('inet', (host, port))."""
    if spec.startswith(("unix:", "local:")):
        return "unix", spec.split(":", 1)[1]
    if spec.startswith("/"):
        return "unix", spec
    if spec.startswith(("inet:", "inet6:")):
        rest = spec.split(":", 1)[1]
        if "@" in rest:
            port, host = rest.split("@", 1)
        else:
            host, port = rest.rsplit(":", 1)
        return "inet", (host.strip("[]"), int(port))
    raise ValueError(f"unsupported milter socket spec {spec!r}")


# --------------------------------------------------------------------------
# network namespace


def _in_netns(ns_path: str | None, fn: Callable[[], object]):
    """Run ``fn`` in a short-lived thread that has joined the network namespace
    ``ns_path``; sockets it creates stay in that namespace."""
    if ns_path is None:
        return fn()
    box: dict[str, object] = {}

    def runner():
        try:
            fd = os.open(ns_path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns_path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=runner, name="netns-helper", daemon=True)
    t.start()
    t.join(60)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


class Netns:
    """A network namespace created with ``ip netns add`` (deleted on exit),
    ``lo`` up, with the given (documentation) addresses on ``lo``."""

    def __init__(self, addresses: Iterable[str] = DEFAULT_CLIENT_ADDRESSES, name: str | None = None):
        self.name = name or f"spfmlab-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.path = f"/var/run/netns/{self.name}"
        self._addresses = list(addresses)
        self._have: set[str] = set()
        self._created = False

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @staticmethod
    def remove_stale() -> None:
        """Delete lab namespaces left by test processes that no longer exist."""
        listing = _run(["ip", "netns", "list"], check=False).stdout
        for m in re.finditer(r"^(spfmlab-(\d+)-\w+)", listing, re.M):
            if not Path(f"/proc/{m.group(2)}").exists():
                _run(["ip", "netns", "del", m.group(1)], check=False)

    def start(self):
        self.remove_stale()
        _run(["ip", "netns", "add", self.name])
        self._created = True
        try:
            _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
            for a in self._addresses:
                self.ensure_address(a)
        except BaseException:
            self.stop()
            raise

    def ensure_address(self, addr: str) -> None:
        ip = ipaddress.ip_address(addr)
        if str(ip) in self._have or ip.is_loopback:
            return
        if ip.version == 4:
            _run(["ip", "-n", self.name, "addr", "add", f"{ip}/32", "dev", "lo"])
        else:
            _run(["ip", "-n", self.name, "addr", "add", f"{ip}/128", "dev", "lo", "nodad"])
        self._have.add(str(ip))

    def run(self, fn: Callable[[], object]):
        return _in_netns(self.path, fn)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def stop(self):
        if self._created:
            _run(["ip", "netns", "del", self.name], check=False)
            self._created = False


def _ns_path(netns) -> str | None:
    if netns is None:
        return None
    return netns.path if isinstance(netns, Netns) else str(netns)


# --------------------------------------------------------------------------
# capture server


@dataclass
class CapturedMessage:
    mail_from: str  # bare address; "" for the null sender
    rcpt_tos: list[str]
    data: bytes
    peer: object = None
    helo: str | None = None

    def message(self):
        return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(self.data)

    def header_names(self) -> list[str]:
        """Header field names in order, as stored (top first)."""
        return [k for k, _ in self.message().items()]

    def headers(self, name: str) -> list[str]:
        """All values of header ``name`` (unfolded), top first."""
        vals = self.message().get_all(name) or []
        return [re.sub(r"\r?\n[ \t]+", " ", str(v)).strip() for v in vals]

    def header(self, name: str) -> str | None:
        vals = self.headers(name)
        return vals[0] if vals else None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


class CaptureSMTP:
    """aiosmtpd server (own event loop thread) storing every message it gets.

    Listens on ``host`` (127.0.0.1) port 0 -- the port is in :attr:`port`; with
    ``netns`` the listening socket is created inside that network namespace.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, netns=None,
                 hostname: str = "capture.test"):
        self.host = host
        self.port = port
        self.hostname = hostname
        self._ns = _ns_path(netns)
        self.messages: list[CapturedMessage] = []
        self._cond = threading.Condition()
        self._loop = None
        self._thread = None
        self._server = None

    # aiosmtpd handler hook
    async def handle_DATA(self, server, session, envelope):
        msg = CapturedMessage(
            mail_from="" if envelope.mail_from in ("<>", None) else envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or envelope.content),
            peer=session.peer,
            helo=session.host_name,
        )
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()
        return "250 2.0.0 OK captured"

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        import asyncio

        from aiosmtpd.smtp import SMTP

        def make_sock():
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.host, self.port))
            s.listen(64)
            return s

        sock = _in_netns(self._ns, make_sock)
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        box = {}

        def run():
            asyncio.set_event_loop(self._loop)
            try:
                factory = lambda: SMTP(self, hostname=self.hostname, ident="capture",
                                       data_size_limit=50 * 1024 * 1024)
                self._server = self._loop.run_until_complete(
                    self._loop.create_server(factory, sock=sock))
            except BaseException as exc:
                box["error"] = exc
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._server.close()
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="capture-smtp", daemon=True)
        self._thread.start()
        if not ready.wait(10) or "error" in box:
            sock.close()
            raise LabError(f"capture SMTP server did not start: {box.get('error')}")

    def stop(self):
        if self._loop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None

    def clear(self):
        with self._cond:
            self.messages.clear()

    def wait_for(self, n: int = 1, timeout: float = 15.0) -> list[CapturedMessage]:
        """Wait until at least ``n`` messages are stored; returns them all.
        Raises LabError on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= n, timeout):
                raise LabError(f"capture server: {len(self.messages)} message(s) after "
                               f"{timeout:g}s, expected {n}")
            return list(self.messages)

    def count(self) -> int:
        with self._cond:
            return len(self.messages)


# --------------------------------------------------------------------------
# SMTP client


class Reply(NamedTuple):
    command: str  # CONNECT, EHLO, XCLIENT, MAIL, RCPT, DATA, DOT, RSET, QUIT, DISCONNECT
    code: int
    text: str
    arg: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def enhanced(self) -> str:
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", self.text)
        return m.group(1) if m else ""


class Transcript(list):
    """List of :class:`Reply`, in order, with look-ups by command."""

    def all(self, command: str) -> list[Reply]:
        return [r for r in self if r.command == command.upper()]

    def get(self, command: str, n: int = 0) -> Reply | None:
        found = self.all(command)
        return found[n] if len(found) > n else None

    def rcpt(self, address: str) -> Reply | None:
        for r in self.all("RCPT"):
            m = re.match(r"(?i)TO:\s*<([^>]*)>", r.arg)
            if m and m.group(1).lower() == address.lower():
                return r
        return None

    @property
    def final(self) -> Reply | None:
        """Reply to the end of the (first) message, or None if DATA was never sent."""
        return self.get("DOT")

    def __str__(self):
        return "\n".join(f"{r.command} {r.arg} -> {r.code} {r.text}".replace("  ", " ") for r in self)


def _dot_stuff(data: bytes) -> bytes:
    data = re.sub(rb"\r?\n|\r", b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = re.sub(rb"(?m)^\.", b"..", data)
    return data + b".\r\n"


class _NetnsSMTP(smtplib.SMTP):
    def __init__(self, ns_path, **kw):
        self._ns_path = ns_path
        super().__init__(**kw)

    def _get_socket(self, host, port, timeout):
        src = self.source_address

        def connect():
            return socket.create_connection((host, port), timeout, source_address=src)

        return _in_netns(self._ns_path, connect)


def smtp_transaction(host: str, port: int, helo: str, mail_from: str, rcpts: Sequence[str],
                     message_bytes: bytes, xclient: dict | str | None = None, *,
                     more: Sequence[tuple[str, Sequence[str], bytes]] = (),
                     source_address: str | None = None, netns=None,
                     timeout: float = 60.0) -> Transcript:
    """One SMTP session: greeting, EHLO, optional XCLIENT (+ EHLO again), then a
    mail transaction (MAIL, RCPT..., DATA, message) and one more per ``more``
    item on the same connection, then QUIT.

    Returns every reply as a :class:`Transcript` of ``Reply(command, code,
    text, arg)``; the end-of-data reply has command ``DOT``.  ``mail_from`` is
    the bare address ("" for the null sender).  A transaction whose MAIL or all
    RCPTs fail is reset with RSET and DATA is not sent.  If the server drops
    the connection, a ``DISCONNECT`` entry ends the transcript.
    ``xclient`` is a dict like ``{"ADDR": "192.0.2.10", "LOGIN": "alice"}`` or
    a raw string of attributes (Postfix only); ``source_address`` binds the
    client socket, ``netns`` opens it inside a :class:`Netns`."""
    out = Transcript()
    src = (source_address, 0) if source_address else None
    client = _NetnsSMTP(_ns_path(netns), timeout=timeout, source_address=src)
    try:
        code, msg = client.connect(host, port)
        out.append(Reply("CONNECT", code, msg.decode(errors="replace")))
        if code != 220:
            return out

        def cmd(name, arg=""):
            c, m = client.docmd(name, arg)
            r = Reply(name.upper(), c, m.decode(errors="replace"), arg)
            out.append(r)
            return r

        def ehlo():
            c, m = client.ehlo(helo)
            r = Reply("EHLO", c, m.decode(errors="replace"), helo)
            out.append(r)
            return r

        if not ehlo().ok:
            return out
        if xclient:
            if isinstance(xclient, dict):
                attrs = " ".join(f"{k.upper()}={v}" for k, v in xclient.items() if v is not None)
            else:
                attrs = xclient
            r = cmd("XCLIENT", attrs)
            if r.code != 220:
                return out
            if not ehlo().ok:
                return out
        for sender, recipients, data in [(mail_from, rcpts, message_bytes), *more]:
            if not cmd("MAIL", f"FROM:<{sender}>").ok:
                cmd("RSET")
                continue
            accepted = [cmd("RCPT", f"TO:<{rc}>").ok for rc in recipients]
            if not any(accepted):
                cmd("RSET")
                continue
            r = cmd("DATA")
            if r.code != 354:
                cmd("RSET")
                continue
            client.send(_dot_stuff(data))
            c, m = client.getreply()
            out.append(Reply("DOT", c, m.decode(errors="replace")))
        cmd("QUIT")
    except smtplib.SMTPServerDisconnected as exc:
        out.append(Reply("DISCONNECT", 0, str(exc)))
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return out


def make_message(mail_from: str, to: str | Sequence[str], subject: str = "lab test",
                 body: str = "Hello from the spfmilter MTA lab.\n",
                 extra_headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A small RFC 5322 message as bytes (CRLF line ends)."""
    to_list = [to] if isinstance(to, str) else list(to)
    lines = [
        f"From: <{mail_from or 'mailer-daemon@example.invalid'}>",
        f"To: {', '.join(f'<{t}>' for t in to_list)}",
        f"Subject: {subject}",
        f"Message-ID: <{uuid.uuid4().hex}@lab.test>",
        "Date: " + email.utils.formatdate(localtime=False),
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    lines += [f"{k}: {v}" for k, v in extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode()



# --------------------------------------------------------------------------
# snippets from init/


def postfix_snippet_settings(path: Path = POSTFIX_SNIPPET) -> list[tuple[str, str]]:
    """(name, value) pairs of a main.cf fragment, continuation lines joined."""
    settings: list[list[str]] = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t":
            if not settings:
                raise ValueError(f"{path}: continuation line without a parameter: {line!r}")
            settings[-1][1] += " " + line.strip()
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not a 'name = value' line: {line!r}")
        settings.append([name.strip(), value.strip()])
    return [(n, v) for n, v in settings]


def sendmail_snippet_lines(path: Path = SENDMAIL_SNIPPET) -> list[str]:
    return path.read_text().splitlines()


# --------------------------------------------------------------------------
# Postfix


# Run inside `unshare -m`: a private /srv (tmpfs) with the work folder at
# /srv/lab and the milter socket's folder at /srv/milter, and a private copy of
# the default /etc/postfix/main.cf that lists /srv/lab/config in
# alternate_config_directories (the host's file is never changed).  The master
# process keeps the namespace alive after `postfix start` returns.
_POSTFIX_NS_START = r"""
set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 spfmlab-srv /srv
mkdir -p /srv/lab /srv/milter
mount --rbind "$LAB_WORK" /srv/lab
if [ -n "$LAB_MILTER_DIR" ]; then mount --bind "$LAB_MILTER_DIR" /srv/milter; fi
mount --bind /srv/lab/default-main.cf /etc/postfix/main.cf
# ANCESTOR=FOLDER: FOLDER reachable, ANCESTOR's other content hidden.  Three passes,
# since several folders may share an ancestor (a Python and a checkout under /root):
# every folder is set aside before any ancestor is covered, each ancestor once.
i=0
for pair in $LAB_EXPOSE; do
    i=$((i + 1)); mkdir -p "/srv/expose/$i" && mount --rbind "${pair#*=}" "/srv/expose/$i"
done
for top in $(for pair in $LAB_EXPOSE; do echo "${pair%%=*}"; done | sort -u); do
    mount -t tmpfs -o mode=0755 spfmlab-expose "$top"
done
i=0
for pair in $LAB_EXPOSE; do
    i=$((i + 1)); folder="${pair#*=}"
    mkdir -p "$folder" && mount --rbind "/srv/expose/$i" "$folder"
done
postfix -c /srv/lab/config check
exec postfix -c /srv/lab/config start
"""

_NS_REBIND_MILTER = 'umount -l /srv/milter 2>/dev/null || true; mount --bind "$1" /srv/milter'


def _blocked(folders: Sequence[str]) -> list[str]:
    """``ANCESTOR=FOLDER`` for each folder that user nobody cannot reach: the
    highest ancestor without o+x (folders that are reachable are left alone)."""
    out = []
    for folder in folders:
        path = Path(folder).resolve()
        top = next((p for p in reversed(path.parents) if p != Path("/")
                    and not p.stat().st_mode & stat.S_IXOTH), None)
        if top is not None:
            out.append(f"{top}={path}")
    return out


def _make_socket_dir_reachable(folder: Path) -> None:
    """The folder bound at /srv/milter must be searchable by user postfix
    (its ancestors do not matter: they are not on the path inside the lab)."""
    st = folder.stat()
    if not st.st_mode & stat.S_IXOTH:
        os.chmod(folder, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


class _LogFile:
    """Reading an MTA's log file: what both labs share."""

    log_file: Path
    NAME = "MTA"

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, regex: str, timeout: float = 10, start: int = 0) -> re.Match:
        rx = re.compile(regex)
        return wait_for(lambda: rx.search(self.log_text(), start), timeout,
                          f"{self.NAME} log line /{regex}/", on_timeout=lambda: _tail(self.log_file))


MTAS = ("postfix", "sendmail")


def only(*mtas: str) -> Callable:
    """Run a test on these MTAs only (instead of a skip, which fails CI)."""
    def mark(fn: Callable) -> Callable:
        fn.mtas = mtas  # type: ignore[attr-defined]
        return fn
    return mark


def parametrize_labs(metafunc) -> None:  # type: ignore[no-untyped-def]
    """For a module's pytest_generate_tests: one ``lab`` per MTA, module-scoped."""
    if "lab" in metafunc.fixturenames:
        metafunc.parametrize("lab", getattr(metafunc.function, "mtas", MTAS),
                             indirect=True, scope="module")


@dataclass
class Lab:
    """One MTA of the suite with the capture server it relays to."""

    name: str                                   # "postfix" or "sendmail"
    mta: PostfixLab | SendmailLab
    capture: CaptureSMTP


@contextlib.contextmanager
def running_lab(which: str, work: Path, milter_socket_spec: str):  # type: ignore[no-untyped-def]
    """The Postfix or the Sendmail lab with its capture server, stopped on exit.
    Sendmail runs in a network namespace of its own (client addresses on its lo)."""
    with contextlib.ExitStack() as stack:
        if which == "postfix":
            cap = stack.enter_context(CaptureSMTP())
            server: PostfixLab | SendmailLab = stack.enter_context(
                PostfixLab(work, milter_socket_spec, cap.port))
        else:
            ns = stack.enter_context(Netns())
            cap = stack.enter_context(CaptureSMTP(netns=ns))
            server = stack.enter_context(SendmailLab(work, milter_socket_spec, cap.port, netns=ns))
        yield Lab(which, server, cap)


@contextlib.contextmanager
def lab_without_milter(which: str, tmp_path_factory, tag: str):  # type: ignore[no-untyped-def]
    """A module's lab (see ``parametrize_labs``) configured for a milter socket nobody
    listens on yet, until a test points it at a running spfmilter (same file name as
    the daemon fixture's, so Sendmail can be switched without a restart)."""
    require_or_skip(which)
    work = tmp_path_factory.mktemp(f"{tag}-{which}")
    placeholder = tmp_path_factory.mktemp("no-milter") / "spfmilter.sock"
    with running_lab(which, work, f"unix:{placeholder}") as running:
        yield running

class PostfixLab(_LogFile):
    """A private Postfix instance (own config folder, queue and log).

    * runs in a private mount namespace: the work folder is bind-mounted at
      ``/srv/lab`` and the milter socket's folder at ``/srv/milter``, so that
      smtpd (user ``postfix``) reaches them whatever the modes of the folders
      above (pytest's /tmp/pytest-of-root is 0700 and pytest resets it);
      the network namespace is the host's;
    * smtpd on 127.0.0.1:``port`` (free port picked unless given), XCLIENT
      allowed from 127.0.0.0/8, inet_protocols = all;
    * everything relayed to ``127.0.0.1:relay_port`` (a :class:`CaptureSMTP`);
    * ``init/postfix-main.cf`` applied setting by setting with ``postconf``,
      its socket path replaced by a symlink in the work folder that points at
      the milter's socket (so :meth:`set_milter` can switch milters without a
      reload); an inet spec is used as-is;
    * ``maillog_file`` in the work folder (``maillog_file_prefixes`` allows it).
    """

    supports_login = True
    NAME = "Postfix"
    NS_ROOT = "/srv/lab"

    def __init__(self, workdir, milter_socket_spec: str | None, relay_port: int | None, *,
                 port: int | None = None, myhostname: str = "mx.test",
                 extra_settings: dict[str, str] | None = None, start_timeout: float = 30,
                 services: dict[str, tuple[int, str]] | None = None, queue_tmpfs: bool = False,
                 master_entries: dict[str, str] | None = None,
                 master_params: dict[str, str] | None = None, expose: Sequence[str] = ()):
        """``milter_socket_spec`` None: no milter on the main port.  ``relay_port``
        None: every message goes to the ``discard`` transport.  ``services``:
        more smtpd listeners, name -> (port, their smtpd_milters value as
        Postfix reads it).  ``queue_tmpfs``: the queue on a tmpfs mounted in the
        caller's mount namespace (the benchmark's, which is private) -- no fsync
        in the figures.  ``master_entries``: more master.cf services, "name/type" ->
        the whole line (``postconf -M``); ``master_params``: "name/type/parameter"
        -> value (``postconf -P``, a service's -o), applied after them.  ``expose``:
        folders a command Postfix runs as an unprivileged user (spawn, pipe) must
        reach although an ancestor is private (a Python under /root): inside the
        namespace only, that ancestor is covered by an empty tmpfs with the folder
        bound back at its own path."""
        self.expose = [str(p) for p in _blocked(expose)]
        self.master_entries = dict(master_entries or {})
        self.master_params = dict(master_params or {})
        self.services = dict(services or {})
        self.queue_tmpfs = queue_tmpfs
        self.workdir = Path(workdir).resolve()
        self.config_dir = self.workdir / "config"
        self.queue_dir = self.workdir / "queue"
        self.data_dir = self.workdir / "data"
        self.log_file = self.workdir / "postfix.log"
        self.milter_link = self.workdir / "milter" / "milter.sock"
        self.relay_port = relay_port
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.myhostname = myhostname
        self.extra_settings = dict(extra_settings or {})
        self.start_timeout = start_timeout
        self.milter_socket_spec = milter_socket_spec
        self._master_pid: int | None = None

    # paths as Postfix sees them inside its namespace
    def ns(self, host_path: Path) -> str:
        return self.NS_ROOT + "/" + str(Path(host_path).relative_to(self.workdir))

    @property
    def ns_config_dir(self) -> str:
        return self.ns(self.config_dir)

    # -- lifecycle
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def postconf(self, *args: str, check=True) -> subprocess.CompletedProcess:
        """postconf on this instance's files (from the host side)."""
        return _run(["postconf", "-c", str(self.config_dir), *args], check=check)

    def _milter_setting(self, spec: str | None) -> str:
        if spec is None:
            return ""
        kind, where = parse_socket_spec(spec)
        if kind == "unix":
            return "unix:" + self.ns(self.milter_link)
        host, port = where
        return f"inet:[{host}]:{port}" if ":" in host else f"inet:{host}:{port}"

    @staticmethod
    def _socket_dir(spec: str | None) -> Path | None:
        if spec is None:
            return None
        kind, where = parse_socket_spec(spec)
        return Path(str(where)).resolve(strict=False).parent if kind == "unix" else None

    def _point_link(self, spec: str | None) -> None:
        if spec is None:
            return
        kind, where = parse_socket_spec(spec)
        if kind != "unix":
            return
        name = Path(str(where)).name
        _make_socket_dir_reachable(Path(str(where)).resolve(strict=False).parent)
        tmp = self.milter_link.with_name(f".link-{uuid.uuid4().hex[:8]}")
        os.symlink(f"/srv/milter/{name}", tmp)
        os.replace(tmp, self.milter_link)
        self.grant_socket()

    def set_milter(self, spec: str) -> None:
        """Point Postfix at another milter socket.  Unix socket: the folder
        bound at /srv/milter is switched in the running namespace and the
        symlink repointed (no reload).  inet: postconf + restart."""
        old_kind = parse_socket_spec(self.milter_socket_spec)[0]
        kind = parse_socket_spec(spec)[0]
        self.milter_socket_spec = spec
        if kind == "unix" and old_kind == "unix" and self._running():
            _run(["nsenter", "-t", str(self._master_pid), "-m", "--", "sh", "-c",
                  _NS_REBIND_MILTER, "x", str(self._socket_dir(spec))])
            self._point_link(spec)
            return
        running = self._running()
        if running:
            self.stop()
        self._point_link(spec)
        self._apply_snippet()
        if running:
            self.start()

    def grant_socket(self) -> None:
        """Make the milter's unix socket (if it exists now) connectable by user
        postfix: adds o+rw.  A milter should create it so (umask); this helps
        one that does not."""
        if self.milter_socket_spec is None:
            return
        kind, where = parse_socket_spec(self.milter_socket_spec)
        if kind != "unix":
            return
        p = Path(str(where))
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            if stat.S_ISSOCK(st.st_mode) and (st.st_mode & 0o006) != 0o006:
                os.chmod(p, stat.S_IMODE(st.st_mode) | 0o006)

    def _apply_snippet(self) -> None:
        for name, value in postfix_snippet_settings():
            if DOC_SOCKET_SPEC in value:
                value = value.replace(DOC_SOCKET_SPEC, self._milter_setting(self.milter_socket_spec))
            self.postconf("-e", f"{name} = {value.strip()}")

    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        for d in (self.config_dir, self.queue_dir, self.milter_link.parent):
            d.mkdir(parents=True, exist_ok=True)
        if self.queue_tmpfs and not os.path.ismount(self.queue_dir):
            _run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=512m", "spfmlab-queue",
                  str(self.queue_dir)])
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix", "postfix")
        os.chmod(self.data_dir, 0o700)
        os.chmod(self.workdir, 0o755)
        default_main = Path("/etc/postfix/main.cf").read_text() if Path("/etc/postfix/main.cf").exists() else ""
        default_main = re.sub(r"(?m)^alternate_config_directories\s*=.*(\n[ \t].*)*\n?", "", default_main)
        (self.workdir / "default-main.cf").write_text(
            default_main + f"\n# added by spfmilter's MTA lab, in its own mount namespace only\n"
            f"alternate_config_directories = {self.ns_config_dir}\n")
        main_cf = self.config_dir / "main.cf"
        main_cf.write_text("# private Postfix instance of spfmilter's MTA test lab (tests/kit/mta.py)\n")
        shutil.copy("/etc/postfix/master.cf", self.config_dir / "master.cf")
        base = {
            "compatibility_level": "3.6",
            "queue_directory": self.ns(self.queue_dir),
            "data_directory": self.ns(self.data_dir),
            "maillog_file_prefixes": f"/var, /dev/stdout, {self.NS_ROOT}",
            "maillog_file": self.ns(self.log_file),
            "myhostname": self.myhostname,
            "mydomain": "test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "all",
            "mynetworks": "127.0.0.0/8 [::1]/128",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "in_flow_delay": "0",
            "relay_domains": "static:ALL",
            "relay_transport": self._transport(),
            "default_transport": self._transport(),
            "smtp_dns_support_level": "disabled",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_helo_name": "$myhostname",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtputf8_enable": "no",
            "smtpd_banner": "$myhostname ESMTP spfmilter-lab",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "200",
            "smtpd_client_connection_rate_limit": "0",
            "queue_run_delay": "300s",
            "minimal_backoff_time": "300s",
            "milter_default_action": "tempfail",
        }
        for k, v in base.items():
            self.postconf("-e", f"{k} = {v}")
        # the documented spfmilter settings, verbatim but for the socket path
        self._apply_snippet()
        # a test's own settings win over the snippet
        for k, v in self.extra_settings.items():
            self.postconf("-e", f"{k} = {v}")
        self._point_link(self.milter_socket_spec)
        # master.cf: our own smtpd port; no chroot so socket paths are absolute
        self.postconf("-M#", "smtp/inet")
        self.postconf("-M", f"127.0.0.1:{self.port}/inet = 127.0.0.1:{self.port} inet n - n - - smtpd")
        for port, milters in self.services.values():
            svc = f"127.0.0.1:{port}"
            self.postconf("-M", f"{svc}/inet = {svc} inet n - n - - smtpd")
            self.postconf("-P", f"{svc}/inet/smtpd_milters={milters}")
        for service, line in self.master_entries.items():
            self.postconf("-M", f"{service} = {line}")
        for where, value in self.master_params.items():
            self.postconf("-P", f"{where}={value}")
        self.postconf("-F", "*/*/chroot = n")
        milter_dir = self._socket_dir(self.milter_socket_spec)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C",
               "LAB_WORK": str(self.workdir), "LAB_MILTER_DIR": str(milter_dir or ""),
               "LAB_EXPOSE": " ".join(self.expose)}
        proc = _run(["unshare", "-m", "--propagation", "private", "--",
                     "sh", "-c", _POSTFIX_NS_START, "lab-postfix"],
                    check=False, timeout=60, env=env)
        self._master_pid = self.master_pid()
        if proc.returncode != 0:
            raise LabError(f"postfix start failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n"
                           f"log:\n{_tail(self.log_file)}")
        if not self._master_pid:
            raise LabError(f"postfix started but wrote no master.pid\nlog:\n{_tail(self.log_file)}")
        wait_for(self._port_open, self.start_timeout, f"Postfix on 127.0.0.1:{self.port}",
                   on_timeout=lambda: _tail(self.log_file))

    def _transport(self) -> str:
        return f"smtp:[127.0.0.1]:{self.relay_port}" if self.relay_port else "discard:"

    def _port_open(self) -> bool:
        return all(is_listening(port) for port in [self.port, *(p for p, _ in self.services.values())])

    def _running(self) -> bool:
        return bool(self._master_pid) and Path(f"/proc/{self._master_pid}").exists()

    def queue_files(self) -> list[str]:
        """Messages still in Postfix's queue (any state)."""
        found = []
        for sub in ("maildrop", "incoming", "active", "deferred", "hold", "corrupt"):
            d = self.queue_dir / sub
            if d.is_dir():
                found += [str(p) for p in d.rglob("*") if p.is_file()]
        return found

    def wait_idle(self, timeout: float = 20) -> None:
        """Wait until every accepted message has left the queue (relayed)."""
        wait_for(lambda: not self.queue_files(), timeout, "Postfix queue to drain",
                   on_timeout=lambda: f"{self.queue_files()}\n{_tail(self.log_file)}")

    def in_namespace(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside the lab's mount namespace (``nsenter -m``), where the
        paths of main.cf/master.cf (``/srv/lab/...``, the milter socket under
        ``/srv/milter``) are the ones smtpd uses; ``spfmilter doctor`` runs so."""
        pid = self._master_pid or self.master_pid()
        if not pid:
            raise LabError("Postfix is not running")
        return ["nsenter", "-t", str(pid), "-m", "--", *cmd]

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self):
        pid = self._master_pid or self.master_pid()
        if pid and Path(f"/proc/{pid}").exists():
            _run(["nsenter", "-t", str(pid), "-m", "--", "postfix", "-c", self.ns_config_dir, "stop"],
                 check=False, timeout=60)
            try:
                wait_for(lambda: not Path(f"/proc/{pid}").exists(), 20, "Postfix master to exit")
            except WaitTimeout:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._master_pid = None
        if self.queue_tmpfs and os.path.ismount(self.queue_dir):
            _run(["umount", "-l", str(self.queue_dir)], check=False)

    # -- logs and clients

    def send(self, client_ip: str, helo: str, mail_from: str, rcpts: Sequence[str],
             message_bytes: bytes, *, login: str | None = None,
             more: Sequence[tuple[str, Sequence[str], bytes]] = (), timeout: float = 60) -> Transcript:
        """SMTP session that appears to come from ``client_ip`` (XCLIENT ADDR=,
        with LOGIN= if ``login``)."""
        ip = ipaddress.ip_address(client_ip)
        xc = {"ADDR": f"IPV6:{ip}" if ip.version == 6 else str(ip), "NAME": "[UNAVAILABLE]"}
        if login:
            xc["LOGIN"] = login
        return smtp_transaction(self.host, self.port, helo, mail_from, rcpts, message_bytes,
                                xclient=xc, more=more, timeout=timeout)


# --------------------------------------------------------------------------
# Sendmail


_SENDMAIL_MC = """\
divert(-1)
# spfmilter MTA test lab -- generated by tests/kit/mta.py
divert(0)dnl
VERSIONID(`spfmilter-lab')dnl
OSTYPE(`linux')dnl
define(`MAIL_SETTINGS_DIR', `{lab}/etc/')dnl
define(`confDOMAIN_NAME', `{hostname}')dnl
define(`confTO_IDENT', `0s')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confSERVICE_SWITCH_FILE', `{lab}/etc/service.switch')dnl
define(`confHOSTS_FILE', `{lab}/etc/hosts')dnl
define(`confPID_FILE', `{lab}/sendmail.pid')dnl
define(`QUEUE_DIR', `{lab}/mqueue')dnl
define(`STATUS_FILE', `{lab}/etc/statistics')dnl
undefine(`ALIAS_FILE')dnl
define(`confLOG_LEVEL', `{log_level}')dnl
define(`confMILTER_LOG_LEVEL', `{log_level}')dnl
define(`confQUEUE_LA', `100')dnl
define(`confREFUSE_LA', `200')dnl
define(`confDELAY_LA', `0')dnl
define(`confMIN_FREE_BLOCKS', `0')dnl
define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl
define(`confTO_CONNECT', `10s')dnl
define(`confTO_INITIAL', `10s')dnl
define(`confDELIVERY_MODE', `background')dnl
define(`confPRIVACY_FLAGS', `authwarnings')dnl
define(`SMART_HOST', `relay:[127.0.0.1]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {relay_port}')dnl
FEATURE(`no_default_msa')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`accept_unqualified_senders')dnl
FEATURE(`promiscuous_relay')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA-v4, Addr=127.0.0.1, Port={port}')dnl
DAEMON_OPTIONS(`Family=inet6, Name=MTA-v6, Addr=::1, Port={port}')dnl
dnl ---- init/sendmail.mc (socket path replaced) ----
{snippet}
dnl ---- end of init/sendmail.mc ----
MAILER(`local')dnl
MAILER(`smtp')dnl
"""

# Run inside `unshare -m`: private /srv (tmpfs) with the work folder and the
# milter socket's folder bind-mounted there, private /dev (for a /dev/log of
# our own), nsswitch.conf, hosts and resolv.conf.
_SENDMAIL_NS_SETUP = r"""
set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 spfmlab-srv /srv
mkdir -p /srv/lab /srv/milter /srv/hostdev
mount --bind "$LAB_WORK" /srv/lab
if [ -n "$LAB_MILTER_DIR" ]; then mount --bind "$LAB_MILTER_DIR" /srv/milter; fi
mount --rbind /dev /srv/hostdev
mount -t tmpfs -o mode=0755 spfmlab-dev /dev
for n in null zero full random urandom tty; do
  [ -e /srv/hostdev/$n ] || continue
  touch /dev/$n; mount --bind /srv/hostdev/$n /dev/$n
done
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mkdir /dev/shm /dev/pts
umount -l /srv/hostdev
mount --bind /srv/lab/etc/nsswitch.conf /etc/nsswitch.conf
mount --bind /srv/lab/etc/hosts /etc/hosts
mount --bind /srv/lab/etc/resolv.conf /etc/resolv.conf
exec "$@"
"""


class SendmailLab(_LogFile):
    """A private Sendmail (from /opt/spfmilter-lab/sendmail) in its own mount
    namespace, inside ``netns`` (a :class:`Netns`) if given.

    * ``.cf`` generated by m4 from a ``.mc`` that includes init/sendmail.mc with
      the socket path replaced;
    * work folder bind-mounted at ``/srv/lab`` and the milter socket's folder
      at ``/srv/milter`` (Sendmail refuses sockets below world-writable /tmp);
    * a syslog listener on the namespace's own ``/dev/log`` writes Sendmail's
      log lines to ``sendmail.log`` in the work folder;
    * listens on 127.0.0.1:``port`` and [::1]:``port``, relays everything to
      127.0.0.1:``relay_port`` (in the same network namespace).

    The milter must be a unix socket when a netns is used (or an inet socket
    reachable inside the namespace).
    """

    supports_login = False
    NAME = "Sendmail"

    def __init__(self, workdir, milter_socket_spec: str, relay_port: int, *,
                 netns: Netns | None = None, port: int | None = None,
                 hostname: str = "mx.test", log_level: int = 12, start_timeout: float = 60):
        self.workdir = Path(workdir).resolve()
        self.netns = netns
        self.relay_port = relay_port
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.hostname = hostname
        self.log_level = log_level
        self.start_timeout = start_timeout
        self.milter_socket_spec = milter_socket_spec
        self.log_file = self.workdir / "sendmail.log"
        self.mc_file = self.workdir / "lab.mc"
        self.cf_file = self.workdir / "lab.cf"
        self.proc: subprocess.Popen | None = None
        self._stderr = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _milter_parts(self, spec: str) -> tuple[str, str | None]:
        """(S= value for sendmail.cf, host folder to bind at /srv/milter)."""
        kind, where = parse_socket_spec(spec)
        if kind == "unix":
            p = Path(str(where)).resolve(strict=False)
            return f"unix:/srv/milter/{p.name}", str(p.parent)
        host, port = where
        return f"inet{'6' if ':' in host else ''}:{port}@{host}", None

    def generate_cf(self) -> None:
        s_value, _ = self._milter_parts(self.milter_socket_spec)
        snippet = "\n".join(sendmail_snippet_lines()).replace(DOC_SOCKET_SPEC, s_value)
        if s_value not in snippet:
            raise LabError(f"{SENDMAIL_SNIPPET} does not mention {DOC_SOCKET_SPEC}")
        mc = _SENDMAIL_MC
        for k, v in {"lab": "/srv/lab", "hostname": self.hostname, "port": str(self.port),
                     "relay_port": str(self.relay_port), "log_level": str(self.log_level)}.items():
            mc = mc.replace("{" + k + "}", v)
        mc = mc.replace("{snippet}", snippet)
        self.mc_file.write_text(mc)
        cf = _run(["m4", f"-D_CF_DIR_={SENDMAIL_CF_DIR}/", f"{SENDMAIL_CF_DIR}/m4/cf.m4",
                   str(self.mc_file)]).stdout
        self.cf_file.write_text(cf)

    def _write_files(self) -> None:
        etc = self.workdir / "etc"
        mq = self.workdir / "mqueue"
        etc.mkdir(parents=True, exist_ok=True)
        mq.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        os.chmod(mq, 0o700)
        (etc / "service.switch").write_text("hosts files\naliases files\n")
        (etc / "nsswitch.conf").write_text(
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\n"
            "services: files\nprotocols: files\naliases: files\n")
        (etc / "hosts").write_text(
            f"127.0.0.1 localhost {self.hostname}\n::1 localhost ip6-localhost\n")
        # nothing answers on 127.0.0.1:53 in the namespace: any stray DNS
        # query fails at once instead of leaving the machine
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        for name in ("local-host-names", "trusted-users"):
            (etc / name).write_text("")
        self.log_file.touch()

    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_files()
        self.generate_cf()
        _, milter_dir = self._milter_parts(self.milter_socket_spec)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "PYTHONPATH": str(ROOT),
               "LAB_WORK": str(self.workdir), "LAB_MILTER_DIR": milter_dir or ""}
        cmd = [*(self.netns.exec_prefix() if self.netns else []),
               "unshare", "-m", "--propagation", "private", "--",
               "sh", "-c", _SENDMAIL_NS_SETUP, "lab-setup",
               *syslog_wrap("/srv/lab/sendmail.log"),
               str(SENDMAIL_BIN), "-bD", "-C", "/srv/lab/lab.cf", "-odb"]
        self._stderr = open(self.workdir / "sendmail.stderr", "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._ready, self.start_timeout, f"Sendmail on port {self.port}",
                   interval=0.05, on_timeout=self._diag)

    def _diag(self) -> str:
        return (f"sendmail log:\n{_tail(self.log_file)}\nstderr:\n"
                f"{_tail(self.workdir / 'sendmail.stderr')}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise LabError(f"Sendmail exited with {self.proc.returncode}\n{self._diag()}")
        if "starting daemon" not in self.log_text():
            return False
        # look in the namespace of the wrapper process (same netns as sendmail)
        return (is_listening(self.port, self.proc.pid)
                and is_listening(self.port, self.proc.pid, v6=True))

    def queue_files(self) -> list[str]:
        """Messages still in Sendmail's queue (qf/df files)."""
        d = self.workdir / "mqueue"
        return [str(p) for p in d.iterdir() if p.name[:2] in ("qf", "df", "Qf", "hf", "xf")] if d.is_dir() else []

    def wait_idle(self, timeout: float = 20) -> None:
        """Wait until every accepted message has left the queue (relayed)."""
        wait_for(lambda: not self.queue_files(), timeout, "Sendmail queue to drain",
                   on_timeout=lambda: f"{self.queue_files()}\n{_tail(self.log_file)}")

    def in_namespace(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside Sendmail's mount namespace (``nsenter -m``; the network
        namespace stays the caller's), where ``S=unix:/srv/milter/...`` resolves."""
        if self.proc is None or self.proc.poll() is not None:
            raise LabError("Sendmail is not running")
        return ["nsenter", "-t", str(self.proc.pid), "-m", "--", *cmd]

    def set_milter(self, spec: str) -> None:
        """Point Sendmail at another milter unix socket.  Same file name: the
        folder bind-mounted at /srv/milter is switched in the running
        namespace; otherwise Sendmail is restarted with a new .cf."""
        old_s, _ = self._milter_parts(self.milter_socket_spec)
        new_s, new_dir = self._milter_parts(spec)
        self.milter_socket_spec = spec
        if self.proc and self.proc.poll() is None and old_s == new_s and new_dir:
            _run(["nsenter", "-t", str(self.proc.pid), "-m", "--", "sh", "-c",
                  'umount -l /srv/milter && mount --bind "$1" /srv/milter', "x", new_dir])
            return
        running = self.proc is not None
        self.stop()
        if running:
            self.start()

    def stop(self):
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    pass
            # whatever is left of the session (sendmail children): kill it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc = None
        if self._stderr:
            self._stderr.close()
            self._stderr = None


    def send(self, client_ip: str, helo: str, mail_from: str, rcpts: Sequence[str],
             message_bytes: bytes, *, login: str | None = None,
             more: Sequence[tuple[str, Sequence[str], bytes]] = (), timeout: float = 60) -> Transcript:
        """SMTP session from ``client_ip`` (an address on the namespace's lo)."""
        if login:
            raise NotImplementedError("SendmailLab has no SMTP AUTH set up")
        ip = ipaddress.ip_address(client_ip)
        if self.netns is None and not ip.is_loopback:
            raise LabError("SendmailLab without a Netns can only use 127.x client addresses")
        if self.netns is not None:
            self.netns.ensure_address(str(ip))
        host = "::1" if ip.version == 6 else "127.0.0.1"
        return smtp_transaction(host, self.port, helo, mail_from, rcpts, message_bytes,
                                more=more, source_address=str(ip), netns=self.netns, timeout=timeout)


# --------------------------------------------------------------------------
# helper run inside Sendmail's mount namespace


def syslog_wrap(logfile: str) -> list[str]:
    """The command prefix that runs a command with a syslog listener on /dev/log
    writing to ``logfile`` (give the environment PYTHONPATH=ROOT)."""
    return [sys.executable, "-m", "tests.kit.mta", "syslog-wrap", logfile, "--"]


def _syslog_wrap(argv: list[str]) -> int:
    """syslog-wrap LOGFILE -- CMD...: listen on /dev/log, append each syslog
    message (priority prefix removed) to LOGFILE, run CMD, forward SIGTERM/INT,
    exit with CMD's status."""
    logfile = argv[0]
    cmd = argv[argv.index("--") + 1:]
    with contextlib.suppress(FileNotFoundError):
        os.unlink("/dev/log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/dev/log")
    os.chmod("/dev/log", 0o666)
    out = open(logfile, "ab", buffering=0)
    draining = threading.Event()

    def pump():
        while True:
            r, _, _ = select.select([sock], [], [], 0.2)
            if not r:
                if draining.is_set():
                    return
                continue
            data = sock.recv(65536)
            data = re.sub(rb"^<\d+>", b"", data).rstrip(b"\n\x00")
            out.write(data + b"\n")

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    child = subprocess.Popen(cmd)

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = child.wait()
    draining.set()  # pump exits once no datagram came for 0.2 s
    t.join(5)
    return rc



# --- a steady load of messages through a lab, each message's fate recorded ---------

def classify_session(tr: Transcript, count: int) -> list[str]:
    """Per message of one SMTP session (in the order sent): "delivered" (250 at end of data),
    "refused" (a 4xx/5xx the client saw for it, or for the session before it got that far), or
    "lost" (no verdict the client could see)."""
    segments: list[list[Reply]] = []
    session_refused = False
    for r in tr:
        if r.command == "MAIL":
            segments.append([r])
        elif segments and r.command not in ("QUIT", "DISCONNECT"):
            segments[-1].append(r)
        elif r.code >= 400:          # greeting, EHLO, XCLIENT or QUIT refused
            session_refused = True
    out = []
    for n in range(count):
        if n < len(segments):
            seg = segments[n]
            if any(r.command == "DOT" and r.code == 250 for r in seg):
                out.append("delivered")
            elif any(r.code >= 400 for r in seg):
                out.append("refused")
            else:
                out.append("lost")
        else:  # the session ended before this message: refused if the client was told so
            coded = [r for r in tr if r.code]
            told = session_refused or bool(coded and coded[-1].code >= 400)
            out.append("refused" if told else "lost")
    return out


class PacedLoad:
    """``total`` messages through a PostfixLab, offered at a steady ``rate`` from
    ``threads`` clients, ``per_session`` messages per SMTP session, each message's
    fate recorded as ``classify_session`` says.  Why paced: the kill tests need the
    load to be still running when the kill comes, whatever the machine's speed.

    Use as a context manager: leaving it stops and joins the clients even when an
    assertion failed, so no load outlives the test."""

    def __init__(self, postfix: PostfixLab, total: int, *, prefix: str, client_ip: str,
                 helo: str, sender: str, rcpt: str, threads: int = 4, per_session: int = 5,
                 rate: float = 150, bound: float = 240) -> None:
        self.postfix, self.total, self.prefix = postfix, total, prefix
        self.envelope = (client_ip, helo, sender, rcpt)
        self.per_session, self.rate, self.bound = per_session, rate, bound
        self.outcomes: dict[str, str] = {}      # message id (its Subject) -> its fate
        self.refusal_codes: set[int] = set()
        self.replies: dict[str, str] = {}       # transcripts of what was not delivered
        self._done = threading.Condition()
        self._next = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, name=f"{prefix}-{i}", daemon=True)
                         for i in range(threads)]

    def __enter__(self) -> PacedLoad:
        self._t0 = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _client(self) -> None:
        client_ip, helo, sender, rcpt = self.envelope
        while time.monotonic() < self._t0 + self.bound and not self._stop.is_set():
            with self._done:
                start = self._next * self.per_session
                self._next += 1
            if start >= self.total:
                return
            due = self._t0 + start / self.rate   # pacing the offered load, not synchronisation
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            ids = [f"{self.prefix}-{n:05d}"
                   for n in range(start, min(start + self.per_session, self.total))]
            msgs = [make_message(sender, [rcpt], subject=i) for i in ids]
            try:
                tr = self.postfix.send(client_ip, helo, sender, [rcpt], msgs[0], timeout=30,
                                       more=[(sender, [rcpt], m) for m in msgs[1:]])
            except OSError as exc:   # could not even connect: nothing was accepted
                tr = Transcript([Reply("CONNECT", 0, repr(exc))])
            verdicts = classify_session(tr, len(ids))
            with self._done:
                self.refusal_codes.update(r.code for r in tr if r.code >= 400)
                self.outcomes.update(zip(ids, verdicts))
                self.replies.update({i: str(tr) for i, v in zip(ids, verdicts) if v != "delivered"})
                self._done.notify_all()

    def wait_finished(self, count: int, timeout: float) -> int:
        """Wait (bounded) until ``count`` messages have a fate; returns how many have."""
        with self._done:
            if not self._done.wait_for(lambda: len(self.outcomes) >= count, timeout):
                raise WaitTimeout(f"{len(self.outcomes)} of {count} messages finished "
                                  f"in {timeout} s")
            return len(self.outcomes)

    def join(self, timeout: float) -> None:
        """Wait for every client to finish; the lab's queue is then drained too."""
        for t in self._threads:
            t.join(timeout)
        if any(t.is_alive() for t in self._threads):
            raise WaitTimeout(f"load clients still running after {timeout} s")
        self.postfix.wait_idle(120)

    def fates(self, fate: str) -> list[str]:
        """The ids of the messages that met ``fate``, sorted."""
        with self._done:
            return sorted(i for i, v in self.outcomes.items() if v == fate)


def assert_delivered_once_with_our_headers(capture: CaptureSMTP, delivered: list[str],
                                           authserv_id: str, domain: str) -> None:
    """Each delivered message arrived exactly once, with one SPF pass header of ours of
    each kind; nothing else arrived."""
    captured = capture.wait_for(len(delivered), timeout=60)
    assert sorted(m.header("Subject") for m in captured) == sorted(delivered)
    for m in captured:
        rspf = [v for v in m.headers("Received-SPF") if "identity=mailfrom" in v]
        ar = [v for v in m.headers("Authentication-Results")
              if v.lower().startswith(f"{authserv_id};")]
        assert len(rspf) == 1 and rspf[0].startswith(f"pass ({authserv_id}: "), m.header("Subject")
        assert len(ar) == 1 and f"spf=pass smtp.mailfrom={domain}" in ar[0], m.header("Subject")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "syslog-wrap":
        sys.exit(_syslog_wrap(sys.argv[2:]))
    print(__doc__)
    sys.exit(2)
