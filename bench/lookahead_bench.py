"""Cold SPF latency with a slow upstream: a message's HELO and MAIL FROM evaluations
against a name server that answers every name after a fixed delay.

Why: with a cache that answers nothing yet, a message waits for its lookups;
evaluated one after another that is their number times the upstream's answer
time, and with the names of a record looked up together (``_Query.look_ahead``)
the depth of its record tree.  This measures that wait for the benchmark's cold
record tree (bench/zones.py: ``v=spf1 mx a:out... include:_spf... ~all``, the
include chain three deep, two MX hosts; the HELO name's ``a include:_nb...``),
with a client address that passes at the last range list, so every term is
walked.  The name server is the tests' (tests/kit/dnsserver.py, ``DELAY`` on
every name), on loopback.

Each measurement runs in a process of its own, with the code tree named by
``--tree`` first on the path, so two trees (say the merge base and a branch) can be
run interleaved with ``--compare BEFORE AFTER``; each process evaluates
``--messages`` messages on domains of their own (no cache helps) and prints the
median wall time per message and the queries per message.

``python -m bench.lookahead_bench --compare /tmp/before . [--rounds 5] [--delay 0.02]``
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_TOLD = False


def _zonedata(messages: int, delay: float) -> dict[str, list[object]]:
    from bench.zones import _cold_records

    data: dict[str, list[object]] = {}
    for i in range(messages):
        for name, rtype, value in _cold_records(i):
            if rtype == "MX":
                value = [value[0], value[1].rstrip(".")]
            data.setdefault(name.rstrip("."), []).append({rtype: value})
    for entries in data.values():
        entries.append({"DELAY": delay})
    return data


def _told() -> bool:
    """Whether this tree's checker takes the domains of a message's evaluations."""
    import inspect

    from spfmilter.checks import spf as spf_check
    return "domains" in inspect.signature(spf_check.Checker.each).parameters


def measure(messages: int, delay: float) -> dict[str, float | str]:
    """In this process: the median wall time of one cold message, and its queries."""
    from spfmilter.checks import spf as spf_check
    from spfmilter.resolver import Resolver
    from tests.kit.dnsserver import TestDNSServer

    global _TOLD
    _TOLD = _told()
    spf_check.install()
    server = TestDNSServer(_zonedata(messages, delay)).start()
    try:
        checker = spf_check.Checker(Resolver((server.address,), timeout=5.0),
                                    receiver="mx.test", void_limit=2)
        times, cpu = [], []
        for i in range(messages):
            k = i % 10
            ip, helo, sender = f"198.19.{k * 20 + 9}.9", f"h.c{i}.cold.bench.test", \
                f"u@c{i}.cold.bench.test"
            started, thread_started = time.perf_counter(), time.thread_time()
            results = checker.each([
                functools.partial(checker, "helo", ip, "", helo, lookup_time=5.0),
                functools.partial(checker, "mailfrom", ip, sender, helo, lookup_time=5.0)],
                *([[helo, sender.partition("@")[2]]] if _TOLD else []))
            times.append(time.perf_counter() - started)
            cpu.append(time.thread_time() - thread_started)
            assert [r.result for r in results] == ["pass", "pass"], results
        return {"median_ms": statistics.median(times) * 1000,
                "cpu_ms": statistics.median(cpu) * 1000,
                "queries_per_message": len(server.queries) / messages,
                "code": str(Path(spf_check.__file__).parent.parent)}
    finally:
        server.stop()


def _run(tree: Path, messages: int, delay: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=f"{tree.resolve()}{os.pathsep}{ROOT}")
    # -P: the tree comes first on the path, not the working directory
    out = subprocess.run([sys.executable, "-P", "-m", "bench.lookahead_bench", "--one",
                          "--messages", str(messages), "--delay", str(delay)],
                         env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=30)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.messages, args.delay)))
        return
    trees = args.compare or [ROOT, ROOT]
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for _ in range(args.rounds):                       # interleaved
        for label, tree in zip(runs, trees, strict=True):
            runs[label].append(_run(tree, args.messages, args.delay))
    for label, tree in zip(runs, trees, strict=True):
        medians = [r["median_ms"] for r in runs[label]]
        print(f"{label:6} {runs[label][0]['code']}: median {statistics.median(medians):.1f} ms per message "
              f"(rounds: {', '.join(f'{m:.1f}' for m in medians)}), "
              f"CPU {statistics.median(r['cpu_ms'] for r in runs[label]):.2f} ms of the "
              "evaluating thread, "
              f"{runs[label][0]['queries_per_message']:.2f} queries per message")


if __name__ == "__main__":
    main()
