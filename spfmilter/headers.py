"""Result headers: Received-SPF by RFC 7208 §9.1, Authentication-Results by RFC 8601.

Everything a client sent (HELO, envelope sender, addresses) is hostile input
here: it passes through ``clean`` (no CR, LF, NUL or other control character
survives, and lengths are bounded) and is then written as a dot-atom only when
it is one, else as a quoted-string, so a sender cannot end our header early,
add a header of its own, or smuggle a second ``receiver=`` or ``spf=`` clause.
"""

from __future__ import annotations

import re

import authres

from spfmilter.spfcheck import SPFResult

RECEIVED_SPF = "Received-SPF"
AUTH_RESULTS = "Authentication-Results"
MAX_VALUE = 255  # RFC 5321 §4.5.3.1.3: a path is at most 256 octets
MAX_LINE = 998   # RFC 5322 §2.1.1

_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"^{_ATEXT}+(\.{_ATEXT}+)*$")
_DOMAIN = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$")


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
    return _COMMENT_SPECIALS.sub(r"\\\1", text)


def _describe(res: SPFResult, ip: str) -> str:
    who = res.sender or "the sender"
    if res.result == "pass" and (res.mechanism or "").startswith("local:"):
        return f"{ip} is permitted for {who} by local policy (Local_Rules)"
    texts = {
        "pass": f"domain of {who} designates {ip} as permitted sender",
        "fail": f"domain of {who} does not designate {ip} as permitted sender",
        "softfail": f"transitioning domain of {who} does not designate {ip} as permitted sender",
        "neutral": f"{ip} is neither permitted nor denied by domain of {who}",
        "none": f"domain of {who} does not designate permitted sender hosts",
        "permerror": f"permanent error in processing during lookup of {who}: {res.explanation}",
        "temperror": f"temporary error in processing during lookup of {who}: {res.explanation}",
    }
    return texts[res.result]


def received_spf(res: SPFResult, *, client_ip: str, helo: str, envelope_from: str,
                 receiver: str | None) -> str:
    """The Received-SPF value (without the field name) for one identity."""
    ip = clean(client_ip, 64)
    prefix = f"{receiver}: " if receiver else ""
    described = _describe(res, ip)
    if res.best_guess:
        described += f"; best guess record gives {res.best_guess}"
    # escaping may double it: 450 characters stay within one 998-character line
    text = comment(clean(prefix + described, 450))
    pairs = [("client-ip", ip)]
    if res.identity == "mailfrom":
        pairs.append(("envelope-from", clean(envelope_from or res.sender)))
    if helo:
        pairs.append(("helo", clean(helo)))
    if receiver:
        pairs.append(("receiver", receiver))
    if res.mechanism and res.mechanism != "not-checked":
        pairs.append(("mechanism", clean(res.mechanism)))
    if res.result in ("permerror", "temperror"):
        pairs.append(("problem", clean(res.explanation)))
    pairs.append(("identity", res.identity))
    items = [f"{res.result} ({text})"] + [f"{k}={quote(v)};" for k, v in pairs]
    items[-1] = items[-1].rstrip(";")
    line = " ".join(items)
    if len(RECEIVED_SPF) + 2 + len(line) <= MAX_LINE:
        return line
    # RFC 5322 §2.1.1: fold between key=value pairs (LF + TAB, as libmilter expects);
    # every piece is bounded by ``clean``, so each fits on a line of its own.
    return "\n\t".join(items)


def _ascii_domain(domain: str) -> str | None:
    """The A-label form of a domain (RFC 8601 values are ASCII), or None if it is not one."""
    if domain.isascii():
        return domain if _DOMAIN.match(domain) else None
    try:
        ace = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    return ace if _DOMAIN.match(ace) else None


def _ascii(text: str) -> str:
    return "".join(ch if ch.isascii() else "?" for ch in text)


def _pvalue_domain(name: str) -> str:
    """An RFC 8601 pvalue for a domain: its ASCII (A-label) form, or a quoted-string.

    ``smtp.mailfrom`` carries the domain of the MAIL FROM identity, as in RFC 7208
    §9.2's example: OpenDMARC 1.4 takes a trusted SPF result only in that form.
    """
    value = clean(name)
    if value.endswith(".") and not value.endswith(".."):
        value = value[:-1]  # an absolute name; the pvalue grammar has no trailing dot
    ace = _ascii_domain(value)
    return ace if ace is not None else _for_authres(_ascii(value))


def _mailfrom_pvalue(sender: str) -> str:
    """The sender's domain; a sender without one is shown whole, and none as <>."""
    domain = sender.rpartition("@")[2]
    if domain:
        return _pvalue_domain(domain)
    return _for_authres(_ascii(clean(sender))) if sender else "<>"


def _for_authres(value: str) -> str:
    """A pvalue authres writes correctly: authres writes any value containing '@'
    verbatim and quotes other non-tokens itself, so quote only the former."""
    return quote(value) if "@" in value else value


def authentication_results(authserv_id: str, results: list[SPFResult], *,
                           helo: str) -> str:
    """The Authentication-Results value (without the field name), built by authres."""
    clauses = []
    for res in results:
        if res.identity == "mailfrom":
            clause = authres.SPFAuthenticationResult(
                result=res.result, smtp_mailfrom=_mailfrom_pvalue(res.sender),
                result_comment=f"best guess record gives {res.best_guess}" if res.best_guess else None)
        else:
            clause = authres.SPFAuthenticationResult(
                result=res.result, smtp_helo=_pvalue_domain(helo))
        clauses.append(clause)
    header = authres.AuthenticationResultsHeader(
        authserv_id=authserv_id, results=clauses)
    return header.header_value()


# --- recognising headers that claim to be ours (RFC 8601 §5) -----------------

_UNFOLD = re.compile(r"\r?\n[ \t]*")


def _unfold(value: str) -> str:
    """Unfold and drop comments (nested to any depth, with quoted-pairs), keeping
    quoted-strings intact: what is left is what a parser reads as the value."""
    value = _UNFOLD.sub(" ", value)
    out: list[str] = []
    depth, quoted, i = 0, False, 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and (depth or quoted):
            if not depth:
                out.append(value[i:i + 2])
            i += 2
            continue
        if quoted:
            quoted = ch != '"'
            out.append(ch)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
            if not depth:
                out.append(" ")
        elif not depth:
            quoted = ch == '"'
            out.append(ch)
        i += 1
    return "".join(out)


def ar_authserv_id(value: str) -> str:
    """The authserv-id an Authentication-Results value claims, lower case."""
    text = _unfold(value).strip()
    m = re.match(r'^"((?:[^"\\]|\\.)*)"|^([^\s;]+)', text)
    if not m:
        return ""
    ident = m.group(1) if m.group(1) is not None else m.group(2)
    return ident.replace("\\", "").strip().rstrip(".").lower()


_RSPF_TOKEN = re.compile(
    r'\s+|;|"(?:[^"\\]|\\.)*"?'
    r'|([A-Za-z][A-Za-z0-9_.-]*)\s*=\s*("(?:[^"\\]|\\.)*"?|[^\s;()"]*)'
    r'|[^\s;()"]+|.', re.S)


def received_spf_receivers(value: str) -> list[str]:
    """Every top-level receiver= of a Received-SPF value (outside comments and
    quoted-strings), lower case, in order."""
    text = _UNFOLD.sub(" ", value)
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == "(":                      # a comment, maybe nested
            depth = 0
            while i < n:
                c = text[i]
                if c == "\\":
                    i += 2
                    continue
                depth += (c == "(") - (c == ")")
                i += 1
                if depth == 0:
                    break
            continue
        m = _RSPF_TOKEN.match(text, i)
        if m.group(1) and m.group(1).lower() == "receiver":
            raw = m.group(2)
            if raw.startswith('"'):
                raw = re.sub(r'\\(.)', r'\1', raw[1:].rstrip('"'))
            out.append(raw.strip().rstrip(".").lower())
        i = m.end()
    return out


def received_spf_receiver(value: str) -> str:
    """The (first) receiver= a Received-SPF value names, lower case ('' when none)."""
    found = received_spf_receivers(value)
    return found[0] if found else ""


def claims_to_be_ours(name: str, value: str, authserv_id: str) -> bool:
    """True for an incoming header a sender may have forged to look like our verdict."""
    ours = authserv_id.lower().rstrip(".")
    if name.lower() == AUTH_RESULTS.lower():
        return ar_authserv_id(value) == ours
    if name.lower() == RECEIVED_SPF.lower():
        return ours in received_spf_receivers(value)
    return False
