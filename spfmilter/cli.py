"""The command line: run the daemon, validate a configuration, check one transaction,
replay a mail store (``spfmilter replay``), or serve Postfix's policy protocol on
stdin/stdout (``spfmilter policy``).

``spfmilter check`` drives the real milter class through pymilter's test
context, so what it prints is what the MTA would get, not a re-implementation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spfmilter import __version__, daemon
from spfmilter import config as cfg
from spfmilter import log as logmod
from spfmilter.checks import spf as spf_check
from spfmilter.resolver import Resolver


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spfmilter",
        description="SPF (RFC 7208) milter for Postfix and Sendmail. Without a command it "
                    "runs the milter in the foreground.")
    p.add_argument("--version", action="version", version=f"spfmilter {__version__}")
    p.add_argument("-c", "--config", metavar="FILE",
                   help=f"configuration file (default {cfg.DEFAULT_PATH}, if it exists)")
    p.add_argument("--socket", metavar="SPEC",
                   help="listen here instead of the file's Socket (unix:/path, inet:PORT@HOST)")
    p.add_argument("--log", choices=("auto", "syslog", "stderr"), default="auto",
                   help="where log lines go; auto = syslog (mail) when /dev/log exists, "
                        "else stderr")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration and exit 0 (valid) or 1")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("check", help="run one transaction through the milter and show the outcome")
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
    c.add_argument("--message", metavar="FILE.eml", type=argparse.FileType("rb"),
                   help="a message (headers and body) to send after RCPT: shows a DKIM rescue, "
                        "the hop behind a trusted relay, forged headers removed")
    c.add_argument("--trace", action="store_true",
                   help="show each DNS lookup, the deciding mechanism and the RFC 7208 "
                        "lookup counts")
    pol = sub.add_parser("policy", help="serve Postfix's policy delegation protocol on stdin and "
                                         "stdout (for a master.cf spawn service)")
    pol.add_argument("-c", "--config", dest="policy_config_file", metavar="FILE",
                     help="configuration file; policyd-spf.conf key names work (default: the "
                          "top-level -c, else " + cfg.DEFAULT_PATH + " if it exists)")
    pol.add_argument("--log-file", metavar="FILE",
                     help="append log lines to FILE (default: syslog when /dev/log exists; "
                          "never the protocol's own socket)")
    d = sub.add_parser("doctor", help="check spfmilter's set-up with the MTA on this host "
                                      "(socket, MTA settings, DNS, privileges)")
    d.add_argument("-c", "--config", dest="doctor_config_file", metavar="FILE",
                   help="spfmilter's configuration file (default: the top-level -c, else "
                        f"{cfg.DEFAULT_PATH})")
    d.add_argument("-C", "--postfix-config", metavar="DIR",
                   help="Postfix configuration folder (default: the system one); given "
                        "alone, only Postfix is checked")
    d.add_argument("--sendmail-cf", metavar="FILE",
                   help="Sendmail's sendmail.cf (default /etc/mail/sendmail.cf, if it exists); "
                        "given alone, only Sendmail is checked")
    d.add_argument("--json", action="store_true", help="the findings as a JSON list")
    r = sub.add_parser("replay", help="play a mail store (mbox, Maildir, .eml) through the "
                                      "milter as each message arrived: what would be refused")
    r.add_argument("-c", "--config", dest="replay_config_file", metavar="FILE",
                   help="configuration file (default: the top-level -c, else built-in defaults)")
    r.add_argument("--receiver", action="append", metavar="NAME",
                   help="a name the receiving MTA writes after 'by' in its Received header "
                        "(repeatable; default: Authserv_Id and this host's name)")
    r.add_argument("--json", action="store_true",
                   help="one JSON object per message, then one with the summary")
    r.add_argument("--jobs", type=_positive, metavar="N",
                   help="processes to replay with (default: the number of CPUs)")
    r.add_argument("paths", nargs="+", metavar="PATH",
                   help="an mbox file (also gzip'd), a Maildir folder or a message file")
    rp = sub.add_parser("report", help="summarise spfmilter's decision lines from syslog files, "
                                      "journalctl output or standard input")
    rp.add_argument("logs", nargs="*", metavar="LOG",
                   help="log files, plain or gzip'd (default or '-': standard input)")
    rp.add_argument("--since", metavar="DATE", help="only lines at or after DATE (YYYY-MM-DD "
                                                   "[HH:MM[:SS]], local time)")
    rp.add_argument("--until", metavar="DATE", help="only lines before DATE (a bare date: "
                                                   "up to the end of that day)")
    rp.add_argument("--json", action="store_true", help='the summary as one JSON object, '
                                                       '{"summary": ...}')
    return p


def run_check(settings: cfg.Settings, args: argparse.Namespace) -> int:
    from spfmilter.frontends.check import check

    extra = {}
    if args.message is not None:
        with args.message as fp:
            extra["message"] = fp.read()
    outcome = check(settings, Resolver(settings.nameservers, timeout=settings.policy.lookup_time),
                    ip=args.ip, helo=args.helo, sender=args.sender,
                    recipients=args.rcpt or ["postmaster@localhost"], auth_user=args.auth,
                    trace=args.trace, **extra)
    print(outcome.render())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "doctor":  # a bad configuration is one of its findings, not an exit
        from spfmilter import doctor

        return doctor.main(args.doctor_config_file or args.config, args.postfix_config,
                           args.sendmail_cf, args.json)
    if args.command == "report":  # reads logs only: no configuration, no DNS
        from spfmilter import report

        return report.main(args.logs, args.since, args.until, args.json)
    path = args.config
    if args.command == "check" and args.check_config_file:
        path = args.check_config_file
    if args.command == "policy" and args.policy_config_file:
        path = args.policy_config_file
    if args.command == "replay" and args.replay_config_file:
        path = args.replay_config_file
    try:
        settings = cfg.load(path, args.socket)
    except cfg.ConfigError as exc:
        print(f"spfmilter: {exc}", file=sys.stderr)
        if args.command == "policy" and (args.log_file or logmod.stderr_is_stdout()):
            # under spawn stderr goes to Postfix, not to the administrator: log it too
            logmod.setup(1, file=args.log_file, protocol_on_stdout=True)
            logmod.log.error("%s", logmod.kv(action="config-error", error=str(exc)))
        return 1
    if args.check_config:
        used = cfg.source(path)  # name what was validated: without -c, maybe the installed file
        print(f"spfmilter: {used}: OK" if used else
              f"spfmilter: built-in defaults (no {cfg.DEFAULT_PATH}): OK")
        return 0
    spf_check.install()
    if args.command == "check":
        logmod.setup(settings.debug_level, stderr=True)
        return run_check(settings, args)
    if args.command == "replay":
        from spfmilter import replay

        return replay.main(settings, args.paths, args.receiver, args.json, args.jobs)
    if args.command == "policy":
        from spfmilter.frontends import policy

        logmod.setup(settings.debug_level, file=args.log_file, protocol_on_stdout=True,
                     stderr={"auto": None, "syslog": False, "stderr": True}[args.log])
        return policy.serve_stdio(settings)
    logmod.setup(settings.debug_level,
                 stderr={"auto": None, "syslog": False, "stderr": True}[args.log])
    return daemon.run(settings, lambda: cfg.load(path, args.socket))
