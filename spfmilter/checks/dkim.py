"""DKIM verification (RFC 6376) with dkimpy, its key lookups through spfmilter's resolver.

Why through our resolver: the key lookups then share the DNS cache, the
configured name servers and the message's time budget, and a DNS failure
is told apart from a missing key: dkimpy reports both as "did not verify",
but only a missing or broken key may end in a refusal; a DNS failure proves
nothing either way (the caller defers).

Hostile input is the normal case here (the messages verified are the ones
SPF would have refused): a malformed signature, an unknown algorithm, a key
that is not a key, a changed body -- each is a result, never an exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import dkim

from spfmilter.core.values import DKIMResult
from spfmilter.resolver import Resolver, TempFailure

#: More DKIM-Signature headers than this and none is verified: no message that
#: is simply forwarded carries so many, and each costs a key lookup and a hash.
MAX_SIGNATURES = 8

_quiet = logging.getLogger("spfmilter.dkimpy")  # dkimpy logs every bad signature as an error
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


class _KeyLookupFailed(Exception):
    """The key's DNS lookup failed (timeout, SERVFAIL): not one of dkimpy's exceptions,
    so it passes through dkimpy's verification to us."""


def _tag(value: bytes, name: bytes) -> str:
    """One tag of a DKIM-Signature value, leniently (for reporting and the d= filter)."""
    for part in value.split(b";"):
        key, sep, tag_value = part.partition(b"=")
        if sep and key.strip().lower() == name:
            return b"".join(tag_value.split()).decode("ascii", "replace").lower()
    return ""


class Checker:
    """Verifies a message's signatures; key lookups through one Resolver."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    def __call__(self, message: bytes, *, lookup_time: float,
                 wanted: Callable[[str], bool]) -> list[DKIMResult]:
        """The results of the signatures whose d= ``wanted`` accepts, in header order.

        ``lookup_time`` bounds all key lookups together.  Signatures of other
        domains are not verified (they cannot change what the caller decides).
        """
        try:
            d = dkim.DKIM(message, logger=_quiet, timeout=max(lookup_time, 0.1))
        except Exception as exc:
            return [DKIMResult("permerror", "", "", f"message not parseable: {exc}")]
        signatures = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
        if len(signatures) > MAX_SIGNATURES:
            return [DKIMResult("permerror", "", "",
                               f"{len(signatures)} DKIM-Signature headers (at most {MAX_SIGNATURES} "
                               "are verified)")]
        deadline = time.monotonic() + lookup_time
        out = []
        for idx, value in enumerate(signatures):
            domain, selector = _tag(value, b"d"), _tag(value, b"s")
            if not domain or not wanted(domain):
                continue
            out.append(self._verify(d, idx, domain, selector, deadline))
        return out

    def _verify(self, d: Any, idx: int, domain: str, selector: str,
                deadline: float) -> DKIMResult:
        found: list[bool] = []

        def txt(name: bytes, timeout: float = 5.0) -> bytes | None:
            left = deadline - time.monotonic()
            if left <= 0.001:
                raise _KeyLookupFailed("Lookup_Time exceeded")
            qname = name.decode("ascii", "replace").rstrip(".")
            try:
                records = self.resolver.spf_lookup(qname, "TXT", left)
            except TempFailure as exc:
                raise _KeyLookupFailed(str(exc)) from None
            if not records:
                return None
            found.append(True)
            return b"".join(records[0][1])

        try:
            ok = d.verify(idx, dnsfunc=txt)
        except _KeyLookupFailed as exc:
            return DKIMResult("temperror", domain, selector, f"key lookup failed: {exc}")
        except dkim.ValidationError as exc:  # e.g. the body changed after signing
            return DKIMResult("fail", domain, selector, str(exc)[:200])
        except dkim.DKIMException as exc:
            return DKIMResult("permerror", domain, selector, f"{type(exc).__name__}: {exc}"[:200])
        except Exception as exc:
            return DKIMResult("permerror", domain, selector, f"unverifiable: {type(exc).__name__}")
        if ok:
            return DKIMResult("pass", domain, selector)
        if not found:
            return DKIMResult("permerror", domain, selector, "no key published")
        return DKIMResult("fail", domain, selector, "signature does not verify")
