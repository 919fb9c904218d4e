"""The decision line's keys: each one documented in README's Logging section; the log
observer's other lines (a front end's events, a fault and its traceback)."""

from __future__ import annotations

import ast
import logging

from spfmilter import log as log_module
from spfmilter.log import DecisionLog
from tests.kit import ROOT


def _decision_keys() -> list[str]:
    tree = ast.parse((ROOT / "spfmilter" / "log.py").read_text())
    [func] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "decision"]
    [call] = [n for n in ast.walk(func) if isinstance(n, ast.Call)
              and isinstance(n.func, ast.Name) and n.func.id == "kv"]
    return [k.arg for k in call.keywords if k.arg]


def test_every_key_of_the_decision_line_is_documented_in_the_logging_section():
    readme = (ROOT / "README.rst").read_text()
    logging = readme.split(".. man-start: logging")[1].split(".. man-end: logging")[0]
    keys = _decision_keys()
    assert "client_ip" in keys and keys[-1] == "reply"
    extras = ["mta", "daemon", "via"]   # the front ends' own (milter: mta, daemon; policy: via)
    undocumented = [k for k in keys + extras if f"``{k}``" not in logging]
    assert undocumented == []


def test_an_event_is_one_line_at_its_level_with_action_first(caplog):
    """The front ends' lines (bad input, policy-close, ...) keep their form now that the
    log observer writes them: ``action`` first, the fields in the order given."""
    with caplog.at_level(logging.DEBUG, logger="spfmilter"):
        DecisionLog(log_queue_id=True).event(
            logging.WARNING, "policy-close", {"reason": "too many connections", "limit": 512})
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, 'action=policy-close reason="too many connections" limit=512')]


def test_a_fault_line_is_followed_by_its_traceback_at_debug_level(caplog):
    """The traceback the front ends wrote themselves comes with the fault now: the error
    line first, then the traceback (shown with debugLevel 2 only)."""
    try:
        raise ValueError("boom")
    except ValueError as exc:
        error = exc
    with caplog.at_level(logging.DEBUG, logger="spfmilter"):
        DecisionLog(log_queue_id=True).fault("tempfail", "ValueError: boom",
                                             {"callback": "envrcpt"}, error)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, 'action=tempfail error="ValueError: boom" callback=envrcpt'),
        (logging.DEBUG, "traceback")]
    assert "raise ValueError" in caplog.text and "ValueError: boom" in caplog.text


def test_a_fault_without_its_exception_writes_no_traceback(caplog):
    with caplog.at_level(logging.DEBUG, logger="spfmilter"):
        DecisionLog(log_queue_id=True).fault("policy-close", "OSError: x", {}, None)
    assert [r.getMessage() for r in caplog.records] == ['action=policy-close error="OSError: x"']


def test_the_time_on_a_line_is_what_loggings_own_formatter_writes():
    """The formatter writes the date once per second; every record still gets the
    text logging's default formatter would give it, its milliseconds included,
    across second boundaries and back again."""
    fmt = "%(asctime)s spfmilter[%(process)d]: %(message)s"
    ours, standard = log_module._Formatter(fmt), logging.Formatter(fmt)
    base = 1_764_000_000.0
    for created in (base + 0.001, base + 0.999, base + 1.0, base + 1.5004, base + 59.25,
                    base + 0.5, base + 86_400.0, base + 86_400.9996):
        record = logging.LogRecord("spfmilter", logging.INFO, "", 0, "action=x", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == standard.format(record)
