"""What every header spfmilter writes must satisfy, whatever the input (shared by the tests and
the fuzz targets).

* no raw line break: CR never, LF only as folding (followed by a space or tab, and the
  continuation line is not blank), no other control character than TAB;
* writable as UTF-8 (no lone surrogates), no line over RFC 5322's 998 characters;
* Authentication-Results parses with authres, names our authserv-id and only spf results;
* Received-SPF starts with a result and has exactly one receiver=, ours, outside quoted
  strings and comments;
* spfmilter recognises its own header as its own (so the next hop of ours removes forgeries).
"""

from __future__ import annotations

import re

import authres

from spfmilter.core.forged import claims_to_be_ours
from spfmilter.core.values import RESULTS

OUR_ID = "mx.test"
CONTROL_BUT_TAB = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Broken(AssertionError):
    """A header that breaks one of the invariants."""


def _shown(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 1200 else f"{text[:500]} ... {text[-500:]}"


def _require(ok: object, what: str, value: str) -> None:
    if not ok:
        raise Broken(f"{what}: {_shown(value)}")


def strip_comments_and_quotes(text: str) -> str:
    """RFC 5322 comments (nested, with quoted-pairs) and quoted-strings replaced by a space."""
    out, depth, i, quoted = [], 0, 0, False
    while i < len(text):
        c = text[i]
        if c == "\\" and (depth or quoted):
            i += 2
            continue
        if quoted:
            quoted = c != '"'
            if not quoted:
                out.append(" ")
        elif c == '"' and not depth:
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
            if not depth:
                out.append(" ")
        elif not depth:
            out.append(c)
        i += 1
    return "".join(out)


def unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]", " ", value)


def check_header(name: str, value: str, our_id: str = OUR_ID) -> None:
    """Raise Broken unless ``name: value`` is a well-formed header of ours."""
    _require(name in ("Received-SPF", "Authentication-Results"), "not one of our headers", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Broken(f"not writable as UTF-8: {_shown(value)}") from None
    _require("\r" not in value and "\0" not in value, "CR or NUL", value)
    for n, line in enumerate(value.split("\n")):
        _require(not CONTROL_BUT_TAB.search(line), "control character", value)
        if n:
            _require(line[:1] in (" ", "\t") and line.strip(), "raw line break", value)
        _require(len(line) + (len(name) + 2 if n == 0 else 0) <= 998, "line over 998", value)
    flat = unfold(value)
    if name == "Authentication-Results":
        try:
            parsed = authres.AuthenticationResultsHeader.parse_value(flat)
        except Exception as exc:
            raise Broken(f"authres cannot parse ({exc}): {_shown(flat)}") from None
        _require(parsed.authserv_id.lower() == our_id, "authserv-id", flat)
        _require(parsed.results and all(r.method == "spf" and r.result in RESULTS
                                         for r in parsed.results), "results", flat)
    else:
        _require(flat.split(" ", 1)[0] in RESULTS, "result first", flat)
        receivers = re.findall(r"(?:^|[;\s])receiver\s*=\s*([^\s;]*)",
                               strip_comments_and_quotes(flat), re.I)
        _require(receivers == [our_id], f"receiver= {receivers}", flat)
    _require(claims_to_be_ours(name, value, our_id), "our own header not recognised", value)
