"""The daemon: a supervisor process that owns the listening socket, and its workers.

(One module although long: the supervisor and its workers are the two ends of one
fork, one control pipe and one signal plan -- what one side may do, such as never
start a thread before a fork, is what the other relies on.)

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
* ``Workers`` processes serve the one socket (``auto``: one per CPU this
  process may run on); the kernel hands each connection to one of them.
  Each has its own DNS cache and its own threads, so N workers use N cores
  where one process is held to one by the interpreter lock.
* With ``Metrics``, a small metrics process (forked once, replaced if it dies)
  serves the endpoint from the workers' prometheus_client multiprocess
  files; the supervisor itself serves nothing, so it never has a thread.
* A worker killed by a signal nobody sent (a crash inside libmilter) is
  replaced at once on the same socket, backing off when crashes come fast,
  never giving up; a worker that exits by itself (it could not start) stops
  the daemon with its exit status.

The supervisor waits for signals synchronously (sigtimedwait) and never
starts a thread, so forking a worker at any time is safe.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import pickle
import pwd
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from spfmilter import __version__, metrics, runtime
from spfmilter import config as cfg
from spfmilter.log import kv, log, set_level

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from spfmilter.frontends import listener
    from spfmilter.frontends.policy import PolicyService

STOP_GRACE = 25.0  # seconds a stop waits for transactions in flight
RESTARTS, RESTART_WINDOW = 5, 60.0  # crash restarts per window before backing off
_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


def worker_count(workers: int) -> int:
    """``Workers`` as a number of processes: 0 (``auto``) is one per CPU we may run on."""
    if workers:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API: the CPUs the host has
        return max(1, os.cpu_count() or 1)


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
        current = runtime.Runtime.create(value, runtime.current_or_none())
        runtime.install(current)
        set_level(value.debug_level)
        log.info("%s", kv(action="reload", result="ok", pid=os.getpid(), **_dns_fields(current)))


def _dns_fields(current: runtime.Runtime) -> dict[str, str]:
    """The servers this worker asks and where they come from (Nameservers or the
    resolv.conf read), for its start and reload lines: what ``doctor`` cannot see."""
    return {"nameservers": ",".join(current.resolver.servers) or "none",
            "nameservers_from": current.resolver.source}


def serve_worker(settings: cfg.Settings, control: int,
                 policy_service: PolicyService | None = None) -> int:
    """Serve the inherited listening socket (and Policy_Socket's, through
    ``policy_service``) until told to stop; never returns normally."""
    from spfmilter.frontends import listener, milter  # the daemon's: see _front_ends

    first = runtime.Runtime.create(settings)
    runtime.install(first)
    # pymilter reports exceptions raised before our code runs (a HELO or header
    # name that is not UTF-8) through sys.excepthook: make that one log line.
    sys.excepthook = lambda kind, exc, tb: log.error("%s", kv(
        action="bad-input", error=f"{kind.__name__}: {exc}", callback="pymilter"))
    def drain() -> None:
        fds = listener.listener_fds(settings.socket)
        if fds:
            listener.retire(fds)  # accept no more; libmilter keeps serving what it has
        else:
            log.warning("%s", kv(action="stop", note="listening socket not found",
                                 socket=settings.socket))
        if policy_service is not None:  # Policy_Socket: stop accepting, wait for its clients
            policy_service.drain(STOP_GRACE)
        idle = milter.connections.wait_idle(STOP_GRACE)
        log.info("%s", kv(action="stop", in_flight=0 if idle else milter.connections.count,
                          pid=os.getpid()))
        os._exit(0)  # nothing is in flight (or the grace is over): no need to unwind libmilter

    threading.Thread(target=_control_loop, args=(control, drain), name="spfmilter-control",
                     daemon=True).start()
    if settings.metrics:  # counted into the multiprocess files the metrics process reads
        metrics.current().workers.set(1)
        metrics.dns.source = lambda: runtime.current().resolver
    log.info("%s", kv(action="start", version=__version__, socket=settings.socket,
                      pid=os.getpid(), uid=os.getuid(), gid=os.getgid(), **_dns_fields(first)))
    if policy_service is not None:  # Policy_Socket: a thread per client beside libmilter
        policy_service.serve_in_background()
    milter.serve()
    # libmilter stopped by itself (it gave up on its socket): the supervisor decides what next.
    log.error("%s", kv(action="stop", reason="libmilter stopped", pid=os.getpid()))
    return 1


@dataclass
class _Worker:
    pid: int
    control: int   # write end of its control pipe


def _fork(close: list[int]) -> tuple[int, int]:
    """Fork a child with a control pipe: (pid, write end) in the supervisor,
    (0, read end) in the child.  ``close``: descriptors the child must not keep
    (the other children's pipes: a worker holding a sibling's write end would
    keep that sibling from seeing its supervisor die)."""
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read)
        return pid, write
    os.close(write)
    for fd in close:
        try:
            os.close(fd)
        except OSError:
            pass
    # The supervisor stops us over the pipe; libmilter's own sigwait thread must
    # not stop us on a signal meant for the whole process group.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    return 0, read


def _fork_worker(settings: cfg.Settings, close: list[int],
                 policy_service: PolicyService | None) -> _Worker:
    pid, fd = _fork(close)
    if pid:
        return _Worker(pid, fd)
    read = fd
    code = 1
    try:
        code = serve_worker(settings, read, policy_service)
    except Exception as exc:
        print(f"spfmilter: worker cannot serve {settings.socket}: {exc}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _set_name(name: bytes) -> None:
    """Name this process (what ps and top show; at most 15 bytes), to tell the metrics
    process from the workers.  prctl, because after a privilege drop /proc/self/comm
    is no longer ours to write."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _fork_metrics(server: WSGIServer, close: list[int]) -> _Worker:
    """The process that serves the metrics endpoint (bound by the supervisor)."""
    pid, fd = _fork(close)
    if pid:
        return _Worker(pid, fd)
    _set_name(b"spfmilter-stats")

    def watch() -> None:  # "stop", or the supervisor gone: nothing left to report
        try:
            _receive(fd)
        except (EOFError, OSError):
            pass
        os._exit(0)

    threading.Thread(target=watch, name="spfmilter-control", daemon=True).start()
    try:
        metrics.serve_forever(server)
    except Exception as exc:
        print(f"spfmilter: metrics endpoint failed: {exc}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


# --- the supervisor ---------------------------------------------------------------------

class _Supervisor:
    def __init__(self, settings: cfg.Settings,
                 reload_settings: Callable[[], cfg.Settings],
                 metrics_server: WSGIServer | None = None,
                 policy_service: PolicyService | None = None) -> None:
        self.settings = settings
        self.policy_service = policy_service
        self.reload_settings = reload_settings
        self.workers: dict[int, _Worker] = {}
        self.retiring: dict[int, _Worker] = {}  # told to stop after Workers went down
        self.wanted = worker_count(settings.workers)
        self.metrics_server = metrics_server
        self.metrics_child: _Worker | None = None
        self.metrics_started = 0.0
        self.metrics_restart_at: float | None = None
        self.metrics_delay = 0.0
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.crashes: list[float] = []
        self.restart_at: float | None = None

    def _inherited(self) -> list[int]:
        """What a new child must close: its siblings' pipes, and the metrics socket
        unless it is the metrics process."""
        children = [*self.workers.values(), *self.retiring.values()]
        if self.metrics_child is not None:
            children.append(self.metrics_child)
        return [c.control for c in children]

    def start_workers(self) -> None:
        while len(self.workers) < self.wanted:
            close = self._inherited()
            if self.metrics_server is not None:
                close.append(self.metrics_server.fileno())
            w = _fork_worker(self.settings, close, self.policy_service)
            self.workers[w.pid] = w

    def start_metrics(self) -> None:
        if self.metrics_server is None or self.metrics_child is not None:
            return
        self.metrics_child = _fork_metrics(self.metrics_server, self._inherited())
        self.metrics_started = time.monotonic()

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + STOP_GRACE + 5.0
        for w in self.workers.values():
            _send(w.control, ("stop", None))
        if self.metrics_child is not None:
            _send(self.metrics_child.control, ("stop", None))

    def reload(self) -> None:
        try:
            new = self.reload_settings()
        except cfg.ConfigError as exc:
            log.error("%s", kv(action="reload-refused", error=str(exc)))
            return
        if new.socket != self.settings.socket:
            log.warning("%s", kv(action="reload", note="Socket changes need a restart",
                                 socket=self.settings.socket))
        if new.metrics != self.settings.metrics:
            log.warning("%s", kv(action="reload", note="Metrics changes need a restart",
                                 metrics=_host_port(self.settings.metrics)))
        self.settings = new.with_overrides(socket=self.settings.socket,
                                           metrics=self.settings.metrics)
        for w in self.workers.values():
            _send(w.control, ("settings", self.settings))
        self._resize(worker_count(self.settings.workers))

    def _resize(self, wanted: int) -> None:
        """Workers changed: start the new ones now (with the new settings), or let the
        extra ones drain and exit as on a stop; the socket stays as it is."""
        if wanted == self.wanted:
            return
        log.info("%s", kv(action="workers", before=self.wanted, after=wanted))
        self.wanted = wanted
        while len(self.workers) > wanted:
            pid = max(self.workers)  # any will do: the kernel spreads connections evenly
            w = self.retiring[pid] = self.workers.pop(pid)
            _send(w.control, ("stop", None))
        if self.restart_at is None:
            self.start_workers()

    def reap(self) -> None:
        while True:  # every child: workers, retiring ones, the metrics process
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            if self.metrics_child is not None and pid == self.metrics_child.pid:
                self._metrics_exited(status)
                continue
            if self.metrics_server is not None:
                self._mark_dead(pid)
            retired = self.retiring.pop(pid, None)
            if retired is not None:
                os.close(retired.control)
                continue
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

    def _mark_dead(self, pid: int) -> None:
        try:
            metrics.mark_dead(pid)
        except OSError as exc:  # a stale gauge is not worth stopping the mail for
            log.error("%s", kv(action="metrics-cleanup-failed", pid=pid, error=exc.strerror))

    def _metrics_exited(self, status: int) -> None:
        assert self.metrics_child is not None
        os.close(self.metrics_child.control)
        self.metrics_child = None
        if self.stopping:
            return
        # Scrapes are not mail: replace it, but not in a tight loop if it keeps dying.
        quick = time.monotonic() - self.metrics_started < 5.0
        self.metrics_delay = min(300.0, max(5.0, self.metrics_delay * 2)) if quick else 0.0
        log.error("%s", kv(action="restart", reason="metrics process exited",
                           status=os.waitstatus_to_exitcode(status),
                           delay=f"{self.metrics_delay:.1f}s"))
        self.metrics_restart_at = time.monotonic() + self.metrics_delay

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
            if self.metrics_restart_at is not None and now >= self.metrics_restart_at \
                    and not self.stopping:
                self.metrics_restart_at = None
                self.start_metrics()
            if self.stopping and not self.workers and not self.retiring \
                    and self.metrics_child is None:
                return
            if self.stopping and now > self.stop_deadline:
                for w in [*self.workers.values(), *self.retiring.values()]:
                    _kill(w.pid, signal.SIGKILL)
                if self.metrics_child is not None:
                    _kill(self.metrics_child.pid, signal.SIGKILL)
            timeout = 1.0
            for at in (self.restart_at, self.metrics_restart_at):
                if at is not None:
                    timeout = max(0.0, min(timeout, at - now))
            info = signal.sigtimedwait(_SIGNALS, timeout)
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    self.stop()
                elif info.si_signo == signal.SIGHUP:
                    self.reload()
            self.reap()


def run(settings: cfg.Settings, reload_settings: Callable[[], cfg.Settings]) -> int:
    """Open the socket, start the workers and supervise them; returns the exit status."""
    # Block the signals before anything else: one that comes early is never lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    metrics_dir = metrics_server = None
    policy_service: PolicyService | None = None
    opened: list[listener.Listening] = []
    try:
        # What is made here before the drop belongs to UserID, so that the dropped
        # supervisor can still remove it.
        owner = _user_ids(settings.user_id)[:2] if settings.user_id and os.geteuid() == 0 \
            else None
        if settings.metrics:  # the workers forked below inherit where they count
            metrics_dir = tempfile.mkdtemp(prefix="spfmilter-metrics-")
            metrics.setup(metrics_dir)
            if owner is not None:
                os.chown(metrics_dir, *owner)
        milter, policy = _front_ends()
        if settings.pid_file:
            make_runtime_dir(Path(settings.pid_file).parent, settings.user_id)
            Path(settings.pid_file).write_text(f"{os.getpid()}\n")
            if owner is not None:
                os.chown(settings.pid_file, *owner)
        # Both sockets are opened here, so that they outlive the workers.
        def make_dir(folder: Path) -> None:
            make_runtime_dir(folder, settings.user_id)

        opened.append(milter.open_listener(settings, owner=owner, make_dir=make_dir))
        policy_service = policy.open_listener(settings, owner=owner, make_dir=make_dir)
        if policy_service is not None:
            opened.append(policy_service.listening)
        if settings.metrics:
            try:
                metrics_server = metrics.bind(*settings.metrics)
            except OSError as exc:
                raise cfg.ConfigError(f"cannot listen on {_host_port(settings.metrics)}: "
                                      f"{exc.strerror or exc}", key="Metrics") from None
        # Before the drop: what is imported later is read with UserID's rights.
        runtime.preload()
        if settings.user_id:
            drop_privileges(settings.user_id)
    except cfg.ConfigError as exc:
        print(f"spfmilter: {exc}", file=sys.stderr)
        _remove(settings.pid_file)
        for listening in opened:
            listening.remove()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 1
    supervisor = _Supervisor(settings, reload_settings, metrics_server, policy_service)
    log.info("%s", kv(action="listen", socket=settings.socket, pid=os.getpid(),
                      version=__version__, workers=supervisor.wanted))
    supervisor.start_metrics()
    supervisor.start_workers()
    supervisor.loop()
    for listening in opened:
        listening.remove()
    _remove(settings.pid_file)
    if metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return supervisor.exit_code


def _front_ends() -> tuple[ModuleType, ModuleType]:
    """The milter and policy front ends, loaded by the daemon when it starts: the
    CLI imports this module for every command, and ``spfmilter policy`` (started
    by Postfix's spawn for each client) need not load libmilter."""
    from spfmilter.frontends import milter, policy
    return milter, policy


def _host_port(value: tuple[str, int] | None) -> str | None:
    return None if value is None else f"{value[0]}:{value[1]}"


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
