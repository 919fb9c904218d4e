"""A small in-process DNS server for the test suite.

Why: spfmilter resolves SPF data over real DNS (pyspf on top of dnspython),
so the tests need a real name server they fully control: answers over UDP
and TCP on 127.0.0.1, data in the ``zonedata`` format of the openspf
RFC 7208 test suite, and failure modes (timeouts, SERVFAIL, slow answers,
truncation) that cannot be produced with a mocked resolver.

Zone data: a dict mapping a DNS name to a list of entries, exactly as in the
``zonedata`` sections of rfc7208-tests.yml::

    {"example.com": [{"SPF": "v=spf1 -all"}, {"A": "192.0.2.1"}],
     "slow.example.com": [{"TXT": "v=spf1 +all"}, {"DELAY": 1.5}],
     "dead.example.com": ["TIMEOUT"]}

Entries:

* ``{"SPF": value}``, ``{"TXT": value}``: value is a string or a list of
  strings (a list is several character-strings of ONE record); strings are
  UTF-8 encoded and split into 255-byte character-strings.  Several entries
  of one type are several records.  The value ``NONE`` adds no record (the
  suite uses ``TXT: NONE`` to say "no TXT records, and no SPF->TXT copy").
* ``{"A": ip or [ip, ...]}``, ``{"AAAA": ...}``, ``{"MX": [prio, name]}``,
  ``{"PTR": name or [name, ...]}``, ``{"CNAME": name}``.
* ``"TIMEOUT"``: the query is dropped (never answered, UDP or TCP) unless a
  record of the queried type is listed *before* the TIMEOUT entry.  This is
  the pyspf test driver's rule, which the suite depends on: in scenario
  "Record lookup", ``spftimeout.example.net: [{TXT: ...}, TIMEOUT]`` answers
  TXT but times out type SPF.  A name whose only entry is TIMEOUT therefore
  times out for every type.  ``{TYPE: "TIMEOUT"}`` times out that type only.
* Extras for robustness tests (not in the suite): ``"SERVFAIL"`` and
  ``"REFUSED"`` answer every query for the name with that rcode;
  ``{"DELAY": seconds}`` sends the answer after that delay, from its own
  thread, so other queries are answered meanwhile.

Semantics follow the pyspf test driver: names are case-insensitive (ASCII
case only, as in DNS) and a trailing dot is ignored; a name with SPF entries
but no TXT entry also serves those records as TXT (the suite's "auto-magic
duplication"); type SPF (99) queries are answered from the SPF entries.  An
unknown name is NXDOMAIN; a known name without data of the queried type is
NOERROR with an empty answer, except that a CNAME is answered and followed
inside the zone data (as a recursive resolver would), up to 10 hops or a loop.
Data that cannot be encoded gives SERVFAIL instead of killing a thread.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    MX,
    PTR,
    QTYPE,
    RCODE,
    RR,
    TXT,
    A,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)

__all__ = ["TestDNSServer"]

log = logging.getLogger(__name__)

_TIMEOUT = "TIMEOUT"  # entry marker, also usable as a per-type value
_NONE = "NONE"  # value marker: no record
_RCODE_MARKERS = {"SERVFAIL": RCODE.SERVFAIL, "REFUSED": RCODE.REFUSED}
_RECORD_TYPES = ("A", "AAAA", "MX", "PTR", "CNAME", "TXT", "SPF")
_MAX_CNAME_HOPS = 10
_UDP_PLAIN_LIMIT = 512  # RFC 1035 limit without EDNS
_UDP_MAX_PAYLOAD = 65507  # largest IPv4 UDP payload
_TCP_MAX = 65535
_OUR_EDNS_PAYLOAD = 1232
_BIND_ATTEMPTS = 50
_JOIN_TIMEOUT = 2.0  # bound for stop(): total wait on threads
_TCP_SEND_TIMEOUT = 5.0


@dataclass(frozen=True)
class _Node:
    """Compiled data of one name (items keep the zone data's order)."""

    items: tuple[Any, ...]  # _TIMEOUT or (rtype, value)
    rcode: int | None = None
    delay: float = 0.0


def _norm_key(name: str | bytes) -> bytes:
    """Lookup key: ASCII-lower-cased wire bytes, without trailing dot."""
    if isinstance(name, str):
        name = name.encode("utf-8")
    return name.rstrip(b".").lower()


def _label_key(label: DNSLabel) -> bytes:
    return b".".join(label.label).lower()


def _label_text(label: DNSLabel) -> str:
    """Query-log form of a wire name: lower case, no trailing dot."""
    return b".".join(label.label).lower().decode("utf-8", "backslashreplace")


def _name_label(name: Any) -> DNSLabel:
    """Turn a zone-data name (text) into a wire name, rejecting bad labels."""
    if not isinstance(name, str):
        raise TypeError(f"domain name must be a string, not {name!r}")
    text = name.rstrip(".")
    if not text:
        return DNSLabel([])  # the root, e.g. a null MX target ''
    labels = [part.encode("utf-8") for part in text.split(".")]
    for lab in labels:
        if not lab or len(lab) > 63:
            raise ValueError(f"bad label in domain name {name!r}")
    if sum(len(lab) + 1 for lab in labels) + 1 > 255:
        raise ValueError(f"domain name too long: {name!r}")
    return DNSLabel(labels)


def _char_strings(value: Any) -> list[bytes]:
    """TXT/SPF value -> character-strings of one record (<= 255 bytes each)."""
    parts = value if isinstance(value, (list, tuple)) else [value]
    out: list[bytes] = []
    for part in parts:
        if isinstance(part, (bytes, bytearray)):
            raw = bytes(part)
        else:
            raw = str(part).encode("utf-8")
        out.extend(raw[i : i + 255] for i in range(0, len(raw), 255))
        if not raw:
            out.append(b"")
    if not out:
        # RFC 1035 needs >= 1 string; an empty RDATA makes dnspython reject
        # the whole response (FormError), so "no strings" goes out as one
        # empty string, which means the same text ("").
        out.append(b"")
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _build_rrs(owner: DNSLabel, rtype: str, value: Any, ttl: int) -> list[RR]:
    """Wire records for one zone-data entry (may raise on bad data)."""
    if rtype == "A":
        return [
            RR(owner, QTYPE.A, rdata=A(str(ipaddress.IPv4Address(v))), ttl=ttl)
            for v in _as_list(value)
        ]
    if rtype == "AAAA":
        return [
            RR(owner, QTYPE.AAAA, rdata=AAAA(list(ipaddress.IPv6Address(v).packed)), ttl=ttl)
            for v in _as_list(value)
        ]
    if rtype == "MX":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"MX wants [priority, name], got {value!r}")
        prio = int(value[0])
        if not 0 <= prio <= 65535:
            raise ValueError(f"MX priority out of range: {prio}")
        return [RR(owner, QTYPE.MX, rdata=MX(_name_label(value[1]), prio), ttl=ttl)]
    if rtype == "PTR":
        return [RR(owner, QTYPE.PTR, rdata=PTR(_name_label(v)), ttl=ttl) for v in _as_list(value)]
    if rtype == "CNAME":
        return [RR(owner, QTYPE.CNAME, rdata=CNAME(_name_label(value)), ttl=ttl)]
    if rtype in ("TXT", "SPF"):
        return [RR(owner, getattr(QTYPE, rtype), rdata=TXT(_char_strings(value)), ttl=ttl)]
    raise ValueError(f"unsupported record type {rtype!r}")


def _compile_name(name: Any, entries: Any) -> tuple[bytes, _Node]:
    """Validate the shape of one name's entries and apply SPF->TXT copying.

    Only the shape is checked here; values are encoded per query so that
    bad values answer SERVFAIL (as a broken real server would) instead of
    refusing the whole zone.
    """
    if not isinstance(name, str):
        raise TypeError(f"zone name must be a string, not {name!r}")
    if isinstance(entries, (str, dict)):
        entries = [entries]
    if not isinstance(entries, (list, tuple)):
        raise TypeError(f"entries of {name!r} must be a list, not {entries!r}")
    items: list[Any] = []
    spf_values: list[Any] = []
    has_txt = False
    rcode: int | None = None
    delay = 0.0
    for entry in entries:
        if isinstance(entry, str):
            marker = entry.strip().upper()
            if marker == _TIMEOUT:
                items.append(_TIMEOUT)
            elif marker in _RCODE_MARKERS:
                rcode = _RCODE_MARKERS[marker]
            else:
                raise ValueError(f"unknown marker {entry!r} for {name!r}")
            continue
        if not isinstance(entry, dict):
            raise TypeError(f"bad entry {entry!r} for {name!r}")
        for key, value in entry.items():
            rtype = str(key).upper()
            if rtype == "DELAY":
                delay = float(value)
                if delay < 0:
                    raise ValueError(f"negative DELAY for {name!r}")
                continue
            if rtype not in _RECORD_TYPES:
                raise ValueError(f"unknown record type {key!r} for {name!r}")
            if rtype == "TXT":
                has_txt = True  # even TXT: NONE stops the SPF copy
            if isinstance(value, str) and value == _NONE:
                continue
            if isinstance(value, str) and value == _TIMEOUT:
                items.append((rtype, _TIMEOUT))
                continue
            if rtype == "SPF":
                spf_values.append(value)
            items.append((rtype, value))
    if not has_txt:
        # Appended last, as the pyspf driver does: a TIMEOUT entry placed
        # before them still times out TXT queries.
        items.extend(("TXT", v) for v in spf_values)
    return _norm_key(name), _Node(tuple(items), rcode, delay)


def _compile(zones: dict | None) -> dict[bytes, _Node]:
    """Compile a whole zones dict; raises TypeError/ValueError on bad shapes."""
    if zones is None:
        return {}
    if not isinstance(zones, dict):
        raise TypeError(f"zones must be a dict, not {type(zones).__name__}")
    # Names differing only in ASCII case or a trailing dot are one DNS name:
    # their entries are merged in order.
    merged: dict[bytes, tuple[str, list[Any]]] = {}
    for name, entries in zones.items():
        if not isinstance(name, str):
            raise TypeError(f"zone name must be a string, not {name!r}")
        if isinstance(entries, (str, dict)):
            entries = [entries]
        if not isinstance(entries, (list, tuple)):
            raise TypeError(f"entries of {name!r} must be a list, not {entries!r}")
        merged.setdefault(_norm_key(name), (name, []))[1].extend(entries)
    return dict(_compile_name(name, entries) for name, entries in merged.values())


@dataclass
class _Plan:
    """What to answer: decided from the zone data before any encoding."""

    drop: bool = False
    rcode: int = RCODE.NOERROR
    delay: float = 0.0
    records: list[tuple[DNSLabel, str, Any]] = field(default_factory=list)


def _select(node: _Node, qtype: str) -> list[tuple[str, Any]] | None:
    """Records of qtype at node, or None if the query must time out."""
    matched: list[tuple[str, Any]] = []
    for item in node.items:
        if isinstance(item, str):  # the TIMEOUT entry
            if not matched:
                return None
            break
        rtype, value = item
        if rtype == qtype or qtype == "ANY":
            if isinstance(value, str) and value == _TIMEOUT:
                return None
            matched.append((rtype, value))
    return matched


def _first_cname(node: _Node) -> Any:
    for item in node.items:
        if isinstance(item, str):  # the TIMEOUT entry
            return None
        if item[0] == "CNAME":
            return item[1]
    return None


def _plan(zones: dict[bytes, _Node], qname: DNSLabel, qtype: str) -> _Plan:
    plan = _Plan()
    owner = qname
    key = _label_key(qname)
    visited = {key}
    hops = 0
    while True:
        node = zones.get(key)
        if node is None:
            plan.rcode = RCODE.NXDOMAIN
            return plan
        plan.delay += node.delay
        if node.rcode is not None:
            plan.rcode = node.rcode
            return plan
        selected = _select(node, qtype)
        if selected is None:
            plan.drop = True
            return plan
        if selected or qtype == "CNAME":
            plan.records.extend((owner, rtype, value) for rtype, value in selected)
            return plan
        target = _first_cname(node)
        if target is None:
            return plan  # NODATA
        plan.records.append((owner, "CNAME", target))
        hops += 1
        owner = _name_label(target)
        key = _label_key(owner)
        if key in visited or hops >= _MAX_CNAME_HOPS:
            return plan  # loop or too long: the chain so far
        visited.add(key)


class TestDNSServer:
    """Authoritative-style DNS server on 127.0.0.1, UDP and TCP, same port.

    Why: lets tests point spfmilter's ``Nameservers`` setting at data they
    control, including timeouts and truncation, with no outside network.
    Use as a context manager or call start()/stop().
    """

    __test__ = False  # a helper, not a pytest test class

    def __init__(self, zones: dict | None = None, host: str = "127.0.0.1", port: int = 0, ttl: int = 300) -> None:
        """Prepare (not start) a server; zones are validated right away."""
        self._family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        self._host = host
        self._want_port = int(port)
        self._ttl = int(ttl)
        self._zones: dict[bytes, _Node] = _compile(zones)
        self._zones_lock = threading.Lock()
        self._queries: list[tuple[str, str, str]] = []
        self._queries_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stop_event = threading.Event()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._io_thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None
        self._started = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> TestDNSServer:
        """Bind UDP then TCP on one port and serve; returns self.

        Both sockets are bound and listening when this returns, so a query
        sent right after cannot be lost: no waiting needed by the caller.
        """
        if self._started:
            raise RuntimeError("TestDNSServer already started")
        self._udp, self._tcp = self._bind()
        self._udp.setblocking(False)
        self._tcp.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        port = self._udp.getsockname()[1]
        self._address = (self._host, port)
        self._started = True
        self._io_thread = threading.Thread(target=self._serve, name=f"dnsserver-io-{port}", daemon=True)
        self._io_thread.start()
        return self

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        """UDP first (port 0 picks one), then TCP on the same port; retry."""
        attempts = _BIND_ATTEMPTS if self._want_port == 0 else 1
        last_error: OSError | None = None
        for _ in range(attempts):
            udp = socket.socket(self._family, socket.SOCK_DGRAM)
            try:
                udp.bind((self._host, self._want_port))
                port = udp.getsockname()[1]
                tcp = socket.socket(self._family, socket.SOCK_STREAM)
                try:
                    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    tcp.bind((self._host, port))
                    tcp.listen(64)
                except OSError as exc:
                    tcp.close()
                    raise exc
            except OSError as exc:
                udp.close()
                last_error = exc
                continue
            return udp, tcp
        raise OSError(f"cannot bind UDP+TCP on {self._host}:{self._want_port}: {last_error}")

    def stop(self) -> None:
        """Stop serving: wake and join every thread (bounded), close sockets.

        Idempotent.  Delayed answers still pending are not sent; TCP clients
        waiting on a TIMEOUT name see the connection close.
        """
        if not self._started or self._stop_event.is_set():
            return
        self._stop_event.set()
        try:
            assert self._wake_w is not None
            self._wake_w.send(b"x")  # level-triggered: every selector sees it
        except OSError:
            pass
        deadline = time.monotonic() + _JOIN_TIMEOUT
        if self._io_thread is not None:
            self._io_thread.join(_JOIN_TIMEOUT)
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._threads_lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            self._close(conn)
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                self._close(sock)

    def __enter__(self) -> TestDNSServer:
        """Start on entry (unless already started)."""
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Always stop, so a failing test does not leak threads or ports."""
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on; needs start()."""
        if self._address is None:
            raise RuntimeError("TestDNSServer not started")
        return self._address

    @property
    def port(self) -> int:
        """The port shared by UDP and TCP; needs start()."""
        return self.address[1]

    @property
    def nameserver(self) -> str:
        """'127.0.0.1:PORT', the form spfmilter's Nameservers setting takes."""
        host, port = self.address
        if ":" in host:
            return f"[{host}]:{port}"
        return f"{host}:{port}"

    # -- data --------------------------------------------------------------

    def set_zones(self, zones: dict) -> None:
        """Replace all zone data at once (queries see old or new, never a mix)."""
        compiled = _compile(zones)
        with self._zones_lock:
            self._zones = compiled

    def update(self, zones: dict) -> None:
        """Replace the data of the given names only, keep all other names."""
        compiled = _compile(zones)
        with self._zones_lock:
            new = dict(self._zones)
            new.update(compiled)
            self._zones = new

    @property
    def queries(self) -> list[tuple[str, str, str]]:
        """Snapshot of (qname, qtype, 'udp'|'tcp') per query received, in order.

        qname is lower case without trailing dot.  Dropped (TIMEOUT) and
        delayed queries are counted when they arrive.
        """
        with self._queries_lock:
            return list(self._queries)

    def clear_queries(self) -> None:
        """Forget the queries seen so far."""
        with self._queries_lock:
            self._queries.clear()

    def query_count(self, name: str | None = None, qtype: str | None = None) -> int:
        """How many queries matched name (case-insensitive) and/or qtype."""
        want_name = None if name is None else _norm_key(name).decode("utf-8", "backslashreplace")
        want_type = None if qtype is None else qtype.upper()
        with self._queries_lock:
            return sum(
                1
                for qname, qt, _ in self._queries
                if (want_name is None or qname == want_name) and (want_type is None or qt == want_type)
            )

    # -- serving -----------------------------------------------------------

    @staticmethod
    def _close(sock: socket.socket) -> None:
        try:
            sock.close()
        except OSError:
            pass

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        """Start a daemon thread that is tracked until it ends (for stop())."""

        def run() -> None:
            try:
                target(*args)
            except Exception:  # never let a helper thread die noisily
                log.exception("dnsserver: %s failed", name)
            finally:
                with self._threads_lock:
                    self._threads.discard(threading.current_thread())

        # Names end in our port so a test can tell our threads from other servers'.
        thread = threading.Thread(target=run, name=f"{name}-{self.port}", daemon=True)
        with self._threads_lock:
            if self._stop_event.is_set():
                return
            self._threads.add(thread)
        thread.start()

    def _serve(self) -> None:
        """IO thread: UDP queries and TCP accepts, until woken by stop()."""
        assert self._udp and self._tcp and self._wake_r
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ, "udp")
        sel.register(self._tcp, selectors.EVENT_READ, "tcp")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop_event.is_set():
                for key, _ in sel.select():
                    if key.data == "wake":
                        return
                    if key.data == "udp":
                        self._on_udp()
                    else:
                        self._on_accept()
        finally:
            sel.close()

    def _on_udp(self) -> None:
        assert self._udp is not None
        udp = self._udp
        try:
            data, peer = udp.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            log.debug("dnsserver: UDP recv failed", exc_info=True)
            return

        def send(wire: bytes) -> None:
            try:
                udp.sendto(wire, peer)
            except OSError:
                log.debug("dnsserver: UDP send failed", exc_info=True)

        self._handle(data, "udp", send)

    def _on_accept(self) -> None:
        assert self._tcp is not None
        try:
            conn, _ = self._tcp.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            log.debug("dnsserver: accept failed", exc_info=True)
            return
        with self._threads_lock:
            if self._stop_event.is_set():
                self._close(conn)
                return
            self._conns.add(conn)
        self._spawn(self._serve_tcp, f"dnsserver-tcp-{conn.fileno()}", conn)

    def _serve_tcp(self, conn: socket.socket) -> None:
        """One TCP connection: length-prefixed queries, several per connection."""
        assert self._wake_r is not None
        conn.settimeout(_TCP_SEND_TIMEOUT)  # bounds sendall; recv only after select
        send_lock = threading.Lock()
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ, "conn")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        buf = bytearray()

        def send(wire: bytes) -> None:
            with send_lock:
                try:
                    conn.sendall(len(wire).to_bytes(2, "big") + wire)
                except OSError:
                    log.debug("dnsserver: TCP send failed", exc_info=True)

        try:
            while not self._stop_event.is_set():
                events = sel.select()
                if any(key.data == "wake" for key, _ in events):
                    return
                try:
                    chunk = conn.recv(65536)
                except (TimeoutError, BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                if not chunk:
                    return  # client went away
                buf += chunk
                while len(buf) >= 2:
                    size = int.from_bytes(buf[:2], "big")
                    if len(buf) < 2 + size:
                        break
                    message = bytes(buf[2 : 2 + size])
                    del buf[: 2 + size]
                    self._handle(message, "tcp", send)
        finally:
            sel.close()
            with self._threads_lock:
                self._conns.discard(conn)
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._close(conn)

    def _handle(self, data: bytes, transport: str, send: Callable[[bytes], None]) -> None:
        """Answer one query; never raises (a bad query must not stop serving)."""
        try:
            self._answer(data, transport, send)
        except Exception:
            log.exception("dnsserver: failed to answer a %s query", transport)

    def _answer(self, data: bytes, transport: str, send: Callable[[bytes], None]) -> None:
        try:
            query = DNSRecord.parse(data)
        except Exception:
            if len(data) >= 12:  # header readable: tell the client
                send(data[:2] + bytes([0x80 | (data[2] & 0x79), 0x80 | RCODE.FORMERR]) + bytes(8))
            return
        if query.header.qr:
            return  # a response, not a query: ignore
        if not query.questions:
            send(bytes(self._reply(query, RCODE.FORMERR).pack()))
            return
        question = query.questions[0]
        qtype = QTYPE[question.qtype]
        with self._queries_lock:
            self._queries.append((_label_text(question.qname), qtype, transport))
        if query.header.opcode != 0:
            send(bytes(self._reply(query, RCODE.NOTIMP).pack()))
            return

        plan = _plan(self._zones, question.qname, qtype)
        if plan.drop:
            return
        wire = self._encode(query, plan, transport)
        if plan.delay > 0:
            self._spawn(self._send_later, f"dnsserver-delay-{query.header.id}", plan.delay, send, wire)
        else:
            send(wire)

    def _send_later(self, delay: float, send: Callable[[bytes], None], wire: bytes) -> None:
        """DELAY: the wait is the feature; stop() cuts it short (no send)."""
        if not self._stop_event.wait(delay):
            send(wire)

    def _reply(self, query: DNSRecord, rcode: int) -> DNSRecord:
        header = DNSHeader(
            id=query.header.id,
            qr=1,
            aa=1,
            ra=1,
            rd=query.header.rd,
            opcode=query.header.opcode,
            rcode=rcode,
        )
        reply = DNSRecord(header, q=query.questions[0] if query.questions else None)
        if self._edns_payload(query) is not None:
            reply.add_ar(EDNS0(udp_len=_OUR_EDNS_PAYLOAD))
        return reply

    @staticmethod
    def _edns_payload(query: DNSRecord) -> int | None:
        for rr in query.ar:
            if rr.rtype == QTYPE.OPT:
                return int(rr.rclass)
        return None

    def _encode(self, query: DNSRecord, plan: _Plan, transport: str) -> bytes:
        """Wire answer for a plan: SERVFAIL if the data cannot be encoded,
        TC=1 without answers if it does not fit the client's UDP size."""
        try:
            reply = self._reply(query, plan.rcode)
            for owner, rtype, value in plan.records:
                for rr in _build_rrs(owner, rtype, value, self._ttl):
                    reply.add_answer(rr)
            wire = bytes(reply.pack())
        except Exception as exc:
            log.warning("dnsserver: cannot encode answer for %s: %s", query.questions[0].qname, exc)
            return bytes(self._reply(query, RCODE.SERVFAIL).pack())
        if transport == "udp":
            payload = self._edns_payload(query)
            limit = _UDP_PLAIN_LIMIT if payload is None else min(max(payload, _UDP_PLAIN_LIMIT), _UDP_MAX_PAYLOAD)
            if len(wire) > limit:
                truncated = self._reply(query, plan.rcode)
                truncated.header.tc = 1
                return bytes(truncated.pack())
        elif len(wire) > _TCP_MAX:
            log.warning("dnsserver: answer for %s exceeds 65535 bytes", query.questions[0].qname)
            return bytes(self._reply(query, RCODE.SERVFAIL).pack())
        return wire

