"""Sendmail: sendmail.cf read into facts, and the rules that judge them.

``collect`` reads the file and looks at each filter's socket folder; every
``judge_*`` is pure over ``SendmailFacts``, a ``Filter`` and ``Ours``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spfmilter.doctor.findings import OK, PROBLEM, Finding, Identity, Ours
from spfmilter.doctor.parsers import identity_or_none, mode, same_endpoint, seconds, sendmail_endpoint
from spfmilter.endpoint import Endpoint

DEFAULT_SENDMAIL_CF = "/etc/mail/sendmail.cf"
# the default file has Debian's Makefile; another one: its .mc is not known here
REBUILD = "make -C /etc/mail && systemctl restart sendmail"


@dataclass(frozen=True)
class Folder:
    """A unix socket's folder (resolved) and its mode."""

    path: str
    st_mode: int
    mode: str          # as the report writes it: -rwx... user:group (0755)


@dataclass(frozen=True)
class Filter:
    """One X line: its name, its fields (S=, F=, T=), where S= points."""

    name: str
    fields: Mapping[str, str]
    endpoint: Endpoint | None
    identity: Identity | None
    folder: Folder | None


@dataclass(frozen=True)
class SendmailFacts:
    cf: str
    options: Mapping[str, str]     # the O lines
    filters: tuple[Filter, ...]

    @property
    def rebuild(self) -> str | None:
        return REBUILD if self.cf == DEFAULT_SENDMAIL_CF else None

    @property
    def then(self) -> str:
        return "" if self.cf == DEFAULT_SENDMAIL_CF else (
            f"; then rebuild {self.cf} from its .mc (m4) and restart sendmail")

    @property
    def run_as(self) -> str:
        return self.options.get("RunAsUser", "").split(":")[0] or "root"


# --- the facts ----------------------------------------------------------------------------

def judge_install(named: str | None, exists: bool) -> Finding | None:
    """A finding when there is no sendmail.cf to read."""
    cf = named or DEFAULT_SENDMAIL_CF
    if exists:
        return None
    if named:
        return Finding(PROBLEM, "sendmail", f"{cf} does not exist (--sendmail-cf)")
    return Finding(OK, "sendmail", f"Sendmail not installed (no {cf})")


def _folder(ep: Endpoint | None) -> Folder | None:
    if ep is None or ep.kind != "unix":
        return None
    folder = os.path.dirname(os.path.realpath(ep.path))
    with contextlib.suppress(OSError):
        st = os.stat(folder)
        return Folder(folder, st.st_mode, mode(st))
    return None


def parse(cf: str, text: str) -> SendmailFacts:
    """The O options and X filters of a sendmail.cf; the filters' sockets looked at."""
    options = {m.group(1): m.group(2).strip() for m in
               re.finditer(r"(?m)^O\s*([\w.]+)\s*=(.*)$", text)}
    filters: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"(?m)^X([^,\s]+)\s*,\s*(.*)$", text):
        fields: dict[str, str] = {}
        for part in re.split(r",\s*(?=[A-Z]=)", m.group(2)):
            key, _, value = part.partition("=")
            fields[key.strip()] = value.strip()
        filters[m.group(1)] = fields
    out = []
    for name, fields in filters.items():
        ep = sendmail_endpoint(fields.get("S", ""))
        out.append(Filter(name, fields, ep, identity_or_none(ep) if ep else None, _folder(ep)))
    return SendmailFacts(cf, options, tuple(out))


def collect(cf: str) -> SendmailFacts:
    return parse(cf, Path(cf).read_text(errors="replace"))


# --- the rules ----------------------------------------------------------------------------

def mc_line(ours: Ours) -> str:
    return f"INPUT_MAIL_FILTER(`spfmilter', `S={ours.endpoint}, F=T, T=S:30s;R:60s;E:5m')"


def find_ours(sm: SendmailFacts, ours: Ours) -> Filter | None:
    for f in sm.filters:
        if f.endpoint and same_endpoint(f.endpoint, ours.endpoint, ours.identity, f.identity):
            return f
    return None


def judge_missing(sm: SendmailFacts, ours: Ours) -> Finding:
    listed = (" (filters: " + ", ".join(f"{f.name} S={f.fields.get('S')}" for f in sm.filters)
              + ")" if sm.filters else "")
    return Finding(PROBLEM, "sendmail", f"{sm.cf} has no X (INPUT_MAIL_FILTER) line for "
                   f"spfmilter's Socket = {ours.socket}{listed}; add {mc_line(ours)} to the .mc"
                   + sm.then, sm.rebuild)


def judge_input_filters(sm: SendmailFacts, ours: Ours, f: Filter) -> list[Finding]:
    declared = sm.options.get("InputMailFilters", "")
    if f.name in [n.strip() for n in declared.split(",")]:
        return [Finding(OK, "sendmail", f"{sm.cf}: InputMailFilters uses {f.name}")]
    return [Finding(PROBLEM, "sendmail", f"{sm.cf}: filter {f.name} is defined but not in "
                    f"InputMailFilters ({declared}); declare it with {mc_line(ours)} (not "
                    "MAIL_FILTER)" + sm.then, sm.rebuild)]


def judge_flags(sm: SendmailFacts, ours: Ours, f: Filter) -> list[Finding]:
    """F=T: mail waits while spfmilter is down; without it Sendmail skips or rejects."""
    flags = f.fields.get("F", "")
    if "T" in flags:
        return [Finding(OK, "sendmail", f"{f.name}: F=T: mail waits (4xx) while spfmilter is down")]
    effect = ("rejects mail (5xx)" if "R" in flags else
              "lets mail through unchecked (Sendmail silently skips the filter)")
    return [Finding(PROBLEM, "sendmail", f"{sm.cf}: filter {f.name} has F={flags or '(none)'}: "
                    f"Sendmail {effect} while spfmilter is down; write F=T in its "
                    f"INPUT_MAIL_FILTER: {mc_line(ours)}" + sm.then, sm.rebuild)]


def judge_timeouts(sm: SendmailFacts, ours: Ours, f: Filter) -> list[Finding]:
    """T=R: and T=E: longer than Lookup_Time, or Sendmail gives up on a waiting check."""
    timeouts = dict(t.partition(":")[::2] for t in f.fields.get("T", "").split(";") if ":" in t)
    lookup = ours.lookup_time
    out = []
    for key, default, what in (("R", "10s", "reading a reply"), ("E", "5m", "end of message")):
        value = timeouts.get(key, default)
        secs = seconds(value)
        if secs is not None and secs > lookup:
            out.append(Finding(OK, "sendmail", f"{f.name}: T={key}:{value} ({what}) is longer "
                               f"than Lookup_Time = {lookup:g}s"))
            continue
        out.append(Finding(PROBLEM, "sendmail", f"{f.name}: T={key}:{value} ({what}"
                           + (", Sendmail's default" if key not in timeouts else "")
                           + f") is not longer than Lookup_Time = {lookup:g}s: Sendmail gives "
                           "up while an SPF check waits for DNS; use T=S:30s;R:60s;E:5m: "
                           f"{mc_line(ours)}" + sm.then, sm.rebuild))
    return out


def judge_macros(sm: SendmailFacts) -> list[Finding]:
    macros = sm.options.get("Milter.macros.envfrom")
    if macros is None:
        return []
    have = [m.strip() for m in macros.split(",")]
    missing = [m for m in ("i", "{auth_authen}") if m not in have]
    if not missing:
        return [Finding(OK, "sendmail", "Milter.macros.envfrom carries {auth_authen} and i")]
    return [Finding(PROBLEM, "sendmail", f"{sm.cf}: Milter.macros.envfrom lacks "
                    f"{' and '.join(missing)}; add them to confMILTER_MACROS_ENVFROM" + sm.then,
                    sm.rebuild)]


def judge_folder(f: Filter) -> list[Finding]:
    """Sendmail refuses a unix socket in a group- or world-writable folder."""
    if f.folder is None or not f.folder.st_mode & 0o022:
        return []
    return [Finding(PROBLEM, "sendmail", f"the socket's folder {f.folder.path} is group- or "
                    f"world-writable ({f.folder.mode}): Sendmail refuses such a socket",
                    f"chmod go-w {shlex.quote(f.folder.path)}")]


def judge(sm: SendmailFacts, ours: Ours, f: Filter) -> list[Finding]:
    """Everything about our filter but whether Sendmail's user reaches it, in order."""
    return (judge_input_filters(sm, ours, f) + judge_flags(sm, ours, f)
            + judge_timeouts(sm, ours, f) + judge_macros(sm) + judge_folder(f))
