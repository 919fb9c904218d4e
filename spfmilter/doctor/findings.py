"""What every doctor rule speaks in: a finding's level, the finding, and spfmilter's own facts.

The rules are pure (facts in, findings out), so what they need to know about
spfmilter itself is read once, after the configuration and socket checks,
into one frozen ``Ours`` instead of a shared object earlier checks fill in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from spfmilter.endpoint import Endpoint

Identity = tuple[int, int, str]   # a socket's folder (device, inode) and its name


class Level(StrEnum):
    """A finding's level, written as the report has always written it (its value)."""

    OK = "ok"
    NOTE = "note"
    WARNING = "warning"
    PROBLEM = "problem"


OK, NOTE, WARNING, PROBLEM = Level.OK, Level.NOTE, Level.WARNING, Level.PROBLEM


@dataclass(frozen=True)
class Finding:
    """One line of the report; ``fix`` is a command to run, when there is one."""

    level: Level
    area: str
    message: str
    fix: str | None = None

    def __post_init__(self) -> None:  # a level spelt as the report writes it is one too
        object.__setattr__(self, "level", Level(self.level))

    def line(self) -> str:
        return f"{self.level.value}: {self.message}" + (f"; run: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Ours:
    """spfmilter as the MTA rules see it: its configuration file, its socket, whether it runs."""

    conf: str                      # the configuration file, as the report names it
    socket: str                    # Socket = ..., as written in it
    endpoint: Endpoint             # where to connect
    identity: Identity | None      # the socket's, when the socket check found one
    folder_identity: Identity | None  # from its folder alone (a socket not there yet)
    running: bool | None
    lookup_time: float
