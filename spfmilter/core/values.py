"""The plain values that flow between front ends, checks and the decision.

Why frozen dataclasses and enums: a result or a verdict is computed once and
then read by several parties (the decision, the header renderer, the log
line, the metrics, a second recipient); none of them may change it for the
others.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

#: RFC 7208 §2.6 results, in the spelling the RFC and RFC 8601 use.
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")

Identity = Literal["helo", "mailfrom"]


class Action(enum.Enum):
    """What happens to a recipient (at RCPT) or to the message (at end of message)."""

    ACCEPT = "accept"
    REJECT = "reject"
    DEFER = "defer"


@dataclass(frozen=True)
class Facts:
    """What the MTA told us about one message: connection, HELO and envelope."""

    client_ip: str
    helo: str = ""
    sender: str = ""          # envelope sender without <>; "" is the null sender
    auth_user: str = ""       # {auth_authen}: set when the client authenticated
    queue_id: str = ""


@dataclass(frozen=True)
class SPFResult:
    """The outcome of one identity's evaluation."""

    identity: Identity
    result: str            # one of RESULTS
    sender: str            # the identity checked: user@domain, or postmaster@helo
    domain: str            # the domain whose record was evaluated
    explanation: str       # the checker's text: the domain's exp= for a fail when published
    exp_published: bool    # True when ``explanation`` came from the domain's exp=
    mechanism: str | None = None
    lookups: int = 0
    seconds: float = 0.0
    best_guess: str | None = None   # result of Best_Guess for a domain without a record
    void_lookups: int = 0
    note: str | None = None         # why nothing was evaluated (shown in both headers)
    # the term of a pass whose record authorizes every address (+all, ip4:0.0.0.0/0, ...):
    # set by the check; decision.reported says what such a pass is reported as
    authorizes_all: str | None = None


@dataclass(frozen=True)
class DKIMResult:
    """The outcome of verifying one DKIM-Signature header (RFC 6376)."""

    result: str            # pass, fail, policy, neutral, temperror or permerror (RFC 8601 §2.7.1)
    domain: str            # the signature's d=, lower case ("" when unreadable)
    selector: str          # its s=
    reason: str = ""       # why it did not pass, for the log


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: code, enhanced status and text."""

    code: str              # "550"
    status: str            # "5.7.23"
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


@dataclass(frozen=True)
class Refusal:
    """A refusal an SPF result causes, held until end of message for DKIM to rescue."""

    identity: Identity
    domain: str            # the refused identity's domain: MAIL FROM domain or HELO name
    reply: Reply           # exactly what the refusal at RCPT would have said
    reason: str            # "mailfrom fail", for the log line


@dataclass(frozen=True)
class Verdict:
    """A decision for one recipient (at RCPT) or for the whole message (at end of message)."""

    action: Action
    reason: str                 # why, for the log line
    reply: Reply | None = None  # set for REJECT and DEFER
    held: Refusal | None = None  # ACCEPT for now: refused at end of message unless rescued
