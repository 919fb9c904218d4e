"""The decision: plain facts and SPF results in, accept / reject / defer out.

Nothing here talks to DNS, sockets or libmilter, so every policy rule can be
tested on plain values.  ``plan`` says which evaluations a transaction needs;
the glue runs them; ``decide`` turns the results into a verdict for one
recipient, with the headers the message gets when it is not refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spfmilter import headers
from spfmilter.config import HeaderType, HeloPolicy, MailFromPolicy, Settings
from spfmilter.spfcheck import SPFResult, parse_ip

ACCEPT, REJECT, DEFER = "accept", "reject", "defer"


@dataclass(frozen=True)
class Facts:
    """What the MTA told us about one transaction."""

    client_ip: str
    helo: str = ""
    sender: str = ""          # envelope sender without <>; "" is the null sender
    recipient: str = ""
    auth_user: str = ""       # {auth_authen}: set when the client authenticated
    queue_id: str = ""


@dataclass(frozen=True)
class Plan:
    """What to evaluate before deciding; ``skip`` set means evaluate nothing."""

    skip: str | None = None
    check_helo: bool = True
    check_mailfrom: bool = True
    whitelist_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """A verdict for one recipient and the headers for the message."""

    action: str                       # ACCEPT, REJECT or DEFER
    reason: str                       # why, for the log line
    code: str | None = None           # "550"
    status: str | None = None         # "5.7.23"
    text: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())


def _in_networks(ip: str, networks: tuple) -> bool:
    if not networks:
        return False
    addr = parse_ip(ip.split("%", 1)[0])
    if addr is None:
        return False
    return any(addr in net for net in networks if net.version == addr.version)


def plan(facts: Facts, settings: Settings) -> Plan:
    """Which SPF evaluations this transaction needs, or why it needs none."""
    if facts.auth_user:
        return Plan(skip="authenticated")
    if _in_networks(facts.client_ip, settings.skip_addresses):
        return Plan(skip="skip_addresses")
    if _in_networks(facts.client_ip, settings.internal_hosts):
        return Plan(skip="InternalHosts")
    if _in_networks(facts.client_ip, settings.whitelist):
        return Plan(skip="whitelist")
    return Plan(check_helo=settings.helo_reject is not HeloPolicy.NO_CHECK,
                check_mailfrom=settings.mail_from_reject is not MailFromPolicy.NO_CHECK,
                whitelist_domains=settings.domain_whitelist)


def recipient_exempt(recipient: str, settings: Settings) -> bool:
    """Exempt_Recipients: 'user@domain', 'user@' (any domain) or '@domain'."""
    rcpt = recipient.strip().strip("<>").lower()
    local, _, domain = rcpt.rpartition("@")
    for pattern in settings.exempt_recipients:
        plocal, _, pdomain = pattern.rpartition("@")
        if (not plocal or plocal == local) and (not pdomain or pdomain == domain):
            return True
    return False


_NOT_PASS = {"fail", "softfail", "neutral", "permerror"}
_REFUSING_RESULTS = {
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


def _verdict(res: SPFResult | None, policy: HeloPolicy | MailFromPolicy,
             settings: Settings) -> str | None:
    """REJECT/DEFER if this identity's result refuses mail under its policy."""
    if res is None:
        return None
    # Reject_Not_Pass_Domains: these domains promise to pass, whatever the general policy.
    if res.identity == "mailfrom" and res.domain.lower() in settings.reject_not_pass_domains \
            and res.result in _NOT_PASS | {"none"}:
        return REJECT
    if policy in (HeloPolicy.FALSE, HeloPolicy.NO_CHECK, MailFromPolicy.FALSE,
                  MailFromPolicy.NO_CHECK):
        return None
    if res.result in _REFUSING_RESULTS.get(policy, set()):
        return REJECT
    if res.result == "permerror" and settings.permerror_reject:
        return REJECT
    if res.result == "temperror" and settings.temperror_defer:
        return DEFER
    return None


def _explanation(res: SPFResult, ip: str) -> str:
    if res.exp_published or res.result in ("permerror", "temperror"):
        return res.explanation
    return f"{res.domain or 'the sender'} does not authorize {ip} to send mail"


def _reply(res: SPFResult, action: str, facts: Facts, settings: Settings) -> tuple[str, str, str]:
    if action == DEFER:
        code, status = "451", "4.7.24" if settings.enhanced_status_codes else "4.4.3"
    elif res.result == "permerror":
        code, status = "550", "5.7.24" if settings.enhanced_status_codes else "5.7.1"
    else:
        code, status = "550", "5.7.23" if settings.enhanced_status_codes else "5.7.1"
    exp = headers.clean(_explanation(res, facts.client_ip), 300)
    sender = headers.clean(res.sender)
    values = {
        "rejectdefer": "rejected" if action == REJECT else "deferred",
        "result": res.result,
        "identity": "HELO" if res.identity == "helo" else "MAIL FROM",
        "sender": sender,
        "domain": headers.clean(res.domain),
        "ip": headers.clean(facts.client_ip, 64),
        "helo": headers.clean(facts.helo),
        "exp": exp,
        "spf": f"SPF {res.result} - {exp}",
        "url": settings.reason_url.format("helo" if res.identity == "helo" else "mfrom", sender,
                                          headers.clean(facts.client_ip, 64), settings.authserv_id),
    }
    return code, status, headers.clean(settings.reason_message.format(**values), 450)


def message_headers(facts: Facts, helo: SPFResult | None, mailfrom: SPFResult | None,
                    settings: Settings) -> tuple[tuple[str, str], ...]:
    """Headers for a message that is not refused, top-down in the order they appear."""
    receiver = None if settings.hide_receiver else settings.authserv_id
    results = [r for r in (mailfrom, helo) if r is not None and r.mechanism != "not-checked"]
    out: list[tuple[str, str]] = []
    if settings.header_type in (HeaderType.AR, HeaderType.BOTH) and results:
        # mailfrom clause last: SpamAssassin reads only the last spf= of a field
        out.append((headers.AUTH_RESULTS, headers.authentication_results(
            settings.authserv_id, results[::-1], helo=facts.helo)))
    if settings.header_type in (HeaderType.SPF, HeaderType.BOTH):
        for res in results:
            out.append((headers.RECEIVED_SPF, headers.received_spf(
                res, client_ip=facts.client_ip, helo=facts.helo,
                envelope_from=facts.sender, receiver=receiver)))
    return tuple(out)


def decide(facts: Facts, helo: SPFResult | None, mailfrom: SPFResult | None,
           settings: Settings, *, skip: str | None = None,
           whitelisted_by: str | None = None) -> Decision:
    """The verdict for ``facts.recipient``.

    ``skip`` is ``plan().skip``; ``whitelisted_by`` names the Domain_Whitelist
    domain the client passed SPF for, if any.  HELO is judged before MAIL FROM
    (it is the earlier identity, RFC 7208 §2.3); a reject from either beats a
    defer from either.
    """
    if skip:
        return Decision(ACCEPT, f"skipped ({skip})")
    hdrs = message_headers(facts, helo, mailfrom, settings)
    settings = settings.for_recipient(facts.recipient)
    if whitelisted_by:
        return Decision(ACCEPT, f"whitelisted (Domain_Whitelist {whitelisted_by})", headers=hdrs)
    if helo is not None and helo.result == "pass" and \
            facts.helo.rstrip(".").lower() in settings.helo_whitelist:
        return Decision(ACCEPT, "whitelisted (HELO_Whitelist)", headers=hdrs)

    helo_policy = settings.helo_reject
    if helo_policy is HeloPolicy.NULL and facts.sender:
        helo_policy = HeloPolicy.FALSE
    candidates = [(_verdict(helo, helo_policy, settings), helo),
                  (_verdict(mailfrom, settings.mail_from_reject, settings), mailfrom)]
    for wanted in (REJECT, DEFER):
        for verdict, res in candidates:
            if verdict == wanted and res is not None:
                why = f"{res.identity} {res.result}"
                if recipient_exempt(facts.recipient, settings):
                    return Decision(ACCEPT, f"{why}, exempt recipient", headers=hdrs)
                if settings.test_only:
                    return Decision(ACCEPT, f"{why}, TestOnly: would {wanted}", headers=hdrs)
                code, status, text = _reply(res, wanted, facts, settings)
                return Decision(wanted, why, code, status, text, hdrs)
    result = mailfrom.result if mailfrom is not None else (helo.result if helo else "none")
    return Decision(ACCEPT, f"spf {result}", headers=hdrs)
