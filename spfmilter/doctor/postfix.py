"""Postfix: its settings read through postconf (facts), and the rules that judge them.

``collect`` is the only part that runs postconf or reads files; every
``judge_*`` takes the frozen ``PostfixFacts`` and spfmilter's ``Ours`` and
returns findings, so each rule is tested with facts written by hand.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spfmilter.doctor.findings import OK, PROBLEM, WARNING, Finding, Identity, Ours
from spfmilter.doctor.parsers import identity_or_none, postfix_endpoint, postfix_milters, same_endpoint, seconds
from spfmilter.endpoint import Endpoint

SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
NAMES = ("mail_owner", "queue_directory", "smtpd_milters", "non_smtpd_milters",
         "milter_default_action", "milter_mail_macros", "milter_protocol",
         "milter_connect_timeout", "milter_command_timeout", "milter_content_timeout")
TIMEOUTS = {"milter_connect_timeout": "30s", "milter_command_timeout": "60s",
            "milter_content_timeout": "300s"}
TMPFILES_SNIPPET = "spfmilter.conf"
TMPFILES_DIRS = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/lib/tmpfiles.d")


@dataclass(frozen=True)
class Smtpd:
    """One smtpd service of master.cf: name/type, its chroot column, its -o overrides."""

    name: str
    chrooted: bool
    overrides: Mapping[str, str]


@dataclass(frozen=True)
class Milter:
    """An entry of a milter list, and the identity of its socket (unix) on this host."""

    endpoint: Endpoint
    identity: Identity | None


@dataclass(frozen=True)
class PostfixFacts:
    """One Postfix instance as postconf shows it (its own defaults applied)."""

    config_dir: str | None             # -C, None for the default instance
    values: Mapping[str, str]          # postconf -x NAMES
    smtpds: tuple[Smtpd, ...]          # from postconf -M
    non_smtpd: tuple[Milter, ...]      # what non_smtpd_milters names
    tmpfiles: tuple[tuple[str, str], ...]  # symlinks (path, target) of spfmilter's tmpfiles.d

    @property
    def where(self) -> str:
        return f" in {self.config_dir}" if self.config_dir else ""

    @property
    def queue(self) -> str:
        return self.values.get("queue_directory", "/var/spool/postfix")

    @property
    def owner(self) -> str:
        return self.values.get("mail_owner", "postfix")

    def cmd(self, *args: str) -> str:
        """The command an administrator types for this instance."""
        c = f"-c {shlex.quote(self.config_dir)} " if self.config_dir else ""
        return f"postconf {c}{' '.join(args)} && postfix {c}reload"


# --- the facts ----------------------------------------------------------------------------

def find_postconf() -> str | None:
    return shutil.which("postconf", path=SBIN_PATH + ":" + os.environ.get("PATH", ""))


def judge_install(config_dir: str | None, postconf: str | None, default_main_cf: bool,
                  main_cf: bool) -> Finding | None:
    """Whether there is a Postfix to check: a finding when there is none (or no postconf)."""
    if config_dir is None and (postconf is None or not default_main_cf):
        return Finding(OK, "postfix", "Postfix not installed (no postconf or /etc/postfix/main.cf)")
    if postconf is None:
        return Finding(PROBLEM, "postfix", "postconf not found: install Postfix to check "
                       f"{config_dir}", "apt-get install postfix")
    if config_dir is not None and not main_cf:
        return Finding(PROBLEM, "postfix", f"no main.cf in {config_dir} (-C names Postfix's "
                       "configuration folder)")
    return None


def _postconf(postconf: str, config_dir: str | None, *args: str) -> str:
    c = ["-c", config_dir] if config_dir else []
    proc = subprocess.run([postconf, *c, *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PATH": SBIN_PATH})
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"postconf exited {proc.returncode}")
    return proc.stdout


def parse_values(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            out[name.strip()] = value.strip()
    return out


def parse_smtpds(text: str) -> tuple[Smtpd, ...]:
    """Each smtpd service of ``postconf -M``: its name/type, chroot column, -o overrides."""
    out = []
    for fields in (line.split() for line in text.splitlines() if line.strip()):
        if len(fields) < 8 or fields[7] != "smtpd":
            continue
        overrides = {}
        args = fields[8:]
        for i, arg in enumerate(args):
            if arg == "-o" and i + 1 < len(args):
                name, _, value = args[i + 1].partition("=")
                overrides[name] = value
        out.append(Smtpd(f"{fields[0]}/{fields[1]}", fields[4] == "y", overrides))
    return tuple(out)


def tmpfiles_links() -> tuple[tuple[str, str], ...]:
    """The symlinks (path, target) spfmilter's tmpfiles.d snippet creates; the first
    snippet found wins, as for systemd-tmpfiles."""
    for d in TMPFILES_DIRS:
        snippet = Path(d, TMPFILES_SNIPPET)
        if snippet.exists():
            return tuple((f[1], f[6]) for f in (line.split() for line in
                                                  snippet.read_text(errors="replace").splitlines())
                         if len(f) >= 7 and f[0] in ("L", "L+"))
    return ()


def collect(postconf: str, config_dir: str | None) -> PostfixFacts:
    values = parse_values(_postconf(postconf, config_dir, "-x", *NAMES))
    smtpds = parse_smtpds(_postconf(postconf, config_dir, "-M"))
    queue = values.get("queue_directory", "/var/spool/postfix")
    entries = (postfix_endpoint(m, queue) for m in postfix_milters(
        values.get("non_smtpd_milters", "")))
    non_smtpd = tuple(Milter(e, identity_or_none(e)) for e in entries if e)
    links = tmpfiles_links() if any(s.chrooted for s in smtpds) else ()
    return PostfixFacts(config_dir, values, smtpds, non_smtpd, links)


# --- the rules ----------------------------------------------------------------------------

def judge_no_smtpd(pf: PostfixFacts) -> list[Finding]:
    if pf.smtpds:
        return []
    return [Finding(WARNING, "postfix", f"master.cf{pf.where} runs no smtpd: nothing receives "
                    "mail by SMTP")]


def judge_smtpd_override(pf: PostfixFacts, smtpd: Smtpd) -> list[Finding]:
    """A -o milter_default_action in master.cf beats main.cf's."""
    action = smtpd.overrides.get("milter_default_action")
    if action is None or action == "tempfail":
        return []
    return [Finding(PROBLEM, "postfix", f"master.cf{pf.where} overrides milter_default_action = "
                    f"{action} for smtpd {smtpd.name} (-o), so it does not tempfail while "
                    "spfmilter is down", pf.cmd("-PX", f"{smtpd.name}/milter_default_action"))]


def smtpd_target(pf: PostfixFacts, ours: Ours, smtpd: Smtpd) -> Endpoint | Finding:
    """The entry of this smtpd's milter list to try (the first of our socket's kind), or
    the problem that it names none."""
    milters = smtpd.overrides.get("smtpd_milters", pf.values.get("smtpd_milters", ""))
    entries = [e for e in (postfix_endpoint(m, pf.queue) for m in postfix_milters(milters)) if e]
    ours_kind = [e for e in entries if e.kind == ours.endpoint.kind]
    if ours_kind:
        return ours_kind[0]
    spec = chroot_spec(ours, pf.queue) if smtpd.chrooted else ours.endpoint.postfix()
    return Finding(PROBLEM, "postfix", f"smtpd_milters{pf.where} (smtpd {smtpd.name}) = "
                   f"{milters or '(empty)'} does not name spfmilter: mail is not checked",
                   pf.cmd("-e", shlex.quote(f"smtpd_milters={spec}")))


def chroot_spec(ours: Ours, queue: str) -> str:
    """Our socket as a chrooted smtpd names it: relative to the queue folder."""
    if ours.endpoint.kind == "unix" and ours.endpoint.path.startswith(queue.rstrip("/") + "/"):
        return "unix:" + ours.endpoint.path[len(queue.rstrip("/")):]
    return ours.endpoint.postfix()


def name_fix(pf: PostfixFacts, ours: Ours, smtpd: Smtpd) -> tuple[str, str | None]:
    """How to make smtpd find spfmilter's socket: the socket folder inside the chroot
    with a symlink to it (what the Debian package sets up), or the chroot off."""
    if not smtpd.chrooted:
        return "point smtpd_milters at it", pf.cmd(
            "-e", shlex.quote(f"smtpd_milters={ours.endpoint.postfix()}"))
    queue = pf.queue
    folder = os.path.dirname(ours.endpoint.path)
    inside = os.path.join(queue, "spfmilter", "spfmilter.sock")
    text = (f"it runs chrooted in {queue} (master.cf chroot column y); let the socket's "
            f"folder be {queue.rstrip('/')}{folder} with {folder} a symlink to it (as the "
            f"Debian package does), or set Socket = unix:{inside} in {ours.conf} and "
            "smtpd_milters = unix:/spfmilter/spfmilter.sock, or turn the chroot off")
    if ours.endpoint.kind == "unix" and tmpfiles_link(pf, folder):
        return text, f"systemd-tmpfiles --create {TMPFILES_SNIPPET} && systemctl restart spfmilter"
    return text, pf.cmd("-F", f"{smtpd.name}/chroot=n")


def tmpfiles_link(pf: PostfixFacts, folder: str) -> bool:
    """Whether spfmilter's tmpfiles.d snippet makes ``folder`` a symlink into the queue
    folder (the Debian package's set-up): then recreating it is the fix."""
    return any(path == folder and target.startswith(pf.queue.rstrip("/") + "/")
               for path, target in pf.tmpfiles)


def judge_default_action(pf: PostfixFacts) -> list[Finding]:
    action = pf.values.get("milter_default_action", "")
    if action == "tempfail":
        return [Finding(OK, "postfix", "milter_default_action = tempfail: mail waits (4xx) while "
                        "spfmilter is down")]
    return [Finding(PROBLEM, "postfix", f"milter_default_action = {action}{pf.where} "
                    + ("lets mail through unchecked" if action == "accept" else "refuses mail")
                    + " while spfmilter is down", pf.cmd("-e", "milter_default_action=tempfail"))]


def judge_mail_macros(pf: PostfixFacts) -> list[Finding]:
    macros = pf.values.get("milter_mail_macros", "").split()
    missing = [m for m in ("i", "{auth_authen}") if m not in macros]
    if not missing:
        return [Finding(OK, "postfix", "milter_mail_macros carries {auth_authen} and i")]
    value = " ".join(macros + missing)
    return [Finding(PROBLEM, "postfix", f"milter_mail_macros{pf.where} lacks "
                    f"{' and '.join(missing)} ({{auth_authen}}: SMTP AUTH clients are then "
                    "checked and may be refused; i: no queue id in the log)",
                    pf.cmd("-e", shlex.quote(f"milter_mail_macros={value}")))]


def judge_non_smtpd(pf: PostfixFacts, ours: Ours) -> list[Finding]:
    non_smtpd = pf.values.get("non_smtpd_milters", "")
    if not non_smtpd:
        return [Finding(OK, "postfix", "non_smtpd_milters is empty: local submissions "
                        "(sendmail(1), pickup) have no client to check and do not go through "
                        "spfmilter")]
    if any(same_endpoint(m.endpoint, ours.endpoint, ours.identity, m.identity)
           for m in pf.non_smtpd):
        return [Finding(WARNING, "postfix", f"non_smtpd_milters = {non_smtpd}{pf.where} sends "
                        "local mail through spfmilter, which has no SMTP client or HELO to check "
                        "and only adds headers; remove it unless another milter in that list "
                        "needs it", pf.cmd("-e", "non_smtpd_milters="))]
    return [Finding(OK, "postfix", f"non_smtpd_milters = {non_smtpd} does not include spfmilter")]


def judge_protocol(pf: PostfixFacts) -> list[Finding]:
    protocol = pf.values.get("milter_protocol", "6")
    if protocol.isdigit() and int(protocol) >= 6:
        return [Finding(OK, "postfix", f"milter_protocol = {protocol}")]
    return [Finding(PROBLEM, "postfix", f"milter_protocol = {protocol}{pf.where}: spfmilter "
                    "needs 6", pf.cmd("-e", "milter_protocol=6"))]


def judge_timeouts(pf: PostfixFacts, ours: Ours) -> list[Finding]:
    """Each milter timeout longer than Lookup_Time, or Postfix gives up on a waiting check."""
    lookup = ours.lookup_time
    out = []
    for name, wanted in TIMEOUTS.items():
        value = pf.values.get(name, "")
        secs = seconds(value)
        if secs is not None and secs > lookup:
            out.append(Finding(OK, "postfix", f"{name} = {value} is longer than Lookup_Time = "
                               f"{lookup:g}s"))
            continue
        if (seconds(wanted) or 0) <= lookup:
            wanted = f"{int(lookup) * 2 + 10}s"
        out.append(Finding(PROBLEM, "postfix", f"{name} = {value}{pf.where} is not longer than "
                           f"spfmilter's Lookup_Time = {lookup:g}s: Postfix gives up (and applies "
                           "milter_default_action) while an SPF check may still be waiting for "
                           "DNS", pf.cmd("-e", f"{name}={wanted}")))
    return out


def judge_main_cf(pf: PostfixFacts, ours: Ours) -> list[Finding]:
    """main.cf's milter settings, in the report's order."""
    return (judge_default_action(pf) + judge_mail_macros(pf) + judge_non_smtpd(pf, ours)
            + judge_protocol(pf) + judge_timeouts(pf, ours))
