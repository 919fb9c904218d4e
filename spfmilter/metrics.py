"""Prometheus metrics (``Metrics = HOST:PORT``; off by default).

With metrics on, every process of the daemon counts into prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, a private folder the
supervisor creates before this module is imported), and one scrape adds up
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
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

# Imported now, not when first needed: the daemon's processes drop privileges and
# may then be unable to read the library's files (and a supervisor that forks must
# not take an import lock another thread might hold).
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from spfmilter.core.transaction import Transaction
from spfmilter.core.values import Verdict

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REGISTRY = CollectorRegistry(auto_describe=True)

TRANSACTIONS = Counter("spfmilter_transactions", "Messages whose SPF checks ran (or were skipped)",
                       registry=REGISTRY)
RESULTS = Counter("spfmilter_spf_results", "SPF results by identity", ["identity", "result"],
                  registry=REGISTRY)
ACTIONS = Counter("spfmilter_actions", "Decisions per recipient", ["action"], registry=REGISTRY)
SKIPS = Counter("spfmilter_skipped", "Transactions not checked, by reason", ["reason"],
                registry=REGISTRY)
FORGED = Counter("spfmilter_forged_headers_removed", "Forged result headers removed",
                 registry=REGISTRY)
ERRORS = Counter("spfmilter_internal_errors", "Callbacks that failed and tempfailed",
                 registry=REGISTRY)
DECISION = Histogram("spfmilter_decision_seconds", "SPF evaluation time per message",
                     buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                              0.25, 0.5, 1, 2.5, 5, 10, 20), registry=REGISTRY)
# livesum: the sum over the processes alive now (a dead worker's file is removed)
CONNECTIONS = Gauge("spfmilter_connections_in_flight", "Open MTA connections",
                    multiprocess_mode="livesum", registry=REGISTRY)
WORKERS = Gauge("spfmilter_workers", "Milter worker processes running",
                multiprocess_mode="livesum", registry=REGISTRY)
DNS_LOOKUPS = Counter("spfmilter_dns_lookups", "Lookups asked of the resolver", registry=REGISTRY)
DNS_MISSES = Counter("spfmilter_dns_queries", "Lookups answered from the network (cache misses)",
                     registry=REGISTRY)
DNS_HITS = Counter("spfmilter_dns_cache_hits", "Lookups answered from the cache",
                   registry=REGISTRY)
DNS_TIMEOUTS = Counter("spfmilter_dns_timeouts", "Lookups that timed out", registry=REGISTRY)
_DNS = (("lookups", DNS_LOOKUPS), ("misses", DNS_MISSES), ("hits", DNS_HITS),
        ("timeouts", DNS_TIMEOUTS))


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
            for key, counter in _DNS:
                grown = stats[key] - self._seen.get(key, 0.0)
                if grown > 0:
                    counter.inc(grown)
            self._seen = stats


dns = _DnsSync()


def record_evaluation(txn: Transaction) -> None:
    """Count one message's evaluation (every front end calls this once per message)."""
    TRANSACTIONS.inc()
    source = dns.source
    if source is not None:
        dns.sync(source())
    if txn.skipped:
        SKIPS.labels(txn.skipped).inc()
        return
    DECISION.observe(txn.seconds)
    for res in txn.results():
        RESULTS.labels(res.identity, res.result).inc()


def record_verdict(verdict: Verdict) -> None:
    ACTIONS.labels(verdict.action.value).inc()


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
