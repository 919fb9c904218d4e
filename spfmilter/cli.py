"""The command line: run the daemon, validate a configuration, or try one transaction.

``spfmilter check`` drives the real milter class through pymilter's test
context, so what it prints is what the MTA would get, not a re-implementation.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import sys
from pathlib import Path
from typing import Sequence

from spfmilter import __version__
from spfmilter import config as cfg
from spfmilter import log as logmod
from spfmilter.resolver import Resolver

DEFAULT_CONFIG = "/etc/spfmilter/spfmilter.conf"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spfmilter",
        description="SPF (RFC 7208) milter for Postfix and Sendmail. Without a command it "
                    "runs the milter in the foreground.")
    p.add_argument("--version", action="version", version=f"spfmilter {__version__}")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG}, if it exists)")
    p.add_argument("--socket", metavar="SPEC",
                   help="listen here instead of the file's Socket (unix:/path, inet:PORT@HOST)")
    p.add_argument("--log", choices=("auto", "syslog", "stderr"), default="auto",
                   help="where log lines go; auto = syslog (mail) when /dev/log exists, "
                        "else stderr")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration and exit 0 (valid) or 1")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("check", help="play one transaction through the milter and show the outcome")
    c.add_argument("-c", "--config", dest="check_config_file", metavar="FILE",
                   help="configuration file (default: the top-level -c, else built-in defaults)")
    c.add_argument("--ip", required=True, help="client IP address")
    c.add_argument("--helo", default="", help="HELO/EHLO name the client sent")
    c.add_argument("--from", dest="sender", required=True,
                   help="envelope sender (MAIL FROM); '' or '<>' for the null sender")
    c.add_argument("--rcpt", action="append", default=[], metavar="ADDR",
                   help="recipient (repeatable; default postmaster@localhost)")
    c.add_argument("--auth", default="", metavar="USER",
                   help="pretend the client authenticated as USER")
    return p


def load_settings(path: str | None, socket: str | None = None) -> cfg.Settings:
    """Settings from the file (or defaults when no file is named and none is installed)."""
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    settings = cfg.parse(path) if path else cfg.Settings()
    if socket:
        try:
            settings = settings.with_overrides(socket=cfg.parse_socket(socket))
        except ValueError as exc:
            raise cfg.ConfigError(str(exc), "--socket") from None
    return settings


def _resolver(settings: cfg.Settings) -> Resolver:
    return Resolver(settings.nameservers, timeout=settings.lookup_time)


def _drop_privileges(user_id: str) -> None:
    """Switch to UserID (name or name:group) after the socket is bound."""
    name, _, group = user_id.partition(":")
    try:
        pw = pwd.getpwnam(name)
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    except KeyError:
        raise cfg.ConfigError(f"no such user or group {user_id!r}", key="UserID") from None
    if os.getuid() != 0:
        if os.getuid() == pw.pw_uid:
            return
        raise cfg.ConfigError(f"must start as root to switch to {user_id!r}", key="UserID")
    os.setgroups([])
    os.initgroups(pw.pw_name, gid)
    os.setgid(gid)
    os.setuid(pw.pw_uid)


def run_daemon(settings: cfg.Settings) -> int:
    import Milter
    import milter as libmilter

    from spfmilter.milter import FLAGS, Runtime, SPFMilter, set_runtime

    set_runtime(Runtime(settings, _resolver(settings)))
    Milter.factory = SPFMilter
    Milter.set_flags(FLAGS)
    spec = settings.socket
    if spec.startswith("unix:"):
        Path(spec[5:]).parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(settings.umask)
    # runmilter's steps, split so the pid file and the privilege drop can sit
    # between binding the socket and serving it.
    _register_callbacks(Milter, libmilter)
    libmilter.setconn(spec)
    libmilter.settimeout(600)
    libmilter.register("spfmilter", data=lambda ctx: ctx.getpriv().data(),
                       unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                       negotiate=Milter.negotiate_callback)
    # Defence in depth: an exception escaping our own guard still tempfails.
    libmilter.set_exception_policy(libmilter.TEMPFAIL)
    libmilter.opensocket(True)
    os.umask(old_umask)
    if settings.pid_file:
        Path(settings.pid_file).write_text(f"{os.getpid()}\n")
    if settings.user_id:
        if spec.startswith("unix:") and os.getuid() == 0:
            pw = pwd.getpwnam(settings.user_id.partition(":")[0])
            os.chown(spec[5:], pw.pw_uid, -1)
        _drop_privileges(settings.user_id)
    logmod.log.info("%s", logmod.kv(action="start", version=__version__, socket=spec,
                                    uid=os.getuid()))
    libmilter.main()
    logmod.log.info("%s", logmod.kv(action="stop"))
    if settings.pid_file:
        try:
            os.unlink(settings.pid_file)
        except OSError:
            pass
    return 0


def _register_callbacks(Milter, libmilter) -> None:  # type: ignore[no-untyped-def]
    """The callback wiring Milter.runmilter does before it opens the socket."""
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)


def run_check(settings: cfg.Settings, args: argparse.Namespace) -> int:
    from spfmilter.trial import play

    outcome = play(settings, _resolver(settings), ip=args.ip, helo=args.helo,
                   sender=args.sender, recipients=args.rcpt or ["postmaster@localhost"],
                   auth_user=args.auth)
    print(outcome.render())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = args.config
    if args.command == "check" and args.check_config_file:
        path = args.check_config_file
    try:
        settings = load_settings(path, args.socket)
    except cfg.ConfigError as exc:
        print(f"spfmilter: {exc}", file=sys.stderr)
        return 1
    if args.check_config:
        print(f"spfmilter: {path or 'built-in defaults'}: OK")
        return 0
    if args.command == "check":
        logmod.setup(settings.debug_level, stderr=True)
        return run_check(settings, args)
    logmod.setup(settings.debug_level,
                 stderr={"auto": None, "syslog": False, "stderr": True}[args.log])
    try:
        return run_daemon(settings)
    except cfg.ConfigError as exc:
        print(f"spfmilter: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # libmilter errors (socket in use, bad path) are one line
        print(f"spfmilter: cannot start on {settings.socket}: {exc}", file=sys.stderr)
        return 1
