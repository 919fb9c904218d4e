"""Real DKIM signatures for tests: RSA keys made with openssl, messages signed by dkimpy,
the public keys published as zone data for the tests' DNS server."""

from __future__ import annotations

import base64
import functools
import subprocess

import dkim

SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]


@functools.lru_cache(maxsize=8)
def keypair(bits: int = 2048, tag: str = "a") -> tuple[bytes, str]:
    """(private key PEM, public key base64 for p=); ``tag`` makes distinct keys."""
    private = subprocess.run(["openssl", "genrsa", str(bits)], capture_output=True, check=True,
                             timeout=60).stdout
    der = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=private,
                         capture_output=True, check=True, timeout=60).stdout
    return private, base64.b64encode(der).decode()


def key_record(tag: str = "a", bits: int = 2048) -> str:
    return f"v=DKIM1; k=rsa; p={keypair(bits, tag)[1]}"


def sign(message: bytes, domain: str, selector: str = "sel1", tag: str = "a",
         canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed"), *,
         bits: int = 2048, length: bool = False) -> bytes:
    """The message with a DKIM-Signature header of ``domain`` on top (``length``:
    with an l= tag covering the body as it is now)."""
    private, _ = keypair(bits, tag)
    header = dkim.sign(message, selector.encode(), domain.encode(), private,
                       canonicalize=canonicalize, include_headers=SIGNED, length=length)
    return header + message


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    size = bytes([n]) if n < 0x80 else \
        bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + size + content


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def public_key_record(modulus: int, exponent: int) -> str:
    """A key record for any RSA public numbers, as an attacker may publish one
    (SubjectPublicKeyInfo, RFC 6376 §3.6.1): no private key is needed for a key
    that is meant to be refused."""
    rsa_encryption = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + _der(0x05, b""))
    key = _der(0x30, _der_int(modulus) + _der_int(exponent))
    spki = _der(0x30, rsa_encryption + _der(0x03, b"\0" + key))
    return f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"


def odd_number(bits: int, seed: int) -> int:
    """An odd number of exactly ``bits`` bits (a modulus or exponent that only needs its size)."""
    import random
    return random.Random(seed).getrandbits(bits) | (1 << (bits - 1)) | 1
