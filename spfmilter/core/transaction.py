"""One connection and its messages: what to evaluate, in which order, within which budget.

Why a transaction object in the core: the order of the checks and the rules
that tie them together are policy, and every front end needs the same ones --

* HELO is evaluated once per connection and kept for its later messages
  (unless the client says HELO again with another name);
* the null sender's MAIL FROM identity is postmaster@HELO (RFC 7208 §2.4),
  which is exactly the HELO evaluation: it is reused, never looked up twice;
* all of a message's checks (HELO, MAIL FROM, Domain_Whitelist) share one
  Lookup_Time budget, so a message never waits longer than that for DNS;
* evaluation happens once per message, at its first recipient, and every
  recipient is then decided on the same results.

The front end supplies the checker (pyspf behind spfmilter's resolver) as a
callable, so this module imports no DNS code.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

from spfmilter.config import Settings
from spfmilter.core import decision, headers
from spfmilter.core.forged import ForgedHeaders
from spfmilter.core.values import Facts, Identity, SPFResult, Verdict


class SPFChecker(Protocol):
    """Evaluates one identity (spfmilter.checks.spf.Checker is the real one)."""

    def __call__(self, identity: Identity, ip: str, sender: str, helo: str, *,
                 lookup_time: float, local_rules: str = "",
                 best_guess: str = "") -> SPFResult: ...


class Connection:
    """One SMTP connection: the client, its HELO name and that name's result."""

    def __init__(self, client_ip: str = "") -> None:
        self.client_ip = client_ip
        self.helo = ""
        self.helo_result: SPFResult | None = None  # kept for the connection's later messages

    def hello(self, name: str) -> None:
        if name != self.helo:
            self.helo_result = None
        self.helo = name or ""


class Transaction:
    """One message: its envelope, its evaluation and the verdicts that follow."""

    def __init__(self, connection: Connection, settings: Settings, sender: str = "", *,
                 auth_user: str = "", queue_id: str = "") -> None:
        self.connection = connection
        self.settings = settings
        self.sender = sender
        self.auth_user = auth_user
        self.queue_id = queue_id
        self.plan: decision.Plan | None = None
        self.helo_result: SPFResult | None = None       # None: not checked
        self.mailfrom_result: SPFResult | None = None   # None: not checked
        self.whitelisted_by: str | None = None
        self.seconds = 0.0                               # time the evaluation took
        self.forged = ForgedHeaders(settings.authserv_id)

    @property
    def facts(self) -> Facts:
        c = self.connection
        return Facts(client_ip=c.client_ip, helo=c.helo, sender=self.sender,
                     auth_user=self.auth_user, queue_id=self.queue_id)

    @property
    def skipped(self) -> str | None:
        """Why nothing was checked (skip_addresses, authenticated, ...), if so."""
        return self.plan.skip if self.plan is not None else None

    def results(self) -> list[SPFResult]:
        """The identities that were evaluated, HELO first."""
        return [r for r in (self.helo_result, self.mailfrom_result) if r is not None]

    def evaluate(self, check: SPFChecker) -> None:
        """Run the plan (once per message; later calls do nothing)."""
        if self.plan is not None:
            return
        facts, s, conn = self.facts, self.settings, self.connection
        self.plan = plan = decision.plan(facts, s)
        if plan.skip:
            return
        started = time.monotonic()
        deadline = started + s.lookup_time

        def run(identity: Identity, sender: str, limit: float = s.lookup_time,
                local: bool = True) -> SPFResult:
            return check(identity, facts.client_ip, sender, facts.helo,
                         lookup_time=min(limit, deadline - time.monotonic()),
                         local_rules=s.local_rules if local else "",
                         best_guess=s.best_guess if local and identity == "mailfrom" else "")

        if plan.check_helo and conn.helo:  # no HELO at all: nothing to check or report
            if conn.helo_result is None:
                conn.helo_result = run("helo", "")
            self.helo_result = conn.helo_result
        if plan.check_mailfrom:
            if not self.sender and self.helo_result is not None:
                self.mailfrom_result = dataclasses.replace(self.helo_result, identity="mailfrom")
            else:
                self.mailfrom_result = run("mailfrom", self.sender)
        for domain in plan.whitelist_domains:
            if run("mailfrom", f"postmaster@{domain}", s.whitelist_lookup_time,
                   local=False).result == "pass":
                self.whitelisted_by = domain
                break
        self.seconds = time.monotonic() - started

    def rcpt(self, recipient: str) -> Verdict:
        """The verdict for one recipient (after ``evaluate``)."""
        assert self.plan is not None, "evaluate() first"
        return decision.decide(self.facts, recipient, self.helo_result, self.mailfrom_result,
                               self.settings, skip=self.plan.skip,
                               whitelisted_by=self.whitelisted_by)

    def header(self, name: str, value: str) -> None:
        """One header of the message as it arrives."""
        self.forged.saw(name, value)

    def result_headers(self) -> tuple[tuple[str, str], ...]:
        """The headers to add at the top of the message (none when nothing was checked)."""
        if self.plan is None or self.plan.skip:
            return ()
        return headers.result_headers(self.facts, self.helo_result, self.mailfrom_result,
                                      self.settings)
