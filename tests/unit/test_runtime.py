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


@pytest.mark.parametrize("by", [1, -1])
def test_before_any_runtime_the_connections_gauge_still_moves(monkeypatch, by):
    monkeypatch.setattr(runtime, "_current", None)
    gauge = "spfmilter_connections_in_flight"
    before = metrics.current().registry.get_sample_value(gauge) or 0.0
    runtime.reporter().connections_moved(by)
    assert metrics.current().registry.get_sample_value(gauge) == before + by
