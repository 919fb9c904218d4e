"""Where a front end reports when no connection's engine is at hand: the current
runtime's engine, and before any is installed still the standard observers (a line
reported then is written, not lost)."""

from __future__ import annotations

import logging

import pytest

from spfmilter import config as cfg
from spfmilter import log, metrics, runtime


def test_the_reporter_is_the_current_runtimes_engine(monkeypatch):
    rt = runtime.Runtime.create(cfg.Settings(), observers=())
    monkeypatch.setattr(runtime, "_current", rt)
    assert runtime.reporter() is rt.engine


def test_before_any_runtime_an_event_is_still_written_and_counted(monkeypatch, caplog):
    """A listener opened by the supervisor before it installs a runtime (or a library
    user's) reports through the standard observers of default settings."""
    monkeypatch.setattr(runtime, "_current", None)
    reporter = runtime.reporter()
    assert [type(o) for o in reporter.observers] == [metrics.Counting, log.DecisionLog]
    with caplog.at_level(logging.INFO, logger="spfmilter"):
        reporter.event(logging.WARNING, "sockopt-failed", option="TCP_NODELAY",
                       error="listening socket not found")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING,
         'action=sockopt-failed option=TCP_NODELAY error="listening socket not found"')]


def test_messages_are_counted_only_when_the_metrics_endpoint_is_set(monkeypatch, dns_server):
    """Without ``Metrics`` no one can read a count: the engine reports to the log
    alone, and a message moves no counter."""
    def transactions() -> float:
        return metrics.current().registry.get_sample_value("spfmilter_transactions_total") or 0.0

    for metrics_setting, counted in ((None, 0), ("127.0.0.1:9100", 1)):
        values = {"Nameservers": dns_server.nameserver, "Authserv_Id": "mx.test"}
        if metrics_setting:
            values["Metrics"] = metrics_setting
        rt = runtime.Runtime.create(cfg.from_mapping(values))
        assert [type(o) for o in rt.engine.observers] == \
            ([metrics.Counting] if counted else []) + [log.DecisionLog]
        before = transactions()
        session = rt.engine.session()
        session.connect("192.0.2.10")
        session.hello("helo.test")
        session.mail("u@allowed.test")
        session.rcpt("postmaster@mx.test")
        assert transactions() == before + counted


@pytest.mark.parametrize("by", [1, -1])
def test_before_any_runtime_the_connections_gauge_still_moves(monkeypatch, by):
    monkeypatch.setattr(runtime, "_current", None)
    gauge = "spfmilter_connections_in_flight"
    before = metrics.current().registry.get_sample_value(gauge) or 0.0
    runtime.reporter().connections_moved(by)
    assert metrics.current().registry.get_sample_value(gauge) == before + by
