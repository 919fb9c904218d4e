"""The openspf RFC 7208 test suite, played through the real spfmilter daemon.

Each scenario's ``zonedata`` is served by a TestDNSServer of its own and gets
an spfmilter process of its own (the DNS cache is per process, so no answer
leaks from one scenario into the next).  Each test case is one SMTP
transaction over the milter protocol: connect from the case's ``host``, HELO
with its ``helo``, MAIL FROM its ``mailfrom`` (empty: the null sender), one
RCPT and a tiny message; the result is read back from the Received-SPF
(identity=mailfrom) and Authentication-Results (spf ... smtp.mailfrom) headers
spfmilter inserts, which must agree.  For the null sender that is the result
for postmaster@HELO (RFC 7208 §2.4), which is what the suite's HELO-only
cases expect.

The suite file is ``$RFC7208_TESTS`` or ``../shared/data/rfc7208-tests.yml``
beside the repository; a missing file fails the run.  Cases that cannot pass
through a real DNS path or a milter are listed with their reason in
``rfc7208-expected-failures.txt`` and run as strict xfails.  A summary line
``rfc7208: N passed, M failed, K expected-failures`` ends the terminal report.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import authres
import pytest
import yaml

from tests.kit import ROOT
from tests.kit.daemon import SpfmilterProcess
from tests.kit.dnsserver import TestDNSServer
from tests.kit.milterclient import MilterSession
from tests.kit.wait import wait_for

SUITE = Path(os.environ.get("RFC7208_TESTS") or ROOT / ".." / "shared" / "data" / "rfc7208-tests.yml")
EXPECTED_FAILURES = ROOT / "tests" / "rfc7208-expected-failures.txt"
AUTHSERV_ID = "mx.test"
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")

# Annotate only: every result must reach the headers, none may refuse the mail.
MILTER_SETTINGS = {
    "Authserv_Id": AUTHSERV_ID,
    "HELO_reject": "False",
    "Mail_From_reject": "False",
    "PermError_reject": "False",
    "TempError_Defer": "False",
    "skip_addresses": "",
    "Header_Type": "both",
    "Lookup_Time": "2",          # TIMEOUT cases cost this long each
    # the suite checks RFC 7208's results: a pass from a record that authorizes every
    # address (+all, a/0, ip4:0.0.0.0/0, ...) is a pass there; spfmilter's default
    # reports it as neutral (tests/integration/test_hostile.py)
    "Pass_All_Records": "pass",
}


def _load_suite() -> list[dict]:
    if not SUITE.is_file():
        return []
    return [doc for doc in yaml.safe_load_all(SUITE.read_text(encoding="utf-8")) if doc]


def _load_expected_failures() -> dict[str, str]:
    """``scenario::case  reason`` per line; '#' starts a comment line."""
    out: dict[str, str] = {}
    if not EXPECTED_FAILURES.is_file():
        return out
    for number, line in enumerate(EXPECTED_FAILURES.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = re.split(r"\s{2,}|\t", line.strip(), maxsplit=1)
        if len(parts) != 2 or "::" not in parts[0]:
            raise ValueError(f"{EXPECTED_FAILURES.name}:{number}: expected "
                             f"'scenario::case  reason', got {line!r}")
        out[parts[0]] = parts[1].strip()
    return out


SCENARIOS = _load_suite()
XFAIL = _load_expected_failures()


@dataclass(frozen=True)
class Case:
    scenario: int        # index into SCENARIOS
    name: str
    spec: dict

    @property
    def id(self) -> str:
        return f"{SCENARIOS[self.scenario]['description']}::{self.name}"


def _params() -> list:
    if not SCENARIOS:
        return [pytest.param(None, id="suite-missing")]
    params = []
    for index, scenario in enumerate(SCENARIOS):
        for name, spec in scenario["tests"].items():
            case = Case(index, name, spec)
            marks = []
            if case.id in XFAIL:
                marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=XFAIL[case.id]))
            params.append(pytest.param(case, id=case.id, marks=marks))
    return params


PARAMS = _params()


# --- one DNS server and one spfmilter per scenario ---------------------------------

class KillableMilter(SpfmilterProcess):
    """spfmilter in a process group of its own.

    Stopping is not under test here, and a graceful stop takes seconds; the
    daemon is a supervisor with a forked worker, so a kill must reach
    the whole group, or the worker would be left running.
    """

    def start(self, timeout: float = 20.0) -> KillableMilter:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spfmilter", "-c", str(self.config_path), "--log", "stderr"],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            wait_for(lambda: self.proc.poll() is not None or "action=start" in self.log_text(),
                     timeout, "spfmilter to start")
            if self.proc.poll() is not None:
                raise AssertionError(f"spfmilter exited with {self.proc.returncode}:\n{self.log_text()}")
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # supervisor and worker
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log.close()
        self.proc = None


class _Scenario:
    def __init__(self, index: int, workdir: Path) -> None:
        self.index = index
        self.dns = TestDNSServer(SCENARIOS[index].get("zonedata") or {}).start()
        try:
            self.milter = KillableMilter(
                workdir, {"Nameservers": self.dns.nameserver, **MILTER_SETTINGS}).start()
        except BaseException:
            self.dns.stop()
            raise

    def close(self) -> None:
        self.milter.kill()
        self.dns.stop()


class _Scenarios:
    """Starts a scenario's servers on first use and closes the previous one then."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp = tmp_path_factory
        self.current: _Scenario | None = None

    def get(self, index: int) -> _Scenario:
        if self.current is not None and self.current.index != index:
            self.close()
        if self.current is None:
            self.current = _Scenario(index, self.tmp.mktemp(f"rfc7208-{index}"))
        return self.current

    def close(self) -> None:
        if self.current is not None:
            current, self.current = self.current, None
            current.close()


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Scenarios]:
    pool = _Scenarios(tmp_path_factory)
    try:
        yield pool
    finally:
        pool.close()


# --- the summary line ----------------------------------------------------------------

class _Summary:
    """Counts this module's case outcomes and prints one line at the end."""

    def __init__(self) -> None:
        self.outcome: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "test_rfc7208.py::test_case[" not in report.nodeid:
            return
        if hasattr(report, "wasxfail") and report.skipped:
            self.outcome[report.nodeid] = "xfail"
        elif report.failed:
            self.outcome[report.nodeid] = "failed"
        elif report.when == "call" and report.passed:
            self.outcome.setdefault(report.nodeid, "passed")

    def pytest_terminal_summary(self, terminalreporter) -> None:  # type: ignore[no-untyped-def]
        values = list(self.outcome.values())
        terminalreporter.write_line(
            f"rfc7208: {values.count('passed')} passed, {values.count('failed')} failed, "
            f"{values.count('xfail')} expected-failures")


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    name = "rfc7208-summary"
    if request.config.pluginmanager.get_plugin(name) is None:
        request.config.pluginmanager.register(_Summary(), name)
    yield


# --- reading the verdict back from the headers --------------------------------------

_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_KV = re.compile(r'([A-Za-z][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|[^;\s"]+)')


def received_spf_pairs(value: str) -> tuple[str, dict[str, str]]:
    """(result, {key: value}) of a Received-SPF value; quoted values unquoted."""
    result, _, rest = value.strip().partition(" ")
    rest = _COMMENT.sub(" ", rest)
    pairs = {}
    for key, raw in _KV.findall(rest):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        pairs[key.lower()] = raw
    return result.lower(), pairs


def mailfrom_verdict(headers: list[tuple[str, str]]) -> str:
    """The MAIL FROM result both headers report; fails if they are missing or disagree."""
    spf = [received_spf_pairs(v) for n, v in headers if n.lower() == "received-spf"]
    spf = [(result, pairs) for result, pairs in spf if pairs.get("identity") == "mailfrom"]
    assert len(spf) == 1, f"want one Received-SPF with identity=mailfrom: {headers}"
    assert spf[0][1].get("receiver") == AUTHSERV_ID, headers

    ars = [v for n, v in headers if n.lower() == "authentication-results"]
    assert len(ars) == 1, f"want one Authentication-Results: {headers}"
    parsed = authres.AuthenticationResultsHeader.parse_value(ars[0])
    assert parsed.authserv_id == AUTHSERV_ID, ars[0]
    clauses = [r.result for r in parsed.results if r.method == "spf"
               and any((p.type, p.name) == ("smtp", "mailfrom") for p in r.properties)]
    assert len(clauses) == 1, f"want one spf clause with smtp.mailfrom: {ars[0]}"

    assert spf[0][0] == clauses[0].lower(), f"headers disagree: {headers}"
    assert spf[0][0] in RESULTS, headers
    return spf[0][0]


def run_case(milter: SpfmilterProcess, spec: dict) -> list[tuple[str, str]]:
    """One transaction for one case; the headers spfmilter inserted, top-down."""
    with MilterSession(milter.socket_path, timeout=30) as session:
        session.connect(spec["host"])
        session.helo(spec["helo"])
        replies, eom = session.transaction(
            spec["mailfrom"] or "", ["postmaster@mx.test"],
            [("From", "<test@mx.test>"), ("Subject", "rfc7208")])
    assert [r.kind for r in replies] == ["continue"], f"RCPT refused: {replies}"
    assert eom is not None and eom.final.kind == "accept", eom
    return eom.headers_on_top()


@pytest.mark.e2e
@pytest.mark.parametrize("case", PARAMS)
def test_case(case: Case | None, scenarios: _Scenarios) -> None:
    if case is None:
        pytest.fail(f"RFC 7208 test suite not found at {SUITE} (set RFC7208_TESTS)")
    scenario = scenarios.get(case.scenario)
    headers = run_case(scenario.milter, case.spec)
    got = mailfrom_verdict(headers)
    expected = case.spec["result"]
    acceptable = expected if isinstance(expected, list) else [expected]
    assert got in acceptable, (
        f"{case.id}: got {got}, suite wants {expected} "
        f"({case.spec.get('description', '')}; spec {case.spec.get('spec')})\n"
        f"headers: {headers}\nlog tail:\n" + "\n".join(scenario.milter.log_text().splitlines()[-5:]))


# --- RFC 7208 §5.5 beyond the suite: DNS errors inside the ptr mechanism -------------
#
# "If a DNS error occurs while doing the PTR RR lookup, then this mechanism fails
#  to match.  If a DNS error occurs while doing an A RR lookup, then that domain
#  name is skipped and the search continues."  The suite covers this only with a
# CNAME loop (ptr-cname-loop); a real resolver answers a loop, like any broken
# zone, with SERVFAIL, which is what these cases serve.

PTR_ZONES = {
    "ptr.test": [{"TXT": "v=spf1 ptr:ptr.test -all"}],
    "77.2.0.192.in-addr.arpa": [{"PTR": ["broken.ptr.test", "good.ptr.test"]}],
    "broken.ptr.test": ["SERVFAIL"],
    "good.ptr.test": [{"A": "192.0.2.77"}],
    "78.2.0.192.in-addr.arpa": ["SERVFAIL"],
    "helo.ptr.test": [{"A": "192.0.2.1"}],
}


@pytest.mark.e2e
@pytest.mark.parametrize("ip,result", [
    ("192.0.2.77", "pass"),   # A lookup of one PTR name fails: skip it, the next one matches
    ("192.0.2.78", "fail"),   # the PTR lookup itself fails: ptr does not match, -all applies
], ids=["a-lookup-error-skips-name", "ptr-lookup-error-no-match"])
def test_ptr_dns_errors_per_rfc7208_5_5(ip: str, result: str, scenarios: _Scenarios,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    scenarios.close()
    with TestDNSServer(PTR_ZONES) as dns:
        milter = KillableMilter(tmp_path_factory.mktemp("rfc7208-ptr"),
                                {"Nameservers": dns.nameserver, **MILTER_SETTINGS}).start()
        try:
            headers = run_case(milter, {"host": ip, "helo": "helo.ptr.test", "mailfrom": "user@ptr.test"})
        finally:
            milter.kill()
    assert mailfrom_verdict(headers) == result, headers


def test_expected_failures_name_real_cases() -> None:
    """Every line of the expected-failures file names a case of the suite."""
    if not SCENARIOS:
        pytest.fail(f"RFC 7208 test suite not found at {SUITE} (set RFC7208_TESTS)")
    known = {p.id for p in PARAMS}
    assert sorted(set(XFAIL) - known) == []
