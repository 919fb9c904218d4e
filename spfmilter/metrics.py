"""Prometheus metrics (``Metrics = HOST:PORT``; off by default).

With metrics on, every process of the daemon counts into prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, a private folder the
supervisor creates and names to ``setup``), and one scrape adds up
all workers, including those that have exited (their counters stay; their
live gauges go with them: the supervisor marks them dead).  Why not a live
collector reading each process at scrape time: the process that serves the
endpoint is not the one that counted.  So the values that live elsewhere are
copied into metrics by the workers themselves: connections in flight as a
gauge moved when a connection opens and closes, and the resolver's lookup
statistics as the increase since the last copy, once per transaction (not
once per DNS lookup: a warm lookup stays one dictionary get).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, values

# Imported now, not when first needed: the daemon's processes drop privileges and
# may then be unable to read the library's files (and a supervisor that forks must
# not take an import lock another thread might hold).
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from spfmilter.core.transaction import Transaction
from spfmilter.core.values import Verdict

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """Every metric spfmilter keeps, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.transactions = Counter("spfmilter_transactions",
                                    "Messages whose SPF checks ran (or were skipped)", registry=r)
        self.results = Counter("spfmilter_spf_results", "SPF results by identity",
                               ["identity", "result"], registry=r)
        self.actions = Counter("spfmilter_actions", "Decisions per recipient", ["action"],
                               registry=r)
        self.skips = Counter("spfmilter_skipped", "Transactions not checked, by reason",
                             ["reason"], registry=r)
        self.forged = Counter("spfmilter_forged_headers_removed", "Forged result headers removed",
                              registry=r)
        self.errors = Counter("spfmilter_internal_errors", "Callbacks that failed and tempfailed",
                              registry=r)
        self.decision = Histogram("spfmilter_decision_seconds", "SPF evaluation time per message",
                                  buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                           0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20), registry=r)
        # livesum: the sum over the processes alive now (a dead worker's file is removed)
        self.connections = Gauge("spfmilter_connections_in_flight", "Open MTA connections",
                                 multiprocess_mode="livesum", registry=r)
        self.workers = Gauge("spfmilter_workers", "Milter worker processes running",
                             multiprocess_mode="livesum", registry=r)
        self.dns_lookups = Counter("spfmilter_dns_lookups", "Lookups asked of the resolver",
                                   registry=r)
        self.dns_misses = Counter("spfmilter_dns_queries",
                                  "Lookups answered from the network (cache misses)", registry=r)
        self.dns_hits = Counter("spfmilter_dns_cache_hits", "Lookups answered from the cache",
                                registry=r)
        self.dns_timeouts = Counter("spfmilter_dns_timeouts", "Lookups that timed out",
                                    registry=r)
        self.dns = (("lookups", self.dns_lookups), ("misses", self.dns_misses),
                    ("hits", self.dns_hits), ("timeouts", self.dns_timeouts))
        # each labelled child once: ``labels()`` validates and locks on every call
        self._children: dict[tuple[object, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, kept (a handful of label values: results, actions)."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children.setdefault(key, metric.labels(*labels))
        return found


_lock = threading.Lock()
_current: Metrics | None = None


def setup(folder: str | None = None) -> Metrics:
    """Create the metrics; with ``folder``, counted into prometheus_client's
    multiprocess files there (the daemon's processes forked after this inherit
    that).  Why a call and not module globals: prometheus_client decides how a
    value is stored when the value is made, so metrics made at import would make
    the order of imports decide it."""
    global _current
    with _lock:
        if folder is not None:
            os.environ[MULTIPROC_ENV] = folder
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        _current = Metrics()
        return _current


def current() -> Metrics:
    """The metrics ``setup`` made (made now, in this process only, if it was not called)."""
    found = _current
    if found is None:
        with _lock:
            found = _current
        if found is None:
            return setup()
    return found


_ALIASES = {"TRANSACTIONS": "transactions", "RESULTS": "results", "ACTIONS": "actions",
            "SKIPS": "skips", "FORGED": "forged", "ERRORS": "errors", "DECISION": "decision",
            "CONNECTIONS": "connections", "WORKERS": "workers", "DNS_LOOKUPS": "dns_lookups",
            "DNS_MISSES": "dns_misses", "DNS_HITS": "dns_hits", "DNS_TIMEOUTS": "dns_timeouts",
            "REGISTRY": "registry"}


def __getattr__(name: str) -> Any:
    """``metrics.TRANSACTIONS`` and the other names of the current metrics."""
    if name in _ALIASES:
        return getattr(current(), _ALIASES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _HasStats(Protocol):
    def stats(self) -> dict[str, float]: ...


class _DnsSync:
    """Copies a resolver's running totals into the counters, as increases."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resolver: object | None = None
        self._seen: dict[str, float] = {}
        # Set by the daemon in each worker: the resolver new transactions use.
        self.source: Callable[[], _HasStats] | None = None

    def sync(self, resolver: _HasStats) -> None:
        stats = resolver.stats()
        with self._lock:
            if resolver is not self._resolver:  # a reload changed the DNS settings
                self._resolver, self._seen = resolver, {}
            for key, counter in current().dns:
                grown = stats[key] - self._seen.get(key, 0.0)
                if grown > 0:
                    counter.inc(grown)
            self._seen = stats


dns = _DnsSync()


def record_evaluation(txn: Transaction) -> None:
    """Count one message's evaluation (once per message)."""
    m = current()
    m.transactions.inc()
    source = dns.source
    if source is not None:
        dns.sync(source())
    if txn.skipped:
        m.child(m.skips, txn.skipped).inc()
        return
    m.decision.observe(txn.seconds)
    for res in txn.results():
        m.child(m.results, res.identity, res.result).inc()


def record_verdict(verdict: Verdict) -> None:
    m = current()
    m.child(m.actions, verdict.action.value).inc()


def connections_moved(by: int) -> None:
    """Connections in flight opened (1) or closed (-1) in this process."""
    current().connections.inc(by)


class Counting:
    """The engine's observer that counts (see ``engine.Observer``)."""

    def evaluated(self, txn: Transaction) -> None:
        record_evaluation(txn)

    def decided(self, txn: Transaction, verdict: Verdict, recipient: str,
                extra: Mapping[str, object]) -> None:
        record_verdict(verdict)

    def not_checked(self, txn: Transaction, reason: str) -> None:
        """Counted with its evaluation: a relayed message is one transaction either way."""

    def forged_removed(self, txn: Transaction, name: str, index: int, queue_id: str) -> None:
        current().forged.inc()

    def fault(self, action: str, error: str, fields: Mapping[str, object],
              exc: BaseException | None) -> None:
        current().errors.inc()

    def event(self, level: int, action: str, fields: Mapping[str, object]) -> None:
        """Not counted: a front end's events (bad input, a closed client) are lines only."""

    def connections_moved(self, by: int) -> None:
        connections_moved(by)


# --- the endpoint: bound by the supervisor, served by a process of its own ----------

class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


def bind(host: str, port: int) -> WSGIServer:
    """Bind the endpoint (in the supervisor, so a port in use fails the start and a
    port below 1024 works before privileges are dropped); nothing is served yet."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("_Server", (_Server,), {"address_family": family})
    return make_server(host, port, make_wsgi_app(CollectorRegistry()), server_class,
                       _QuietHandler)


def serve_forever(server: WSGIServer) -> None:
    """Answer scrapes with the sum over every worker's multiprocess files."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server.set_app(make_wsgi_app(registry))
    server.serve_forever()


def mark_dead(pid: int) -> None:
    """A worker exited: drop its live gauges (its counters keep counting in the totals)."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]
