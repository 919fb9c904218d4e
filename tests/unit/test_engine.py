"""The engine: one evaluation and one decision per recipient reported to its observers, the
client address read one way for every front end, an observer's fault never a verdict's.

Real checkers against the tests' DNS server; the observers are recorders (they only
write down what they are told)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from socket import AF_INET6

import pytest

from spfmilter import config as cfg
from spfmilter import metrics, runtime
from spfmilter.core.transaction import Transaction
from spfmilter.core.values import Action, Verdict
from spfmilter.engine import Engine
from spfmilter.frontends import check as check_frontend
from spfmilter.frontends import milter as milter_frontend
from spfmilter.frontends import policy


class Recorder:
    """An observer that writes down every report."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def evaluated(self, txn: Transaction) -> None:
        self.events.append(("evaluated", txn.facts.client_ip, txn.sender))

    def decided(self, txn: Transaction, verdict: Verdict, recipient: str,
                extra: Mapping[str, object]) -> None:
        self.events.append(("decided", verdict.action, recipient, txn.facts.client_ip,
                            dict(extra)))

    def not_checked(self, txn: Transaction, reason: str) -> None:
        self.events.append(("not_checked", reason))

    def forged_removed(self, txn: Transaction, name: str, index: int, queue_id: str) -> None:
        self.events.append(("forged_removed", name, index, queue_id))

    def fault(self, action: str, error: str, fields: Mapping[str, object],
              exc: BaseException | None) -> None:
        self.events.append(("fault", action, error, dict(fields), exc))

    def event(self, level: int, action: str, fields: Mapping[str, object]) -> None:
        self.events.append(("event", level, action, dict(fields)))

    def connections_moved(self, by: int) -> None:
        self.events.append(("connections_moved", by))

    def kinds(self) -> list[object]:
        return [e[0] for e in self.events]


class Broken(Recorder):
    """An observer whose every report fails."""

    def decided(self, *args: object) -> None:
        raise RuntimeError("observer exploded")

    def evaluated(self, *args: object) -> None:
        raise RuntimeError("observer exploded")


@pytest.fixture
def install(dns_server) -> Iterator:
    """install(*observers, **settings) makes a runtime whose engine reports to them."""
    previous = runtime.current_or_none()

    def start(*observers: object, **more: str) -> Engine:
        s = cfg.from_mapping({"Nameservers": dns_server.nameserver, "Authserv_Id": "mx.test",
                              "skip_addresses": "", "Lookup_Time": "2", **more})
        rt = runtime.Runtime.create(s, observers=tuple(observers))  # type: ignore[arg-type]
        runtime.install(rt)
        return rt.engine

    yield start
    if previous is not None:
        runtime.install(previous)


def test_one_evaluation_and_one_decision_per_recipient(install, dns_server):
    rec = Recorder()
    session = install(rec).session()
    session.connect("[192.0.2.10]")
    session.hello("helo.test")
    session.mail("user@allowed.test", queue_id="Q1")
    verdicts = [session.rcpt(r, via="test") for r in ("a@mx.test", "b@mx.test", "c@mx.test")]
    assert [v.action for v in verdicts] == [Action.ACCEPT] * 3
    assert rec.events == [
        ("evaluated", "192.0.2.10", "user@allowed.test"),
        ("decided", Action.ACCEPT, "a@mx.test", "192.0.2.10", {"via": "test"}),
        ("decided", Action.ACCEPT, "b@mx.test", "192.0.2.10", {"via": "test"}),
        ("decided", Action.ACCEPT, "c@mx.test", "192.0.2.10", {"via": "test"}),
    ]
    end = session.end_of_message(b"Subject: x\r\n\r\nbody\r\n")
    assert end.refusal is None
    assert [n for n, _ in end.headers] == ["Authentication-Results", "Received-SPF",
                                           "Received-SPF"]
    assert len(rec.events) == 4          # an accepted message: nothing more to report
    assert session.txn is None           # the message is done


def test_a_refusal_is_reported_with_its_recipient(install):
    rec = Recorder()
    session = install(rec).session()
    session.connect("198.51.100.7")
    session.hello("unknown.test")
    session.mail("user@allowed.test")
    verdict = session.rcpt("a@mx.test")
    assert verdict.action is Action.REJECT
    assert rec.kinds() == ["evaluated", "decided"]
    assert rec.events[1][1:3] == (Action.REJECT, "a@mx.test")


def test_forged_result_headers_are_reported_as_removed(install):
    rec = Recorder()
    session = install(rec).session()
    session.connect("192.0.2.10")
    session.hello("helo.test")
    session.mail("user@allowed.test")
    session.rcpt("a@mx.test")
    session.header("Received-SPF", " pass (mx.test: forged) receiver=mx.test;")
    session.header("Subject", " hello")
    end = session.end_of_message(None, queue_id="Q9")
    assert end.removals == (("Received-SPF", 1),)
    assert rec.events[-1] == ("forged_removed", "Received-SPF", 1, "Q9")


def test_a_relay_without_a_readable_hop_is_reported_not_checked(install):
    rec = Recorder()
    session = install(rec, Trusted_Relays="192.0.2.0/24").session()
    session.connect("192.0.2.10")
    session.hello("relay.test")
    session.mail("user@allowed.test")
    session.rcpt("a@mx.test")
    assert rec.kinds() == ["decided"]   # nothing evaluated before end of headers
    session.end_of_headers()
    assert rec.kinds() == ["decided", "not_checked"]
    assert rec.events[1][1].startswith("trusted relay 192.0.2.10: ")


def test_a_session_that_does_not_see_the_message_has_dkim_rescue_and_relays_off(install):
    engine = install(Recorder(), Trusted_Relays="192.0.2.0/24", DKIM_Rescue="True")
    assert engine.session().policy.trusted_relays
    blind = engine.session(sees_message=False).policy
    assert not blind.trusted_relays and not blind.dkim_rescue


@pytest.mark.parametrize("raw, milter_addr, expected", [
    ("::ffff:192.0.2.10", ("::ffff:192.0.2.10", 25, 0, 0), "192.0.2.10"),
    ("unknown", None, ""),
    ("IPv6:2001:db8::1", ("2001:db8::1", 25, 0, 0), "2001:db8::1"),
])
def test_milter_and_policy_report_the_same_client_address(install, raw, milter_addr, expected):
    rec = Recorder()
    install(rec)
    answer = policy.Session().answer({
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": raw,
        "helo_name": "helo.test", "sender": "user@allowed.test", "recipient": "a@mx.test",
        "instance": "i1"})
    assert answer  # answered (what it is depends on the address; the record is what counts)
    by_policy = [e[3] for e in rec.events if e[0] == "decided"]

    rec.events.clear()
    m = milter_frontend.on_context(check_frontend.Recorder({}))
    m.connect("client", AF_INET6, milter_addr)
    m.hello("helo.test")
    m.envfrom("<user@allowed.test>")
    m.envrcpt("<a@mx.test>")
    by_milter = [e[3] for e in rec.events if e[0] == "decided"]
    assert by_policy == by_milter == [expected]


def test_an_observer_that_fails_changes_no_verdict(install, caplog):
    def run(*observers: object) -> tuple[list[Verdict], Recorder]:
        rec = Recorder()
        session = install(*observers, rec).session()
        session.connect("198.51.100.7")
        session.hello("unknown.test")
        session.mail("user@allowed.test")
        return [session.rcpt("a@mx.test"), session.rcpt("b@mx.test")], rec

    plain, rec_plain = run()
    with caplog.at_level(logging.ERROR, logger="spfmilter"):
        broken, rec_after = run(Broken())
    assert [v.action for v in broken] == [v.action for v in plain] == [Action.REJECT] * 2
    assert [v.reply for v in broken] == [v.reply for v in plain]
    assert rec_after.events == rec_plain.events   # the observer after it still hears everything
    failures = [r for r in caplog.records if "observer Broken failed" in r.getMessage()]
    assert [r.getMessage().split(" on ")[1].split(":")[0] for r in failures] == \
        ["evaluated", "decided", "decided"]


def test_a_fault_is_reported_to_every_observer(install):
    a, b = Recorder(), Recorder()
    install(a, b).fault("tempfail", "RuntimeError: x", callback="envrcpt", queue_id=None)
    assert a.events == b.events == [("fault", "tempfail", "RuntimeError: x",
                                     {"callback": "envrcpt", "queue_id": None}, None)]


class DeafToEvents(Recorder):
    """An observer that fails on every front-end event and every move of the gauge."""

    def event(self, *args: object) -> None:
        raise RuntimeError("observer exploded")

    def connections_moved(self, *args: object) -> None:
        raise RuntimeError("observer exploded")


def test_an_observer_that_fails_on_an_event_is_passed_over_and_the_next_still_hears_it(
        install, caplog):
    """A front end's event (bad input, a closed client) is reported like a decision: an
    observer that raises is logged and skipped, and the one after it gets the event."""
    rec = Recorder()
    engine = install(DeafToEvents(), rec)
    with caplog.at_level(logging.ERROR, logger="spfmilter"):
        engine.event(logging.INFO, "bad-input", error="no sender", via="policy")
        engine.connections_moved(1)
    assert rec.events == [("event", logging.INFO, "bad-input",
                           {"error": "no sender", "via": "policy"}),
                          ("connections_moved", 1)]
    failures = [r.getMessage() for r in caplog.records if "observer DeafToEvents failed" in
                r.getMessage()]
    assert [m.split(" on ")[1].split(":")[0] for m in failures] == ["event", "connections_moved"]


def test_a_fault_carries_its_exception_to_the_observers(install):
    """The front end no longer logs the traceback itself: the exception travels with
    the fault, for the log observer to write it."""
    rec = Recorder()
    session = install(rec).session()
    boom = ValueError("boom")
    session.fault("tempfail", "ValueError: boom", exc=boom, callback="envrcpt")
    assert rec.events == [("fault", "tempfail", "ValueError: boom", {"callback": "envrcpt"},
                           boom)]


def test_a_milter_connection_moves_the_gauge_through_the_engines_observers(install):
    """Opened and closed connections reach the observers (the metrics' gauge among
    them), not the metrics module straight from the front end."""
    rec = Recorder()
    install(rec)
    m = milter_frontend.on_context(check_frontend.Recorder({}))
    m.connect("client", AF_INET6, ("2001:db8::1", 25, 0, 0))
    assert rec.events == [("connections_moved", 1)]
    m.close()
    assert rec.events == [("connections_moved", 1), ("connections_moved", -1)]


def test_the_standard_observers_move_the_metrics_connections_gauge(install, dns_server):
    """With the observers the daemon runs with, the gauge moves exactly as a front end's
    connections open and close (policy's count, here)."""
    s = cfg.from_mapping({"Nameservers": dns_server.nameserver, "Metrics": "127.0.0.1:9100"})
    install(*runtime.standard_observers(s))
    def in_flight() -> float | None:
        return metrics.current().registry.get_sample_value("spfmilter_connections_in_flight")

    before = in_flight() or 0.0
    assert policy.connections.opened()
    assert in_flight() == before + 1
    policy.connections.closed()
    assert in_flight() == before
