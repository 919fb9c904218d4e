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


def key_record(tag: str = "a") -> str:
    return f"v=DKIM1; k=rsa; p={keypair(tag=tag)[1]}"


def sign(message: bytes, domain: str, selector: str = "sel1", tag: str = "a",
         canonicalize: tuple[bytes, bytes] = (b"relaxed", b"relaxed")) -> bytes:
    """The message with a DKIM-Signature header of ``domain`` on top."""
    private, _ = keypair(tag=tag)
    header = dkim.sign(message, selector.encode(), domain.encode(), private,
                       canonicalize=canonicalize, include_headers=SIGNED)
    return header + message
