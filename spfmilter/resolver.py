"""DNS: one dnspython resolver per process, with a TTL-respecting shared cache.

(One module although long: the cache, the query on the wire and the Resolver are
one lookup path with one deadline and one failure vocabulary (``TempFailure``);
the parts are private helpers of ``Resolver``, which the rest of spfmilter uses.)

pyspf's own dnspython driver builds no cache and ignores TTLs, so every
transaction would pay every round trip again; here all connections share one
scan-resistant cache that honours TTLs (and negative answers' SOA minimum).

An uncached lookup is one query message sent straight to the configured
servers from a fresh socket (so a fresh source port) per query, or a kept one
for a server on a loopback address (``_Sockets``), TCP when the answer comes
back truncated; the answer is read as dnspython's Resolver would read it (its
``Answer``: the CNAME chain, the TTL, the records), a plain one straight from
its bytes (``_positive``): the same result for less CPU.  Why: the Resolver's
per-query bookkeeping (a Resolution, nameserver selection, retry state) and
``dns.query.udp``'s polling
and parsing of every datagram are paid on every cold lookup, and a cold
transaction makes several (see ``_udp_exchange``); ``make bench`` shows the
difference.  Servers that are not plain addresses (DNS over HTTPS or TLS in
resolv.conf) keep dnspython's Resolver.

The cache keeps, per (name, type), just the record values pyspf needs and the
expiration dnspython computed for the answer, instead of dnspython's own Answer
objects (each holds the whole response message): a warm lookup is one
dictionary get, and a full cache stays small beside the process.
"""

from __future__ import annotations

import array
import contextvars
import errno
import ipaddress
import itertools
import logging
import os
import re
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import dns.exception
import dns.flags
import dns.inet
import dns.ipv4
import dns.ipv6
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.wire

try:
    import dns.nameserver

    # dnspython 2.4 and later: a server is an object with its own port.
    _NAMESERVER_OBJECTS = True
except ImportError:  # dnspython 2.3, as Debian 12 ships it
    # Addresses, and a port per address (Resolver.nameserver_ports), the only
    # form 2.3 knows; so two servers on one address need dnspython 2.4.
    _NAMESERVER_OBJECTS = False

# Entries (one per name and type, each just the values pyspf needs): enough for the
# records of several thousand sender domains while keeping the process small; see
# _Cache for which names go first.
CACHE_SIZE = 20_000


# Set by ``spfmilter check --trace``: a list that every lookup appends a line to.
trace: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("dns_trace", default=None)




class CacheOnly:
    """An attempt to evaluate on cached answers alone (set in ``cache_only``): a lookup
    the cache cannot answer sets ``missed`` and raises NotCached instead of asking a
    server.  The answers it used count as cache hits only once ``confirm`` says the
    attempt stands, so an attempt that is abandoned and redone counts nothing twice."""

    def __init__(self) -> None:
        self.missed = False
        self._used: list[tuple[_Cache, tuple[str, str], int]] = []

    def use(self, cache: _Cache, key: tuple[str, str]) -> _Cached:
        entry = cache.entry(key)
        if entry is None:
            self.missed = True
            raise NotCached(*key)
        self._used.append((cache, key, entry.serial))
        return entry

    def mark(self) -> int:
        """Where ``used_since`` starts."""
        return len(self._used)

    def used_since(self, mark: int) -> Used:
        """The cache entries this attempt read after ``mark`` (named by serial)."""
        return tuple(self._used[mark:])

    def reuse(self, used: Used, cache: _Cache | None = None) -> bool:
        """Count ``used`` as read by this attempt if every entry is still the one in its
        cache (neither expired nor replaced): whatever was derived from them stands.

        ``cache``: the one cache every entry of ``used`` is in, when the caller knows
        it.  Whatever is derived from them is the attempt's whole answer then (a kept
        result), so it stands at once: the entries are checked and read (counted as
        hits, moved) under one hold of that cache's lock, not held for ``confirm``."""
        if cache is not None:
            return cache.take(used)
        for cache in {cache for cache, _key, _serial in used}:
            if not cache.holds((key, serial) for c, key, serial in used if c is cache):
                return False
        self._used.extend(used)
        return True

    def confirm(self) -> None:
        for cache in {cache for cache, _key, _serial in self._used}:
            cache.get_all(key for c, key, _serial in self._used if c is cache)


# cache entries one evaluation read: (cache, key, the entry's serial)
Used = tuple[tuple["_Cache", tuple[str, str], int], ...]

cache_only: contextvars.ContextVar[CacheOnly | None] = contextvars.ContextVar(
    "dns_cache_only", default=None)


class SlowWatch:
    """Calls ``fire`` once, from inside a lookup's wait, when the evaluation it is set
    for (in ``slow_wait``) has waited for DNS past ``at``: so other evaluations can be
    started beside a slow one, and none is started (no thread, no contention for the
    interpreter lock) while answers come quickly."""

    def __init__(self, after: float, fire: Callable[[], None]) -> None:
        self.at = time.monotonic() + after
        self._fire = fire
        self.fired = False

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            self._fire()

    def left(self, deadline: float) -> float:
        """Seconds to wait before waking: until ``deadline``, or until ``at`` while
        the watch is still to fire (firing it first if that time has come)."""
        now = time.monotonic()
        if not self.fired:
            if now >= self.at:
                self.fire()
            else:
                return min(deadline, self.at) - now
        return deadline - now


slow_wait: contextvars.ContextVar[SlowWatch | None] = contextvars.ContextVar(
    "dns_slow_wait", default=None)


def _left(deadline: float, watch: SlowWatch | None) -> float:
    return watch.left(deadline) if watch is not None else deadline - time.monotonic()


class TempFailure(Exception):
    """A lookup that did not get a definitive answer (timeout, SERVFAIL, REFUSED).

    Its text says what failed (which name and type, and how) and nothing of this
    host: it ends up in the problem= of a Received-SPF header in delivered mail,
    and the sender's own name servers can make it happen at will.  ``detail``
    names the servers asked and the system's errors, for the log and the doctor.
    """

    def __init__(self, message: str, detail: str = "", timed_out: bool = False) -> None:
        super().__init__(message)
        self.detail = detail
        #: no answer came within the budget (rather than an answer that is a failure)
        self.timed_out = timed_out


_log = logging.getLogger("spfmilter.resolver")
# To the daemon's log when it set one up ("spfmilter"), else nowhere: not to the
# stderr of a command (doctor, check) that reports the failure itself.
_log.addHandler(logging.NullHandler())


def _quoted(text: str) -> str:
    """A log value from text that holds a sender's names: one line, quoted, bounded."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text[:512])
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _failed(message: str, name: str, qtype: str, detail: str = "") -> TempFailure:
    """The TempFailure for a lookup, its detail logged (the result headers never carry it)."""
    if detail:
        _log.warning("action=dns-failure name=%s type=%s error=%s detail=%s",
                     _quoted(name), qtype, _quoted(message), _quoted(detail))
    return TempFailure(message, detail)


_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})


def _kind(exc: BaseException) -> str:
    """What went wrong with one server, in words that name nothing of this host."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "server unreachable"
    if isinstance(exc, OSError):
        return "network error"
    return "unreadable answer"


class NotCached(Exception):
    """The cache cannot answer and ``cache_only`` forbids asking (not a TempFailure:
    nothing failed, and no caller may report it as a result)."""


_serials = itertools.count(1)


class _Cached:
    """One cached lookup: its record values (TXT: a tuple of byte strings) and expiry.

    ``serial`` tells this answer from any other, also one made later for the same key:
    what is derived from answers (spf_memo) names them by it, so that it neither
    holds an answer the cache has let go nor mistakes a new one for it."""

    __slots__ = ("expiration", "values", "serial")

    def __init__(self, expiration: float, values: tuple[Any, ...]) -> None:
        self.expiration = expiration
        self.values = values
        self.serial = next(_serials)

    @property
    def value(self) -> _Cached:  # dnspython's LRUCache node spelling: cache.data[key].value
        return self

    def pyspf(self, key: tuple[str, str]) -> list[tuple[tuple[str, str], Any]]:
        """The records in the shape pyspf's DNSLookup returns (fresh lists every time)."""
        if key[1] in ("TXT", "SPF"):
            return [(key, list(v)) for v in self.values]
        return [(key, v) for v in self.values]


class _Cache:
    """A thread-safe, scan-resistant cache of _Cached entries that drops them once expired.

    A segmented LRU: a new answer enters the *probation* segment; one asked for
    again moves to the *protected* segment (at most ``PROTECTED`` of the size).
    Eviction takes the least recently used probation entry first, so a flood of
    mail from one-off domains (spam runs, the cold half of the benchmark) cycles
    through probation and never pushes out the records of the domains that keep
    sending; a plain LRU would lose those to any burst larger than the cache.
    It offers the part of dnspython's LRUCache interface spfmilter uses (get,
    put, data, hits, misses) on two OrderedDicts, with little overhead per entry.
    """

    PROTECTED = 0.8

    def __init__(self, max_size: int) -> None:
        self.max_size = max(2, max_size)
        self._protected_max = max(1, int(self.max_size * self.PROTECTED))
        self._probation: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._protected: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    @property
    def data(self) -> dict[tuple[str, str], _Cached]:
        """Every entry (a snapshot), whichever segment holds it."""
        with self._lock:
            return {**self._probation, **self._protected}

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def get(self, key: tuple[str, str]) -> _Cached | None:
        with self._lock:
            return self._get(key, time.time())

    def get_all(self, keys: Iterable[tuple[str, str]]) -> None:
        """``get`` each of ``keys`` (counted and moved as it counts and moves), under one
        acquisition of the lock."""
        now = time.time()
        with self._lock:
            for key in keys:
                self._get(key, now)

    def _get(self, key: tuple[str, str], now: float) -> _Cached | None:
        protected = self._protected
        entry = protected.get(key)
        if entry is not None:
            if entry.expiration > now:
                protected.move_to_end(key)
                self._hits += 1
                return entry
            del protected[key]
        else:
            entry = self._probation.pop(key, None)
            if entry is not None and entry.expiration > now:
                protected[key] = entry  # asked for twice: worth keeping
                if len(protected) > self._protected_max:
                    old, demoted = protected.popitem(last=False)
                    self._probation[old] = demoted
                self._hits += 1
                return entry
        self._misses += 1
        return None

    def holds(self, entries: Iterable[tuple[tuple[str, str], int]]) -> bool:
        """Whether each (key, serial) names the live entry of its key (counts and moves
        nothing)."""
        now = time.time()
        with self._lock:
            return all(self._live(key, serial, now) for key, serial in entries)

    def _live(self, key: tuple[str, str], serial: int, now: float) -> bool:
        """Whether ``serial`` is the entry of ``key`` now and not expired (lock held)."""
        entry = self._protected.get(key) or self._probation.get(key)
        return entry is not None and entry.serial == serial and entry.expiration > now

    def take(self, used: Used) -> bool:
        """Whether each entry of ``used`` (all of this cache) is still the live entry of
        its key; if so each is read as ``get`` reads it, all under one hold of the lock."""
        now = time.time()
        with self._lock:
            for _cache, key, serial in used:
                if not self._live(key, serial, now):
                    return False
            for _cache, key, _serial in used:
                self._get(key, now)
        return True

    def put(self, key: tuple[str, str], entry: _Cached) -> None:
        with self._lock:
            if key in self._protected:
                self._protected[key] = entry
                self._protected.move_to_end(key)
                return
            self._probation[key] = entry
            self._probation.move_to_end(key)
            while len(self._probation) + len(self._protected) > self.max_size:
                (self._probation or self._protected).popitem(last=False)

    def peek(self, key: tuple[str, str]) -> bool:
        """Whether ``key`` would be answered from the cache (counts and moves nothing)."""
        return self.entry(key) is not None

    def entry(self, key: tuple[str, str]) -> _Cached | None:
        """The live entry for ``key``, if any (counts and moves nothing)."""
        with self._lock:
            entry = self._protected.get(key) or self._probation.get(key)
            return entry if entry is not None and entry.expiration > time.time() else None

    def missed(self) -> None:
        """Count a lookup that the cache did not answer although it asked nothing of it."""
        with self._lock:
            self._misses += 1

    def hits(self) -> int:
        return self._hits

    def misses(self) -> int:
        return self._misses


def _negative_expiration(exc: dns.resolver.NXDOMAIN) -> float | None:
    """When an NXDOMAIN answer expires: dnspython's rule (SOA TTL / minimum), as it caches it."""
    try:
        qname = exc.qnames()[0]  # type: ignore[no-untyped-call]
        response = exc.responses().get(qname)  # type: ignore[no-untyped-call]
        if response is None:
            return None
        return dns.resolver.Answer(qname, dns.rdatatype.ANY, dns.rdataclass.IN, response).expiration
    except Exception:
        return None


def _timeout(name: str, qtype: str) -> TempFailure:
    return TempFailure(f"DNS timeout looking up {name}/{qtype}", timed_out=True)


def resolv_conf() -> str:
    """The file that names the system's servers when ``Nameservers`` is not set.

    SPFMILTER_RESOLV_CONF points it elsewhere: the tests change "the system's
    servers" without touching the host's /etc/resolv.conf."""
    return os.environ.get("SPFMILTER_RESOLV_CONF", "/etc/resolv.conf")


def _server_text(host: str, port: int) -> str:
    return host if port == 53 else f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _server_list(res: dns.resolver.Resolver) -> tuple[str, ...]:
    """The servers of resolv.conf as dnspython read them, as text (``IP``, ``IP:port``,
    a URL)."""
    return tuple(_server_text(ns, int(res.nameserver_ports.get(ns, res.port)))
                 if isinstance(ns, str) else str(ns) for ns in res.nameservers)


def _plain_servers(res: dns.resolver.Resolver) -> tuple[tuple[str, int], ...]:
    """The system resolver's servers as (address, port), or () if any is something
    else (a DoH URL, a DoT server): those need dnspython's Resolver."""
    out = []
    for ns in res.nameservers:
        if not isinstance(ns, str):
            return ()
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            return ()
        out.append((ns, int(res.nameserver_ports.get(ns, res.port))))
    return tuple(out)


_QHEAD = struct.Struct("!HHHHHH")   # id, flags, one question, no other records
_QTAIL = struct.Struct("!HH")       # the question's type and class
_TC = dns.flags.TC >> 8             # the truncation bit, in the third byte of the header
_QR = dns.flags.QR >> 8


# The receive timeout as the kernel's struct timeval, where its two fields are C longs
# (every 64-bit Linux); elsewhere Python's own socket timeout, which polls first.
_TIMEVAL = struct.Struct("@ll") if struct.calcsize("@l") == 8 and hasattr(socket, "SO_RCVTIMEO") \
    else None


def _wait_at_most(sock: socket.socket, left: float) -> None:
    if _TIMEVAL is None:
        sock.settimeout(max(left, 1e-6))
        return
    micro = max(int(left * 1e6), 1)  # 0 would mean "no timeout"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(*divmod(micro, 1_000_000)))


#: Idle sockets kept per loopback server (``_Sockets``).
IDLE_SOCKETS = 64


class _Sockets:
    """Connected UDP sockets to servers on a loopback address, kept between lookups.

    Why: under load what a cold lookup costs is mostly the interpreter lock, given
    up at every system call that may block and taken back with other threads
    waiting; a socket made, connected and closed per query is three of those
    calls beside the send and the receive.  A fresh socket per query is kept for
    its fresh random source port, which makes a forged answer from off the
    host hard to land; no packet from off the host can carry a loopback source,
    so for a server on a loopback address a kept socket loses nothing.  Only a
    socket whose exchange ended with its answer read is kept (one that timed
    out or failed may still get a late datagram); whatever else waits on a kept
    one is read past as any unexpected datagram is."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[socket.socket]] = {}
        self._loopback: dict[str, bool] = {}

    def take(self, host: str, port: int) -> socket.socket:
        """An idle socket connected to the server, or a fresh one."""
        idle = self._idle.get((host, port))
        if idle:
            try:
                return idle.pop()
            except IndexError:  # another thread took the last one meanwhile
                pass
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def give(self, sock: socket.socket, host: str, port: int) -> None:
        """Keep ``sock``, whose answer was read, for the next lookup (or close it)."""
        loopback = self._loopback.get(host)
        if loopback is None:
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            self._loopback[host] = loopback
        idle = self._idle.setdefault((host, port), []) if loopback else None
        if idle is None or len(idle) >= IDLE_SOCKETS:
            sock.close()
            return
        idle.append(sock)

    def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()


_sockets = _Sockets()


def _fresh_sockets() -> None:
    """A forked child must not read answers from its parent's sockets, nor they its."""
    global _sockets
    old, _sockets = _sockets, _Sockets()
    old.close()


os.register_at_fork(after_in_child=_fresh_sockets)


def _udp_send(wire: bytes, host: str, port: int) -> socket.socket:
    """A socket connected to the server (``_Sockets``), with the query sent on it:
    the caller reads the answer with ``_udp_receive`` and then hands the socket
    back (``_Sockets.give``) or, when no answer was read, closes it."""
    sock = _sockets.take(host, port)
    try:
        sock.send(wire)
    except BaseException:
        sock.close()
        raise
    return sock


def _udp_exchange(wire: bytes, question: bytes, host: str, port: int, deadline: float) -> bytes:
    """Send one query over UDP and return the datagram that answers it (``_udp_receive``)."""
    sock = _udp_send(wire, host, port)
    try:
        data = _udp_receive(sock, wire, question, deadline)
    except BaseException:
        sock.close()
        raise
    _sockets.give(sock, host, port)
    return data


def _udp_receive(sock: socket.socket, wire: bytes, question: bytes, deadline: float) -> bytes:
    """The first datagram on ``sock`` that answers the query ``wire``: from that server
    (the socket is connected, so the kernel drops any other source and reports a
    closed port at once), with the query's id, the response bit and the very
    question asked (DNS names compare ASCII case-blind); anything else is ignored
    until the deadline, as dnspython's ``udp(ignore_unexpected=True)`` does.  A
    server that answers a failure (format error, ...) without repeating the question
    is taken as answering, as dnspython's ``is_response`` does; so is a truncated
    answer without the question (some servers send one), which only sends the query
    again over TCP, where the answer's question is checked: at worst a forged one
    costs a TCP exchange, never a wrong answer.

    Why not ``dns.query.udp``: a cold transaction makes several lookups, and under
    load what they cost is mostly the interpreter lock -- every system call that
    may block gives it up, and taking it back with other threads waiting costs a
    switch.  dnspython polls before each send and each receive and parses every
    datagram; here the socket blocks in the kernel (with a receive timeout), so a
    lookup makes only the calls it needs (send and recv; socket, connect and close
    where the socket is not kept), the checks are on the header bytes, and only
    the answer is parsed.
    """
    qid = wire[:2]
    end = 12 + len(question)
    watch = slow_wait.get()
    _wait_at_most(sock, _left(deadline, watch))
    while True:
        try:
            data = sock.recv(65535)
        except (BlockingIOError, TimeoutError):  # the receive timeout ran out
            if watch is None or time.monotonic() >= deadline:
                raise dns.exception.Timeout() from None  # type: ignore[no-untyped-call]
            watch.fire()          # woken before the deadline: for the watch
            _wait_at_most(sock, deadline - time.monotonic())
            continue
        if len(data) >= 12 and data[:2] == qid and data[2] & _QR:
            if data[4:6] == b"\0\1" and data[12:end].lower() == question:
                return data
            if data[4:6] == b"\0\0" and (data[3] & 0x0F or data[2] & _TC):
                # an error rcode, or a truncated answer, without the question: a server
                # may drop the question from a truncated answer (RFC 2181 §9 leaves the
                # sections of a TC answer to it); from this server with this id, it
                # answers this query, and TC sends the question over TCP
                return data
        if deadline - time.monotonic() <= 0:
            raise dns.exception.Timeout()  # type: ignore[no-untyped-call]
        _wait_at_most(sock, _left(deadline, watch))


class _Sent:
    """A query already sent to the first server, its answer not read yet: the lookup
    that takes it over (``Resolver._claim``) reads the answer instead of asking."""

    __slots__ = ("sock", "host", "port", "query", "read")

    def __init__(self, sock: socket.socket, host: str, port: int,
                 query: tuple[dns.name.Name, dns.rdatatype.RdataType, bytes, bytes]) -> None:
        self.sock, self.host, self.port = sock, host, port
        self.read = False   # its answer was read and the socket handed back (``_Sockets.give``)
        self.query = query   # as ``_question`` made it: the lookup that reads it needs it all


class _QueryIds:
    """Query ids from the kernel's random source, read a few thousand at a time.

    Why: ``os.urandom`` (and so ``secrets``) is a system call that gives up the
    interpreter lock, one more handoff per lookup under load; ids read ahead are
    as unpredictable as ids read one by one.  Taking one is a single step of a C
    iterator, so no two threads get the same id; a forked worker reads its own
    (``_fresh_ids``), so no two workers share the ones to come."""

    def __init__(self) -> None:
        self._ids: Iterator[int] = iter(())

    def take(self) -> int:
        for qid in self._ids:
            return qid
        fresh = iter(array.array("H", os.urandom(4096)))
        self._ids = fresh
        return next(fresh)


_query_ids = _QueryIds()


def _fresh_ids() -> None:
    global _query_ids
    _query_ids = _QueryIds()


os.register_at_fork(after_in_child=_fresh_ids)


def _question(name: str, qtype: str
              ) -> tuple[dns.name.Name, dns.rdatatype.RdataType, bytes, bytes]:
    """(name, type, question section, the whole query with a fresh random id)."""
    qname = _name(name)
    rdtype = dns.rdatatype.from_text(qtype)
    question = cast(bytes, qname.to_wire()) + _QTAIL.pack(rdtype, dns.rdataclass.IN)
    wire = _QHEAD.pack(_query_ids.take(), dns.flags.RD, 1, 0, 0, 0) + question
    return qname, rdtype, question, wire


class _Positive:
    """A NOERROR answer's records of the type asked for (at the end of its CNAMEs), as
    the values ``Resolver.records`` keeps (``_value``), and when it expires."""

    __slots__ = ("expiration", "values")

    def __init__(self, values: list[Any], expiration: float) -> None:
        self.values = values
        self.expiration = expiration


def _value(rdtype: int, rdata: Any) -> Any:
    """What the cache keeps of a record of a type ``Resolver.records`` asks for: what
    pyspf's own dnspython driver would hand it."""
    if rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rdata.address
    if rdtype == dns.rdatatype.MX:
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    if rdtype == dns.rdatatype.PTR:
        return rdata.target.to_text(omit_final_dot=True)
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return tuple(rdata.strings)
    return None


def _key(name: dns.name.Name) -> tuple[bytes, ...]:
    """A name as dnspython compares names (ASCII case-blind), cheaper to hash than the
    Name itself (whose hash walks every byte in Python)."""
    return tuple(label.lower() for label in name.labels)


# The record types ``_positive`` reads (those ``Resolver.records`` keeps), and the key
# that says two records of a type are the same record, as dnspython's rdata equality
# (canonical wire form) does, without building that form for each record.
_SAME: dict[int, Callable[[Any], Any]] = {
    dns.rdatatype.A: lambda rd: rd.address, dns.rdatatype.AAAA: lambda rd: rd.address,
    dns.rdatatype.TXT: lambda rd: rd.strings, dns.rdatatype.SPF: lambda rd: rd.strings,
    dns.rdatatype.MX: lambda rd: (rd.preference, _key(rd.exchange)),
    dns.rdatatype.PTR: lambda rd: _key(rd.target),
}
_CNAME = dns.rdatatype.CNAME
_IN = dns.rdataclass.IN
_TEXT_TYPES = (dns.rdatatype.TXT, dns.rdatatype.SPF)
_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_-]+")   # a label whose text dnspython does not escape
_SPECIAL = (dns.rdatatype.OPT, dns.rdatatype.TSIG)
_MAX_CHAIN = 16                # dnspython's (dns.message.MAX_CHAIN)
_MAX_TTL = 2**32 - 1
_TO_QUESTION = b"\xc0\x0c"     # a compression pointer to the name right after the header


def _plain_name(data: bytes, at: int, end: int) -> tuple[list[bytes], int] | None:
    """The labels of the name at ``data[at]`` and where it ends there (after its first
    compression pointer, or its root label), read only within ``end``; None for a name
    that is not plain (a label of other characters, which its text escapes; the root
    alone; a pointer that does not point before where the last one led, as dnspython
    demands; over 255 bytes), which dnspython then reads."""
    labels: list[bytes] = []
    length, earliest, after = 1, at, 0
    while True:
        if at >= end:
            return None
        count = data[at]
        if count == 0:
            break
        if count >= 0xC0:
            if at + 1 >= end:
                return None
            target = (count & 0x3F) << 8 | data[at + 1]
            if target >= earliest:
                return None
            after = after or at + 2
            earliest = at = target
            continue
        if count >= 64 or at + 1 + count > end:
            return None
        label = data[at + 1:at + 1 + count]
        length += 1 + count
        if length > 255 or not _PLAIN_LABEL.fullmatch(label):
            return None
        labels.append(label)
        at += 1 + count
    if not labels:
        return None
    return labels, after or at + 1


def _plain(data: bytes, at: int, rdlen: int, rdtype: int) -> tuple[Any, Any] | None:
    """(the ``_SAME`` key, the ``_value``) of a well-formed A, AAAA, MX, TXT or SPF record
    whose data is ``data[at:at + rdlen]``, read without dnspython's rdata objects; None
    for another type or anything unusual, which dnspython then decodes."""
    if rdtype == dns.rdatatype.A:
        if rdlen != 4:
            return None
        address = dns.ipv4.inet_ntoa(data[at:at + 4])
        return address, address
    if rdtype == dns.rdatatype.AAAA:
        if rdlen != 16:
            return None
        address = dns.ipv6.inet_ntoa(data[at:at + 16])
        return address, address
    if rdtype == dns.rdatatype.MX:
        if rdlen < 3:
            return None
        name = _plain_name(data, at + 2, at + rdlen)
        if name is None or name[1] != at + rdlen:   # data left over: dnspython refuses it
            return None
        preference = int.from_bytes(data[at:at + 2], "big")
        labels = name[0]
        return ((preference, (*(label.lower() for label in labels), b"")),
                (preference, ".".join(label.decode() for label in labels)))
    if rdtype not in _TEXT_TYPES or rdlen == 0:
        return None
    strings = []
    end = at + rdlen
    while at < end:
        size = data[at]
        at += 1 + size
        if at > end:
            return None
        strings.append(data[at - size:at])
    text = tuple(strings)
    return text, text


def _positive(data: bytes, qname: dns.name.Name, rdtype: int, end: int) -> _Positive | None:
    """What dnspython's ``Answer(qname, rdtype, IN, from_wire(data))`` would give for a
    plain positive answer, read from the answer section alone; None for anything else
    (another opcode or rcode, authority or additional records, no records of the type
    asked for, a record dnspython treats apart), which then takes dnspython's full way.

    Why: a cold transaction's lookups are mostly this case, and the full way builds a
    Message (the question parsed again although ``_udp_exchange`` compared its bytes,
    every record hashed in its canonical wire form into an RRset) and then looks the
    records up again to follow the CNAMEs.  Records of the type asked for in their
    plain forms are read from their bytes (``_plain``: the form every cold lookup
    gets); every other record is decoded by dnspython (``dns.rdata.from_wire_parser``),
    so a malformed one raises as before; the RRset rules are dnspython's: records merge
    per (owner, class, type), the TTL is the least of them (one above 2^31-1 counts as
    0), a duplicate record is kept once, the last of several CNAMEs of one owner
    replaces the others, and the chain is followed from the question's name through
    the first target, at most 16 links.

    ``end`` is where the question ends (its bytes are the ones sent, but for the case of
    letters: an owner that points to them is ``qname``, names compare case-blind)."""
    if data[2] & 0x78 or data[3] & 0x0F or data[4:6] != b"\0\1" or data[8:12] != b"\0\0\0\0":
        return None
    same = _SAME.get(rdtype)
    if same is None:
        return None
    parser = dns.wire.Parser(data, end)
    found: dict[tuple[tuple[bytes, ...], int], tuple[list[int], dict[Any, Any]]] = {}
    question = _key(qname)
    for _ in range(int.from_bytes(data[6:8], "big")):
        at = parser.current
        if data[at:at + 2] == _TO_QUESTION:   # the usual owner: the question's name
            owner = question
            parser.seek(at + 2)
        else:
            owner = _key(dns.name.from_wire_parser(parser))
        rrtype, rrclass, ttl, rdlen = parser.get_struct("!HHIH")
        if rrtype in _SPECIAL:
            return None
        plain = _plain(data, parser.current, rdlen, rrtype) \
            if rrtype == rdtype and rrclass == _IN and parser.remaining() >= rdlen else None
        if plain is not None:
            parser.seek(parser.current + rdlen)
            key, value = plain
        else:
            with parser.restrict_to(rdlen):
                rd = dns.rdata.from_wire_parser(rrclass, rrtype, parser)
            if rrclass != _IN or (rrtype != rdtype and rrtype != _CNAME):
                continue
            key, value = (same(rd), _value(rdtype, rd)) if rrtype == rdtype else (0, rd)
        if ttl > 0x7FFFFFFF:
            ttl = 0
        kept = found.get((owner, rrtype))
        if kept is None:
            found[(owner, rrtype)] = ([ttl], {key: value})
            continue
        kept[0][0] = min(kept[0][0], ttl)
        if rrtype == _CNAME:
            kept[1][0] = value          # a singleton type: the last one stays
        else:
            kept[1].setdefault(key, value)
    if parser.remaining() != 0:
        return None
    name, least = question, _MAX_TTL
    for _ in range(_MAX_CHAIN):
        records = found.get((name, rdtype))
        if records is not None:
            return _Positive(list(records[1].values()), time.time() + min(least, records[0][0]))
        cname = found.get((name, _CNAME))
        if cname is None:
            return None
        least = min(least, cname[0][0])
        name = _key(cname[1][0].target)
    return None


_PLAIN_NAME = re.compile(r"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?\Z")


def _name(text: str) -> dns.name.Name:
    """``dns.name.from_text(text)``, for a name of plain labels (letters, digits, "-", "_":
    what SPF records name) without its escape, IDNA and origin handling; the Name and
    any error (a name over 255 bytes) are the same."""
    if _PLAIN_NAME.match(text):
        labels: list[bytes | str] = [label.encode() for label in text.rstrip(".").split(".")]
        return dns.name.Name([*labels, b""])
    return dns.name.from_text(text)


#: At most this many queries of one process are sent ahead of the lookups that will read
#: them (``Resolver.ahead``) and not yet taken over: each holds a socket until its
#: evaluation ends.
AHEAD_QUERIES = 64
_ahead_slots = threading.BoundedSemaphore(AHEAD_QUERIES)


def _fresh_slots() -> None:
    """A forked child has none of its parent's queries, so none of their slots are taken."""
    global _ahead_slots
    _ahead_slots = threading.BoundedSemaphore(AHEAD_QUERIES)


os.register_at_fork(after_in_child=_fresh_slots)

# A lookup that joined another's and saw it time out asks again itself only with at least
# this much of its own budget left (an evaluation's own look-ahead ends a moment before it).
_RETRY_MARGIN = 0.1


class Flight:
    """One lookup on the network of a (name, type), which other lookups of the same key
    wait for instead of asking again (the answer is the same; a second query is not)."""

    __slots__ = ("done", "entry", "error", "sent", "owner")

    def __init__(self, sent: _Sent | None = None, owner: object = None) -> None:
        self.done = threading.Event()
        self.entry: _Cached | None = None       # the answer, also when it is not cached
        self.error: TempFailure | None = None   # or the failure; neither: asked for nothing
        self.sent = sent      # sent ahead, to be taken over by the first lookup of its key
        self.owner = owner    # who sent it ahead (and gives it up if nobody takes it)


class Resolver:
    """The lookups pyspf needs, answered through one cached dnspython resolver."""

    def __init__(self, nameservers: tuple[tuple[str, int], ...] = (),
                 timeout: float = 20.0, cache_size: int = CACHE_SIZE) -> None:
        if nameservers:
            res = dns.resolver.Resolver(configure=False)
            if _NAMESERVER_OBJECTS:
                res.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                                   for host, port in nameservers]
            else:
                res.nameserver_ports = {host: port for host, port in nameservers}
                res.nameservers = [host for host, _ in nameservers]
        else:
            res = dns.resolver.Resolver(filename=resolv_conf())
        #: where the servers come from: the Nameservers setting, or the file read
        self.source = "Nameservers" if nameservers else resolv_conf()
        #: the servers asked, as text (for the log and doctor)
        self.servers = (tuple(_server_text(h, p) for h, p in nameservers) if nameservers
                        else _server_list(res))
        # Each attempt may use the whole budget; the budget itself is enforced by
        # the caller through ``lifetime`` so a check never outlives Lookup_Time.
        res.timeout = timeout
        res.lifetime = timeout
        res.cache = None  # ours below holds the converted answers
        self._resolver = res
        self._servers = tuple(nameservers) if nameservers else _plain_servers(res)
        self._cache = _Cache(cache_size)
        self._lock = threading.Lock()
        self._flights: dict[tuple[str, str], Flight] = {}
        self.timeouts = 0

    def system_servers_changed(self) -> bool:
        """Whether the servers come from resolv.conf and the file now names others.

        Why: a reload must see a change of /etc/resolv.conf (a new local
        resolver, a DHCP lease), or the daemon keeps asking servers that are gone
        while ``doctor``, which reads the file anew, says DNS is fine.  A file
        that cannot be read now keeps the servers in use."""
        if self.source == "Nameservers":
            return False
        try:
            fresh = dns.resolver.Resolver(filename=resolv_conf())
        except (dns.resolver.NoResolverConfiguration, OSError, ValueError):
            return False
        return self.source != resolv_conf() or _server_list(fresh) != self.servers

    @property
    def cache(self) -> _Cache:
        """(name, type) -> _Cached: what pyspf gets for that lookup, and until when."""
        return self._cache

    def stats(self) -> dict[str, float]:
        """Lookups asked, answered from the cache, from the network, and timed out."""
        cache = self._cache
        hits, misses = cache.hits(), cache.misses()  # every lookup is one or the other
        return {"lookups": hits + misses, "hits": hits, "misses": misses,
                "timeouts": self.timeouts}

    def resolve(self, name: str, qtype: str, lifetime: float) -> dns.resolver.Answer | None:
        """One lookup on the network; None means 'no such data' (NXDOMAIN or no records)."""
        answer, _ = self._query(name, qtype, lifetime)
        return cast(dns.resolver.Answer | None, answer)

    def _query(self, name: str, qtype: str, lifetime: float, lean: bool = False,
               sent: _Sent | None = None
               ) -> tuple[dns.resolver.Answer | _Positive | None, float | None]:
        """(answer, None), or (None, expiration of the negative answer, if it has one).
        ``lean``: a plain positive answer may come as a _Positive (records, expiration).
        ``sent``: the query already sent ahead to the first server (its answer is read)."""
        try:
            if self._servers:
                return self._direct(name, qtype, max(lifetime, 0.001), lean, sent)
            answer = self._resolver.resolve(name, qtype, lifetime=max(lifetime, 0.001),
                                            search=False, raise_on_no_answer=False)
            return answer, None
        except dns.resolver.NXDOMAIN as exc:
            return None, _negative_expiration(exc)
        except (dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return None, None
        except dns.exception.Timeout as exc:
            with self._lock:
                self.timeouts += 1
            raise _timeout(name, qtype) from exc
        except dns.resolver.NoNameservers as exc:
            raise _failed(f"DNS server failure looking up {name}/{qtype}", name, qtype,
                          str(exc)) from exc
        except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel):
            return None, None
        except dns.exception.DNSException as exc:
            raise _failed(f"DNS error looking up {name}/{qtype}", name, qtype,
                          f"{type(exc).__name__}: {exc}") from exc

    def _direct(self, name: str, qtype: str, lifetime: float, lean: bool = False,
                sent: _Sent | None = None
                ) -> tuple[dns.resolver.Answer | _Positive | None, float | None]:
        """One query to the servers in turn, as dnspython's Resolver would ask them
        (recursion desired, no search list; each server may use the whole budget)."""
        try:
            return self._servers_in_turn(name, qtype, lifetime, lean, sent)
        finally:
            if sent is not None and not sent.read:  # failed, or never reached (its server gone)
                sent.sock.close()

    def _servers_in_turn(self, name: str, qtype: str, lifetime: float, lean: bool,
                         sent: _Sent | None
                         ) -> tuple[dns.resolver.Answer | _Positive | None, float | None]:
        qname, rdtype, question, wire = sent.query if sent is not None else _question(name, qtype)
        deadline = time.monotonic() + lifetime
        failures: list[tuple[str, str]] = []   # (what went wrong, with which server and how)
        for host, port in self._servers:
            if deadline <= time.monotonic():  # the budget went to the servers before
                raise dns.exception.Timeout()  # type: ignore[no-untyped-call]
            try:
                if sent is not None and (host, port) == (sent.host, sent.port):
                    data = _udp_receive(sent.sock, wire, question.lower(), deadline)
                    _sockets.give(sent.sock, host, port)
                    sent.read = True
                    sent = None     # any other server gets a query of its own
                else:
                    data = _udp_exchange(wire, question.lower(), host, port, deadline)
                if data[2] & _TC:  # too long for UDP: the same question over TCP
                    query = dns.message.make_query(qname, rdtype, dns.rdataclass.IN)
                    query.id = _QHEAD.unpack_from(wire)[0]
                    response = dns.query.tcp(query, host, timeout=deadline - time.monotonic(),
                                             port=port)
                else:
                    positive = _positive(data, qname, rdtype, len(wire)) if lean else None
                    if positive is not None:
                        return positive, None
                    response = dns.message.from_wire(data)
            except dns.exception.Timeout:
                raise
            except (OSError, EOFError, ValueError, dns.exception.DNSException) as exc:
                # refused (ICMP), reset, or an answer dnspython cannot parse: the next server
                failures.append((_kind(exc), f"{host}#{port}: {exc or type(exc).__name__}"))
                continue
            response = cast(dns.message.QueryMessage, response)
            rcode = response.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                answer = dns.resolver.Answer(qname, rdtype, dns.rdataclass.IN, response)
                return None, answer.expiration
            if rcode == dns.rcode.YXDOMAIN:
                return None, None
            if rcode != dns.rcode.NOERROR:  # SERVFAIL, REFUSED, ...: the next server may know
                failures.append((dns.rcode.to_text(rcode), f"{host}#{port}: {dns.rcode.to_text(rcode)}"))
                continue
            return dns.resolver.Answer(qname, rdtype, dns.rdataclass.IN, response), None
        kinds = ", ".join(dict.fromkeys(kind for kind, _ in failures))
        raise _failed(f"DNS server failure looking up {name}/{qtype} ({kinds})", name, qtype,
                      "; ".join(detail for _, detail in failures))

    def records(self, name: str, qtype: str, lifetime: float, ahead: Flight | None = None
                ) -> list[tuple[tuple[str, str], Any]]:
        """One name's records of one type, through the cache, for every check (SPF's
        pyspf hook and the DKIM key lookup alike), in the shape pyspf's DNSLookup
        hook returns: [((name, type), data)].

        ``ahead``: the lookup of this key that ``ahead`` started for the caller's
        evaluation; its answer is taken (and counted as the cache miss it was) whether
        or not the cache kept it, so that looking ahead never makes a second query."""
        lines = trace.get()
        if lines is not None:
            return self._traced(lines, name, qtype, lifetime, ahead)
        key = (name, qtype)
        attempt = cache_only.get()
        if attempt is not None:
            cached = attempt.use(self._cache, key)
        elif ahead is not None:
            cached = None
            self._cache.missed()
        else:
            cached = self._cache.get(key)   # None when absent or expired
        if cached is not None:
            return cached.pyspf(key)
        return self._fetch(key, name, qtype, lifetime, ahead).pyspf(key)

    def _fetch(self, key: tuple[str, str], name: str, qtype: str, lifetime: float,
               flight: Flight | None) -> _Cached:
        """The answer from the network: this caller's own lookup, or the one in flight
        for the same key (another evaluation's, or one started ahead), waited for."""
        deadline = time.monotonic() + lifetime
        while True:
            if flight is None:
                boarded = self._board(key)
                if isinstance(boarded, _Cached):
                    return boarded
                flight, lead = boarded
                if lead:
                    return self._fly(flight, key, name, qtype, deadline - time.monotonic())
            sent = self._claim(flight)
            if sent is not None:    # sent ahead and not taken over yet: this lookup reads it
                return self._fly(flight, key, name, qtype, deadline - time.monotonic(), sent)
            entry = self._land(flight, name, qtype, deadline)
            if entry is not None:
                return entry
            flight = None

    def _board(self, key: tuple[str, str]) -> _Cached | tuple[Flight, bool]:
        """The cached answer, or the flight in progress for ``key`` (False: to wait for),
        or a new one that the caller must fly (True)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            entry = self._cache.entry(key)   # a flight puts its answer there before it lands
            if entry is not None:
                return entry
            flight = self._flights[key] = Flight()
            return flight, True

    def _land(self, flight: Flight, name: str, qtype: str, deadline: float) -> _Cached | None:
        """Wait (within ``deadline``, waking the evaluation's SlowWatch as a query of
        its own would) for a lookup in flight: its answer, its failure, or None when
        this caller must ask itself (the other lookup asked nothing, or ran out of a
        budget shorter than this caller's)."""
        watch = slow_wait.get()
        while not flight.done.wait(max(_left(deadline, watch), 0.0)):
            if time.monotonic() >= deadline:
                raise _timeout(name, qtype)
            if watch is not None:
                watch.fire()
        if flight.entry is not None:
            return flight.entry
        error = flight.error
        if error is not None and not error.timed_out:
            raise TempFailure(str(error), error.detail)
        if error is not None and deadline - time.monotonic() < _RETRY_MARGIN:
            raise _timeout(name, qtype)
        return None

    def _claim(self, flight: Flight) -> _Sent | None:
        """Take over the query ``flight`` sent ahead, if nobody has yet."""
        with self._lock:
            sent, flight.sent = flight.sent, None
        if sent is not None:
            _ahead_slots.release()
        return sent

    def _fly(self, flight: Flight, key: tuple[str, str], name: str, qtype: str,
             lifetime: float, sent: _Sent | None = None) -> _Cached:
        """Ask the network for ``key``, as ``flight``: its answer (or failure) for
        everyone waiting, then the flight lands whatever happened."""
        try:
            entry = self._ask(key, name, qtype, lifetime, sent)
            flight.entry = entry
            return entry
        except TempFailure as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.done.set()

    def _ask(self, key: tuple[str, str], name: str, qtype: str, lifetime: float,
             sent: _Sent | None = None) -> _Cached:
        answer, negative_expiration = self._query(name, qtype, lifetime, lean=True, sent=sent)
        if isinstance(answer, _Positive):
            entry = _Cached(answer.expiration, tuple(answer.values))
            self._cache.put(key, entry)
            return entry
        if answer is None or answer.rrset is None:
            expiration = answer.expiration if answer is not None else negative_expiration
            entry = _Cached(expiration or 0.0, ())
            if expiration is not None:
                self._cache.put(key, entry)
            return entry
        rdtype = answer.rrset.rdtype
        values = (_value(rdtype, rdata) for rdata in answer.rrset)
        entry = _Cached(answer.expiration, tuple(value for value in values if value is not None))
        self._cache.put(key, entry)
        return entry

    def ahead(self, name: str, qtype: str, deadline: float, owner: object = None
              ) -> Flight | None:
        """Send the query for ``name``/``qtype`` now, for a ``records`` call that is to
        come and will read its answer: the Flight to hand that call, or None when
        nothing was sent (cached already, no budget left, every slot taken, servers
        that are not plain addresses: that call then asks itself).  ``owner`` gives it
        up (``give_up``) if no lookup has taken it over by then.

        Why: an evaluation asks its names one after another, though many are known
        before the first answer comes; sent together, their answers arrive together.
        No thread is started: sending is a system call, and the lookup that reads the
        answer runs on the evaluation's own thread, so looking ahead costs no
        contention for the interpreter lock.  Queries not taken over are bounded per
        process (AHEAD_QUERIES), each held only until its evaluation ends."""
        key = (name, qtype)
        if deadline - time.monotonic() <= 0.001 or not self._servers:
            return None
        flight = self._flights.get(key)
        if flight is not None:
            return flight                # asked already: that one is taken over or waited for
        if self._cache.entry(key) is not None or not _ahead_slots.acquire(blocking=False):
            return None
        try:
            query = _question(name, qtype)
            host, port = self._servers[0]
            sent = _Sent(_udp_send(query[3], host, port), host, port, query)
        except Exception as exc:         # a name or socket the lookup itself will report
            _ahead_slots.release()
            _log.debug("action=dns-ahead-error name=%s type=%s error=%s", _quoted(name), qtype,
                       _quoted(f"{type(exc).__name__}: {exc}"))
            return None
        with self._lock:
            flight = self._flights.get(key)
            if flight is None and self._cache.entry(key) is None:
                flight = self._flights[key] = Flight(sent, owner)
                return flight
        sent.sock.close()                # another lookup of it began meanwhile
        _ahead_slots.release()
        return flight

    def give_up(self, key: tuple[str, str], flight: Flight, owner: object) -> None:
        """The evaluation that sent ``flight`` ahead is over and nobody took it over:
        close its socket (the answer is not read), and whoever looks ``key`` up later
        asks again."""
        with self._lock:
            if flight.owner is not owner or flight.sent is None:
                return
            sent, flight.sent = flight.sent, None
            if self._flights.get(key) is flight:
                del self._flights[key]
        sent.sock.close()
        _ahead_slots.release()
        flight.done.set()                # asked for nothing: whoever waits asks itself

    def _traced(self, lines: list[str], name: str, qtype: str, lifetime: float,
                ahead: Flight | None) -> list[tuple[tuple[str, str], Any]]:
        cached = ahead is None and self._cache.peek((name, qtype))
        token = trace.set(None)
        try:
            out = self.records(name, qtype, lifetime, ahead)
        except TempFailure as exc:
            lines.append(f"DNS {name} {qtype}: {exc}" + (f" [{exc.detail}]" if exc.detail else ""))
            raise
        finally:
            trace.reset(token)
        shown = ", ".join(
            b"".join(v).decode("utf-8", "replace") if isinstance(v, list) else str(v)
            for _, v in out) or "no data"
        lines.append(f"DNS {name} {qtype}{' (cached)' if cached else ''}: {shown}")
        return out


def preload() -> None:
    """Import now what dnspython would import on the first answer of each kind.

    Why: dnspython loads the class of a record type (TXT, MX, ...) the first
    time an answer carries one, from its package folder; a daemon that has
    dropped to ``UserID`` by then may not be allowed to read that folder (a
    checkout or venv under /root), and dnspython then quietly decodes the
    record as an opaque GenericRdata -- every SPF check fails.  Run as root
    before the drop (and before the fork, so the workers share it)."""
    import importlib

    import dns.rdata

    for codec in ("encodings.idna", "encodings.punycode"):  # names with non-ASCII labels
        importlib.import_module(codec)
    for rdtype in dns.rdatatype.RdataType:
        dns.rdata.get_rdata_class(dns.rdataclass.IN, rdtype)  # type: ignore[no-untyped-call]
    # International names, both ways, with each codec: the ``idna`` package loads its
    # UTS 46 tables on first use.
    for idna_codec in (None, dns.name.IDNA_2003, dns.name.IDNA_2008_Practical):
        try:
            dns.name.from_unicode("b\u00fccher.example", idna_codec=idna_codec).to_unicode(
                idna_codec=idna_codec)
        except dns.name.NoIDNA2008:  # dnspython without the idna package
            pass
