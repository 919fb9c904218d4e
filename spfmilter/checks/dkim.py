"""DKIM verification (RFC 6376) with dkimpy, its key lookups through spfmilter's resolver.

Why through our resolver: the key lookups then share the DNS cache, the
configured name servers and the message's time budget, and a DNS failure
is told apart from a missing key: dkimpy reports both as "did not verify",
but only a missing or broken key may end in a refusal; a DNS failure proves
nothing either way (the caller defers).

Hostile input is the normal case here (the messages verified are the ones
SPF would have refused): a malformed signature, an unknown algorithm, a key
that is not a key, a changed body -- each is a result, never an exception.

Why the limits below: a worker serves all its connections from one
interpreter, and a C call (a regular expression, a modular exponentiation)
keeps every other thread waiting until it returns.  dkimpy does its work in
such calls on whatever the sender chose: the key (an exponentiation with a
huge modulus and exponent), the signature header (a pattern that backtracks
quadratically on folding whitespace), the body (a pattern that backtracks
quadratically on a long run of blanks).  So the key is inspected before
dkimpy uses it, the signature header is bounded before dkimpy reads it, and
the body is canonicalized and hashed here, linearly and in small pieces;
dkimpy sees only the header section.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import dkim
import dkim.crypto
import dkim.util

from spfmilter.core.values import DKIMResult
from spfmilter.resolver import Resolver, TempFailure

#: More DKIM-Signature headers than this and none is verified: no message that
#: is simply forwarded carries so many, and each costs a key lookup and a hash.
MAX_SIGNATURES = 8

#: RSA key sizes verified (RFC 8301 §3.2: verifiers handle 1024 to 4096 bits and
#: must not accept less than 1024).  Larger keys are a permerror, not verified.
MIN_KEY_BITS, MAX_KEY_BITS = 1024, 4096

#: The largest RSA public exponent verified.  Keys are made with 65537 (or the
#: historical 3); a large exponent only makes verifying expensive.
MAX_EXPONENT = 65537

#: The header section dkimpy is given (it canonicalizes each field in one call).
MAX_HEADER_BYTES = 64 * 1024

#: One DKIM-Signature field: its size, its longest run of white space (dkimpy's
#: b= pattern backtracks quadratically on one) and its number of h= entries
#: (each distinct name is a scan of the header section).
MAX_SIGNATURE_BYTES = 8 * 1024
MAX_SIGNATURE_BLANKS = 64
MAX_SIGNED_FIELDS = 128

#: Key data (base64-decoded p=) larger than this is refused without parsing it
#: (dkimpy's ASN.1 parser is quadratic in it).
_MAX_KEY_DER = 8 * 1024

#: The body is canonicalized and hashed in pieces of this size, so no single
#: call keeps the worker's other connections waiting.
CHUNK = 16 * 1024

_quiet = logging.getLogger("spfmilter.dkimpy")  # dkimpy logs every bad signature as an error
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

_END_OF_HEADERS = re.compile(rb"(?:\A|\n)\r?\n")
_LONG_BLANKS = re.compile(rb"\s{%d}" % (MAX_SIGNATURE_BLANKS + 1))


class _KeyLookupFailed(Exception):
    """The key's DNS lookup failed (timeout, SERVFAIL): not one of dkimpy's exceptions,
    so it passes through dkimpy's verification to us."""


class _Refused(Exception):
    """The key or signature is not verified at all: the result to report, and why."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result, self.reason = result, reason


def _tag(value: bytes, name: bytes) -> str:
    """One tag of a DKIM-Signature value, leniently (for reporting and the d= filter)."""
    for part in value.split(b";"):
        key, sep, tag_value = part.partition(b"=")
        if sep and key.strip().lower() == name:
            return b"".join(tag_value.split()).decode("ascii", "replace").lower()
    return ""


def split_message(message: bytes) -> tuple[bytes, bytes] | None:
    """(header section with its blank line, body) as dkimpy would split them,
    None when the header section is larger than MAX_HEADER_BYTES."""
    m = _END_OF_HEADERS.search(message, 0, MAX_HEADER_BYTES + 4)
    if m is None:
        if len(message) > MAX_HEADER_BYTES:
            return None
        return message, b""
    return message[:m.end()], message[m.end():]


def key_problem(record: bytes, signature_bytes: int) -> _Refused | None:
    """Why an RSA key record must not be used, before dkimpy does any arithmetic
    with it; None for a key dkimpy may judge (Ed25519, or a broken record it
    reports itself)."""
    try:
        tags = dkim.util.parse_tag_value(record)
        if tags.get(b"k", b"rsa") != b"rsa" or not tags.get(b"p"):
            return None
        der = base64.b64decode(b"".join(tags[b"p"].split()))
    except (dkim.util.InvalidTagValueList, binascii.Error, ValueError):
        return None
    if len(der) > _MAX_KEY_DER:
        return _Refused("permerror", f"key too large: {len(der)} bytes of key data "
                                     f"(at most {MAX_KEY_BITS}-bit keys)")
    try:
        key = dkim.crypto.parse_public_key(der)
        modulus, exponent = int(key["modulus"]), int(key["publicExponent"])
    except Exception:  # dkimpy's parser raises whatever the data provokes
        return None
    bits = modulus.bit_length()
    if bits > MAX_KEY_BITS:
        return _Refused("permerror", f"key too large: {bits} bits (at most {MAX_KEY_BITS})")
    if bits < MIN_KEY_BITS:
        return _Refused("permerror", f"key too small: {bits} bits (at least {MIN_KEY_BITS})")
    if exponent > MAX_EXPONENT:
        return _Refused("permerror", f"key exponent of {exponent.bit_length()} bits "
                                     f"(at most {MAX_EXPONENT})")
    if exponent < 3:
        return _Refused("permerror", f"key exponent {exponent} (at least 3)")
    if signature_bytes > (bits + 7) // 8:
        return _Refused("fail", f"signature of {signature_bytes} bytes for a {bits}-bit key")
    return None


def signature_problem(value: bytes) -> _Refused | None:
    """Why a DKIM-Signature field is not given to dkimpy at all."""
    if len(value) > MAX_SIGNATURE_BYTES:
        return _Refused("permerror", f"DKIM-Signature field of {len(value)} bytes "
                                     f"(at most {MAX_SIGNATURE_BYTES})")
    if _LONG_BLANKS.search(value):
        return _Refused("permerror", "DKIM-Signature field with more than "
                                     f"{MAX_SIGNATURE_BLANKS} white space characters in a row")
    return None


def _normalized(body: bytes) -> Iterator[bytes]:
    """The body in pieces of about CHUNK bytes, every line ending CRLF as dkimpy
    makes it (a bare LF becomes CRLF); no piece ends between CR and LF."""
    carry = b""
    for pos in range(0, len(body), CHUNK):
        piece = carry + body[pos:pos + CHUNK]
        carry = b""
        if piece.endswith(b"\r") and pos + CHUNK < len(body):
            piece, carry = piece[:-1], b"\r"
        yield piece.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _compressed(piece: bytes) -> bytes:
    """Runs of SP and HTAB as one SP, and none before CRLF (RFC 6376 §3.4.4 a, b),
    in time linear in the piece (every step halves every run)."""
    piece = piece.replace(b"\t", b" ")
    while b"  " in piece:
        piece = piece.replace(b"  ", b" ")
    return piece.replace(b" \r\n", b"\r\n")


def _empty_lines_at_end(piece: bytes) -> int:
    """How many CRLFs end the (normalized) piece.  Every LF there follows a CR,
    so they are what follows the last CR that is not followed by LF."""
    tail = piece[len(piece.rstrip(b"\r\n")):]
    if not tail.endswith(b"\n"):
        return 0
    return (len(tail) - tail.rfind(b"\r\r") - 1) // 2 if b"\r\r" in tail else len(tail) // 2


def canonical_body(body: bytes, relaxed: bool) -> Iterator[bytes]:
    """The body canonicalized (RFC 6376 §3.4.3 simple, §3.4.4 relaxed) exactly as
    dkimpy does it, in pieces: trailing empty lines are held back until something
    follows them, a trailing blank until what follows it is known."""
    held = 0          # CRLFs not yet known to be followed by content
    blank = False     # a SP (of a run) whose fate depends on what follows
    content = False   # anything but empty lines so far
    for piece in _normalized(body):
        if relaxed:
            piece = _compressed((b" " if blank else b"") + piece)
            blank = piece.endswith(b" ")
            if blank:
                piece = piece[:-1]
        pairs = _empty_lines_at_end(piece)
        if len(piece) > 2 * pairs:
            if held:
                yield b"\r\n" * held
            yield piece[:len(piece) - 2 * pairs]
            content, held = True, 0
        held += pairs
    if relaxed:
        if blank:
            yield b"\r\n" * held + b" \r\n"
        elif content:
            yield b"\r\n"
    else:
        yield b"\r\n"


class _Body:
    """The message body, canonicalized once per algorithm for all its signatures."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._pieces: dict[bool, list[bytes]] = {}

    def pieces(self, relaxed: bool) -> list[bytes]:
        if relaxed not in self._pieces:
            self._pieces[relaxed] = list(canonical_body(self.body, relaxed))
        return self._pieces[relaxed]

    def check(self, sig: dict[bytes, bytes]) -> tuple[int, int] | None:
        """Compare the body with the signature's bh= (RFC 6376 §3.7), hashing at most
        l= bytes; (l=, canonical length) when l= leaves some of the body unsigned.
        Raises dkimpy's exceptions as its own body check would."""
        try:
            policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(
                sig.get(b"c", b"simple/simple"))
        except dkim.canonicalization.InvalidCanonicalizationPolicyError as exc:
            raise dkim.MessageFormatError(f"invalid c= value: {exc.args[0]!r}") from None
        pieces = self.pieces(policy.body_algorithm.name == b"relaxed")
        total = sum(map(len, pieces))
        left = int(sig[b"l"]) if b"l" in sig else total
        hasher = dkim.crypto.HASH_ALGORITHMS[sig[b"a"]]()
        for piece in pieces:
            if left <= 0:
                break
            hasher.update(piece[:left])
            left -= len(piece)
        try:
            wanted = base64.b64decode(b"".join(sig[b"bh"].split()))
        except (binascii.Error, ValueError) as exc:
            raise dkim.MessageFormatError(str(exc)) from None
        if hasher.digest() != wanted:
            raise dkim.ValidationError("body hash mismatch")
        signed = int(sig[b"l"]) if b"l" in sig else total
        return (signed, total) if signed < total else None


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
        parts = split_message(message)
        if parts is None:
            return [DKIMResult("permerror", "", "", f"header section larger than "
                                                    f"{MAX_HEADER_BYTES} bytes")]
        try:
            d = dkim.DKIM(parts[0], logger=_quiet, timeout=max(lookup_time, 0.1))
        except Exception as exc:
            return [DKIMResult("permerror", "", "", f"message not parseable: {exc}")]
        signatures = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
        if len(signatures) > MAX_SIGNATURES:
            return [DKIMResult("permerror", "", "",
                               f"{len(signatures)} DKIM-Signature headers (at most {MAX_SIGNATURES} "
                               "are verified)")]
        deadline = time.monotonic() + lookup_time
        body = _Body(parts[1])
        out = []
        for idx, value in enumerate(signatures):
            domain, selector = _tag(value, b"d"), _tag(value, b"s")
            if not domain or not wanted(domain):
                continue
            out.append(self._verify(d, body, idx, value, domain, selector, deadline))
        return out

    def _verify(self, d: Any, body: _Body, idx: int, value: bytes, domain: str, selector: str,
                deadline: float) -> DKIMResult:
        found: list[bool] = []
        signature_bytes = 0

        def txt(name: bytes, timeout: float = 5.0) -> bytes | None:
            left = deadline - time.monotonic()
            if left <= 0.001:
                raise _KeyLookupFailed("Lookup_Time exceeded")
            qname = name.decode("ascii", "replace").rstrip(".")
            try:
                records = self.resolver.records(qname, "TXT", left)
            except TempFailure as exc:
                raise _KeyLookupFailed(str(exc)) from None
            if not records:
                return None
            found.append(True)
            record = b"".join(records[0][1])
            problem = key_problem(record, signature_bytes)
            if problem is not None:
                raise problem
            return record

        try:
            problem = signature_problem(value)
            if problem is not None:
                raise problem
            prep = d.verify_headerprep(idx)
            if not prep:
                return DKIMResult("permerror", domain, selector, "no signature")
            sig, include_headers, headers = prep
            if len(include_headers) > MAX_SIGNED_FIELDS:
                raise _Refused("permerror", f"h= lists {len(include_headers)} fields "
                                            f"(at most {MAX_SIGNED_FIELDS})")
            signature_bytes = len(base64.b64decode(b"".join(sig[b"b"].split())))
            unsigned = body.check(sig)
            del sig[b"bh"]  # checked above: dkimpy verifies the header hash and signature only
            ok = d.verify_sig(sig, include_headers, headers[idx], txt)
        except _Refused as exc:
            return DKIMResult(exc.result, domain, selector, exc.reason)
        except _KeyLookupFailed as exc:
            return DKIMResult("temperror", domain, selector, f"key lookup failed: {exc}")
        except dkim.ValidationError as exc:  # e.g. the body changed after signing
            return DKIMResult("fail", domain, selector, str(exc)[:200])
        except dkim.DKIMException as exc:
            return DKIMResult("permerror", domain, selector, f"{type(exc).__name__}: {exc}"[:200])
        except Exception as exc:
            return DKIMResult("permerror", domain, selector, f"unverifiable: {type(exc).__name__}")
        if ok and unsigned is not None:
            return DKIMResult("policy", domain, selector,
                              f"l= covers {unsigned[0]} of {unsigned[1]} body bytes")
        if ok:
            return DKIMResult("pass", domain, selector)
        if not found:
            return DKIMResult("permerror", domain, selector, "no key published")
        return DKIMResult("fail", domain, selector, "signature does not verify")
