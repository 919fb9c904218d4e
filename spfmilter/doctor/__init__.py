"""``spfmilter doctor``: find, on the live host, the set-up mistakes that break milters.

The failures administrators report most are around the milter, not in it: the
MTA cannot reach the socket (a chrooted smtpd, a folder or socket the MTA's
user may not enter, a restart that recreated it differently), a default action
that lets mail through unchecked while the milter is down, trimmed macro
lists, a resolver that does not answer.  Each is tested here for real where it
can be (a connection as the MTA's user, inside the chroot when smtpd is
chrooted, a milter-protocol negotiation, a DNS query through spfmilter's own
resolver) and reported as one line with the setting and the command that fix
it.

Each subject has its module: facts are collected first (postconf, sendmail.cf,
the socket, the resolver, /proc) into frozen values, then judged by pure
rules, which the unit tests drive with facts written by hand.  This driver
runs them in the report's order and wraps each step: whatever the input, the
administrator gets lines, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spfmilter import config as cfg
from spfmilter.doctor import host, postfix, sendmail, service
from spfmilter.doctor.findings import NOTE, OK, PROBLEM, WARNING, Finding, Level, Ours
from spfmilter.doctor.parsers import identity_or_none, postfix_endpoint, postfix_milters, same_endpoint, seconds
from spfmilter.doctor.reach import check_reach
from spfmilter.endpoint import Endpoint

__all__ = ["NOTE", "OK", "PROBLEM", "WARNING", "Endpoint", "Finding", "Level", "diagnose",
           "main", "postfix_endpoint", "postfix_milters", "same_endpoint", "seconds"]
_same_endpoint = same_endpoint   # the name the parsers' tests have always used


@dataclass
class Report:
    """The findings in order; each step wrapped so that a failure is one more line."""

    findings: list[Finding] = field(default_factory=list)

    def run(self, area: str, step: Callable[[], list[Finding]]) -> bool:
        """Add the step's findings; False (and a problem line) when it failed."""
        try:
            self.findings += step()
        except Exception as exc:  # one line, never a traceback
            self.findings.append(Finding(PROBLEM, area, f"doctor could not check {area}: "
                                         f"{type(exc).__name__}: {exc}"))
            return False
        return True


def _postfix(report: Report, ours: Ours, postfix_dir: str | None) -> list[Finding]:
    postconf = postfix.find_postconf()
    absent = postfix.judge_install(
        postfix_dir, postconf, Path("/etc/postfix/main.cf").exists(),
        postfix_dir is not None and Path(postfix_dir, "main.cf").exists())
    if absent is not None or postconf is None:
        return [absent] if absent else []
    pf = postfix.collect(postconf, postfix_dir)
    report.run("postfix", lambda: _smtpds(report, pf, ours))
    return postfix.judge_main_cf(pf, ours)


def _smtpds(report: Report, pf: postfix.PostfixFacts, ours: Ours) -> list[Finding]:
    out = postfix.judge_no_smtpd(pf)
    for smtpd in pf.smtpds:
        out += postfix.judge_smtpd_override(pf, smtpd)
        target = postfix.smtpd_target(pf, ours, smtpd)
        if isinstance(target, Finding):
            out.append(target)
            continue
        report.findings += out   # what came before the probe stays before its line
        out = []
        report.run("postfix", functools.partial(_reach_smtpd, pf, ours, smtpd, target))
    return out


def _reach_smtpd(pf: postfix.PostfixFacts, ours: Ours, smtpd: postfix.Smtpd,
                 target: Endpoint) -> list[Finding]:
    return check_reach(ours, "postfix", f"smtpd {smtpd.name}", pf.owner, target,
                       pf.queue if smtpd.chrooted else None,
                       functools.partial(postfix.name_fix, pf, ours, smtpd))


def _sendmail(report: Report, ours: Ours, sendmail_cf: str | None) -> list[Finding]:
    cf = sendmail_cf or sendmail.DEFAULT_SENDMAIL_CF
    absent = sendmail.judge_install(sendmail_cf, Path(cf).exists())
    if absent is not None:
        return [absent]
    sm = sendmail.collect(cf)
    mine = sendmail.find_ours(sm, ours)
    if mine is None or mine.endpoint is None:
        return [sendmail.judge_missing(sm, ours)]
    report.findings += sendmail.judge(sm, ours, mine)
    ep = mine.endpoint
    fix = (f"point S= at it: {sendmail.mc_line(ours)}" + sm.then, sm.rebuild)
    report.run("sendmail", lambda: check_reach(ours, "sendmail", f"Sendmail filter {mine.name}",
                                                sm.run_as, ep, None, lambda: fix))
    return []


def _ours(conf: str, settings: cfg.Settings, sock: service.SocketFacts | None,
          running: bool | None) -> Ours | None:
    """spfmilter's facts for the MTA rules; None when its Socket has no address to try."""
    try:
        ep = settings.socket.connectable()
    except Exception:  # the socket step has said so
        return None
    return Ours(conf, str(settings.socket), ep, sock.identity if sock else None,
                identity_or_none(ep), running, settings.policy.lookup_time)


def diagnose(config_path: str | None, postfix_dir: str | None = None,
             sendmail_cf: str | None = None) -> list[Finding]:
    """Every finding, in order.  With -C or --sendmail-cf alone only that MTA is
    checked (the administrator named it); with neither, every installed one."""
    report = Report()
    conf = config_path or cfg.DEFAULT_PATH
    loaded: list[cfg.Settings] = []

    def config_step() -> list[Finding]:
        found, settings = service.check_config(config_path, conf)
        loaded.extend([settings] if settings else [])
        return found

    report.run("config", config_step)
    if not loaded:
        report.findings.append(Finding(NOTE, "config", "the other checks need a valid "
                                       "configuration"))
        return report.findings
    settings = loaded[0]
    facts: list[service.SocketFacts] = []
    running: list[bool] = []

    def socket_step() -> list[Finding]:
        facts.append(service.collect_socket(str(settings.socket), settings.socket.connectable()))
        found, answers = service.judge_socket(facts[0], conf)
        running.append(answers)
        return found

    report.run("socket", socket_step)
    ours = _ours(conf, settings, facts[0] if facts else None, running[0] if running else None)
    if ours is not None:
        if postfix_dir is not None or sendmail_cf is None:
            report.run("postfix", lambda: _postfix(report, ours, postfix_dir))
        if sendmail_cf is not None or postfix_dir is None:
            report.run("sendmail", lambda: _sendmail(report, ours, sendmail_cf))
    report.run("dns", lambda: host.judge_dns(host.collect_dns(settings), conf))
    report.run("privileges", functools.partial(_privileges, settings, ours, conf))
    return report.findings


def _privileges(settings: cfg.Settings, ours: Ours | None, conf: str) -> list[Finding]:
    assert ours is not None, "spfmilter's Socket has no address"
    return host.judge_privileges(host.collect_privileges(settings, ours.endpoint),
                                 ours.running, conf)


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
