"""Fixtures that start real servers: the test DNS server and spfmilter processes.

Every fixture waits for readiness with a bound (a log line, a socket) and
cleans up after itself.  Under CI (CI=true) a skipped test fails the run, so a
missing component cannot hide behind a skip.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from tests.dnsserver import TestDNSServer

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
ZONES = yaml.safe_load((DATA / "zones.yml").read_text())


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.01) -> object:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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

class SpfmilterProcess:
    """A running ``spfmilter`` daemon with its own config, socket and log file."""

    def __init__(self, workdir: Path, settings: dict[str, str]) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_path = str(workdir / "spfmilter.sock")
        self.socket_spec = f"unix:{self.socket_path}"
        self.config_path = workdir / "spfmilter.conf"
        self.log_path = workdir / "spfmilter.log"
        lines = [f"Socket = {self.socket_spec}"] + [f"{k} = {v}" for k, v in settings.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "SpfmilterProcess":
        self._log = open(self.log_path, "ab")
        # its own process group: the supervisor and its milter child go down together
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spfmilter", "-c", str(self.config_path), "--log", "stderr"],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        wait_for(lambda: self.proc.poll() is not None or "action=start" in self.log_text(),
                 timeout, "spfmilter to start")
        if self.proc.poll() is not None:
            raise AssertionError(f"spfmilter exited with {self.proc.returncode}:\n{self.log_text()}")
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        regex = re.compile(pattern)
        return wait_for(lambda: regex.search(self.log_text()), timeout,
                        f"log line matching {pattern!r}")  # type: ignore[return-value]

    def decisions(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if " action=" in line]

    def kill(self) -> None:
        """SIGKILL the supervisor and the milter process (its whole process group)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def _milter_pool(tmp_path_factory: pytest.TempPathFactory,
                 _dns_session: TestDNSServer) -> Iterator[dict]:
    pool: dict[tuple, SpfmilterProcess] = {}
    yield pool
    for proc in pool.values():
        proc.stop()


@pytest.fixture
def spfmilter(tmp_path_factory: pytest.TempPathFactory, dns_server: TestDNSServer,
              _milter_pool: dict) -> Callable[..., SpfmilterProcess]:
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
