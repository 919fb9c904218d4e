"""Forged verdicts: incoming headers that claim to carry our own results (RFC 8601 §5).

Why here and not in the milter: every front end that sees a message's
headers must remove the same ones, and what counts as "claims to be ours"
is a matter of the header grammars, not of a protocol.  A header is ours
when an Authentication-Results field names our authserv-id, or when a
Received-SPF field names our receiver anywhere outside comments and
quoted strings.
"""

from __future__ import annotations

import re

from spfmilter.core.headers import AUTH_RESULTS, RECEIVED_SPF

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
        assert m is not None  # the last alternative matches any one character
        if m.group(1) and m.group(1).lower() == "receiver":
            raw = m.group(2)
            if raw.startswith('"'):
                raw = re.sub(r'\\(.)', r'\1', raw[1:].rstrip('"'))
            out.append(raw.strip().rstrip(".").lower())
        i = m.end()
    return out


def claims_to_be_ours(name: str, value: str, authserv_id: str) -> bool:
    """True for an incoming header a sender may have forged to look like our verdict."""
    ours = authserv_id.lower().rstrip(".")
    if name.lower() == AUTH_RESULTS.lower():
        return ar_authserv_id(value) == ours
    if name.lower() == RECEIVED_SPF.lower():
        return ours in received_spf_receivers(value)
    return False


class ForgedHeaders:
    """Counts the result headers of one message as they arrive and remembers which
    occurrences claim to be ours, so they can be removed at end of message."""

    _NAMES = (AUTH_RESULTS.lower(), RECEIVED_SPF.lower())

    def __init__(self, authserv_id: str) -> None:
        self.authserv_id = authserv_id
        self._counts: dict[str, int] = {}
        self.found: list[tuple[str, int]] = []   # (field name as sent, 1-based occurrence)

    def saw(self, name: str, value: str) -> None:
        key = name.lower()
        if key not in self._NAMES:
            return
        index = self._counts.get(key, 0) + 1
        self._counts[key] = index
        if claims_to_be_ours(name, value, self.authserv_id):
            self.found.append((name, index))

    def removals(self) -> list[tuple[str, int]]:
        """What to delete, highest occurrence first (so earlier indexes stay valid)."""
        return sorted(self.found, key=lambda f: -f[1])
