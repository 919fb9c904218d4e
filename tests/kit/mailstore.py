"""Delivered messages and mail stores for the replay tests: the headers a receiving MTA
and its delivery agent add, in the forms Postfix, Sendmail, Exim and Exchange write,
and mbox (plain, gzip'd), Maildir and .eml stores holding them."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

RECEIVER = "mx.test"
DATE = "Sat, 5 Dec 2026 05:00:00 +0000"


def _literal(ip: str) -> str:
    return f"IPv6:{ip}" if ":" in ip else ip


def postfix(ip: str, helo: str, by: str = RECEIVER, rdns: str = "unknown",
            protocol: str = "ESMTPS", rcpt: str = "") -> str:
    return (f"from {helo} ({rdns} [{_literal(ip)}])\r\n\t(using TLSv1.3 with cipher "
            f"TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\t(No client certificate requested)\r\n"
            f"\tby {by} (Postfix) with {protocol} id 4QxYz1abcd" + (f"\r\n\tfor <{rcpt}>" if rcpt else "")
            + f"; {DATE}")


def sendmail(ip: str, helo: str, by: str = RECEIVER, rdns: str = "rdns.example") -> str:
    return (f"from {helo} ({rdns} [{_literal(ip)}] (may be forged))\r\n\tby {by} "
            f"(8.17.1.9/8.17.1.9/Debian-2) with ESMTP id 4B55X0aa012345; {DATE}")


def exim(ip: str, helo: str, by: str = RECEIVER, rdns: str | None = "rdns.example") -> str:
    where = f"{rdns} ([{ip}] helo={helo})" if rdns else f"[{ip}] (helo={helo})"
    return (f"from {where}\r\n\tby {by} with esmtps  (TLS1.3) tls TLS_AES_256_GCM_SHA384\r\n"
            f"\t(Exim 4.96)\r\n\t(envelope-from <x@y>)\r\n\tid 1rABcD-000abc-0X; {DATE}")


def exchange(ip: str, helo: str, by: str = RECEIVER) -> str:
    return (f"from {helo} ({ip}) by {by} (10.0.0.2) with Microsoft SMTP Server "
            f"(version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.7452.28; "
            f"{DATE}")


def reinjection(by: str = RECEIVER) -> str:
    """A content filter's return on loopback (amavis, Postfix's 127.0.0.1:10025)."""
    return f"from localhost (localhost [127.0.0.1])\r\n\tby {by} (Postfix) with ESMTP id 4QxZ2; {DATE}"


def delivered(message: bytes, received: Sequence[str], *, return_path: str | None = "<user@bank.test>",
              recipient: str | None = "rcpt@mx.test", field: str = "Delivered-To") -> bytes:
    """``message`` as a delivery agent stores it: Return-Path, the recipient field and
    the Received headers (top first) above what arrived."""
    top = b""
    if return_path is not None:
        top += f"Return-Path: {return_path}\r\n".encode()
    if recipient is not None:
        top += f"{field}: {recipient}\r\n".encode()
    for value in received:
        top += b"Received: " + value.encode() + b"\r\n"
    return top + message


def simple(sender: str = "user@bank.test", subject: str = "hello", body: str = "Hello.\r\n",
           msgid: str = "<1@bank.test>") -> bytes:
    return (f"From: <{sender}>\r\nTo: <rcpt@mx.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: {msgid}\r\nDate: {DATE}\r\n\r\n{body}").encode()


def mbox_bytes(messages: Sequence[bytes]) -> bytes:
    """An mboxrd file: a From_ line before each message, '>'-quoted From lines in it."""
    out = []
    for raw in messages:
        lines = raw.replace(b"\r\n", b"\n").split(b"\n")
        quoted = [b">" + line if line.lstrip(b">").startswith(b"From ") else line
                  for line in lines]
        text = b"\n".join(quoted)
        if not text.endswith(b"\n"):
            text += b"\n"
        out.append(b"From MAILER-DAEMON Sat Dec  5 05:00:00 2026\n" + text + b"\n")
    return b"".join(out)


def write_mbox(path: Path, messages: Sequence[bytes], gzipped: bool = False) -> Path:
    data = mbox_bytes(messages)
    if gzipped:
        with gzip.open(path, "wb") as fp:
            fp.write(data)
    else:
        path.write_bytes(data)
    return path


def write_maildir(path: Path, messages: Sequence[bytes]) -> Path:
    """A Maildir: the first half in new/, the rest in cur/ (with flags)."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    half = len(messages) // 2
    for i, raw in enumerate(messages):
        name = f"1733374800.M{i:06d}P1.mx.test"
        target = path / "new" / name if i < half else path / "cur" / f"{name}:2,S"
        target.write_bytes(raw.replace(b"\r\n", b"\n"))
    return path
