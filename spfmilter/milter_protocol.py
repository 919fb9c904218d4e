"""The milter protocol's wire format, as an MTA speaks it: the one definition.

Why here and not only in pymilter: libmilter (under pymilter) speaks the
milter's side; everything of spfmilter's that speaks the MTA's side -- the
doctor's probe of a running daemon, the test kit's raw sessions, the fuzzer,
the benchmark's load client -- needs the same framing, option negotiation
and flags (libmilter's mfdef.h), and each writing its own would let them
drift apart.  Every field is bytes: the test kit sends what an attacker's
SMTP client can make an MTA pass on (non-UTF-8, bare CR/LF, huge values).
"""

from __future__ import annotations

import socket
import struct

#: The protocol version an MTA of today offers (Postfix 3, Sendmail 8.14+).
VERSION = 6

# protocol flags: steps the milter does not want (NO*) or does not answer (NR_*)
NOCONNECT, NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH = (1 << i for i in range(7))
NR_HDR, NOUNKNOWN, NODATA = 1 << 7, 1 << 8, 1 << 9
NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA, NR_UNKN, NR_EOH, NR_BODY = \
    (1 << i for i in range(12, 20))
HDR_LEADSPC = 1 << 20
#: What Postfix 3 offers: every action, every protocol step and flag.
ALL_ACTIONS = 0x1FF
ALL_PROTOCOL = 0x1FFFFF

# command -> (flag: the MTA does not send it, flag: the milter does not answer it)
STEP_FLAGS = {
    b"C": (NOCONNECT, NR_CONN), b"H": (NOHELO, NR_HELO), b"M": (NOMAIL, NR_MAIL),
    b"R": (NORCPT, NR_RCPT), b"T": (NODATA, NR_DATA), b"L": (NOHDRS, NR_HDR),
    b"N": (NOEOH, NR_EOH), b"B": (NOBODY, NR_BODY), b"U": (NOUNKNOWN, NR_UNKN),
}
#: Replies that end a step: accept, continue, reject, tempfail, replycode, discard.
FINAL = frozenset(b"acrtyd")
REFUSALS = frozenset(b"rtyd")
#: Header modifications at end of message: add, insert, change.
MODS = {ord("h"): "add", ord("i"): "ins", ord("m"): "chg"}
#: No reply from a milter is larger than this (libmilter's own limit is 64 KiB + a little).
MAX_PACKET = 1 << 20


class ProtocolError(Exception):
    """The milter closed the connection or sent something that is not the protocol."""


def packet(cmd: bytes, data: bytes = b"") -> bytes:
    """One packet: its length (command byte included), the command, the data."""
    return struct.pack("!L", len(cmd) + len(data)) + cmd + data


def z(*fields: bytes) -> bytes:
    """NUL-terminated fields, concatenated."""
    return b"".join(f + b"\0" for f in fields)


def optneg(actions: int = ALL_ACTIONS, protocol: int = ALL_PROTOCOL,
           version: int = VERSION) -> bytes:
    """SMFIC_OPTNEG as the MTA sends it."""
    return packet(b"O", struct.pack("!LLL", version, actions, protocol))


def parse_optneg(cmd: int, data: bytes) -> tuple[int, int, int]:
    """The milter's answer to SMFIC_OPTNEG: (version, actions, protocol)."""
    if cmd != ord("O") or len(data) < 12:
        raise ProtocolError(f"bad option negotiation reply {bytes([cmd])!r} {data[:16]!r}")
    version, actions, protocol = struct.unpack("!LLL", data[:12])
    return version, actions, protocol


def macros(stage: bytes, pairs: list[tuple[bytes, bytes]]) -> bytes:
    """SMFIC_MACRO for one stage (b"C", b"H", b"M", ...)."""
    return packet(b"D", stage + b"".join(z(k, v) for k, v in pairs))


def connect(hostname: bytes, address: bytes, port: int = 25) -> bytes:
    """SMFIC_CONNECT for a TCP client (family "4" or "6" from the address's form)."""
    family = b"6" if b":" in address else b"4"
    return packet(b"C", z(hostname) + family + struct.pack("!H", port) + z(address))


def read_exactly(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``sock`` (each recv bounded by the socket's timeout)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtocolError(f"milter closed the connection ({len(buf)}/{n} bytes read)")
        buf += chunk
    return bytes(buf)


def read_packet(sock: socket.socket, limit: int = MAX_PACKET) -> tuple[int, bytes]:
    """One packet from the milter: (command byte, data)."""
    (size,) = struct.unpack("!L", read_exactly(sock, 4))
    if not 1 <= size <= limit:
        raise ProtocolError(f"bad packet length {size}")
    body = read_exactly(sock, size)
    return body[0], body[1:]
