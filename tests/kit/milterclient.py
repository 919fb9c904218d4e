"""The MTA side of the milter protocol for tests, on top of the ``miltertest`` package.

It honours what the milter negotiates: steps the milter asked not to get are
not sent, and steps negotiated as no-reply are sent without waiting, exactly
as Postfix and Sendmail do.  Every socket read has a timeout.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from miltertest import MilterConnection
from miltertest import constants as c

# command -> (flag: MTA must not send it, flag: milter sends no reply)
_FLAGS = {
    c.SMFIC_CONNECT: (c.SMFIP_NOCONNECT, c.SMFIP_NR_CONN),
    c.SMFIC_HELO: (c.SMFIP_NOHELO, c.SMFIP_NR_HELO),
    c.SMFIC_MAIL: (c.SMFIP_NOMAIL, c.SMFIP_NR_MAIL),
    c.SMFIC_RCPT: (c.SMFIP_NORCPT, c.SMFIP_NR_RCPT),
    c.SMFIC_DATA: (c.SMFIP_NODATA, c.SMFIP_NR_DATA),
    c.SMFIC_HEADER: (c.SMFIP_NOHDRS, c.SMFIP_NR_HDR),
    c.SMFIC_EOH: (c.SMFIP_NOEOH, c.SMFIP_NR_EOH),
    c.SMFIC_BODY: (c.SMFIP_NOBODY, c.SMFIP_NR_BODY),
}


@dataclass
class Reply:
    """What the milter answered to one step."""

    kind: str                 # "continue", "accept", "reject", "tempfail", "reply", ...
    code: str = ""            # SMTP code for "reply", e.g. "550"
    text: str = ""            # e.g. "5.7.23 Message rejected ..."

    @property
    def smtp(self) -> str:
        return f"{self.code} {self.text}".strip()


@dataclass
class EomResult:
    """The header edits and the final answer at end of message."""

    final: Reply
    inserted: list[tuple[int, str, str]] = field(default_factory=list)   # (index, name, value)
    added: list[tuple[str, str]] = field(default_factory=list)
    changed: list[tuple[int, str, str]] = field(default_factory=list)    # value "" = delete

    def headers_on_top(self) -> list[tuple[str, str]]:
        """The inserted headers in the order they end up at the top of the message."""
        top: list[tuple[str, str]] = []
        for index, name, value in self.inserted:
            top.insert(min(index, len(top)), (name, value))
        return top


_KINDS = {c.SMFIR_CONTINUE: "continue", c.SMFIR_ACCEPT: "accept", c.SMFIR_REJECT: "reject",
          c.SMFIR_TEMPFAIL: "tempfail", c.SMFIR_DISCARD: "discard",
          c.SMFIR_REPLYCODE: "reply", c.SMFIR_QUARANTINE: "quarantine", c.SMFIR_SKIP: "skip"}


def _reply(msg: tuple) -> Reply:
    cmd, data = msg
    if cmd == c.SMFIR_REPLYCODE:
        return Reply("reply", data["smtpcode"], data["text"].rstrip("\0").strip())
    return Reply(_KINDS.get(cmd, cmd))


class MilterSession:
    """One SMTP connection as the MTA presents it to the milter."""

    def __init__(self, socket_path: str, timeout: float = 15.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(socket_path)
        self.conn = MilterConnection(self.sock)
        self.actions, self.protocol = self.conn.optneg_mta()

    def close(self) -> None:
        try:
            self.conn._send(c.SMFIC_QUIT)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> MilterSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _macros(self, cmd: str, macros: dict[str, str] | None) -> None:
        if macros:
            self.conn.send_macro(cmd, **macros)

    def step(self, cmd: str, macros: dict[str, str] | None = None, **args: object) -> Reply:
        """Send one command (after its macros), waiting for a reply only if one comes."""
        skip, no_reply = _FLAGS.get(cmd, (0, 0))
        if self.protocol & skip:
            return Reply("continue")
        self._macros(cmd, macros)
        if self.protocol & no_reply:
            self.conn._send(cmd, **args)
            return Reply("continue")
        return _reply(self.conn.send_get(cmd, **args))

    def connect(self, ip: str, hostname: str | None = None,
                macros: dict[str, str] | None = None) -> Reply:
        family = c.SMFIA_INET6 if ":" in ip else c.SMFIA_INET
        return self.step(c.SMFIC_CONNECT, {"j": "mx.test", "{daemon_name}": "smtpd-test",
                                           **(macros or {})},
                         hostname=hostname or f"[{ip}]", family=family, port=25000, address=ip)

    def helo(self, name: str) -> Reply:
        return self.step(c.SMFIC_HELO, helo=name)

    def mail(self, sender: str, macros: dict[str, str] | None = None) -> Reply:
        return self.step(c.SMFIC_MAIL, {"i": "TESTQID", **(macros or {})}, args=[f"<{sender}>"])

    def rcpt(self, recipient: str) -> Reply:
        return self.step(c.SMFIC_RCPT, args=[f"<{recipient}>"])

    def abort(self) -> None:
        self.conn._send(c.SMFIC_ABORT)

    @property
    def leading_space(self) -> bool:
        """Whether header values go with their leading space (SMFIP_HDR_LEADSPC)."""
        return bool(self.protocol & c.SMFIP_HDR_LEADSPC)

    def data(self, headers: list[tuple[str, str]], body: bytes = b"test\r\n") -> EomResult:
        """DATA, headers, end of headers, body (in chunks of at most 65,535 bytes, stopping
        at a SKIP) and end of message."""
        for cmd, args in [(c.SMFIC_DATA, {})] + [(c.SMFIC_HEADER, {"name": n, "value": v})
                                                  for n, v in headers] + [(c.SMFIC_EOH, {})]:
            r = self.step(cmd, **args)
            if r.kind != "continue":
                return EomResult(r)
        skip, no_reply = _FLAGS[c.SMFIC_BODY]
        self.body_replies: list[str] = []
        chunks = [body[i:i + 65535] for i in range(0, len(body), 65535)] if body else []
        for chunk in chunks if not self.protocol & skip else []:
            r = self.step(c.SMFIC_BODY, buf=chunk.decode("latin-1"))
            self.body_replies.append(r.kind)
            if r.kind == "skip":  # the milter needs no more of the body
                break
            if r.kind != "continue":
                return EomResult(r)
        result = EomResult(Reply("continue"))
        for cmd, data in self.conn.send_eom():
            if cmd == c.SMFIR_INSHEADER:
                result.inserted.append((data["index"], data["name"], data["value"]))
            elif cmd == c.SMFIR_ADDHEADER:
                result.added.append((data["name"], data["value"]))
            elif cmd == c.SMFIR_CHGHEADER:
                result.changed.append((data["index"], data["name"], data["value"]))
            else:
                result.final = _reply((cmd, data))
        return result

    def transaction(self, sender: str, recipients: list[str],
                    headers: list[tuple[str, str]] | None = None,
                    macros: dict[str, str] | None = None) -> tuple[list[Reply], EomResult | None]:
        """MAIL, RCPT…, and (if any recipient was accepted) the message."""
        self.mail(sender, macros)
        replies = [self.rcpt(r) for r in recipients]
        if not any(r.kind == "continue" for r in replies):
            self.abort()
            return replies, None
        hdrs = headers if headers is not None else [("From", f"<{sender or 'x@x'}>"),
                                                    ("Subject", "test")]
        return replies, self.data(hdrs)
