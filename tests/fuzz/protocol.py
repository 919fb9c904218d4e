"""Mutated milter sessions against a running daemon (the suite's bounded run and ``make fuzz``).

A session starts as a plausible MTA conversation (option negotiation, macros,
CONNECT, HELO, MAIL, RCPT, DATA, headers, body, end of message, sometimes an
ABORT and a second transaction) and is then mutated: flipped bytes, lying
length fields, random command letters, dropped or repeated steps, junk macro
packets, a stream cut short, packets of random bytes.  The option negotiation
is never mutated: every MTA sends it first (a session without it is its own
test).  The stream ends with QUIT and a half-close, so libmilter always sees
the end and no read here waits longer than its deadline.
"""

from __future__ import annotations

import random
import socket
import struct
import time

from spfmilter.milter_protocol import connect, optneg, packet, z
from tests.fuzz.invariants import Broken, check_header


def valid_session(rng: random.Random) -> list[bytes]:
    helo = rng.choice([b"helo.test", b"x" * rng.randint(0, 3000), rng.randbytes(20)])
    sender = rng.choice([b"<user@allowed.test>", b"<>", b"<\xff@soft.test>", b"user@none.test"])
    pkts = [optneg(protocol=rng.choice([0x1FFFFF, 0, 0x3FF])),
            packet(b"D", b"C" + z(b"j", b"mx.test")),
            connect(b"[192.0.2.10]", b"192.0.2.10"),
            packet(b"H", z(helo)),
            packet(b"D", b"M" + z(b"i", b"FUZZ")),
            packet(b"M", z(sender, b"SIZE=10")),
            packet(b"R", z(b"<rcpt@mx.test>")),
            packet(b"T"),
            packet(b"L", z(b"Authentication-Results", b"mx.test; spf=pass")),
            packet(b"L", z(b"Subject", rng.randbytes(10).replace(b"\0", b""))),
            packet(b"N"),
            packet(b"B", b"body\r\n"),
            packet(b"E")]
    if rng.random() < 0.3:
        pkts[-1:-1] = [packet(b"A"), packet(b"M", z(b"<user@soft.test>")),
                       packet(b"R", z(b"<r@mx.test>"))]
    return pkts


def _is_macro(pkt: bytes) -> bool:
    return pkt[4:5] == b"D"


def mutate(rng: random.Random, pkts: list[bytes], malformed_macros: bool = True) -> bytes:
    """Mutate a session.  ``malformed_macros=False`` leaves macro packets whole and makes none
    (no junk macro packets, no 'D' from a random letter, no lying length that would desync the
    framing into one): libmilter crashes on some malformed macro lists (the suite's xfail test
    test_malformed_macro_packet_does_not_take_the_milter_down), which would end a run early."""
    head, pkts = pkts[0], list(pkts[1:])     # every MTA negotiates first: keep that packet whole
    hows = range(8) if malformed_macros else (0, 2, 3, 4, 6, 7)
    for _ in range(rng.randint(1, 4)):
        if not pkts:
            break
        i = rng.randrange(len(pkts))
        how = rng.choice(hows)
        if not malformed_macros and _is_macro(pkts[i]) and how in (0, 2, 6):
            continue
        if how == 0:       # flip bytes in a payload
            p = bytearray(pkts[i])
            for _ in range(rng.randint(1, 3)):
                if len(p) > 5:
                    p[rng.randrange(5, len(p))] = rng.getrandbits(8)
            pkts[i] = bytes(p)
        elif how == 1:     # a lying length field
            size = rng.choice([0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF,
                               max(0, len(pkts[i]) + rng.randint(-8, 8))])
            pkts[i] = struct.pack("!L", size) + pkts[i][4:]
        elif how == 2:     # a random command letter
            letter = rng.choice([c for c in range(256) if malformed_macros or c != ord("D")])
            pkts[i] = pkts[i][:4] + bytes([letter]) + pkts[i][5:]
        elif how == 3:     # drop a step
            del pkts[i]
        elif how == 4:     # repeat a step, out of order
            pkts.insert(rng.randrange(len(pkts) + 1), pkts[i])
        elif how == 5:     # a macro packet of junk
            pkts.insert(i, packet(b"D", rng.randbytes(rng.randint(0, 40))))
        elif how == 6:     # cut the stream short
            pkts = pkts[:i + 1]
            pkts[-1] = pkts[-1][:rng.randrange(len(pkts[-1]) + 1)]
        else:              # a packet of random bytes
            letter = rng.choice([c for c in range(256) if malformed_macros or c != ord("D")])
            pkts.insert(i, packet(bytes([letter]), rng.randbytes(rng.randint(0, 64))))
    return head + b"".join(pkts)


def has_malformed_macros(wire: bytes) -> bool:
    """Whether a session carries a macro packet that is not NUL-terminated name/value pairs
    (as framed from the start; a stream whose framing breaks counts as suspicious)."""
    i = 0
    while i + 4 <= len(wire):
        (size,) = struct.unpack("!L", wire[i:i + 4])
        body = wire[i + 4:i + 4 + size]
        if size == 0 or len(body) < size:
            return size > 0x10000 or len(body) < size     # cut or lying: libmilter reads on
        if body[:1] == b"D":
            strings = body[2:]
            if strings and (not strings.endswith(b"\0") or strings.count(b"\0") % 2):
                return True
        i += 4 + size
    return False


def read_replies(sock: socket.socket, deadline: float) -> list[tuple[int, bytes]]:
    """Every packet the milter sends until it closes (bounded by ``deadline``)."""
    buf = bytearray()
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except OSError:          # includes socket.timeout
            break
        if not chunk:
            break
        buf += chunk
    out = []
    i = 0
    while i + 4 <= len(buf):
        (size,) = struct.unpack("!L", buf[i:i + 4])
        if size == 0 or i + 4 + size > len(buf):
            break
        out.append((buf[i + 4], bytes(buf[i + 5:i + 4 + size])))
        i += 4 + size
    return out


def run_session(socket_path: str, wire: bytes, timeout: float = 5.0) -> int:
    """Send one mutated session; check every header the milter adds.  Returns how many."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
        sock.sendall(wire + packet(b"Q"))
        sock.shutdown(socket.SHUT_WR)   # EOF: libmilter stops waiting for a cut packet
        replies = read_replies(sock, time.monotonic() + timeout)
    except OSError:
        replies = []
    finally:
        sock.close()
    seen = 0
    for cmd, data in replies:
        if cmd in (ord("h"), ord("i")):
            fields = data[4:] if cmd == ord("i") else data
            name, value = fields.split(b"\0")[:2]
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise Broken(f"header value is not UTF-8: {value!r}") from None
            check_header(name.decode("latin-1"), text)
            seen += 1
    return seen
