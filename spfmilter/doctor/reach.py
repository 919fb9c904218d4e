"""The MTA's view of spfmilter's socket: does its entry name it, and may its user connect?

The probes are the facts (``probe``); ``judge_name`` and ``judge_connection``
decide over them.  ``user_fix`` looks at the folder or socket that refused the
MTA's user, to name the group to join.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from spfmilter.doctor.findings import NOTE, OK, PROBLEM, Finding, Identity, Ours
from spfmilter.doctor.parsers import identity_or_none, mode, same_endpoint
from spfmilter.doctor.probe import probe
from spfmilter.endpoint import Endpoint

NameFix = Callable[[], tuple[str, str | None]]


def judge_name(ours: Ours, area: str, who: str, ep: Endpoint, chroot: str | None,
               inside: Identity | None, name_fix: NameFix) -> Finding | None:
    """A problem when the MTA's entry (seen from inside its chroot) is not our socket."""
    if (chroot and inside is None) or not same_endpoint(
            ep, ours.endpoint, ours.identity or ours.folder_identity, inside):
        text, fix = name_fix()
        return Finding(PROBLEM, area, f"{who} looks for the milter at {seen(ep, chroot)}, which "
                       f"is not spfmilter's Socket = {ours.socket}; {text}", fix)
    return None


def judge_connection(area: str, who: str, mta_user: str, ep: Endpoint, chroot: str | None,
                     result: Mapping[str, Any],
                     user_fix: Callable[[], tuple[str, str | None]]) -> Finding:
    """The MTA's user's connection and negotiation, as the probe saw them."""
    where = seen(ep, chroot)
    if not result.get("connected") or "version" not in result:
        tried = result.get("as", mta_user)
        if tried != mta_user:
            who += f"; tried as {tried}: run doctor as root to try as {mta_user}"
        if result.get("errno") in (errno.EACCES, errno.EPERM) or result.get("blocked"):
            text, fix = user_fix()
            return Finding(PROBLEM, area, f"user {mta_user} ({who}) cannot connect to {where}: "
                           f"{result.get('error')}; {text}", fix)
        return Finding(PROBLEM, area, f"user {mta_user} ({who}) cannot talk to spfmilter at "
                       f"{where}: {result.get('error')}", "systemctl restart spfmilter")
    as_user = result.get("as")
    return Finding(OK, area, f"{who} names spfmilter's socket ({where}), and user {as_user} "
                   f"connects and negotiates milter protocol {result['version']}"
                   + (f" (run doctor as root to connect as {mta_user})"
                      if as_user != mta_user else ""))


def seen(ep: Endpoint, chroot: str | None) -> str:
    return f"{ep.postfix()} inside the chroot {chroot}" if chroot else ep.postfix()


def check_reach(ours: Ours, area: str, who: str, mta_user: str, ep: Endpoint,
                chroot: str | None, name_fix: NameFix) -> list[Finding]:
    """Probe as the MTA would and judge: its entry first, then its user's connection."""
    inside = (probe(ep, None, chroot).get("identity") if ep.kind == "unix" and chroot
              else identity_or_none(ep))
    wrong = judge_name(ours, area, who, ep, chroot, inside, name_fix)
    if wrong is not None:
        return [wrong]
    if ours.running is False:
        return [Finding(NOTE, area, f"{who} names spfmilter's socket ({seen(ep, chroot)}); "
                        f"connection as {mta_user} not tried: spfmilter is not running")]
    result = probe(ep, mta_user, chroot)
    return [judge_connection(area, who, mta_user, ep, chroot, result,
                             lambda: user_fix(ours, mta_user, result, chroot))]


def user_fix(ours: Ours, mta_user: str, result: Mapping[str, Any],
             chroot: str | None) -> tuple[str, str | None]:
    """What to change when ``mta_user`` is refused: the folder or the socket's group."""
    blocked = result.get("blocked")
    if blocked and chroot:  # the child saw it inside the chroot; we look from outside
        blocked = os.path.join(chroot, blocked.lstrip("/"))
    if blocked and os.path.isdir(blocked):
        with contextlib.suppress(OSError):
            st = os.stat(blocked)
            group = grp.getgrgid(st.st_gid).gr_name
            return (f"user {mta_user} may not enter the folder {blocked} ({mode(st)}); "
                    f"let it in through the folder's group",
                    f"usermod -aG {group} {mta_user} && chmod g+x {shlex.quote(blocked)}")
    try:
        st = os.stat(ours.endpoint.path)
    except OSError:
        return f"user {mta_user} is refused", None
    group = grp.getgrgid(st.st_gid).gr_name
    text = f"the socket is {mode(st)}"
    if (st.st_mode & 0o060) != 0o060:
        text += f"; set UMask = 007 in {ours.conf} so that its group may use it"
    text += (f"; put {mta_user} in the socket's group {group} (UserID = user:group in "
             f"{ours.conf} chooses it)")
    return text, f"usermod -aG {group} {mta_user}"   # the MTA's next process has it
