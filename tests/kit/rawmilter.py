"""The MTA side of the milter protocol at the byte level, for hostile input, fuzzing and soak.

``miltertest`` encodes every string with ``str.encode()``, so it cannot send
the non-UTF-8 bytes, bare CR/LF or NUL-free-but-huge values an attacker's SMTP
client can make an MTA pass on.  Here every field is ``bytes``; the framing,
flags and option negotiation are spfmilter.milter_protocol's, the one
definition shared with ``spfmilter doctor``, the fuzzer and the bench client.

Every socket operation has a timeout; no loop here waits without a bound.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from spfmilter.milter_protocol import (  # noqa: F401  (re-exported for the tests)
    ALL_ACTIONS,
    ALL_PROTOCOL,
    FINAL,
    HDR_LEADSPC,
    MAX_PACKET,
    NOBODY,
    NOCONNECT,
    NODATA,
    NOEOH,
    NOHDRS,
    NOHELO,
    NOMAIL,
    NORCPT,
    NOUNKNOWN,
    NR_BODY,
    NR_CONN,
    NR_DATA,
    NR_EOH,
    NR_HDR,
    NR_HELO,
    NR_MAIL,
    NR_RCPT,
    NR_UNKN,
    STEP_FLAGS,
    ProtocolError,
    macros,
    optneg,
    packet,
    parse_optneg,
    read_packet,
    z,
)


@dataclass
class Reply:
    kind: str            # continue accept reject tempfail reply discard
    code: str = ""       # for "reply": "550"
    text: str = ""       # for "reply": "5.7.23 ..." (raw bytes decoded as latin-1)

    @property
    def refused(self) -> bool:
        return self.kind in ("reject", "tempfail", "reply", "discard")


_KINDS = {ord("c"): "continue", ord("a"): "accept", ord("r"): "reject", ord("t"): "tempfail",
          ord("d"): "discard", ord("y"): "reply"}


def parse_reply(cmd: int, data: bytes) -> Reply:
    if cmd == ord("y"):
        text = data.rstrip(b"\0").decode("latin-1")
        code, _, rest = text.partition(" ")
        return Reply("reply", code, rest)
    return Reply(_KINDS.get(cmd, chr(cmd)))


@dataclass
class Eom:
    final: Reply
    ops: list[tuple[str, int, bytes, bytes]] = field(default_factory=list)  # (op, index, name, value)

    def inserted(self) -> list[tuple[bytes, bytes]]:
        return [(n, v) for op, _, n, v in self.ops if op in ("ins", "add")]

    def deleted(self) -> list[tuple[bytes, int]]:
        return [(n, i) for op, i, n, v in self.ops if op == "chg" and v == b""]


class RawSession:
    """One connection to a milter over a unix (or TCP) socket."""

    def __init__(self, address: str | tuple[str, int], timeout: float = 15.0,
                 actions: int = ALL_ACTIONS, protocol: int = ALL_PROTOCOL,
                 negotiate: bool = True) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.protocol = 0
        self.actions = 0
        if negotiate:
            self.negotiate(actions, protocol)

    # -- framing ---------------------------------------------------------------
    def send(self, cmd: bytes, data: bytes = b"") -> None:
        self.sock.sendall(packet(cmd, data))

    def send_raw(self, wire: bytes) -> None:
        self.sock.sendall(wire)

    def recv(self) -> tuple[int, bytes]:
        return read_packet(self.sock)

    # -- steps -----------------------------------------------------------------
    def negotiate(self, actions: int = ALL_ACTIONS, protocol: int = ALL_PROTOCOL) -> tuple[int, int]:
        self.send_raw(optneg(actions, protocol))
        _version, self.actions, self.protocol = parse_optneg(*self.recv())
        return self.actions, self.protocol

    def macro(self, for_cmd: bytes, pairs: dict[bytes, bytes]) -> None:
        self.send_raw(macros(for_cmd, list(pairs.items())))

    def step(self, cmd: bytes, data: bytes = b"", stage_macros: dict[bytes, bytes] | None = None
             ) -> Reply:
        skip, no_reply = STEP_FLAGS.get(cmd, (0, 0))
        if self.protocol & skip:
            return Reply("continue")
        if stage_macros:
            self.macro(cmd, stage_macros)
        self.send(cmd, data)
        if self.protocol & no_reply:
            return Reply("continue")
        while True:  # bounded by the socket timeout and the milter's finite replies
            rcmd, rdata = self.recv()
            if rcmd == ord("p"):  # progress: keep waiting
                continue
            return parse_reply(rcmd, rdata)

    def connect(self, address: bytes = b"192.0.2.10", hostname: bytes | None = None,
                family: bytes | None = None, port: int = 25000,
                macros: dict[bytes, bytes] | None = None) -> Reply:
        if family is None:
            family = b"6" if b":" in address else b"4"
        data = z(hostname if hostname is not None else b"[" + address + b"]") + family
        if family in (b"4", b"6"):
            data += struct.pack("!H", port) + z(address)
        elif family == b"L":
            data += struct.pack("!H", 0) + z(address)
        return self.step(b"C", data, {b"j": b"mx.test", **(macros or {})})

    def helo(self, name: bytes) -> Reply:
        return self.step(b"H", z(name))

    def mail(self, *args: bytes, macros: dict[bytes, bytes] | None = None) -> Reply:
        return self.step(b"M", z(*args), {b"i": b"RAWQID"} if macros is None else macros)

    def rcpt(self, *args: bytes) -> Reply:
        return self.step(b"R", z(*args))

    def header(self, name: bytes, value: bytes) -> Reply:
        return self.step(b"L", z(name, value))

    def data(self) -> Reply:
        return self.step(b"T")

    def eoh(self) -> Reply:
        return self.step(b"N")

    def body(self, chunk: bytes) -> Reply:
        return self.step(b"B", chunk)

    def eom(self) -> Eom:
        self.send(b"E")
        out = Eom(Reply("continue"))
        for _ in range(10_000):  # header edits, then one final reply
            cmd, data = self.recv()
            if cmd == ord("h"):
                name, value = data.split(b"\0")[:2]
                out.ops.append(("add", -1, name, value))
            elif cmd == ord("i"):
                (idx,) = struct.unpack("!L", data[:4])
                name, value = data[4:].split(b"\0")[:2]
                out.ops.append(("ins", idx, name, value))
            elif cmd == ord("m"):
                (idx,) = struct.unpack("!L", data[:4])
                name, value = data[4:].split(b"\0")[:2]
                out.ops.append(("chg", idx, name, value))
            elif cmd == ord("p"):
                continue
            elif cmd in FINAL:
                out.final = parse_reply(cmd, data)
                return out
            else:
                out.ops.append(("other", cmd, data, b""))
        raise ProtocolError("no final reply to end of message")

    def message(self, headers: list[tuple[bytes, bytes]], body: bytes = b"test\r\n") -> Eom:
        """DATA, headers, end of headers, body and end of message."""
        for r in [self.data()] + [self.header(n, v) for n, v in headers] + [self.eoh()]:
            if r.kind != "continue":
                return Eom(r)
        if body:
            r = self.body(body)
            if r.kind != "continue":
                return Eom(r)
        return self.eom()

    def abort(self) -> None:
        self.send(b"A")

    def quit(self) -> None:
        try:
            self.send(b"Q")
        except OSError:
            pass

    def close(self) -> None:
        self.quit()
        self.sock.close()

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
