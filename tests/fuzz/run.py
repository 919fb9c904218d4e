"""``make fuzz``: the longer fuzz run, with its figures written to tests/fuzz/RESULTS.md.

    python -m tests.fuzz.run [--seconds N] [--engine auto|atheris|hypothesis] [--targets a,b]

In-process targets (tests/fuzz/targets.py: headers, forged, milter) run under
atheris (libFuzzer, coverage-guided) when it is installed, else under
hypothesis (``st.binary()``, many examples).  The ``protocol`` target sends
mutated milter sessions (tests/fuzz/protocol.py, every mutation, malformed
macro packets included) to a real spfmilter daemon with the test DNS server;
when the daemon dies it is recorded and started again.

Every target runs for ``--seconds`` (bounded; a failing target is restarted
on the time left, at most MAX_FAILURES times).  Findings are kept under
.cache/fuzz/artifacts/ (inputs libFuzzer wrote, protocol sessions that killed
the daemon).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = ROOT / ".cache" / "fuzz"
RESULTS = HERE / "RESULTS.md"
IN_PROCESS = ("headers", "forged", "milter")
MAX_FAILURES = 3


def _finding(text: str) -> str:
    """One line naming a failure: the target's exception (atheris) or libFuzzer's summary."""
    found = re.findall(r"^(Broken: .*|[A-Za-z]+Error: .*|SUMMARY: .*)$", text, re.M)
    return (found[0] if found else text.strip().splitlines()[-1] if text.strip() else "?")[:300]


def run_atheris(name: str, seconds: float) -> dict:
    from tests.fuzz.targets import finding_kind

    corpus = WORK / "corpus" / name
    artifacts = WORK / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + seconds
    runs, failures, findings, known = 0, 0, [], []
    while time.monotonic() < deadline - 1 and failures < MAX_FAILURES:
        left = int(deadline - time.monotonic())
        proc = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.atheris_main", name, f"-max_total_time={left}",
             "-print_final_stats=1", "-timeout=30", "-rss_limit_mb=4096",
             f"-artifact_prefix={artifacts}/{name}-", str(corpus)],
            cwd=ROOT, capture_output=True, text=True, errors="replace", timeout=left + 120,
            env={**os.environ, "FUZZ_IGNORE": "\n".join(known)})
        out = proc.stdout + proc.stderr
        m = re.search(r"stat::number_of_executed_units: (\d+)", out)
        runs += int(m.group(1)) if m else 0
        if proc.returncode != 0:
            failures += 1
            unit = re.search(r"Test unit written to (\S+)", out)
            finding = _finding(out)
            findings.append({"finding": finding, "input": unit.group(1) if unit else None})
            if finding.startswith("Broken: "):       # look for other kinds on the time left
                known.append(finding_kind(finding[len("Broken: "):]))
            else:
                break
    return {"target": name, "engine": "atheris (libFuzzer)", "runs": runs,
            "seconds": round(seconds - max(0.0, deadline - time.monotonic())),
            "failures": failures, "findings": findings}


def run_hypothesis(name: str, seconds: float) -> dict:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from tests.fuzz.invariants import Broken
    from tests.fuzz.targets import TARGETS, finding_kind, ignoring_known

    base = TARGETS[name]()
    known: list[str] = []
    count = [0]

    def target(raw: bytes) -> None:
        ignoring_known(base, "\n".join(known))(raw)

    @settings(max_examples=1000, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=4096))
    def one(raw: bytes) -> None:
        count[0] += 1
        target(raw)

    started = time.monotonic()
    failures, findings = 0, []
    while time.monotonic() - started < seconds and failures < MAX_FAILURES:
        try:
            one()
        except Exception as exc:
            failures += 1
            findings.append({"finding": f"{type(exc).__name__}: {exc}"[:300], "input": None})
            if isinstance(exc, Broken):
                known.append(finding_kind(str(exc)))
    return {"target": name, "engine": "hypothesis", "runs": count[0],
            "seconds": round(time.monotonic() - started), "failures": failures,
            "findings": findings}


def run_protocol(seconds: float, seed: int) -> dict:
    from tests.fuzz import protocol
    from tests.fuzz.invariants import Broken
    from tests.kit import ZONES
    from tests.kit.daemon import SpfmilterProcess
    from tests.kit.dnsserver import TestDNSServer
    from tests.kit.rawmilter import RawSession

    artifacts = WORK / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    dns = TestDNSServer(ZONES).start()
    settings = {"Nameservers": dns.nameserver, "skip_addresses": "", "Authserv_Id": "mx.test",
                "Lookup_Time": "2"}
    sessions, headers, failures, restarts, findings = 0, 0, 0, 0, []
    started = time.monotonic()

    def start() -> SpfmilterProcess:
        work = WORK / "protocol-daemon"
        shutil.rmtree(work, ignore_errors=True)
        return SpfmilterProcess(work, settings).start()

    def alive(milter: SpfmilterProcess) -> bool:
        try:
            with RawSession(milter.socket_path, timeout=5):
                return True
        except OSError:
            return False

    milter = start()
    recent: list[bytes] = []
    try:
        while time.monotonic() - started < seconds:
            wire = protocol.mutate(rng, protocol.valid_session(rng))
            recent = (recent + [wire])[-25:]
            try:
                headers += protocol.run_session(milter.socket_path, wire)
            except Broken as exc:
                failures += 1
                findings.append({"finding": f"Broken: {exc}"[:300], "input": None})
            sessions += 1
            if sessions % 25 == 0 or milter.proc.poll() is not None:
                if milter.proc.poll() is None and alive(milter):
                    continue
                # The supervisor restarts a crashed worker: give it a moment.
                deadline = time.monotonic() + 10
                while milter.proc.poll() is None and not alive(milter) \
                        and time.monotonic() < deadline:
                    time.sleep(0.05)
                suspect = any(protocol.has_malformed_macros(w) for w in recent)
                recovered = milter.proc.poll() is None and alive(milter)
                path = artifacts / f"protocol-session-{sessions}.json"
                path.write_text(json.dumps([w.hex() for w in recent]))
                if recovered and suspect:
                    # libmilter's own crash on a malformed macro packet (upstream); the
                    # supervisor started a new worker: recovered, not a failure.
                    restarts += 1
                    findings.append({"finding": "worker crashed on a malformed macro "
                                     "packet (libmilter smfi_getsymval) and was restarted",
                                     "input": str(path)})
                    continue
                failures += 1
                code = milter.proc.poll()
                findings.append({"finding": ("daemon down" if not recovered else
                                             "worker restarted") + f" (exit {code})"
                                 + " within the last 25 sessions"
                                 + (", which include a malformed macro packet" if suspect
                                    else ", none with a malformed macro packet"),
                                 "input": str(path)})
                milter.stop()
                milter = start()
        log = milter.log_text()
        if "Traceback" in log:
            failures += 1
            findings.append({"finding": "Traceback in the daemon log", "input": None})
    finally:
        milter.stop()
        dns.stop()
    elapsed = time.monotonic() - started
    kinds: dict[str, int] = {}
    for f in findings:
        key = re.sub(r"\d+", "N", f["finding"])
        kinds[key] = kinds.get(key, 0) + 1
    return {"target": "protocol", "engine": "mutated milter sessions, real daemon",
            "runs": sessions, "seconds": round(elapsed), "failures": failures,
            "headers_checked": headers, "restarts": restarts,
            "findings": findings[:5], "finding_kinds": kinds}


DESCRIPTIONS = {"headers": "header building", "forged": "forged-header recognition",
                "milter": "the milter class", "protocol": "the milter protocol against the daemon"}


def _kinds(results: list[dict]) -> list[str]:
    out = []
    for r in results:
        for kind, n in r.get("finding_kinds", {}).items():
            out.append(f"{r['target']}: {n} x {kind}")
        if not r.get("finding_kinds"):
            out += [f"{r['target']}: {f['finding'][:120]}" for f in r["findings"]]
    return out


def write_results(results: list[dict], engine: str) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    total_runs = sum(r["runs"] for r in results)
    total_secs = sum(r["seconds"] for r in results)
    total_fail = sum(r["failures"] for r in results)
    lines = [
        "# Fuzz results",
        "",
        f"Last `make fuzz`: {now}, Python {platform.python_version()}, engine for the in-process "
        f"targets: {engine}.  Written by tests/fuzz/run.py; targets in tests/fuzz/targets.py and "
        "tests/fuzz/protocol.py.",
        "",
        "| target | engine | inputs run | duration | failures |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['target']} | {r['engine']} | {r['runs']:,} | {r['seconds']} s | "
                     f"{r['failures']} |")
    lines += ["", f"Total: {total_runs:,} inputs in {total_secs / 60:.1f} min, {total_fail} failures.",
              "", "## Findings", ""]
    any_finding = False
    for r in results:
        for f in r["findings"]:
            any_finding = True
            where = f" (input: `{os.path.relpath(f['input'], ROOT)}`)" if f.get("input") else ""
            lines.append(f"- **{r['target']}**: {f['finding']}{where}")
        for kind, n in r.get("finding_kinds", {}).items():
            lines.append(f"- **{r['target']}** (all occurrences): {n} x {kind}")
    if not any_finding:
        lines.append("None.")
    lines += ["", "Line for the README:", "",
              f"> Fuzzing (`make fuzz`, {now[:10]}): {total_runs:,} inputs in "
              f"{total_secs / 60:.1f} min over {len(results)} targets ("
              + ", ".join(DESCRIPTIONS.get(r["target"], r["target"]) for r in results)
              + f"), {total_fail} failures"
              + (f" ({'; '.join(_kinds(results))})" if total_fail else "") + ".", "",
              "```json", json.dumps(results, indent=1), "```", ""]
    RESULTS.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 120)),
                    help="time per target (default 120, or $FUZZ_SECONDS)")
    ap.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    ap.add_argument("--targets", default=",".join(IN_PROCESS + ("protocol",)))
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    results = []
    for name in args.targets.split(","):
        print(f"fuzz: {name} for {args.seconds:g} s ...", flush=True)
        if name == "protocol":
            r = run_protocol(args.seconds, args.seed)
        elif engine == "atheris":
            r = run_atheris(name, args.seconds)
        else:
            r = run_hypothesis(name, args.seconds)
        print(f"fuzz: {name}: {r['runs']:,} inputs, {r['failures']} failures", flush=True)
        results.append(r)
    write_results(results, "atheris (libFuzzer)" if engine == "atheris" else "hypothesis")
    print(f"fuzz: figures written to {RESULTS.relative_to(ROOT)}")
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
