"""The daemon: a small supervisor process around the libmilter process.

Why two processes: libmilter takes SIGHUP, SIGTERM and SIGINT for itself
(a sigwait thread) and stops the milter on SIGHUP, so a process running
libmilter cannot use SIGHUP to reload.  The supervisor (the pid the init
system sees) owns those signals: SIGHUP validates the file and, if it is
good, tells the milter process to reload (SIGUSR1, which libmilter leaves
alone); SIGTERM/SIGINT are passed on as a graceful stop.  The milter process
reloads for new connections only; connections in flight keep their settings.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from spfmilter import __version__
from spfmilter import config as cfg
from spfmilter.log import kv, log, set_level
from spfmilter.resolver import Resolver
from spfmilter.sockopts import tune_listener

STOP_GRACE = 25.0  # seconds a stop waits for transactions in flight
RESTARTS, RESTART_WINDOW = 5, 60.0  # crash restarts per window before backing off


def resolver_for(settings: cfg.Settings, previous: tuple[cfg.Settings, Resolver] | None = None) -> Resolver:
    """A resolver for these settings; the previous one (and its cache) when DNS settings match."""
    if previous is not None:
        old_settings, old_resolver = previous
        if (old_settings.nameservers, old_settings.lookup_time) == (settings.nameservers, settings.lookup_time):
            return old_resolver
    return Resolver(settings.nameservers, timeout=settings.lookup_time)


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


# --- the milter process -------------------------------------------------------------

def _register_callbacks(Milter, libmilter) -> None:  # type: ignore[no-untyped-def]
    """The callback wiring that Milter.runmilter does before it opens the socket."""
    def priv(ctx):  # type: ignore[no-untyped-def]
        # An MTA that skips option negotiation (or connect) reaches us without the
        # per-connection object that negotiate creates: make it, as connect_callback does.
        m = ctx.getpriv()
        if m is None:
            m = Milter.factory()
            m._setctx(ctx)
        return m

    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: priv(ctx).hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: priv(ctx).envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: priv(ctx).envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: priv(ctx).header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: priv(ctx).eoh())
    libmilter.set_body_callback(lambda ctx, chunk: priv(ctx).body(chunk))
    libmilter.set_eom_callback(lambda ctx: priv(ctx).eom())
    libmilter.set_abort_callback(lambda ctx: priv(ctx).abort())
    libmilter.set_close_callback(Milter.close_callback)


def _reloader(reload: Callable[[], None]) -> None:
    """Run ``reload`` whenever SIGUSR1 arrives, from a thread of its own.

    libmilter's threads block nothing but HUP/TERM/INT, so SIGUSR1 lands in
    any thread; Python's C-level handler writes it to the wakeup pipe, which
    this thread reads (the main thread is inside libmilter and never returns
    to Python code while serving).
    """
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    signal.signal(signal.SIGUSR1, lambda *_: None)

    def loop() -> None:
        while True:
            data = os.read(r, 64)
            if not data:
                return
            if signal.SIGUSR1 in data:
                reload()

    threading.Thread(target=loop, name="spfmilter-reload", daemon=True).start()


def serve_milter(settings: cfg.Settings, reload_settings: Callable[[], cfg.Settings]) -> int:
    """Bind, drop privileges, serve until stopped, then let transactions finish."""
    import Milter
    import milter as libmilter

    from spfmilter.milter import FLAGS, Runtime, SPFMilter, connections, get_runtime, set_runtime

    set_runtime(Runtime(settings, resolver_for(settings)))
    # pymilter reports exceptions raised before our code runs (a HELO or header
    # name that is not UTF-8) through sys.excepthook: make that one log line.
    sys.excepthook = lambda kind, exc, tb: log.error("%s", kv(
        action="bad-input", error=f"{kind.__name__}: {exc}", callback="pymilter"))

    def reload() -> None:
        try:
            new = reload_settings()
        except cfg.ConfigError as exc:
            log.error("%s", kv(action="reload-refused", error=str(exc)))
            return
        old = get_runtime()
        if new.socket != old.settings.socket:
            log.warning("%s", kv(action="reload", note="Socket changes need a restart",
                                 socket=old.settings.socket))
            new = new.with_overrides(socket=old.settings.socket)
        set_runtime(Runtime(new, resolver_for(new, (old.settings, old.resolver))))
        set_level(new.debug_level)
        log.info("%s", kv(action="reload", result="ok"))

    Milter.factory = SPFMilter
    Milter.set_flags(FLAGS)
    spec = settings.socket
    if spec.startswith("unix:"):
        make_runtime_dir(Path(spec[5:]).parent, settings.user_id)
    _register_callbacks(Milter, libmilter)
    libmilter.setconn(spec)
    libmilter.settimeout(600)
    libmilter.register("spfmilter", data=lambda ctx: ctx.getpriv().data(),
                       unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                       negotiate=Milter.negotiate_callback)
    # Defence in depth: an exception escaping our own guard still tempfails.
    libmilter.set_exception_policy(libmilter.TEMPFAIL)
    old_umask = os.umask(settings.umask)
    try:
        libmilter.opensocket(True)
        tune_listener(spec)  # TCP_NODELAY: no delayed-ACK stall at end of message
    finally:
        os.umask(old_umask)
    if settings.user_id:
        if spec.startswith("unix:") and os.geteuid() == 0:
            uid, gid, _ = _user_ids(settings.user_id)
            os.chown(spec[5:], uid, gid)
        drop_privileges(settings.user_id)
    _reloader(reload)
    if settings.metrics:
        from spfmilter import metrics
        host, port = settings.metrics
        metrics.serve(host, port, lambda: {"connections": connections.count,
                                           **get_runtime().resolver.stats()})
    log.info("%s", kv(action="start", version=__version__, socket=spec, pid=os.getpid(),
                      uid=os.getuid(), gid=os.getgid()))
    libmilter.main()
    # The listener is closed; let transactions in flight finish, within bounds.
    idle = connections.wait_idle(STOP_GRACE)
    if spec.startswith("unix:"):
        try:  # a stale socket would make the MTA wait for a connect timeout, not fail fast
            os.unlink(spec[5:])
        except OSError:
            pass
    log.info("%s", kv(action="stop", in_flight=0 if idle else connections.count))
    return 0


# --- the supervisor -------------------------------------------------------------------

def run(settings: cfg.Settings, reload_settings: Callable[[], cfg.Settings]) -> int:
    """Supervise one milter process; returns its exit status."""
    if settings.pid_file:
        make_runtime_dir(Path(settings.pid_file).parent, settings.user_id)
        Path(settings.pid_file).write_text(f"{os.getpid()}\n")
        if settings.user_id and os.geteuid() == 0:
            uid, gid, _ = _user_ids(settings.user_id)
            os.chown(settings.pid_file, uid, gid)  # so it can be removed after the drop
    current = [settings]      # what a (re)started milter process runs with
    stopping: list[int] = []
    child = 0

    def forward_stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if child:
            _signal_child(child, signal.SIGTERM)

    def reload(_signum: int, _frame: object) -> None:
        try:
            new = reload_settings()
        except cfg.ConfigError as exc:
            log.error("%s", kv(action="reload-refused", error=str(exc)))
            return
        current[0] = new.with_overrides(socket=settings.socket)  # Socket needs a restart
        if child:
            _signal_child(child, signal.SIGUSR1)

    # Handlers first, then fork: a signal that comes early is never lost.
    signal.signal(signal.SIGTERM, forward_stop)
    signal.signal(signal.SIGINT, forward_stop)
    signal.signal(signal.SIGHUP, reload)
    child = _start_milter(current[0], reload_settings)
    if stopping:
        _signal_child(child, signal.SIGTERM)
    if settings.user_id:
        try:
            drop_privileges(settings.user_id)
        except cfg.ConfigError:
            pass  # the milter process reports it and exits
    restarts: list[float] = []
    while True:
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        if code >= 0 or stopping:
            break
        # Killed by a signal nobody asked for (a crash inside libmilter, e.g. on a
        # malformed macro packet): serve again.  Never give up -- that would hand
        # whoever causes the crash an outage -- but back off when crashes come fast.
        now = time.monotonic()
        restarts[:] = [t for t in restarts if now - t < RESTART_WINDOW]
        restarts.append(now)
        delay = 0.0 if len(restarts) <= RESTARTS else min(5.0, 0.1 * 2 ** (len(restarts) - RESTARTS))
        log.error("%s", kv(action="restart", reason="milter process killed by a signal",
                           signal=-code, delay=f"{delay:.1f}s"))
        if delay:
            time.sleep(delay)  # a back-off, not synchronisation
        if stopping:  # asked to stop meanwhile: nothing left in flight
            code = 0
            break
        child = _start_milter(current[0], reload_settings)
    if settings.pid_file:
        try:
            os.unlink(settings.pid_file)
        except OSError:
            pass
    return code if code >= 0 else 128 - code


def _start_milter(settings: cfg.Settings, reload_settings: Callable[[], cfg.Settings]) -> int:
    """Fork the libmilter process; returns its pid (never returns in the child)."""
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        return child
    # libmilter's own thread takes these once it runs; until then keep them
    # pending rather than letting Python's defaults kill a half-started milter.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM, signal.SIGINT})
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    code = 1
    try:
        code = serve_milter(settings, reload_settings)
    except cfg.ConfigError as exc:
        print(f"spfmilter: {exc}", file=sys.stderr)
    except Exception as exc:  # libmilter errors (socket in use, bad path) are one line
        print(f"spfmilter: cannot start on {settings.socket}: {exc}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _signal_child(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            log.error("%s", kv(action="signal-failed", signal=signum, error=exc.strerror))
