"""The policy: what a decision reads, as one frozen value the core owns.

Why here and not in the configuration: the core's rules are written in these
words (a HELO policy, a recipient section, an exempt recipient), so the core
defines them and the configuration parses a file into them -- the core never
looks up at an adapter, and the settings only a daemon needs (sockets, user,
pid file, workers) never reach it.  ``spfmilter.config`` builds a ``Policy``
from the file; tests and front ends that need another one use
``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
from dataclasses import dataclass, field

from spfmilter.core.addresses import IPNetwork, recipient_matches


class HeloPolicy(enum.Enum):
    """When a HELO result refuses mail (policyd-spf's HELO_reject values)."""

    FAIL = "Fail"
    SOFTFAIL = "Softfail"
    NEUTRAL = "Neutral"    # fail, softfail or neutral (qmail spfbehavior 5)
    SPF_NOT_PASS = "SPF_Not_Pass"
    STRICT = "Strict"      # anything but pass (qmail spfbehavior 6); temperror per TempError_Defer
    NULL = "Null"          # refuse a HELO fail only for the null sender (SPF classic)
    FALSE = "False"        # never refuse, header only
    NO_CHECK = "No_Check"  # do not evaluate HELO at all


class MailFromPolicy(enum.Enum):
    """When a MAIL FROM result refuses mail (policyd-spf's Mail_From_reject values)."""

    FAIL = "Fail"
    SOFTFAIL = "Softfail"
    NEUTRAL = "Neutral"
    SPF_NOT_PASS = "SPF_Not_Pass"
    STRICT = "Strict"
    FALSE = "False"
    NO_CHECK = "No_Check"


class PassAllPolicy(enum.Enum):
    """What a pass from a record that authorizes every address (``+all``) is reported as."""

    NEUTRAL = "neutral"    # what it is: the domain designates no host at all
    PASS = "pass"          # what the record says (pyspf's and RFC 7208's reading)


class HeaderType(enum.Enum):
    """Which result headers spfmilter adds."""

    SPF = "SPF"
    AR = "AR"
    BOTH = "both"
    NONE = "None"


class UnreadableHop(enum.Enum):
    """Trusted_Relays_Unreadable: what a relay's Received header that names no client
    gives (the header may have been made unreadable on purpose, so never a pass)."""

    DEFER = "Defer"
    REJECT = "Reject"
    ACCEPT = "Accept"    # labelled spf=none, "not checked"


DEFAULT_REASON = "Message {rejectdefer} due to SPF {result} for {identity} {sender}: {exp}"
DEFAULT_URL = "https://www.open-spf.org/Why?s={0};id={1};ip={2};r={3}"
#: The placeholders ``decision.reply`` fills in Reason_Message.
REASON_FIELDS = frozenset(
    {"rejectdefer", "result", "identity", "sender", "domain", "ip", "helo", "exp", "spf", "url"})


def gethostname() -> str:
    """This host's name (what socket.gethostname gives, without importing sockets)."""
    return os.uname().nodename


@dataclass(frozen=True)
class RecipientPolicy:
    """A ``[recipient PATTERN]`` section: stricter or laxer handling for some recipients."""

    pattern: str                      # user@domain, user@ or @domain (lower case)
    changes: tuple[tuple[str, object], ...]   # (Policy field, value): what the section sets
    line: int = 0


@dataclass(frozen=True)
class Policy:
    """Everything the core and the checks decide with, and nothing else."""

    # what is evaluated, and within which budget
    skip_addresses: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    internal_hosts: tuple[IPNetwork, ...] = ()
    whitelist: tuple[IPNetwork, ...] = ()
    domain_whitelist: tuple[str, ...] = ()
    lookup_time: float = 20.0
    whitelist_lookup_time: float = 10.0
    void_limit: int = 2
    local_rules: str = ""
    best_guess: str = ""
    pass_all_records: PassAllPolicy = PassAllPolicy.NEUTRAL
    trusted_relays: tuple[IPNetwork, ...] = ()
    trusted_relays_unreadable: UnreadableHop = UnreadableHop.DEFER
    dkim_rescue: bool = False
    dkim_max_bytes: int = 4 * 1024 * 1024
    # what refuses mail, and for whom
    helo_reject: HeloPolicy = HeloPolicy.FAIL
    mail_from_reject: MailFromPolicy = MailFromPolicy.FAIL
    permerror_reject: bool = False
    temperror_defer: bool = False
    never_refuse: bool = False        # TestOnly = 0: report what would be refused, refuse nothing
    helo_whitelist: tuple[str, ...] = ()
    exempt_recipients: tuple[str, ...] = ()
    reject_not_pass_domains: tuple[str, ...] = ()
    recipient_policies: tuple[RecipientPolicy, ...] = ()
    # how a refusal and the headers are written
    enhanced_status_codes: bool = True
    reason_message: str = DEFAULT_REASON
    reason_url: str = DEFAULT_URL
    header_type: HeaderType = HeaderType.BOTH
    authserv_id: str = field(default_factory=gethostname)
    hide_receiver: bool = False

    def section_for(self, recipient: str) -> int | None:
        """Which ``[recipient ...]`` section applies to this recipient (the first that
        matches), None for none."""
        for index, section in enumerate(self.recipient_policies):
            if recipient_matches(recipient, section.pattern):
                return index
        return None

    def for_recipient(self, recipient: str) -> Policy:
        """This policy as it applies to one recipient (the first matching section)."""
        index = self.section_for(recipient)
        if index is None:
            return self
        changes = dict(self.recipient_policies[index].changes)
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def exempt(self, recipient: str) -> bool:
        """Exempt_Recipients: this recipient is never refused."""
        return any(recipient_matches(recipient, p) for p in self.exempt_recipients)


#: The fields of :class:`Policy`: what the configuration hands to the core.
POLICY_FIELDS = frozenset(f.name for f in dataclasses.fields(Policy))
