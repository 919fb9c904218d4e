"""spfmilter report on logs the real daemon wrote: plain, rotated, gzip'd and as the journal shows them.

Three real daemons (tests/kit/daemon.py) get real milter transactions against
the tests' DNS server: one enforcing (with Trusted_Relays), one with
DKIM_Rescue, one with ``TestOnly = 0``.  Their log files (spfmilter's own
``--log stderr`` format) are then rotated the way logrotate leaves them --
the current file, ``.1``, ``.2.gz`` -- and the real ``spfmilter report``
command reads them.  The journal inputs are the same real lines with the
prefix ``journalctl -o short`` puts before a message (``-o cat``: none).

What each daemon was sent is known here, so the expected counts come from the
transactions, not from the log the report reads.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_dkim_rescue import ZONES as DKIM_ZONES
from tests.integration.test_dkim_rescue import deliver, message
from tests.kit import ROOT, dkimkeys
from tests.kit.daemon import SpfmilterProcess
from tests.kit.dnsserver import TestDNSServer
from tests.kit.milterclient import MilterSession

pytestmark = pytest.mark.e2e

FORWARDER, FWD_HELO = "198.51.100.7", "forwarder.test"   # passes HELO, fails every sender
AUTHORIZED = "192.0.2.10"
RELAY = "10.9.9.9"
ENFORCING = {"TempError_Defer": "True", "Trusted_Relays": f"{RELAY}/32"}
RESCUE = {"DKIM_Rescue": "True"}
TESTONLY = {"TestOnly": "0"}


def send(milter: SpfmilterProcess, client: str, helo: str, sender: str,
         headers: list[tuple[str, str]] | None = None) -> str:
    with MilterSession(milter.socket_path) as s:
        s.connect(client)
        s.helo(helo)
        replies, eom = s.transaction(sender, ["rcpt@mx.test"], headers)
    if replies[0].kind != "continue":
        return replies[0].kind if replies[0].kind != "reply" else replies[0].code
    assert eom is not None
    return eom.final.kind if eom.final.kind != "reply" else eom.final.code


def received_from(helo: str, ip: str) -> str:
    return (f"from {helo} ({helo} [{ip}]) by relay.test (Postfix) with ESMTP id 4ABC "
            f"for <rcpt@mx.test>; Sat, 5 Dec 2026 05:00:00 +0000 (UTC)")


@pytest.fixture(scope="module")
def daemon_logs(tmp_path_factory: pytest.TempPathFactory,
                _dns_session: TestDNSServer) -> dict[str, list[str]]:
    """The log lines of the three daemons after their traffic, by daemon."""
    dns = _dns_session
    dns.update(DKIM_ZONES)
    base = {"Nameservers": dns.nameserver, "skip_addresses": "", "Authserv_Id": "mx.test",
            "Lookup_Time": "1"}
    daemons = {name: SpfmilterProcess(tmp_path_factory.mktemp(f"report-{name}"),
                                      {**base, **settings}).start()
               for name, settings in (("enforcing", ENFORCING), ("rescue", RESCUE),
                                      ("testonly", TESTONLY))}
    try:
        e, r, t = daemons["enforcing"], daemons["rescue"], daemons["testonly"]
        assert send(e, AUTHORIZED, "helo.test", "user@allowed.test") == "accept"
        # a forwarder: SPF fails (or softfails) for every sender domain it relays
        assert send(e, FORWARDER, FWD_HELO, "a@plain.test") == "550"
        assert send(e, FORWARDER, FWD_HELO, "b@allowed.test") == "550"
        assert send(e, FORWARDER, FWD_HELO, "c@soft.test") == "accept"
        assert send(e, AUTHORIZED, "helo.test", "d@dead.test") == "451"   # temperror, deferred
        assert send(e, RELAY, "relay.test", "e@allowed.test",
                    [("Received", received_from("helo.test", AUTHORIZED)),
                     ("From", "<e@allowed.test>"), ("Subject", "relayed")]) == "accept"
        assert send(t, FORWARDER, FWD_HELO, "f@plain.test") == "accept"  # TestOnly: would reject
        _, eom, _ = deliver(r, dkimkeys.sign(message(), "bank.test"))
        assert eom.final.kind == "accept"                                  # rescued by DKIM
        _, eom, _ = deliver(r, message())
        assert eom.final.kind == "reply" and eom.final.code == "550"      # not rescued
    finally:
        for d in daemons.values():
            d.stop()
    return {name: d.log_text().splitlines(keepends=True) for name, d in daemons.items()}


def report(*args: str, stdin: str | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "spfmilter", "report", "--json", *args],
                          input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["summary"]


@pytest.fixture(scope="module")
def rotated(daemon_logs: dict[str, list[str]], tmp_path_factory: pytest.TempPathFactory
            ) -> list[Path]:
    """The logs as logrotate leaves them: spfmilter.log, spfmilter.log.1, spfmilter.log.2.gz."""
    folder = tmp_path_factory.mktemp("rotated")
    current, one, two = folder / "spfmilter.log", folder / "spfmilter.log.1", \
        folder / "spfmilter.log.2.gz"
    current.write_text("".join(daemon_logs["enforcing"]))
    one.write_text("".join(daemon_logs["testonly"]))
    two.write_bytes(gzip.compress("".join(daemon_logs["rescue"]).encode()))
    return [two, one, current]


def journal_short(lines: list[str]) -> str:
    """The daemon's own lines as ``journalctl -o short`` prints them: "Dec 05 05:14:52
    HOST spfmilter[PID]: MESSAGE" (the time without milliseconds, no year)."""
    out = []
    for line in lines:
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ (spfmilter\[\d+\]: .*)", line, re.S)
        if m:
            when = dt.datetime.fromisoformat(m[1])
            out.append(f"{when:%b %d %H:%M:%S} mx.test {m[2]}")
    return "".join(out)


def journal_cat(lines: list[str]) -> str:
    return "".join(line.partition("]: ")[2] for line in lines if "]: " in line)


def test_report_counts_what_the_daemons_decided(rotated):
    s = report(*map(str, rotated))
    assert s["actions"] == {"accept": 5, "defer": 1, "reject": 3}
    assert s["decisions"] == 9 and s["provisional"] == 3   # two held, one relayed at RCPT
    assert s["results"]["mailfrom"] == {"fail": 5, "pass": 2, "softfail": 1, "temperror": 1}
    assert s["refused"]["by_sender_domain"]["top"] == {"allowed.test": 1, "bank.test": 1,
                                                       "plain.test": 1}
    assert s["refused"]["by_client"]["top"] == {FORWARDER: 3}
    assert s["deferred"]["by_sender_domain"]["top"] == {"dead.test": 1}


def test_report_shows_what_testonly_kept_from_refusing(rotated):
    would = report(*map(str, rotated))["would_refuse"]
    assert would["count"] == 1 and would["by_action"] == {"reject": 1}
    assert would["by_sender_domain"]["top"] == {"plain.test": 1}
    assert would["by_client"]["top"] == {FORWARDER: 1}


def test_report_names_the_forwarder_and_the_lines_that_exempt_it(rotated):
    [forwarder] = report(*map(str, rotated))["forwarders"]
    assert forwarder["client_ip"] == FORWARDER
    assert forwarder["domains"] == ["allowed.test", "bank.test", "plain.test", "soft.test"]
    assert forwarder["exempt"] == [f"Whitelist = {FORWARDER}", f"Domain_Whitelist = {FWD_HELO}"]


def test_report_counts_dkim_rescues_relay_hops_and_temperrors(rotated):
    s = report(*map(str, rotated))
    assert s["dkim"]["rescued"] == 1 and s["dkim"]["not_rescued"] == 1
    assert s["dkim"]["by_domain"]["top"] == {"bank.test": 1}
    assert s["relay_hops"]["by_relay"]["top"] == {RELAY: 1}
    assert s["temperror"]["by_name"]["top"] == {"dead.test": 1}
    assert s["internal_errors"]["count"] == 0


def test_report_of_the_journal_short_and_cat_output_is_the_same(daemon_logs, rotated):
    every = [line for lines in daemon_logs.values() for line in lines]
    from_files = report(*map(str, rotated))
    short = report("-", stdin=journal_short(every))
    cat = report(stdin=journal_cat(every))
    assert short == from_files
    assert cat["period"] == {"first": None, "last": None}
    assert {**cat, "period": None} == {**from_files, "period": None}


def test_report_period_and_since_until(daemon_logs, rotated):
    stamps = sorted(m[1] for lines in daemon_logs.values() for line in lines
                    if (m := re.match(r"(\S+ \d\d:\d\d:\d\d),\d+ spfmilter\[\d+\]: action=(accept|"
                                      r"reject|defer) ", line)))
    s = report(*map(str, rotated))
    assert s["period"] == {"first": stamps[0], "last": stamps[-1]}
    later = dt.datetime.fromisoformat(stamps[-1]) + dt.timedelta(seconds=1)
    assert report("--since", later.isoformat(" "), *map(str, rotated))["decisions"] == 0
    assert report("--until", later.isoformat(" "), *map(str, rotated))["decisions"] == 9


def test_report_text_is_a_pflogsumm_like_summary(rotated):
    proc = subprocess.run([sys.executable, "-m", "spfmilter", "report", *map(str, rotated)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Refused (reject): 3" in proc.stdout
    assert f"      exempt with: Whitelist = {FORWARDER}" in proc.stdout
    assert "DKIM_Rescue: 1 rescued, 1 not rescued" in proc.stdout
