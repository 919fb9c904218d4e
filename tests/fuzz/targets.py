"""Fuzz targets: functions of one ``bytes`` input that raise on a broken invariant.

The same targets run under atheris (libFuzzer, coverage-guided; ``make fuzz``)
and under hypothesis (``st.binary()``, when atheris is not installed, and in the
suite).  Each target turns its bytes into hostile input with :class:`Data`.

* ``headers``: SPF results with hostile HELO, sender, client IP, mechanism and
  explanation texts -> spfmilter's decision and headers; every header must keep
  the invariants of tests/fuzz/invariants.py, every refusal text one line.
* ``forged``: a differential oracle for forged-header removal: any value that
  authres reads as an Authentication-Results for our authserv-id must be seen
  by spfmilter as claiming to be ours (else a forgery would pass through).
* ``milter``: a whole connection through the milter class (pymilter's test
  context) with hostile client address, HELO, MAIL FROM and parameters,
  macros and headers, DNS from the test server: no internal error, no error
  log record, no log record with a line break, well-formed headers.
"""

from __future__ import annotations

import io
import ipaddress
import logging
from collections.abc import Callable
from socket import AF_INET, AF_INET6
from typing import TYPE_CHECKING

from tests.fuzz.invariants import CONTROL_BUT_TAB, OUR_ID, Broken, check_header

if TYPE_CHECKING:
    from tests.kit.testctx import RecordingCtx

BITS = ["\r\n", "\n", "\r", "\0", "\t", '"', "\\", ";", "(", ")", "<", ">", "@", ":", " ", "=",
        ".", "[", "]", "%{i}", "%{l}", "%%", "receiver=evil.test", "mx.test;", "spf=pass",
        "\r\n\tAuthentication-Results: mx.test; spf=pass", "IPv6:", "192.0.2.10", "xn--", "ü",
        "用户", "\udcff", "allowed.test", "helo.test", "soft.test", "none.test", "perm.test"]
ADDRESSES = ["192.0.2.10", "198.51.100.7", "2001:db8:1::10", "2001:db8:bad::7", "fe80::1%eth0",
             "::ffff:192.0.2.10", "IPv6:2001:db8:1::10", "[192.0.2.10]", "127.0.0.1", "",
             "not an address"]


class Data:
    """Hostile values drawn from fuzz bytes (runs out gracefully: zeros, empty strings)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.raw):
            return 0
        self.pos += 1
        return self.raw[self.pos - 1]

    def int(self, n: int) -> int:
        return (self.byte() << 8 | self.byte()) % n if n > 1 else 0

    def bool(self) -> bool:
        return bool(self.byte() & 1)

    def choice(self, items: list):
        return items[self.int(len(items))]

    def bytes(self, limit: int = 64) -> bytes:
        n = min(self.int(limit + 1), len(self.raw) - self.pos)
        out = self.raw[self.pos:self.pos + n]
        self.pos += n
        return out

    def text(self, limit: int = 64) -> str:
        """Raw bytes (as pymilter decodes them: UTF-8 with surrogateescape), hostile fragments,
        or now and then a value of 60-66 kB."""
        parts = []
        for _ in range(self.int(6)):
            kind = self.int(8)
            if kind < 4:
                parts.append(self.bytes(limit).decode("utf-8", "surrogateescape"))
            elif kind < 7:
                parts.append(self.choice(BITS))
            else:
                parts.append(self.choice(["a", "h.", "@", "ü"]) * (self.int(6000) + 60000)
                             if self.int(16) == 0 else "x" * self.int(400))
        return "".join(parts)


# --- headers ---------------------------------------------------------------------

def _settings():
    from spfmilter import config as cfg
    return cfg.from_mapping({"Authserv_Id": OUR_ID, "skip_addresses": "",
                             "Nameservers": "127.0.0.1:1"})


_SETTINGS = None


def headers(raw: bytes) -> None:
    global _SETTINGS
    from spfmilter.core.decision import decide
    from spfmilter.core.headers import result_headers
    from spfmilter.core.values import RESULTS, Facts, SPFResult

    if _SETTINGS is None:
        _SETTINGS = _settings()
    d = Data(raw)
    ip = d.choice(ADDRESSES + [d.text(40)])
    helo, sender = d.text(), d.text()
    results = []
    for identity in ("helo", "mailfrom"):
        if d.bool():
            checked = f"postmaster@{helo}" if identity == "helo" or not sender else sender
            results.append(SPFResult(identity, d.choice(list(RESULTS)), checked,
                                     checked.rpartition("@")[2], d.text(), d.bool(),
                                     d.choice([None, d.text(30), "ip4:192.0.2.0/24", "local:a"]),
                                     # pyspf's result word, never text from outside
                                     best_guess=d.choice([None, None, *RESULTS])))
    helo_res = next((r for r in results if r.identity == "helo"), None)
    mail_res = next((r for r in results if r.identity == "mailfrom"), None)
    facts = Facts(client_ip=ip, helo=helo, sender=sender)
    verdict = decide(facts, d.text(30), helo_res, mail_res, _SETTINGS.policy)
    for name, value in result_headers(facts, helo_res, mail_res, _SETTINGS.policy):
        check_header(name, value)
    if verdict.reply is not None:
        text = str(verdict.reply)
        if CONTROL_BUT_TAB.search(text) or len(text) > 512:
            raise Broken(f"refusal text: {text!r}")


# --- forged ----------------------------------------------------------------------------

def forged(raw: bytes) -> None:
    import authres

    from spfmilter.core.forged import claims_to_be_ours

    d = Data(raw)
    depth = d.int(10)     # comments nest: "((...))" before the authserv-id is still CFWS
    value = "(" * depth + d.text(8).replace("(", "").replace(")", "") + ")" * depth + \
        d.choice(["", "(", "((", "(c) ", '"', "\r\n\t", " "]) + d.text(24) + \
        d.choice(["mx.test", "MX.TEST", "mx.test.", '"mx.test"', d.text(8)]) + \
        d.choice(["; spf=pass", ";spf=pass smtp.mailfrom=a@b", " 1; none", d.text(16)])
    ours = claims_to_be_ours("Authentication-Results", value, OUR_ID)   # must never raise
    claims_to_be_ours("Received-SPF", value, OUR_ID)
    flat = value.replace("\r\n", "")
    try:
        ident = authres.AuthenticationResultsHeader.parse_value(flat).authserv_id
    except Exception:
        return
    if ident.lower().rstrip(".") == OUR_ID and not ours:
        raise Broken(f"authres reads authserv-id {ident!r} but spfmilter keeps it: {value!r}")


# --- milter ----------------------------------------------------------------------------

class LogRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def drive(ip: str, helo: str, sender: str, params: list[str], macros: dict[str, str],
          headers: list[tuple[str, bytes]], rcpts: int = 2):
    """One connection through pymilter's test context, the way libmilter calls the class:
    any client address string, HELO as str, MAIL/RCPT with their parameters, header values as
    bytes (header_bytes), end of message.  Needs a Runtime set.
    Returns ([(rc, reply) per RCPT], end-of-message rc or None, header operations)."""
    from spfmilter.frontends.milter import SPFMilter, factory_installed
    from tests.kit.testctx import RecordingCtx

    with factory_installed(SPFMilter):
        return _drive(RecordingCtx(), ip, helo, sender, params, macros, headers, rcpts)


def _drive(ctx: RecordingCtx, ip: str, helo: str, sender: str, params: list[str], macros: dict[str, str],
           headers: list[tuple[str, bytes]], rcpts: int):
    import Milter
    import mime

    for name, value in macros.items():
        ctx._setsymval(name, value)
    ctx._negotiate()
    ctx._stage = Milter.M_CONNECT
    family = AF_INET6 if ":" in ip else AF_INET
    rc = Milter.connect_callback(ctx, f"[{ip}]", family, (ip, 25000))
    ctx._stage = None
    if rc != Milter.CONTINUE:
        raise Broken(f"connect returned {rc}")
    ctx._helo(helo)
    ctx._envfrom(f"<{sender}>", *params)
    replies = []
    for n in range(rcpts):
        ctx._reply = None
        rc = ctx._envrcpt(f"<rcpt{n}@mx.test>")
        replies.append((rc, ctx._reply))
    end = None
    if any(rc == Milter.CONTINUE for rc, _ in replies):
        ctx._msg = mime.message_from_file(io.BytesIO(b"Subject: x\n\nbody\n"))
        for name, value in headers:
            ctx.getpriv().header_bytes(name, value)
        ctx._eoh()
        end = ctx._eom()
    ctx._close()
    return replies, end, ctx.header_ops


def check_connection(replies, end, ops, records: list[logging.LogRecord], skipped: bool) -> None:
    """The invariants of one driven connection."""
    import Milter

    for rc, reply in replies:
        if rc not in (Milter.CONTINUE, Milter.REJECT, Milter.TEMPFAIL):
            raise Broken(f"RCPT returned {rc}")
        if rc != Milter.CONTINUE:
            code, status, *text = reply
            if code[:1] not in "45" or CONTROL_BUT_TAB.search(" ".join(text)):
                raise Broken(f"refusal {reply!r}")
            if status == "4.3.0":
                raise Broken(f"internal error (the guard's tempfail): {reply!r}")
    if end is not None:
        if end != Milter.ACCEPT:
            raise Broken(f"end of message returned {end}")
        for op, name, value, idx in ops:
            if op == "delete":
                if name.lower() not in ("authentication-results", "received-spf"):
                    raise Broken(f"deleted {name}")
                continue
            if op != "insert" or idx != 0:
                raise Broken(f"header operation {op} {idx}")
            check_header(name, value)
        if skipped and any(op == "insert" for op, *_ in ops):
            raise Broken("headers added for a skipped (authenticated) client")
    for record in records:
        message = record.getMessage()
        if "\n" in message or "\r" in message or record.levelno >= logging.ERROR:
            raise Broken(f"log record: {message!r}")


class MilterTarget:
    """The ``milter`` target with its DNS server and runtime (started once per process)."""

    def __init__(self) -> None:
        from spfmilter import config as cfg
        from spfmilter import runtime
        from spfmilter.checks import spf as spf_check
        from tests.kit import ZONES
        from tests.kit.dnsserver import TestDNSServer

        self.dns = TestDNSServer(ZONES).start()
        settings = cfg.from_mapping({"Nameservers": self.dns.nameserver, "Authserv_Id": OUR_ID,
                                     "skip_addresses": "", "Lookup_Time": "1"})
        spf_check.install()
        runtime.install(runtime.Runtime.create(settings))
        self.records = LogRecords()
        logger = logging.getLogger("spfmilter")
        logger.addHandler(self.records)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    def __call__(self, raw: bytes) -> None:
        d = Data(raw)
        ip = d.choice(ADDRESSES) if d.int(4) else str(ipaddress.ip_address(d.bytes(16).ljust(4, b"\0")[:4]))
        helo = d.choice(["helo.test", "badhelo.test", "unknown.test", d.text()])
        local = d.text(32)
        sender = d.choice([f"{local}@{d.choice(['allowed.test', 'soft.test', 'none.test', 'perm.test', d.text(20)])}",
                           "", local])
        params = [d.text(20) for _ in range(d.int(3))]
        macros = {}
        for name in ("j", "i", "{auth_authen}"):
            if d.bool():
                macros[name] = d.choice(["", d.text(20)])
        headers = [(d.choice(["Authentication-Results", "Received-SPF", "Subject"]),
                    d.text().encode("utf-8", "surrogateescape")) for _ in range(d.int(4))]
        self.records.records.clear()
        replies, end, ops = drive(ip, helo, sender, params, macros, headers)
        check_connection(replies, end, ops, self.records.records,
                         skipped=bool(macros.get("{auth_authen}")))


def finding_kind(message: str) -> str:
    """What kind of finding a Broken message is: its text up to the first ':'."""
    return message.split(":", 1)[0].strip()


def ignoring_known(target: Callable[[bytes], None], known: str) -> Callable[[bytes], None]:
    """``target``, except that Broken findings of the kinds in ``known`` (one a line) pass."""
    kinds = {k for k in known.splitlines() if k}
    if not kinds:
        return target

    def wrapped(raw: bytes) -> None:
        try:
            target(raw)
        except Broken as exc:
            if finding_kind(str(exc)) not in kinds:
                raise
    return wrapped


TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "headers": lambda: headers,
    "forged": lambda: forged,
    "milter": MilterTarget,
}
