"""Fixtures that start real servers: the test DNS server and spfmilter processes.

Every fixture waits for readiness with a bound (a log line, a socket) and
cleans up after itself.  Under CI (CI=true) a skipped test fails the run, so a
missing component cannot hide behind a skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from spfmilter.checks import spf as spf_check
from tests.kit import ZONES
from tests.kit.daemon import SpfmilterProcess
from tests.kit.dnsserver import TestDNSServer

# What the daemon and the CLI do at start-up: pyspf's DNS goes through our resolvers.
spf_check.install()


# --- DNS ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def _dns_session() -> Iterator[TestDNSServer]:
    server = TestDNSServer(ZONES).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dns_server(_dns_session: TestDNSServer) -> Iterator[TestDNSServer]:
    """The session's DNS server on 127.0.0.1, reset to tests/data/zones.yml after each test."""
    _dns_session.set_zones(ZONES)
    _dns_session.clear_queries()
    yield _dns_session
    _dns_session.set_zones(ZONES)


# --- spfmilter processes ----------------------------------------------------------

@pytest.fixture(scope="session")
def _milter_pool(tmp_path_factory: pytest.TempPathFactory,
                 _dns_session: TestDNSServer) -> Iterator[dict[tuple[object, ...], SpfmilterProcess]]:
    pool: dict[tuple[object, ...], SpfmilterProcess] = {}
    yield pool
    for proc in pool.values():
        proc.stop()


@pytest.fixture
def spfmilter(tmp_path_factory: pytest.TempPathFactory, dns_server: TestDNSServer,
              _milter_pool: dict[tuple[object, ...], SpfmilterProcess]
              ) -> Callable[..., SpfmilterProcess]:
    """Factory: ``spfmilter(**settings)`` gives a running real daemon pointed at the test DNS.

    Daemons are shared, per distinct settings, for the whole session: libmilter
    takes seconds to stop, and a milter keeps no state between connections
    except its DNS cache.  Pass ``fresh=True`` for a daemon of the test's own.
    """
    def start(fresh: bool = False, **settings: str) -> SpfmilterProcess:
        base = {"Nameservers": dns_server.nameserver, "skip_addresses": "",
                "Authserv_Id": "mx.test", "Lookup_Time": "3"}
        base.update({k: str(v) for k, v in settings.items()})
        key = tuple(sorted(base.items())) + ((("fresh", len(_milter_pool)),) if fresh else ())
        proc = _milter_pool.get(key)
        if proc is None or proc.proc is None or proc.proc.poll() is not None:
            proc = SpfmilterProcess(tmp_path_factory.mktemp("spfmilter"), base).start()
            _milter_pool[key] = proc
        return proc

    return start


# --- CI: a skip is a failure ----------------------------------------------------

def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        reporter.write_line(f"CI: {skipped} test(s) skipped; under CI every component "
                            "must be present, so this run fails", red=True)
        session.exitstatus = 1
