"""``spfmilter replay`` throughput: messages/s on a 10,000-message mbox with warm DNS.

The mbox holds mail as a site's MTA delivered it (Return-Path, Delivered-To,
a re-injection on loopback above the MTA's own Received header), each
message from a transaction of the benchmark's warm set (bench/zones.py: 300
sender domains over 10 providers, include chains three deep, one client in
ten softfailing, one in ten on IPv6).  "Warm": the name server answers from
memory (NSD in ``make bench``, tests/kit/dnsserver.py when run alone), so the
figure is replay's own cost -- reading the store, the arrival headers, the
milter callbacks, SPF evaluation out of the per-process cache -- and the
report says whether the CPUs or something else bounded it.

In ``make bench`` (against NSD, after the policy runs; ``--no-replay`` skips it,
``--only-replay`` runs just this, without root); alone:
``python -m bench.replay_bench [--messages N] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import zones
from tests.kit import mailstore

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = 10_000
TARGET = 500.0          # messages/s on 2 CPUs
RECEIVER = "mx.bench.test"


def write_mbox(path: Path, count: int = MESSAGES, seed: int = 11) -> Path:
    rng = random.Random(seed)
    messages = []
    for n in range(count):
        tx = zones.warm_tx(rng)
        body = mailstore.simple(tx.sender, subject=f"message {n}", msgid=f"<{n}@bench.test>",
                                body="Hello.\r\n" * 20)
        messages.append(mailstore.delivered(
            body, [mailstore.reinjection(RECEIVER),
                   mailstore.postfix(tx.client_ip, tx.helo, by=RECEIVER, rdns="rdns.bench.test")],
            return_path=f"<{tx.sender}>", recipient=f"user{n % 50}@{RECEIVER}"))
    return mailstore.write_mbox(path, messages)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(mbox: Path, nameserver: str, jobs: int, work: Path, count: int = MESSAGES,
            server_cpu: Callable[[], float] = _own_cpu) -> dict:
    """One run of the real command on ``mbox`` (its output read and counted);
    ``server_cpu``: the name server's CPU seconds so far (default: this process's,
    where tests/kit/dnsserver.py runs)."""
    conf = work / "replay.conf"
    conf.write_text(f"Nameservers = {nameserver}\nAuthserv_Id = {RECEIVER}\nDKIM_Rescue = yes\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server0 = server_cpu()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "spfmilter", "replay", "-c", str(conf), "--json",
                           "--jobs", str(jobs), str(mbox)], cwd=ROOT, capture_output=True,
                          text=True, timeout=1800)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    dns_cpu = server_cpu() - server0
    lines = proc.stdout.splitlines()
    summary = json.loads(lines[-1])["summary"] if lines else {}
    cpus = len(os.sched_getaffinity(0))
    return {"messages": count, "jobs": jobs, "cpus": cpus, "exit": proc.returncode,
            "seconds": round(wall, 2), "messages_per_s": round(count / wall, 1),
            "cpu_s": round(cpu, 2), "cpu_use": round(cpu / (wall * min(jobs, cpus)), 2),
            "cpu_ms_per_message": round(cpu * 1000 / count, 3),
            "dns_server_cpu_s": round(dns_cpu, 2),
            "load_average": round(os.getloadavg()[0], 2),
            "actions": summary.get("actions"), "temperrors": summary.get("temperrors", {}).get("messages")}


def bound(r: dict) -> str:
    """What bounded the run: replay's CPU per message against the CPUs it had."""
    cpus = min(r["jobs"], r["cpus"])
    ceiling = cpus * 1000 / r["cpu_ms_per_message"] if r["cpu_ms_per_message"] else 0
    return (f"CPU: {r['cpu_ms_per_message']:.2f} CPU-ms per message in replay's processes "
            f"(at most {ceiling:.0f} messages/s on {cpus} CPUs if they had them to themselves); "
            f"they were {r['cpu_use']:.0%} busy, the rest of the CPUs going to the name server "
            f"({r['dns_server_cpu_s']:.1f} CPU-s) and the host's other load "
            f"(load average {r['load_average']})")


def target(r: dict) -> dict:
    return {"target": f"replay, warm DNS, {r['messages']:,}-message mbox: >= {TARGET:g} messages/s "
                      "on 2 CPUs",
            "measured": f"{r['messages_per_s']:.0f} messages/s with --jobs {r['jobs']} "
                        f"({bound(r)})",
            "met": r["messages_per_s"] >= TARGET and r["exit"] == 0}


def run(nameserver: str, work: Path, jobs: int, count: int = MESSAGES,
        server_cpu: Callable[[], float] = _own_cpu) -> dict:
    """A warm-up run, then the measured one, on a ``count``-message mbox made in ``work``."""
    mbox = write_mbox(work / "replay-bench.mbox", count)
    measure(mbox, nameserver, jobs, work, count, server_cpu)
    r = measure(mbox, nameserver, jobs, work, count, server_cpu)
    r["target"] = target(r)
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=MESSAGES)
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    from tests.kit.dnsserver import TestDNSServer

    server = TestDNSServer(zones.warm_zonedata(), ttl=3600).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            r = run(server.nameserver, Path(tmp), args.jobs, args.messages)
    finally:
        server.stop()
    print(json.dumps(r, indent=1))
    return 0 if r["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
