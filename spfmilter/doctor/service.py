"""spfmilter itself: its configuration file, and its socket with a milter negotiation.

``collect_socket`` looks at the socket and negotiates (the facts);
``judge_socket`` turns them into findings and whether spfmilter runs.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spfmilter import config as cfg
from spfmilter.doctor.findings import OK, PROBLEM, Finding, Identity
from spfmilter.doctor.parsers import identity, mode
from spfmilter.doctor.probe import negotiate
from spfmilter.endpoint import Endpoint

START = "systemctl start spfmilter"


def check_config(path: str | None, conf: str) -> tuple[list[Finding], cfg.Settings | None]:
    """The configuration's findings, and the settings when it is valid."""
    out = []
    if path is None and not Path(cfg.DEFAULT_PATH).exists():
        out.append(Finding(OK, "config", f"no {cfg.DEFAULT_PATH}: spfmilter runs with built-in "
                           "defaults"))
    try:
        settings = cfg.load(path)
    except cfg.ConfigError as exc:
        out.append(Finding(PROBLEM, "config", f"{exc}" + ("; correct that line, then check it"
                                                          if exc.line is not None else ""),
                           f"spfmilter --check-config -c {shlex.quote(conf)}"))
        return out, None
    if path is not None or Path(cfg.DEFAULT_PATH).exists():
        out.append(Finding(OK, "config", f"{conf} is valid"))
    return out, settings


@dataclass(frozen=True)
class SocketFacts:
    """What is at spfmilter's socket and how it answers; ``None`` for what was not looked at."""

    spec: str                          # Socket = ..., as written
    endpoint: Endpoint
    file_mode: str | None = None       # a unix socket's type and permissions (stat.filemode)
    is_socket: bool = False
    folder_exists: bool = False
    modes: str | None = None           # socket and folder, as the report writes them
    identity: Identity | None = None
    negotiation: Mapping[str, Any] | None = None


def collect_socket(spec: str, ep: Endpoint) -> SocketFacts:
    if ep.kind != "unix":
        return SocketFacts(spec, ep, negotiation=negotiate(ep))
    folder = os.path.dirname(ep.path)
    try:
        st = os.lstat(ep.path)
    except FileNotFoundError:
        return SocketFacts(spec, ep, folder_exists=os.path.isdir(folder))
    if not stat.S_ISSOCK(st.st_mode):
        return SocketFacts(spec, ep, file_mode=stat.filemode(st.st_mode), folder_exists=True)
    fst = os.stat(folder)
    return SocketFacts(spec, ep, stat.filemode(st.st_mode), True, True,
                       f"{mode(st)}, in {folder} {mode(fst)}", identity(ep.path), negotiate(ep))


def judge_file(s: SocketFacts, conf: str) -> list[Finding]:
    """A unix socket's file: missing, not a socket, or there."""
    ep = s.endpoint
    if s.file_mode is None:
        where = (f"its folder {os.path.dirname(ep.path)} does not exist" if not s.folder_exists
                 else "nothing is there")
        return [Finding(PROBLEM, "socket", f"spfmilter is not running: Socket = {s.spec} in "
                        f"{conf}, but {where}", START)]
    if not s.is_socket:
        return [Finding(PROBLEM, "socket", f"{ep.path} is not a socket ({s.file_mode}); remove "
                        "it and restart spfmilter",
                        f"rm {shlex.quote(ep.path)} && systemctl restart spfmilter")]
    return [Finding(OK, "socket", f"{ep.path} is a socket, {s.modes}")]


def judge_negotiation(s: SocketFacts) -> Finding:
    result = s.negotiation or {}
    if not result.get("connected"):
        return Finding(PROBLEM, "milter", f"spfmilter is not running: connecting to {s.spec} "
                       f"failed ({result.get('error', '')})", START)
    if "version" not in result:
        return Finding(PROBLEM, "milter", f"{s.spec} accepts connections but does not "
                       f"negotiate the milter protocol ({result.get('error')}): is another "
                       "program listening there?", "systemctl restart spfmilter")
    return Finding(OK, "milter", f"spfmilter answers on {s.spec}: milter protocol version "
                   f"{result['version']} (actions 0x{result['actions']:x}, protocol 0x"
                   f"{result['protocol']:x}) in {result['ms']:.0f} ms")


def judge_socket(s: SocketFacts, conf: str) -> tuple[list[Finding], bool]:
    """The socket's findings, and whether spfmilter answers there."""
    out = judge_file(s, conf) if s.endpoint.kind == "unix" else []
    if s.negotiation is None:
        return out, False
    answer = judge_negotiation(s)
    return [*out, answer], answer.level == OK
