"""Soak: hundreds of thousands of transactions over the milter protocol against the real daemon.

    python -m soak.soak [--transactions 200000] [--workers 2] [--threads 4] [--ttl 60]

What runs: the test DNS server (tests/dnsserver.py) with a few hundred sender
domains whose records include shared provider records, which include core
records (a/mx mechanisms, exp=, ~all/-all/?all), plus HELO names with and
without records; TTL ``--ttl`` seconds, so the cache expires and refills
during the run and the query rate stays low.  spfmilter runs as shipped
(``python -m spfmilter``, Lookup_Time 5).  Client processes (``--workers``,
each ``--threads`` threads) speak the milter protocol byte for byte
(tests/fuzz/rawmilter.py) as Postfix does: option negotiation, CONNECT,
HELO, then 1-3 messages per connection (MAIL, 1-3 RCPT, DATA, headers with
now and then a forged Authentication-Results, end of message), sometimes an
ABORT (RSET) in between, sometimes a client that vanishes mid-transaction.
Client addresses are authorised for the sender (pass), unauthorised (fail,
refused at RCPT) or unknown (softfail/neutral/none).

Every few seconds the libmilter process (the supervisor's child) is sampled:
RSS, open descriptors, threads.  At the end: RSS after warm-up (the first
10 % of transactions) and at the end, the growth (must stay under 10 %),
descriptors and threads once idle against the start, every error the
clients saw (protocol errors, timeouts, unexpected replies, the milter's
internal-error 451 4.3.0) and every traceback, error or internal-error line
in the daemon log.  The figures go to soak/results.md and soak/results.json
(the last run's; the files are overwritten).  Exit status 0 when every
criterion holds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.kit.daemon import SpfmilterProcess
from tests.kit.dnsserver import TestDNSServer
from tests.kit.rawmilter import ProtocolError, RawSession
from tests.kit.wait import wait_for

HERE = Path(__file__).resolve().parent
DOMAINS = 300
PROVIDERS = 24
CORES = 6
RSS_LIMIT = 0.10
WARMUP = 0.10


# --- DNS data -----------------------------------------------------------------------

def zones() -> dict:
    z: dict[str, list] = {}
    for c in range(CORES):
        z[f"core{c}.soak.test"] = [
            {"TXT": f"v=spf1 ip4:198.18.{c}.0/24 a:mail.core{c}.soak.test mx ~all"},
            {"MX": [10, f"mx.core{c}.soak.test"]}]
        z[f"mail.core{c}.soak.test"] = [{"A": f"198.18.{100 + c}.1"}]
        z[f"mx.core{c}.soak.test"] = [{"A": f"198.18.{110 + c}.1"}]
    for p in range(PROVIDERS):
        z[f"_spf.p{p}.soak.test"] = [
            {"TXT": f"v=spf1 ip4:198.19.{p}.0/24 include:core{p % CORES}.soak.test -all"}]
    endings = ["-all", "~all", "?all", "-all exp=why.soak.test"]
    for d in range(DOMAINS):
        rec = (f"v=spf1 ip4:203.0.113.{d % 250}/32 include:_spf.p{d % PROVIDERS}.soak.test "
               + (f"include:_spf.p{(d + 7) % PROVIDERS}.soak.test " if d % 3 == 0 else "")
               + ("a " if d % 5 == 0 else "") + endings[d % len(endings)])
        z[f"d{d}.soak.test"] = [{"TXT": rec}, {"A": f"198.51.100.{d % 250}"}]
    z["why.soak.test"] = [{"TXT": "%{i} is not allowed to send for %{d}"}]
    for h in range(50):   # HELO names: no record, a neutral one, now and then a strict one
        z[f"mx{h}.helo.soak.test"] = (
            [{"A": f"198.19.{h % PROVIDERS}.9"}] if h % 2 == 0 else
            [{"TXT": f"v=spf1 ip4:198.19.{h % PROVIDERS}.0/24 -all"}] if h % 10 == 1 else
            [{"TXT": f"v=spf1 include:_spf.p{h % PROVIDERS}.soak.test ?all"}])
    return z


# --- the MTA side ---------------------------------------------------------------------

def _client_ip(rng: random.Random, d: int) -> tuple[str, str]:
    """An address for sender domain ``d`` and the kind of result to expect."""
    r = rng.random()
    if r < 0.6:
        return f"198.19.{d % PROVIDERS}.{rng.randint(1, 254)}", "pass"
    if r < 0.75:
        return f"198.18.{(d % PROVIDERS) % CORES}.{rng.randint(1, 254)}", "pass"   # via core
    if r < 0.9:
        return f"192.0.2.{rng.randint(1, 254)}", "other"                           # not listed
    return f"2001:db8:{rng.randint(1, 0xffff):x}::{rng.randint(1, 0xffff):x}", "other"


def _worker(index: int, path: str, transactions: int, threads: int, seed: int,
            done: mp.Value, result: mp.Queue, deadline: float) -> None:
    stats = {"transactions": 0, "connections": 0, "accepted": 0, "rejected": 0, "deferred": 0,
             "aborted": 0, "vanished": 0, "errors": [], "error_count": 0, "headers_removed": 0,
             "latency_sum": 0.0, "latency_max": 0.0}
    lock = threading.Lock()
    share = [transactions // threads + (1 if t < transactions % threads else 0)
             for t in range(threads)]

    def err(text: str) -> None:
        with lock:
            stats["error_count"] += 1
            if len(stats["errors"]) < 20:
                stats["errors"].append(text[:300])

    def run(t: int) -> None:
        rng = random.Random(seed * 1000 + index * 100 + t)
        left = share[t]
        local = 0
        while left > 0 and time.monotonic() < deadline:
            d = rng.randrange(DOMAINS)
            ip, _ = _client_ip(rng, d)
            try:
                s = RawSession(path, timeout=30)
            except OSError as exc:
                err(f"connect: {exc!r}")
                continue
            with lock:
                stats["connections"] += 1
            try:
                s.connect(ip.encode(), hostname=b"[" + ip.encode() + b"]",
                          macros={b"j": b"mx.soak.test", b"{daemon_name}": b"smtpd"})
                s.helo(f"mx{rng.randrange(50)}.helo.soak.test".encode())
                for _ in range(min(left, rng.choice([1, 1, 1, 2, 3]))):
                    sender = f"user{rng.randrange(1000)}@d{d}.soak.test"
                    s.mail(f"<{sender}>".encode(), b"SIZE=2048",
                           macros={b"i": f"Q{rng.getrandbits(40):X}".encode()})
                    started = time.monotonic()
                    replies = [s.rcpt(f"<r{n}@mx.soak.test>".encode())
                               for n in range(rng.choice([1, 1, 2, 3]))]
                    took = time.monotonic() - started
                    left -= 1
                    local += 1
                    kinds = {r.kind if r.kind != "reply" else r.code for r in replies}
                    if any(r.kind == "reply" and r.text.startswith("4.3.0") for r in replies):
                        err(f"internal error: {replies}")
                    if not kinds <= {"continue", "550", "451"}:
                        err(f"unexpected RCPT replies {replies}")
                    with lock:
                        stats["transactions"] += 1
                        stats["latency_sum"] += took
                        stats["latency_max"] = max(stats["latency_max"], took)
                    roll = rng.random()
                    if "continue" not in kinds:
                        with lock:
                            stats["rejected" if "550" in kinds else "deferred"] += 1
                        s.abort()
                        continue
                    if roll < 0.03:              # RSET after RCPT
                        s.abort()
                        with lock:
                            stats["aborted"] += 1
                        continue
                    if roll < 0.05:              # the client vanishes
                        s.sock.close()
                        with lock:
                            stats["vanished"] += 1
                        break
                    hdrs = [(b"From", f"<{sender}>".encode()), (b"To", b"<r0@mx.soak.test>"),
                            (b"Subject", b"soak"), (b"Message-ID", f"<{rng.getrandbits(64):x}@x>".encode())]
                    if roll < 0.15:
                        hdrs.insert(0, (b"Authentication-Results", b"mx.soak.test; spf=pass"))
                    eom = s.message(hdrs, b"soak body\r\n")
                    if eom.final.kind != "accept" or not any(n == b"Received-SPF" for n, _ in eom.inserted()):
                        err(f"end of message: {eom}")
                    with lock:
                        stats["accepted"] += 1
                        stats["headers_removed"] += len(eom.deleted())
            except (ProtocolError, OSError) as exc:
                err(f"{type(exc).__name__}: {exc}")
            finally:
                try:
                    s.abort()
                    s.close()
                except OSError:
                    pass
            if local >= 50:
                with done.get_lock():
                    done.value += local
                local = 0
        with done.get_lock():
            done.value += local

    pool = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(max(1.0, deadline - time.monotonic() + 60))
    result.put(stats)


# --- measuring ------------------------------------------------------------------------

def usage(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    return {"rss_kb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def child_of(pid: int) -> int:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(kids) != 1:
        raise RuntimeError(f"expected one milter process under {pid}, found {kids}")
    return int(kids[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transactions", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2, help="client processes")
    ap.add_argument("--threads", type=int, default=4, help="threads per client process")
    ap.add_argument("--ttl", type=int, default=60, help="DNS TTL of the test records")
    ap.add_argument("--max-minutes", type=float, default=30.0, help="hard bound on the run")
    ap.add_argument("--seed", type=int, default=7208)
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--out", default=str(HERE / "results"), help="results path without suffix")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="spfmilter-soak-"))
    dns = TestDNSServer(zones(), ttl=args.ttl).start()
    milter = SpfmilterProcess(work / "milter", {
        "Nameservers": dns.nameserver, "skip_addresses": "", "Authserv_Id": "mx.soak.test",
        "Lookup_Time": "5", "TempError_Defer": "True"}).start()
    pid = child_of(milter.proc.pid)
    started = time.monotonic()
    deadline = started + args.max_minutes * 60
    done = mp.Value("q", 0)
    results: mp.Queue = mp.Queue()
    per = [args.transactions // args.workers + (1 if w < args.transactions % args.workers else 0)
           for w in range(args.workers)]
    samples = [{"t": 0.0, "done": 0, **usage(pid)}]
    procs = [mp.Process(target=_worker, args=(w, milter.socket_path, per[w], args.threads,
                                              args.seed, done, results, deadline))
             for w in range(args.workers)]
    for p in procs:
        p.start()
    warm = None
    print(f"soak: {args.transactions:,} transactions, {args.workers}x{args.threads} clients, "
          f"milter pid {pid}", flush=True)
    try:
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline + 90:
            for p in procs:
                p.join(args.sample / len(procs))
            now = {"t": round(time.monotonic() - started, 1), "done": done.value, **usage(pid)}
            samples.append(now)
            if warm is None and now["done"] >= args.transactions * WARMUP:
                warm = now
            print(f"soak: {now['t']:7.1f}s {now['done']:>8,} txn  rss {now['rss_kb'] / 1024:6.1f} MB"
                  f"  fds {now['fds']:4}  threads {now['threads']:3}", flush=True)
            if milter.proc.poll() is not None:
                break
        stats = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        end_busy = samples[-1]
        # idle: every connection closed, counts back down (bounded wait)
        try:
            idle = wait_for(lambda: (lambda u: u if u["fds"] <= samples[0]["fds"] + 2 and
                                     u["threads"] <= samples[0]["threads"] + 2 else None)(usage(pid)),
                            60, "the milter to go idle", interval=0.2)
        except AssertionError:
            idle = usage(pid)
        elapsed = time.monotonic() - started
        log = milter.log_text()
        dns_queries = len(dns.queries)
    finally:
        alive = milter.proc.poll() is None
        milter.stop()
        dns.stop()
    total = {k: sum(s[k] for s in stats) for k in ("transactions", "connections", "accepted",
                                                    "rejected", "deferred", "aborted", "vanished",
                                                    "error_count", "headers_removed")}
    client_errors = [e for s in stats for e in s["errors"]][:20]
    latency_avg = sum(s["latency_sum"] for s in stats) / max(1, total["transactions"])
    latency_max = max(s["latency_max"] for s in stats)
    bad_log = [line for line in log.splitlines()
               if "Traceback" in line or "action=tempfail" in line or " ERROR" in line
               or not re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ spfmilter\[\d+\]: ", line)]
    warm = warm or samples[min(1, len(samples) - 1)]
    growth = (end_busy["rss_kb"] - warm["rss_kb"]) / warm["rss_kb"]
    checks = {
        f"at least {args.transactions:,} transactions": total["transactions"] >= args.transactions,
        f"RSS growth after warm-up under {RSS_LIMIT:.0%}": growth < RSS_LIMIT,
        "descriptors back to the start once idle": idle["fds"] <= samples[0]["fds"] + 2,
        "threads back to the start once idle": idle["threads"] <= samples[0]["threads"] + 2,
        "no client-side error": total["error_count"] == 0,
        "no traceback, error or internal-error line in the log": not bad_log,
        "daemon alive to the end": alive,
    }
    figures = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(),
                 "kernel": platform.release()},
        "settings": {"transactions": args.transactions, "workers": args.workers,
                     "threads": args.threads, "dns_ttl": args.ttl, "domains": DOMAINS,
                     "providers": PROVIDERS, "cores": CORES, "seed": args.seed},
        "elapsed_s": round(elapsed, 1),
        "rate_per_s": round(total["transactions"] / elapsed, 1),
        "totals": total, "dns_queries": dns_queries,
        "rcpt_latency_ms": {"avg": round(latency_avg * 1000, 2), "max": round(latency_max * 1000, 1)},
        "start": samples[0], "after_warmup": warm, "end": end_busy, "idle": idle,
        "rss_growth_after_warmup": round(growth, 4),
        "peak": {k: max(s[k] for s in samples) for k in ("rss_kb", "fds", "threads")},
        "client_errors": client_errors, "log_problems": bad_log[:20],
        "checks": checks, "ok": all(checks.values()), "samples": samples,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(figures))
    shutil.rmtree(work, ignore_errors=True)
    print(render(figures))
    return 0 if figures["ok"] else 1


def render(f: dict) -> str:
    mb = lambda kb: f"{kb / 1024:.1f} MB"
    t = f["totals"]
    lines = [
        "# Soak results",
        "",
        f"Last `make soak`: {f['date']} (Python {f['host']['python']}, {f['host']['cpus']} CPUs, "
        f"Linux {f['host']['kernel']}).  Written by soak/soak.py; raw figures and samples in "
        "soak/results.json.",
        "",
        f"{t['transactions']:,} transactions on {t['connections']:,} milter connections in "
        f"{f['elapsed_s'] / 60:.1f} min ({f['rate_per_s']:,.0f}/s), "
        f"{f['settings']['workers']}x{f['settings']['threads']} clients, "
        f"{f['settings']['domains']} sender domains with include chains, DNS TTL "
        f"{f['settings']['dns_ttl']} s ({f['dns_queries']:,} DNS queries in all).",
        "",
        f"Outcomes: {t['accepted']:,} accepted with headers, {t['rejected']:,} refused (SPF fail), "
        f"{t['deferred']:,} deferred, {t['aborted']:,} aborted by RSET, {t['vanished']:,} clients "
        f"vanished mid-transaction; {t['headers_removed']:,} forged Authentication-Results removed.  "
        f"RCPT latency: {f['rcpt_latency_ms']['avg']} ms average, {f['rcpt_latency_ms']['max']} ms max.",
        "",
        "| libmilter process | RSS | open fds | threads |",
        "|---|---:|---:|---:|",
    ]
    for label, key in (("start", "start"), ("after warm-up (10 %)", "after_warmup"),
                       ("end of the load", "end"), ("idle afterwards", "idle")):
        s = f[key]
        lines.append(f"| {label} | {mb(s['rss_kb'])} | {s['fds']} | {s['threads']} |")
    lines.append(f"| peak | {mb(f['peak']['rss_kb'])} | {f['peak']['fds']} | {f['peak']['threads']} |")
    lines += ["", f"RSS growth after warm-up: {f['rss_growth_after_warmup']:+.1%} (limit +10 %).",
              f"Errors seen by the clients: {t['error_count']}; problem lines in the daemon log: "
              f"{len(f['log_problems'])}.", "", "| check | |", "|---|---|"]
    lines += [f"| {name} | {'ok' if ok else '**FAILED**'} |" for name, ok in f["checks"].items()]
    if f["client_errors"] or f["log_problems"]:
        lines += ["", "First problems:", ""]
        lines += [f"- client: `{e}`" for e in f["client_errors"][:10]]
        lines += [f"- log: `{e[:200]}`" for e in f["log_problems"][:10]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
