"""One connection and its messages: what to evaluate, in which order, within which budget.

Why a transaction object in the core: the order of the checks and the rules
that tie them together are policy, and every front end needs the same ones --

* HELO is evaluated once per connection and kept for its later messages
  (unless the client says HELO again with another name);
* the null sender's MAIL FROM identity is postmaster@HELO (RFC 7208 §2.4),
  which is exactly the HELO evaluation: it is reused, never looked up twice;
* each identity gets its own full Lookup_Time (each Domain_Whitelist domain
  its Whitelist_Lookup_Time, at most Lookup_Time), and the checker does not
  let one wait for another's slow DNS (``SPFChecker.each``): a HELO whose DNS
  never answers cannot spend MAIL FROM's budget (which would turn a forger's
  fail into temperror), and a message still waits about Lookup_Time for DNS
  at most -- within the MTA's milter timeouts;
* evaluation happens once per message, at its first recipient, and every
  recipient is then decided on the same results.

Two things move the decision to the end of the message, where the data that
can tell is available:

* DKIM_Rescue: a refusal an SPF result causes at RCPT is held; at end of
  message a DKIM signature of the refused identity's organizational domain
  rescues it, or it is refused then with exactly the reply it would have had;
* Trusted_Relays: when the client is a trusted relay, SPF is evaluated at end
  of headers for the host behind it (from the Received headers the relays
  wrote), and its refusals happen at end of message.

A message is accepted or refused as a whole at end of message, so all its
recipients must agree: the first accepted recipient sets the message's
course (held or not, and for which refusal; behind a relay: which recipient
policy applies), and a later recipient that would need another course is
deferred with ``452 4.5.3`` -- the sending MTA then delivers it in a
transaction of its own (RFC 5321 §4.5.3.1.10).  Nobody is refused or accepted
against their own policy, and nothing is dropped.

Front ends that never see the message (the policy service) give a policy
with DKIM_Rescue and Trusted_Relays off.  The front end supplies the checkers
(pyspf and dkimpy behind spfmilter's resolver) as callables, so this module
imports no DNS code.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from spfmilter.core import decision, headers, received
from spfmilter.core.addresses import domain_of, in_networks
from spfmilter.core.forged import ForgedHeaders
from spfmilter.core.policy import Policy
from spfmilter.core.values import Action, DKIMResult, Facts, Identity, Refusal, Reply, SPFResult, Verdict


class SPFChecker(Protocol):
    """Evaluates one identity (spfmilter.checks.spf.Checker is the real one)."""

    def __call__(self, identity: Identity, ip: str, sender: str, helo: str, *,
                 lookup_time: float, local_rules: str = "",
                 best_guess: str = "") -> SPFResult: ...

    def each(self, calls: Sequence[Callable[[], SPFResult]],
             domains: Sequence[str] = ()) -> list[SPFResult]:
        """The results of ``calls``, in order; none waits for another's slow DNS.
        ``domains``: the domain each call evaluates, whose record it asks for first
        (so a checker may ask for the later ones while the first is evaluated)."""
        ...


class DKIMChecker(Protocol):
    """Verifies a message's DKIM signatures (spfmilter.checks.dkim.Checker is the real one)."""

    def __call__(self, message: bytes, *, lookup_time: float,
                 wanted: Callable[[str], bool]) -> list[DKIMResult]: ...


_SPLIT = Reply("452", "4.5.3", "Recipients with another policy than the first: send this one "
                               "in a transaction of its own")


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

    def __init__(self, connection: Connection, policy: Policy, sender: str = "", *,
                 auth_user: str = "", queue_id: str = "") -> None:
        self.connection = connection
        self.policy = policy
        self.sender = sender
        self.auth_user = auth_user
        self.queue_id = queue_id
        self.plan: decision.Plan | None = None
        self.helo_result: SPFResult | None = None       # None: not checked
        self.mailfrom_result: SPFResult | None = None   # None: not checked
        self.whitelisted_by: str | None = None
        self.seconds = 0.0                               # time the evaluation took
        self.forged = ForgedHeaders(policy.authserv_id)
        self.recipients: list[str] = []                  # accepted so far
        self.held: Refusal | None = None                 # refused at end of message unless rescued
        self.dkim_results: tuple[DKIMResult, ...] = ()   # reported in Authentication-Results
        self._course: tuple[object, ...] | None = None   # what every recipient must share
        # Trusted_Relays: the client is a relay; SPF is for the host behind it
        self.via_relay = bool(policy.trusted_relays) and \
            in_networks(connection.client_ip, policy.trusted_relays)
        self.received: list[str] = []                    # Received values, top down (relays)
        self.hop: Facts | None = None                    # the host behind the relays
        self.no_hop: str | None = None                   # why there is none to check
        self._relay_verdict: Verdict | None = None
        self._facts: Facts | None = None

    @property
    def facts(self) -> Facts:
        """What the MTA said, as one value (the host behind a relay, once found); made
        again only when something it holds changed, as the plan, the decision, the
        headers and the log line each ask for it."""
        if self.hop is not None:
            return self.hop
        c = self.connection
        kept = self._facts
        if kept is None or kept.client_ip != c.client_ip or kept.helo != c.helo or \
                kept.sender != self.sender or kept.auth_user != self.auth_user or \
                kept.queue_id != self.queue_id:
            kept = self._facts = Facts(client_ip=c.client_ip, helo=c.helo, sender=self.sender,
                                       auth_user=self.auth_user, queue_id=self.queue_id)
        return kept

    @property
    def needs_body(self) -> bool:
        """Whether end of message needs the body (a held refusal to verify DKIM for)."""
        return self.held is not None

    @property
    def skipped(self) -> str | None:
        """Why nothing was checked (skip_addresses, authenticated, ...), if so."""
        return self.plan.skip if self.plan is not None else None

    def results(self) -> list[SPFResult]:
        """The identities that were evaluated, HELO first."""
        return [r for r in (self.helo_result, self.mailfrom_result) if r is not None]

    def evaluate(self, check: SPFChecker) -> None:
        """Run the plan (once per message; later calls do nothing).  Behind a trusted
        relay nothing is evaluated here: see end_of_headers."""
        if self.plan is not None or self.via_relay:
            return
        self._run(self.facts, check, self.connection)

    def _run(self, facts: Facts, check: SPFChecker, conn: Connection | None) -> None:
        """Evaluate for ``facts``; ``conn`` keeps the HELO result across messages."""
        s = self.policy
        self.plan = plan = decision.plan(facts, s)
        if plan.skip:
            return
        started = time.monotonic()

        def run(identity: Identity, sender: str, limit: float = s.lookup_time,
                local: bool = True) -> Callable[[], SPFResult]:
            return lambda: check(identity, facts.client_ip, sender, facts.helo,
                                 lookup_time=limit,
                                 local_rules=s.local_rules if local else "",
                                 best_guess=s.best_guess if local and identity == "mailfrom"
                                 else "")

        helo_known = conn.helo_result if conn is not None else None
        want_helo = plan.check_helo and bool(facts.helo)  # no HELO at all: nothing to report
        # the null sender's MAIL FROM identity is postmaster@HELO: the HELO evaluation itself
        reuse_helo = plan.check_mailfrom and not self.sender and (want_helo or
                                                                  helo_known is not None)
        calls: list[tuple[tuple[str, str], Callable[[], SPFResult]]] = []
        domains: list[str] = []
        if (want_helo or reuse_helo) and helo_known is None:
            calls.append((("id", "helo"), run("helo", "")))
            domains.append(facts.helo)
        if plan.check_mailfrom and not reuse_helo:
            calls.append((("id", "mailfrom"), run("mailfrom", self.sender)))
            domains.append(domain_of(self.sender) if self.sender else facts.helo)
        for domain in plan.whitelist_domains:   # never longer than the message waits anyway
            calls.append((("whitelist", domain), run("mailfrom", f"postmaster@{domain}",
                                                     min(s.whitelist_lookup_time, s.lookup_time),
                                                     local=False)))
            domains.append(domain)
        results = dict(zip([name for name, _ in calls],
                           check.each([call for _, call in calls], domains), strict=True))
        helo = results.get(("id", "helo"), helo_known)
        if conn is not None and helo is not None:
            conn.helo_result = helo
        if want_helo:
            self.helo_result = helo
        if reuse_helo and helo is not None:
            self.mailfrom_result = dataclasses.replace(helo, identity="mailfrom")
        elif plan.check_mailfrom:
            self.mailfrom_result = results.get(("id", "mailfrom"))
        self.whitelisted_by = next((d for d in plan.whitelist_domains
                                    if results[("whitelist", d)].result == "pass"), None)
        self.seconds = time.monotonic() - started

    def _decide(self, recipient: str) -> Verdict:
        assert self.plan is not None, "evaluate() first"
        return decision.decide(self.facts, recipient, self.helo_result, self.mailfrom_result,
                               self.policy, skip=self.plan.skip,
                               whitelisted_by=self.whitelisted_by)

    def rcpt(self, recipient: str) -> Verdict:
        """The verdict for one recipient (after ``evaluate``)."""
        if self.via_relay:  # verdicts come at end of headers: recipients must share a policy
            course: tuple[object, ...] = ("relay", self.policy.section_for(recipient),
                                          self.policy.exempt(recipient))
            verdict = Verdict(Action.ACCEPT, "trusted relay: SPF at end of headers")
        else:
            verdict = self._decide(recipient)
            if verdict.action is not Action.ACCEPT:
                return verdict
            held = verdict.held
            course = ("held", held.identity, held.reply) if held else ("plain",)
        if self._course is None:
            self._course = course
            self.held = verdict.held
        elif course != self._course:
            return Verdict(Action.DEFER, "recipient policy differs from the message's first "
                                         "recipient", _SPLIT)
        self.recipients.append(recipient)
        return verdict

    def header(self, name: str, value: str) -> None:
        """One header of the message as it arrives."""
        self.forged.saw(name, value)
        if self.via_relay and len(self.received) < received.MAX_HOPS and \
                name.lower() == "received":
            self.received.append(value[:received.MAX_LEN + 1])

    def end_of_headers(self, check: SPFChecker) -> bool:
        """Behind a trusted relay: evaluate for the host behind it.  True when this
        evaluated something (the front end counts it then)."""
        if not self.via_relay or self.plan is not None:
            return False
        relay = self.connection.client_ip
        first = self.recipients[0] if self.recipients else ""
        found = received.client_behind(self.received, self.policy.trusted_relays,
                                       (self.sender, *self.recipients))
        if isinstance(found, received.Unreadable) and found.local:
            # mail the relay originated itself: the relay is the client, as without
            # Trusted_Relays (a relay writes this form only for its own submissions)
            found = received.Hop(relay, self.connection.helo)
        if isinstance(found, received.Unreadable):
            self.no_hop = f"trusted relay {relay}: {found.reason}"
            self.plan = decision.Plan()
            self.mailfrom_result = SPFResult("mailfrom", "none", self.sender,
                                             self.sender.rpartition("@")[2], self.no_hop, False,
                                             note=self.no_hop)
            self._relay_verdict = decision.unreadable_hop(self.no_hop, first, self.policy)
            return False
        self.hop = Facts(client_ip=found.client_ip, helo=found.helo, sender=self.sender,
                         auth_user=self.auth_user, queue_id=self.queue_id)
        self._run(self.hop, check, None)
        self._relay_verdict = verdict = self._decide(first)
        self.held = verdict.held
        return True

    def end_of_message(self, dkim: DKIMChecker, org_domain: Callable[[str], str],
                       message: bytes | None) -> Verdict | None:
        """The message's verdict when end of message decides it (a held refusal, a
        relayed message), else None (the RCPT verdicts stand).  ``message`` is the
        whole message as received, None when it was larger than DKIM_Max_Bytes."""
        held = self.held
        if held is None:
            return self._relay_verdict
        if message is None:
            return decision.too_large(held, self.policy.dkim_max_bytes)
        org = org_domain(held.domain)
        signatures = dkim(message, lookup_time=self.policy.lookup_time,
                          wanted=lambda d: org_domain(d) == org)
        verdict, self.dkim_results = decision.rescue(held, signatures, org_domain, self.policy)
        return verdict

    def result_headers(self) -> tuple[tuple[str, str], ...]:
        """The headers to add at the top of the message (none when nothing was checked)."""
        if self.plan is None or self.plan.skip:
            return ()
        return headers.result_headers(self.facts, self.helo_result, self.mailfrom_result,
                                      self.policy, self.dkim_results)
