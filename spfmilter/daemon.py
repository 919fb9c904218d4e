"""The daemon: a supervisor process that owns the listening socket, and its workers.

Why a supervisor: libmilter takes SIGHUP, SIGTERM and SIGINT for itself (a
sigwait thread) and stops the milter on SIGHUP, so a process running
libmilter cannot use SIGHUP to reload.  The supervisor (the pid the init
system sees) owns those signals and the socket; the workers run libmilter:

* At start the supervisor opens the listening socket (under UMask, owned by
  UserID), drops privileges and forks the workers; a worker's libmilter
  serves the socket it inherits.  The socket outlives any worker.
* SIGHUP: the file is read and validated once, here; good settings go to
  every worker over its control pipe (a broken file is refused and logged,
  and nothing changes).  Workers apply them to new connections only.
* SIGTERM/SIGINT: every worker is told to stop; each stops accepting, lets
  its transactions in flight finish (within STOP_GRACE) and exits; then the
  socket is removed, once.  Workers ignore those signals themselves, so an
  init system that signals the whole group still gets a graceful stop.
* A worker killed by a signal nobody sent (a crash inside libmilter) is
  replaced at once on the same socket, backing off when crashes come fast,
  never giving up; a worker that exits by itself (it could not start) stops
  the daemon with its exit status.

The supervisor waits for signals synchronously (sigtimedwait) and never
starts a thread, so forking a worker at any time is safe.
"""

from __future__ import annotations

import errno
import grp
import os
import pickle
import pwd
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spfmilter import __version__, runtime
from spfmilter import config as cfg
from spfmilter.log import kv, log, set_level

STOP_GRACE = 25.0  # seconds a stop waits for transactions in flight
RESTARTS, RESTART_WINDOW = 5, 60.0  # crash restarts per window before backing off
_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


def _user_ids(user_id: str) -> tuple[int, int, str]:
    name, _, group = user_id.partition(":")
    try:
        pw = pwd.getpwnam(name)
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    except KeyError:
        raise cfg.ConfigError(f"no such user or group {user_id!r}", key="UserID") from None
    return pw.pw_uid, gid, pw.pw_name


def make_runtime_dir(path: Path, user_id: str | None) -> None:
    """Create the folder for a socket or pid file; one we create belongs to UserID,
    so that the unprivileged process can later remove what it put there."""
    if path.exists():
        return
    path.mkdir(parents=True, mode=0o750)
    if user_id and os.geteuid() == 0:
        uid, gid, _ = _user_ids(user_id)
        os.chown(path, uid, gid)


def drop_privileges(user_id: str) -> None:
    """Become UserID (name or name:group) for good; a no-op if we already are."""
    uid, gid, name = _user_ids(user_id)
    if os.getuid() == uid and os.geteuid() == uid:
        return
    if os.geteuid() != 0:
        raise cfg.ConfigError(f"must start as root to switch to {user_id!r}", key="UserID")
    os.setgroups([])
    os.initgroups(name, gid)
    os.setgid(gid)
    os.setuid(uid)


# --- the control pipe: supervisor -> worker -------------------------------------------

def _send(fd: int, message: tuple[str, Any]) -> None:
    data = pickle.dumps(message)
    try:
        os.write(fd, struct.pack("!I", len(data)) + data)
    except OSError as exc:  # the worker is gone; its replacement starts with the new state
        if exc.errno not in (errno.EPIPE, errno.EBADF):
            raise


def _read_exactly(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def _receive(fd: int) -> tuple[str, Any]:
    size = struct.unpack("!I", _read_exactly(fd, 4))[0]
    message: tuple[str, Any] = pickle.loads(_read_exactly(fd, size))
    return message


# --- a worker --------------------------------------------------------------------------

def _control_loop(fd: int, drain: Callable[[], None]) -> None:
    """Worker side of the control pipe: apply new settings; drain on "stop" or when
    the supervisor is gone (end of file), so no worker outlives its supervisor."""
    while True:
        try:
            kind, value = _receive(fd)
        except (EOFError, OSError):
            kind, value = "stop", None
        if kind == "stop":
            drain()
            return
        runtime.install(runtime.Runtime.create(value, runtime.current_or_none()))
        set_level(value.debug_level)
        log.info("%s", kv(action="reload", result="ok"))


def serve_worker(settings: cfg.Settings, control: int) -> int:
    """Serve the inherited listening socket until told to stop; never returns normally."""
    from spfmilter.frontends import listener, milter, policy

    runtime.install(runtime.Runtime.create(settings))
    # pymilter reports exceptions raised before our code runs (a HELO or header
    # name that is not UTF-8) through sys.excepthook: make that one log line.
    sys.excepthook = lambda kind, exc, tb: log.error("%s", kv(
        action="bad-input", error=f"{kind.__name__}: {exc}", callback="pymilter"))
    spec = settings.socket

    def drain() -> None:
        fds = listener.listener_fds(spec)
        if fds:
            listener.retire(fds)  # accept no more; libmilter keeps serving what it has
        else:
            log.warning("%s", kv(action="stop", note="listening socket not found", socket=spec))
        policy.drain(STOP_GRACE)  # Policy_Socket: stop accepting, wait for its clients
        idle = milter.connections.wait_idle(STOP_GRACE)
        log.info("%s", kv(action="stop", in_flight=0 if idle else milter.connections.count,
                          pid=os.getpid()))
        os._exit(0)  # nothing is in flight (or the grace is over): no need to unwind libmilter

    threading.Thread(target=_control_loop, args=(control, drain), name="spfmilter-control",
                     daemon=True).start()
    if settings.metrics:
        from spfmilter import metrics
        host, port = settings.metrics
        metrics.serve(host, port, lambda: {"connections": milter.connections.count,
                                           **runtime.current().resolver.stats()})
    log.info("%s", kv(action="start", version=__version__, socket=spec, pid=os.getpid(),
                      uid=os.getuid(), gid=os.getgid()))
    policy.serve_in_background()  # Policy_Socket, if set: a thread pool beside libmilter
    milter.serve()
    # libmilter stopped by itself (it gave up on its socket): the supervisor decides what next.
    log.error("%s", kv(action="stop", reason="libmilter stopped", pid=os.getpid()))
    return 1


@dataclass
class _Worker:
    pid: int
    control: int   # write end of its control pipe


def _fork_worker(settings: cfg.Settings) -> _Worker:
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read)
        return _Worker(pid, write)
    os.close(write)
    # The supervisor stops us over the pipe; libmilter's own sigwait thread must
    # not stop us on a signal meant for the whole process group.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    code = 1
    try:
        code = serve_worker(settings, read)
    except Exception as exc:
        print(f"spfmilter: worker cannot serve {settings.socket}: {exc}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# --- the supervisor ---------------------------------------------------------------------

class _Supervisor:
    def __init__(self, settings: cfg.Settings,
                 reload_settings: Callable[[], cfg.Settings]) -> None:
        self.settings = settings
        self.reload_settings = reload_settings
        self.workers: dict[int, _Worker] = {}
        self.wanted = 1
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.crashes: list[float] = []
        self.restart_at: float | None = None

    def start_workers(self) -> None:
        while len(self.workers) < self.wanted:
            w = _fork_worker(self.settings)
            self.workers[w.pid] = w

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + STOP_GRACE + 5.0
        for w in self.workers.values():
            _send(w.control, ("stop", None))

    def reload(self) -> None:
        try:
            new = self.reload_settings()
        except cfg.ConfigError as exc:
            log.error("%s", kv(action="reload-refused", error=str(exc)))
            return
        if new.socket != self.settings.socket:
            log.warning("%s", kv(action="reload", note="Socket changes need a restart",
                                 socket=self.settings.socket))
        self.settings = new.with_overrides(socket=self.settings.socket)
        for w in self.workers.values():
            _send(w.control, ("settings", self.settings))

    def reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            os.close(worker.control)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                continue
            if code >= 0:  # it could not start (or libmilter gave up): stop, say why
                self.exit_code = code or 1
                self.stop()
                continue
            self._crashed(-code)

    def _crashed(self, signum: int) -> None:
        # Killed by a signal nobody asked for (a crash inside libmilter, e.g. on a
        # malformed macro packet): serve again.  Never give up -- that would hand
        # whoever causes the crash an outage -- but back off when crashes come fast.
        now = time.monotonic()
        self.crashes[:] = [t for t in self.crashes if now - t < RESTART_WINDOW]
        self.crashes.append(now)
        excess = len(self.crashes) - RESTARTS
        delay = 0.0 if excess <= 0 else min(5.0, 0.1 * 2 ** excess)
        log.error("%s", kv(action="restart", reason="worker killed by a signal",
                           signal=signum, delay=f"{delay:.1f}s"))
        self.restart_at = now + delay

    def loop(self) -> None:
        while True:
            now = time.monotonic()
            if self.restart_at is not None and now >= self.restart_at and not self.stopping:
                self.restart_at = None
                self.start_workers()
            if self.stopping and not self.workers:
                return
            if self.stopping and now > self.stop_deadline:
                for w in self.workers.values():
                    _kill(w.pid, signal.SIGKILL)
            timeout = 1.0
            if self.restart_at is not None:
                timeout = max(0.0, min(timeout, self.restart_at - now))
            info = signal.sigtimedwait(_SIGNALS, timeout)
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    self.stop()
                elif info.si_signo == signal.SIGHUP:
                    self.reload()
            self.reap()


def run(settings: cfg.Settings, reload_settings: Callable[[], cfg.Settings]) -> int:
    """Open the socket, start the workers and supervise them; returns the exit status."""
    from spfmilter.frontends import milter, policy

    # Block the signals before anything else: one that comes early is never lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    spec = settings.socket
    path = Path(spec[5:]) if spec.startswith("unix:") else None
    try:
        if settings.pid_file:
            make_runtime_dir(Path(settings.pid_file).parent, settings.user_id)
            Path(settings.pid_file).write_text(f"{os.getpid()}\n")
            if settings.user_id and os.geteuid() == 0:
                uid, gid, _ = _user_ids(settings.user_id)
                os.chown(settings.pid_file, uid, gid)  # so it can be removed after the drop
        if path is not None:
            make_runtime_dir(path.parent, settings.user_id)
        try:
            milter.open_listener(settings)
        except Exception as exc:  # libmilter errors (socket in use, bad path) are one line
            raise cfg.ConfigError(f"cannot listen: {exc}", key="Socket") from None
        # Policy_Socket (if set): opened here too, so that it outlives the workers
        policy_listener = policy.open_listener(
            settings, make_dir=lambda folder: make_runtime_dir(folder, settings.user_id),
            owner=_user_ids(settings.user_id)[:2] if settings.user_id and os.geteuid() == 0
            else None)
        ours = path.stat().st_ino if path is not None else None
        if settings.user_id:
            if path is not None and os.geteuid() == 0:
                uid, gid, _ = _user_ids(settings.user_id)
                os.chown(path, uid, gid)
            drop_privileges(settings.user_id)
    except cfg.ConfigError as exc:
        print(f"spfmilter: {exc}", file=sys.stderr)
        _remove(settings.pid_file)
        return 1
    log.info("%s", kv(action="listen", socket=spec, pid=os.getpid(), version=__version__))
    supervisor = _Supervisor(settings, reload_settings)
    supervisor.start_workers()
    supervisor.loop()
    if path is not None and ours is not None:
        try:  # a stale socket would make the MTA wait for a connect timeout, not fail fast
            if path.stat().st_ino == ours:
                path.unlink()
        except OSError:
            pass
    policy.close_listener(policy_listener)
    _remove(settings.pid_file)
    return supervisor.exit_code


def _remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            log.error("%s", kv(action="signal-failed", signal=signum, error=exc.strerror))
