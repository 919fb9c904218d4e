"""Result headers: Received-SPF by RFC 7208 §9.1, Authentication-Results by RFC 8601.

Everything a client sent (HELO, envelope sender, addresses) is hostile input
here: it passes through ``clean`` (no CR, LF, NUL or other control character
survives, and lengths are bounded) and is then written as a dot-atom only when
it is one, else as a quoted-string, so a sender cannot end our header early,
add a header of its own, or smuggle a second ``receiver=`` or ``spf=`` clause.

Headers are rendered from the results as they stand at end of message, not
fixed when the first recipient is accepted: a result known only then (a DKIM
verification) is reported in the same Authentication-Results field.

Authentication-Results is written here, with the standard library, in the form
the ``authres`` package writes (``_ar_value``, ``_ar_clause``; the unit tests
compare them with authres over generated input, and parse every value with
it): the core imports nothing outside it and the standard library.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from spfmilter.core.addresses import domain_of, is_domain
from spfmilter.core.policy import HeaderType, Policy
from spfmilter.core.values import DKIMResult, Facts, SPFResult

RECEIVED_SPF = "Received-SPF"
AUTH_RESULTS = "Authentication-Results"
MAX_VALUE = 255  # RFC 5321 §4.5.3.1.3: a path is at most 256 octets
MAX_LINE = 998   # RFC 5322 §2.1.1

_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"^{_ATEXT}+(\.{_ATEXT}+)*$")


def clean(text: str | None, limit: int = MAX_VALUE) -> str:
    """Make client-supplied text safe for one header line.

    Control characters (CR, LF, NUL, TAB, …) and undecodable bytes (lone
    surrogates from pymilter's decoding) become ``?``; text beyond ``limit``
    characters is cut and marked with ``...``.
    """
    if not text:
        return ""
    if not (text.isascii() and text.isprintable()):  # printable ASCII has nothing to replace
        text = _CONTROL.sub("?", text)
    if len(text) > limit:
        text = text[:limit] + "..."
    return text


def quote(value: str) -> str:
    """A §9.1 key-value value: dot-atom when it is one, else a quoted-string."""
    if _DOT_ATOM.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_COMMENT_SPECIALS = re.compile(r"([()\\])")


def comment(text: str) -> str:
    """Escape text for use inside an RFC 5322 comment."""
    if "(" not in text and ")" not in text and "\\" not in text:
        return text
    return _COMMENT_SPECIALS.sub(r"\\\1", text)


_DESCRIBED = {
    "pass": "domain of {who} designates {ip} as permitted sender",
    "fail": "domain of {who} does not designate {ip} as permitted sender",
    "softfail": "transitioning domain of {who} does not designate {ip} as permitted sender",
    "neutral": "{ip} is neither permitted nor denied by domain of {who}",
    "none": "domain of {who} does not designate permitted sender hosts",
    "permerror": "permanent error in processing during lookup of {who}: {why}",
    "temperror": "temporary error in processing during lookup of {who}: {why}",
}


def _describe(res: SPFResult, ip: str) -> str:
    if res.note:
        return f"{res.note}; not checked"
    who = res.sender or "the sender"
    if res.result == "pass" and (res.mechanism or "").startswith("local:"):
        return f"{ip} is permitted for {who} by local policy (Local_Rules)"
    text = _DESCRIBED[res.result].format(who=who, ip=ip, why=res.explanation)
    if res.authorizes_all and res.result in ("pass", "neutral"):  # see decision.reported
        return f"{text}; its record authorizes every address: {res.authorizes_all}"
    return text


def _pair(key: str, value: str) -> str:
    """``key=value;`` with the value cleaned, then a dot-atom when it is one, else quoted."""
    value = clean(value)
    return f"{key}={value if _DOT_ATOM.match(value) else quote(value)};"


_F = TypeVar("_F", bound=Callable[..., str])
_KEPT_MAX = 255   # a domain name is at most 253 characters


def _kept(function: _F) -> _F:
    """``function``, a pure function of its arguments, with its results kept (the same
    HELO names, domains and mechanisms come back message after message), 4,096 at most,
    least recently used out first; for text longer than a domain name it is called
    afresh, so a client's long strings never fill the memory the results take."""
    cached = functools.lru_cache(maxsize=4096)(function)

    @functools.wraps(function)
    def kept(*args: Any) -> str:
        for arg in args:
            if type(arg) is str and len(arg) > _KEPT_MAX:
                return function(*args)
        return cached(*args)
    kept.cache_info = cached.cache_info   # type: ignore[attr-defined]
    return kept  # type: ignore[return-value]


_kept_pair = _kept(_pair)


def received_spf(res: SPFResult, *, client_ip: str, helo: str, envelope_from: str,
                 receiver: str | None) -> str:
    """The Received-SPF value (without the field name) for one identity."""
    ip = clean(client_ip, 64)
    described = _describe(res, ip)
    if receiver:
        described = f"{receiver}: {described}"
    if res.best_guess:
        described += f"; best guess record gives {res.best_guess}"
    # escaping may double it: 450 characters stay within one 998-character line
    items = [f"{res.result} ({comment(clean(described, 450))})", _pair("client-ip", ip)]
    if res.identity == "mailfrom":
        items.append(_pair("envelope-from", envelope_from or res.sender))
    if helo:
        items.append(_kept_pair("helo", helo))
    if receiver:
        items.append(_kept_pair("receiver", receiver))
    if res.mechanism:
        items.append(_kept_pair("mechanism", res.mechanism))
    if res.result in ("permerror", "temperror"):
        items.append(_pair("problem", res.explanation))
    items.append(f"identity={quote(res.identity)}")
    line = " ".join(items)
    if len(RECEIVED_SPF) + 2 + len(line) <= MAX_LINE:
        return line
    # RFC 5322 §2.1.1: fold between key=value pairs (LF + TAB, as libmilter expects);
    # every piece is bounded by ``clean``, so each fits on a line of its own.
    return "\n\t".join(items)


def _ascii_domain(domain: str) -> str | None:
    """The A-label form of a domain (RFC 8601 values are ASCII), or None if it is not one."""
    if domain.isascii():
        return domain if is_domain(domain) else None
    try:
        ace = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return ace if is_domain(ace) else None


def _ascii(text: str) -> str:
    return "".join(ch if ch.isascii() else "?" for ch in text)


@_kept
def _pvalue_domain(name: str) -> str:
    """An RFC 8601 pvalue for a domain: its ASCII (A-label) form, or a quoted-string.

    ``smtp.mailfrom`` carries the domain of the MAIL FROM identity, as in RFC 7208
    §9.2's example: OpenDMARC 1.4 takes a trusted SPF result only in that form.
    """
    value = clean(name)
    if value.endswith(".") and not value.endswith("..") and len(value) > 1:
        value = value[:-1]  # an absolute name; the pvalue grammar has no trailing dot
    ace = _ascii_domain(value)
    return ace if ace is not None else _quote_at(_ascii(value))


def _mailfrom_pvalue(sender: str) -> str:
    """The sender's domain; a sender without one is shown whole, and none as <>."""
    domain = domain_of(sender)
    if domain:
        return _pvalue_domain(domain)
    return _quote_at(_ascii(clean(sender))) if sender else "<>"


def _quote_at(value: str) -> str:
    """A pvalue ``_ar_value`` writes correctly: it writes any value containing '@'
    verbatim (a local-part@domain) and quotes other non-tokens itself, so quote only
    the former."""
    return quote(value) if "@" in value else value


_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`{|}~-]+$")   # RFC 2045 token, matched as authres does
_QUOTED_SPECIALS = re.compile(r'(["\\])')


def _ar_value(value: str) -> str:
    """An RFC 8601 value as authres writes it: verbatim when it contains '@' or is a
    token, else a quoted-string."""
    if "@" in value or _TOKEN.match(value):
        return value
    return '"' + _QUOTED_SPECIALS.sub(r"\\\1", value) + '"'


def _ar_clause(method: str, result: str, comment: str | None,
               properties: Sequence[tuple[str, str | None]]) -> str:
    """One resinfo as authres writes it: ``method=result (comment) ptype.property=value``;
    properties without a value are left out."""
    text = f"{method.lower()}={result.lower()}"
    if comment:
        text += f" ({comment})"
    return text + "".join(f" {name}={_ar_value(value)}" for name, value in properties if value)


def _comment_text(text: str) -> str:
    """Text for an RFC 8601 comment: clean, and no parenthesis to unbalance it."""
    return clean(text, 200).replace("(", "[").replace(")", "]").replace("\\", "/")


def _clause(res: SPFResult | DKIMResult, helo: str) -> str:
    if isinstance(res, DKIMResult):
        return _ar_clause("dkim", res.result, None, [
            ("header.d", _pvalue_domain(res.domain)),
            ("header.s", _quote_at(_ascii(clean(res.selector, 63))))])
    if res.identity == "mailfrom":
        # what the clause shows of the sender is its domain (the whole address only
        # when it has none): senders of one domain share one clause
        domain = domain_of(res.sender)
        return _spf_clause("mailfrom", res.result, res.authorizes_all, res.best_guess,
                           res.note, domain or res.sender, bool(domain))
    return _spf_clause("helo", res.result, res.authorizes_all, None, None, helo, True)


@_kept
def _spf_clause(identity: str, result: str, authorizes_all: str | None, best_guess: str | None,
                note: str | None, name: str, is_domain: bool) -> str:
    everything = (f"record authorizes every address: {authorizes_all}"
                  if authorizes_all and result in ("pass", "neutral") else None)
    if identity == "mailfrom":
        comment = f"best guess record gives {best_guess}" if best_guess else note
        comment = everything or comment
        pvalue = _pvalue_domain(name) if is_domain else _mailfrom_pvalue(name)
        return _ar_clause("spf", result, _comment_text(comment) if comment else None,
                          [("smtp.mailfrom", pvalue)])
    return _ar_clause("spf", result, _comment_text(everything) if everything else None,
                      [("smtp.helo", _pvalue_domain(name))])


def authentication_results(authserv_id: str, results: Sequence[SPFResult | DKIMResult], *,
                           helo: str) -> str:
    """The Authentication-Results value (without the field name), one clause per
    result in the order given (``none`` when there is none, as RFC 8601 writes it)."""
    clauses = [_clause(r, helo) for r in results] or ["none"]
    return authserv_id.lower() + "".join(f"; {c}" for c in clauses)


def result_headers(facts: Facts, helo: SPFResult | None, mailfrom: SPFResult | None,
                   policy: Policy, dkim: Sequence[DKIMResult] = ()) -> tuple[tuple[str, str], ...]:
    """The headers a message gets, top-down in the order they appear.

    ``helo`` and ``mailfrom`` are None for an identity that was not checked.
    In Authentication-Results the DKIM clauses come first and the MAIL FROM
    clause last: SpamAssassin reads only the last ``spf=`` of a field.
    """
    receiver = None if policy.hide_receiver else policy.authserv_id
    spf = [r for r in (mailfrom, helo) if r is not None]
    out: list[tuple[str, str]] = []
    if policy.header_type in (HeaderType.AR, HeaderType.BOTH) and (spf or dkim):
        out.append((AUTH_RESULTS, authentication_results(
            policy.authserv_id, [*dkim, *spf[::-1]], helo=facts.helo)))
    if policy.header_type in (HeaderType.SPF, HeaderType.BOTH):
        for res in spf:
            out.append((RECEIVED_SPF, received_spf(
                res, client_ip=facts.client_ip, helo=facts.helo,
                envelope_from=facts.sender, receiver=receiver)))
    return tuple(out)
