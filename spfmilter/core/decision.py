"""The decision: facts and check results in, a verdict for one recipient out.

Pure functions of plain values, so every policy rule is tested on plain
values.  ``plan`` says which evaluations a message needs (or why it needs
none); the transaction runs them; ``decide`` turns the results into the
verdict for one recipient, under that recipient's policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spfmilter.core import headers
from spfmilter.core.addresses import ascii_address, ascii_domain, escape_non_ascii, in_networks
from spfmilter.core.policy import HeloPolicy, MailFromPolicy, PassAllPolicy, Policy, UnreadableHop
from spfmilter.core.values import Action, DKIMResult, Facts, Refusal, Reply, SPFResult, Verdict

#: Why an identity is reported as none, unchecked, when the MTA gave no client IP address
#: (a unix-socket or unknown-family connection, Postfix's ``client_address=unknown``):
#: SPF needs one (RFC 7208 §4.1).  The configured policy then applies to that none.
NO_CLIENT_ADDRESS = "the MTA reported no client IP address"


def reported(res: SPFResult, policy: PassAllPolicy) -> SPFResult:
    """The result as spfmilter reports and decides it (Pass_All_Records).

    A pass from a record that authorizes every address designates no host: such
    records are published so that forged mail passes SPF, and with it DMARC
    (BreakSPF, NDSS 2024).  Under ``neutral`` that pass is what it amounts to,
    neutral; ``authorizes_all`` stays set, so headers and log say why."""
    if res.result != "pass" or not res.authorizes_all or policy is PassAllPolicy.PASS:
        return res
    return dataclasses.replace(res, result="neutral", explanation=all_addresses_reason(res))


def all_addresses_reason(res: SPFResult) -> str:
    """Why a pass is reported as neutral, in the words of both headers and the reply."""
    return f"its record authorizes every address ({res.authorizes_all})"


@dataclass(frozen=True)
class Plan:
    """What to evaluate before deciding; ``skip`` set means evaluate nothing."""

    skip: str | None = None
    check_helo: bool = True
    check_mailfrom: bool = True
    whitelist_domains: tuple[str, ...] = ()


def plan(facts: Facts, policy: Policy) -> Plan:
    """Which SPF evaluations this message needs, or why it needs none."""
    if facts.auth_user:
        return Plan(skip="authenticated")
    for reason, networks in (("skip_addresses", policy.skip_addresses),
                             ("InternalHosts", policy.internal_hosts),
                             ("whitelist", policy.whitelist)):
        if networks and in_networks(facts.client_ip, networks):
            return Plan(skip=reason)
    return Plan(check_helo=policy.helo_reject is not HeloPolicy.NO_CHECK,
                check_mailfrom=policy.mail_from_reject is not MailFromPolicy.NO_CHECK,
                whitelist_domains=policy.domain_whitelist)


_NOT_PASS = {"fail", "softfail", "neutral", "permerror"}
_REFUSING_RESULTS: dict[HeloPolicy | MailFromPolicy, set[str]] = {
    HeloPolicy.FAIL: {"fail"},
    HeloPolicy.NULL: {"fail"},
    HeloPolicy.SOFTFAIL: {"fail", "softfail"},
    HeloPolicy.NEUTRAL: {"fail", "softfail", "neutral"},
    HeloPolicy.SPF_NOT_PASS: _NOT_PASS,
    HeloPolicy.STRICT: _NOT_PASS | {"none"},
    MailFromPolicy.FAIL: {"fail"},
    MailFromPolicy.SOFTFAIL: {"fail", "softfail"},
    MailFromPolicy.NEUTRAL: {"fail", "softfail", "neutral"},
    MailFromPolicy.SPF_NOT_PASS: _NOT_PASS,
    MailFromPolicy.STRICT: _NOT_PASS | {"none"},
}
_NEVER = (HeloPolicy.FALSE, HeloPolicy.NO_CHECK, MailFromPolicy.FALSE, MailFromPolicy.NO_CHECK)


def _refuses(res: SPFResult | None, rule: HeloPolicy | MailFromPolicy,
             policy: Policy) -> Action | None:
    """REJECT or DEFER if this identity's result refuses mail under its rule."""
    if res is None:
        return None
    # Reject_Not_Pass_Domains: these domains promise to pass, whatever the general policy.
    if res.identity == "mailfrom" and res.domain.lower() in policy.reject_not_pass_domains \
            and res.result in _NOT_PASS | {"none"}:
        return Action.REJECT
    if rule in _NEVER:
        return None
    if res.result in _REFUSING_RESULTS.get(rule, set()):
        return Action.REJECT
    if res.result == "permerror" and policy.permerror_reject:
        return Action.REJECT
    if res.result == "temperror" and policy.temperror_defer:
        return Action.DEFER
    return None


def _explanation(res: SPFResult, ip: str) -> str:
    if res.exp_published or res.result in ("permerror", "temperror"):
        return res.explanation
    if res.authorizes_all and res.result == "neutral":
        return f"{ascii_domain(res.domain) or 'the sender'}: {all_addresses_reason(res)}"
    return f"{ascii_domain(res.domain) or 'the sender'} does not authorize {ip} to send mail"


def defer_status(policy: Policy) -> tuple[str, str]:
    """The code and status of a defer for a DNS problem (RFC 7372 §3.3)."""
    return "451", "4.7.24" if policy.enhanced_status_codes else "4.4.3"


def reply(res: SPFResult, action: Action, facts: Facts, policy: Policy) -> Reply:
    """The SMTP reply refusing (or deferring) mail for ``res``: code, status and
    the Reason_Message text with the domain's own explanation."""
    if action is Action.DEFER:
        code, status = defer_status(policy)
    elif res.result == "permerror":
        code, status = "550", "5.7.24" if policy.enhanced_status_codes else "5.7.1"
    else:
        code, status = "550", "5.7.23" if policy.enhanced_status_codes else "5.7.1"
    # A reply is ASCII, SMTPUTF8 or not (the MTA sends it as given): domains in A-labels,
    # any other non-ASCII character as \x{HEX}; the sender stays recognisable.
    exp = escape_non_ascii(headers.clean(_explanation(res, facts.client_ip), 300))
    sender = ascii_address(headers.clean(res.sender))
    ip = headers.clean(facts.client_ip, 64)
    kind = "helo" if res.identity == "helo" else "mfrom"
    values = {
        "rejectdefer": "rejected" if action is Action.REJECT else "deferred",
        "result": res.result,
        "identity": "HELO" if res.identity == "helo" else "MAIL FROM",
        "sender": sender,
        "domain": ascii_domain(headers.clean(res.domain)),
        "ip": ip,
        "helo": ascii_domain(headers.clean(facts.helo)),
        "exp": exp,
        "spf": f"SPF {res.result} - {exp}",
        "url": policy.reason_url.format(kind, sender, ip, policy.authserv_id),
    }
    text = escape_non_ascii(policy.reason_message.format(**values))
    return Reply(code, status, headers.clean(text, 450))


def decide(facts: Facts, recipient: str, helo: SPFResult | None, mailfrom: SPFResult | None,
           policy: Policy, *, skip: str | None = None,
           whitelisted_by: str | None = None) -> Verdict:
    """The verdict for ``recipient``, under the policy that applies to it.

    ``skip`` is ``plan().skip``; ``whitelisted_by`` names the Domain_Whitelist
    domain the client passed SPF for, if any.  HELO is judged before MAIL FROM
    (it is the earlier identity, RFC 7208 §2.3); a reject from either beats a
    defer from either.
    """
    if skip:
        return Verdict(Action.ACCEPT, f"skipped ({skip})")
    policy = policy.for_recipient(recipient)
    if whitelisted_by:
        return Verdict(Action.ACCEPT, f"whitelisted (Domain_Whitelist {whitelisted_by})")
    if helo is not None and helo.result == "pass" and \
            facts.helo.rstrip(".").lower() in policy.helo_whitelist:
        return Verdict(Action.ACCEPT, "whitelisted (HELO_Whitelist)")

    helo_policy: HeloPolicy = policy.helo_reject
    if helo_policy is HeloPolicy.NULL and facts.sender:
        helo_policy = HeloPolicy.FALSE
    candidates = [(_refuses(helo, helo_policy, policy), helo),
                  (_refuses(mailfrom, policy.mail_from_reject, policy), mailfrom)]
    refusals = [(a, r) for a, r in candidates if a is not None and r is not None]
    for wanted in (Action.REJECT, Action.DEFER):
        for action, res in refusals:
            if action is not wanted:
                continue
            why = f"{res.identity} {res.result}"
            if policy.exempt(recipient):
                return Verdict(Action.ACCEPT, f"{why}, exempt recipient")
            if policy.never_refuse:
                return Verdict(Action.ACCEPT, f"{why}, TestOnly: would {wanted.value}")
            refused = reply(res, wanted, facts, policy)
            if wanted is Action.REJECT and policy.dkim_rescue:
                deferred = next((r for a, r in refusals if a is Action.DEFER), None)
                if deferred is not None:  # what would rescue is unknown until that is known
                    return Verdict(Action.DEFER, f"{deferred.identity} {deferred.result}",
                                   reply(deferred, Action.DEFER, facts, policy))
                domain = facts.helo if res.identity == "helo" else res.domain
                return Verdict(Action.ACCEPT, f"{why}, held for DKIM_Rescue",
                               held=Refusal(res.identity, domain, refused, why))
            return Verdict(wanted, why, refused)
    main = mailfrom or helo
    return Verdict(Action.ACCEPT, f"spf {main.result if main else 'none'}")


def rescue(held: Refusal, signatures: Sequence[DKIMResult], org_domain: Callable[[str], str],
           policy: Policy) -> tuple[Verdict, tuple[DKIMResult, ...]]:
    """End of message for a held refusal: accepted when a signature of the refused
    identity's organizational domain verifies (RFC 7489 §3.2 relaxed alignment);
    deferred when one such signature could not be checked for a DNS error; refused
    as at RCPT otherwise.  Returns the verdict and the DKIM results to report."""
    org = org_domain(held.domain)
    aligned = [s for s in signatures if s.domain and org_domain(s.domain) == org]
    passed = [s for s in aligned if s.result == "pass"]
    if passed:
        return (Verdict(Action.ACCEPT, f"{held.reason} rescued by DKIM d={passed[0].domain}"),
                (passed[0],))
    if any(s.result == "temperror" for s in aligned):
        code, status = defer_status(policy)
        domain = ascii_domain(headers.clean(held.domain))
        text = headers.clean(f"Message deferred: the DKIM key of {domain} could not be "
                             "looked up (DNS error); try again later", 450)
        return Verdict(Action.DEFER, f"{held.reason}, DKIM key lookup failed",
                       Reply(code, status, text)), ()
    why = next((s.reason for s in aligned if s.reason), "no aligned DKIM signature")
    return Verdict(Action.REJECT, f"{held.reason}, not rescued: {why}", held.reply), ()


def too_large(held: Refusal, limit: int) -> Verdict:
    """A held message larger than DKIM_Max_Bytes: not verified, refused as at RCPT."""
    return Verdict(Action.REJECT, f"{held.reason}, not rescued: message larger than "
                                  f"DKIM_Max_Bytes ({limit})", held.reply)


def unreadable_hop(why: str, recipient: str, policy: Policy) -> Verdict:
    """A trusted relay's Received header that names no client: Trusted_Relays_Unreadable
    says what that gives; it is never a pass, since a sender who can make the
    header unreadable must not gain by it.  Exempt recipients and TestOnly apply."""
    policy = policy.for_recipient(recipient)
    mode = policy.trusted_relays_unreadable
    if mode is UnreadableHop.ACCEPT:
        return Verdict(Action.ACCEPT, f"not checked: {why}")
    action = Action.DEFER if mode is UnreadableHop.DEFER else Action.REJECT
    if policy.exempt(recipient):
        return Verdict(Action.ACCEPT, f"{why}, exempt recipient")
    if policy.never_refuse:
        return Verdict(Action.ACCEPT, f"{why}, TestOnly: would {action.value}")
    if action is Action.DEFER:
        code, status = defer_status(policy)
    else:
        code, status = "550", "5.7.24" if policy.enhanced_status_codes else "5.7.1"
    text = headers.clean(f"Message {'deferred' if action is Action.DEFER else 'rejected'}: "
                         f"SPF could not be checked ({why})", 450)
    return Verdict(action, why, Reply(code, status, text))
