"""Prometheus metrics (``Metrics = HOST:PORT``; off by default).

Counters are updated where decisions are made; values that already live
elsewhere (connections in flight, the resolver's cache statistics) are read
at scrape time by a collector, so nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from spfmilter.core.transaction import Transaction
from spfmilter.core.values import Verdict

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


def record_evaluation(txn: Transaction) -> None:
    """Count one message's evaluation (every front end calls this once per message)."""
    TRANSACTIONS.inc()
    if txn.skipped:
        SKIPS.labels(txn.skipped).inc()
        return
    DECISION.observe(txn.seconds)
    for res in txn.results():
        RESULTS.labels(res.identity, res.result).inc()


def record_verdict(verdict: Verdict) -> None:
    ACTIONS.labels(verdict.action.value).inc()


class _Live(Collector):
    """Values read when scraped."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        v = self._read()
        yield GaugeMetricFamily("spfmilter_connections_in_flight", "Open MTA connections",
                                value=v["connections"])
        yield CounterMetricFamily("spfmilter_dns_lookups", "Lookups asked of the resolver",
                                  value=v["lookups"])
        yield CounterMetricFamily("spfmilter_dns_queries", "Lookups answered from the network "
                                  "(cache misses)", value=v["misses"])
        yield CounterMetricFamily("spfmilter_dns_cache_hits", "Lookups answered from the cache",
                                  value=v["hits"])
        yield CounterMetricFamily("spfmilter_dns_timeouts", "Lookups that timed out",
                                  value=v["timeouts"])


def serve(host: str, port: int, read_live: Callable[[], dict[str, float]]) -> None:
    """Start the HTTP endpoint in a background thread."""
    REGISTRY.register(_Live(read_live))
    start_http_server(port, addr=host, registry=REGISTRY)
