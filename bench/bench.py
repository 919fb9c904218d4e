"""spfmilter benchmark: spfmilter beside pyspf-milter and the pymilter floor.

`make bench` runs this once.  It needs root: everything runs in a network
namespace and a mount namespace of its own (``unshare --net --mount``), so NSD
can serve the benchmark zone on 127.0.0.1:53, pyspf-milter (which reads
/etc/resolv.conf) can be pointed at it through a private bind mount, and a
private Postfix can run beside them -- nothing on the host is touched and no
packet leaves the namespace's loopback.

Contenders (each on a unix and an inet socket):
  spfmilter     this repository's daemon (through bench/spfmilter_probe.py,
                which only adds timing of the SPF decision inside the process)
  pyspf-milter  PyPI spf-engine==3.1.0, in its own venv (bench/setup.sh)
  floor         a pymilter milter that only adds one header (bench/floor_milter.py)

Load: bench/loadgen.py, a Postfix-like MTA side of the milter protocol, in one
(concurrency 1) or two processes.  Every cell of the matrix is run for each
contender in turn (A B C A B C ...), ``--rounds`` times; the tables show the
median over the rounds.  Then: 500 connections held open at once (RSS), and
smtp-source through a private Postfix with no milter / spfmilter /
pyspf-milter; and Postfix's policy protocol without Postfix: ``spfmilter
policy`` against python policyd-spf on stdin/stdout (bench/policy_bench.py;
``--only-policy`` runs just that part, into policy.{md,json}).  Results go to bench/results/latest.{md,json} and
bench/results/README-section.rst.
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
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen, policy_bench, zones
from bench.matrix import CONCURRENCY, MILTER_ORDER, POSTFIX_SETUPS, SPFMILTERS
from bench.targets import evaluate_targets
from tests.kit.mta import PostfixLab
from tests.kit.wait import WaitTimeout

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

WORK = Path(os.environ.get("BENCH_WORK", "/var/tmp/spfmilter-bench"))
RUN = WORK / "run"
SOCK = RUN / "sock"
PYSPF_VENV = WORK / "venv-pyspf-milter"
RESULTS = BENCH / "results"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# "spfmilter" runs as shipped (Workers = auto: one worker per CPU); "spfmilter-w1" with one
WORKERS = {"spfmilter": "auto", "spfmilter-w1": "1"}
CORES = (4, 8, 16)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


# --- /proc accounting ---------------------------------------------------------------

def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
                except OSError:
                    pass
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime of all threads
        except OSError:
            pass
    return total / CLK


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_mb(pids: list[int]) -> float:
    """Proportional set size of the processes together (shared pages counted once)."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total / 1024


def reset_peak_rss(pids: list[int]) -> None:
    for p in pids:
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")  # resets VmHWM
        except OSError:
            pass


# --- DNS server ---------------------------------------------------------------------

class NSD:
    def __init__(self) -> None:
        self.conf = RUN / "nsd.conf"
        self.pid = 0

    def start(self, cold_domains: int) -> int:
        records = zones.write_zone(RUN / "bench.test.zone", cold_domains)
        self.conf.write_text(f"""server:
    ip-address: 127.0.0.1
    port: 53
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{RUN}"
    database: ""
    zonelistfile: "{RUN}/zone.list"
    xfrdfile: "{RUN}/xfrd.state"
    xfrdir: "{RUN}"
    pidfile: "{RUN}/nsd.pid"
    logfile: "{RUN}/nsd.log"
    verbosity: 0
    hide-version: yes
    rrl-ratelimit: 0
    # answers as a recursive resolver gives them (what spfmilter talks to in production):
    # no authority NS / additional records that nobody asked for
    minimal-responses: yes
remote-control:
    control-enable: yes
    control-interface: {RUN}/nsd.ctl
zone:
    name: {zones.ZONE}
    zonefile: {zones.ZONE}.zone
""")
        sh("nsd", "-c", str(self.conf))
        deadline = time.monotonic() + 60
        while sh("nsd-control", "-c", str(self.conf), "status", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("NSD did not start:\n" + (RUN / "nsd.log").read_text(errors="replace"))
            time.sleep(0.2)
        self.pid = int((RUN / "nsd.pid").read_text().split()[0])
        # NSD answers SERVFAIL until the zone is loaded (seconds for a large one)
        import dns.exception
        import dns.message
        import dns.query
        import dns.rcode
        probe = dns.message.make_query(f"c{max(cold_domains - 1, 0)}.cold.{zones.ZONE}", "TXT")
        while True:
            try:
                if dns.query.udp(probe, "127.0.0.1", timeout=1.0).rcode() == dns.rcode.NOERROR:
                    break
            except dns.exception.Timeout:
                pass
            if time.monotonic() > deadline + 120:
                raise RuntimeError("NSD did not load the zone:\n" + (RUN / "nsd.log").read_text(errors="replace"))
            time.sleep(0.2)
        return records

    def queries(self) -> int:
        out = sh("nsd-control", "-c", str(self.conf), "stats_noreset").stdout
        m = re.search(r"^num\.queries=(\d+)", out, re.M)
        return int(m.group(1)) if m else 0

    def cpu(self) -> float:
        return cpu_seconds(tree(self.pid))

    def stop(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except OSError:
                pass


def _dns_blast(address: tuple[str, int], names: list[str], seconds: float, window: int, conn) -> None:
    import dns.message
    import dns.rdatatype
    qs = []
    for i, (n, t) in enumerate(names):
        m = dns.message.make_query(n, t)
        m.id = i % 65536
        qs.append(m.to_wire())
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(address)
    s.settimeout(0.2)
    done = lost = 0
    end = time.perf_counter() + seconds
    i = 0
    for _ in range(window):
        s.send(qs[i % len(qs)])
        i += 1
    while time.perf_counter() < end:
        try:
            s.recv(4096)
            done += 1
        except TimeoutError:
            lost += 1
        s.send(qs[i % len(qs)])
        i += 1
    conn.send((done, lost))


def dns_capacity(address: tuple[str, int], seconds: float = 2.0, procs: int = 2) -> dict:
    """Answers per second a server gives to ``procs`` clients keeping 8 queries in flight."""
    import multiprocessing as mp
    names = []
    for name, rtype, _ in zones._warm_records():
        names.append((name, rtype))
    random.Random(5).shuffle(names)
    pipes, ps = [], []
    for p in range(procs):
        a, b = mp.Pipe(duplex=False)
        proc = mp.Process(target=_dns_blast, args=(address, names[p::procs], seconds, 8, b), daemon=True)
        proc.start()
        pipes.append(a)
        ps.append(proc)
    done = lost = 0
    for a, proc in zip(pipes, ps):
        if a.poll(seconds + 30):
            d, lo = a.recv()
            done += d
            lost += lo
        proc.join(5)
    return {"answers_per_s": round(done / seconds), "timeouts": lost}


def python_dns_server_capacity() -> dict:
    """The same measurement against tests/dnsserver.py serving the warm records."""
    data_file = RUN / "warm-zonedata.json"
    data_file.write_text(json.dumps(zones.warm_zonedata()))
    code = ("import json,time; from tests.kit.dnsserver import TestDNSServer; "
            "s = TestDNSServer(json.load(open(%r)), ttl=3600).start(); print(s.address[1], flush=True); "
            "time.sleep(120)") % (str(data_file),)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        port = int(proc.stdout.readline())
        pid_cpu0 = cpu_seconds([proc.pid])
        r = dns_capacity(("127.0.0.1", port))
        r["server_cpu_s"] = round(cpu_seconds([proc.pid]) - pid_cpu0, 2)
        return r
    finally:
        proc.kill()
        proc.wait(5)


def dnspython_lookup_cost(address: tuple[str, int], count: int = 3000) -> dict:
    """CPU per uncached lookup in dnspython, one thread, against NSD (no cache anywhere).

    ``resolver``: spfmilter's own network path (one query from a fresh socket,
    the header checked on the bytes, the answer parsed and its CNAME chain and
    TTL worked out by dnspython).  ``leanest``: dnspython's own cheapest complete
    lookup -- make_query + query.udp on a socket kept open (so every query has
    the same source port, which spfmilter does not do).
    """
    import dns.message
    import dns.query

    from spfmilter.resolver import Resolver

    names = [f"c{i}.cold.{zones.ZONE}" for i in range(count)]
    res = Resolver((address,), timeout=2.0)
    t0 = time.process_time()
    for name in names:
        res.resolve(name, "TXT", 2.0)
    resolver_us = (time.process_time() - t0) / count * 1e6
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        t0 = time.process_time()
        for name in names:
            dns.query.udp(dns.message.make_query(name, "TXT"), address[0], timeout=2.0,
                          port=address[1], sock=sock)
        leanest_us = (time.process_time() - t0) / count * 1e6
    finally:
        sock.close()
    return {"resolver_us": round(resolver_us, 1), "leanest_us": round(leanest_us, 1), "lookups": count}


def _spin(seconds: float, conn) -> None:
    """Pure Python work (dict, str and int operations, like a warm transaction's),
    counted in rounds done in ``seconds``, with the CPU time that took."""
    end = time.perf_counter() + seconds
    c0 = time.process_time()
    rounds = 0
    d: dict = {}
    while time.perf_counter() < end:
        for i in range(2000):
            d[str(i)] = i * 7 % 13
        d.clear()
        rounds += 1
    conn.send((rounds, time.process_time() - c0))


def cpu_scaling(seconds: float = 3.0) -> dict:
    """How much work 1, 2 (and as many as there are CPUs) processes get done at once on
    this machine: the most any number of workers can scale here, whatever the milter
    does (a virtual CPU may share its core, other tenants share the host)."""
    import multiprocessing as mp
    out = {}
    for n in sorted({1, 2, os.cpu_count() or 1}):
        pipes, ps = [], []
        for _ in range(n):
            a, b = mp.Pipe(duplex=False)
            proc = mp.Process(target=_spin, args=(seconds, b), daemon=True)
            proc.start()
            pipes.append(a)
            ps.append(proc)
        results = [a.recv() for a in pipes]
        for proc in ps:
            proc.join(10)
        rounds = sum(r for r, _ in results)
        cpu = sum(c for _, c in results)
        out[str(n)] = {"rounds_per_s": rounds / seconds, "cpu_us_per_round": cpu / max(rounds, 1) * 1e6}
    one = out["1"]["rounds_per_s"]
    for v in out.values():
        v["speedup"] = v["rounds_per_s"] / one if one else float("nan")
    return out


# --- milters -------------------------------------------------------------------------

@dataclass
class Milter:
    name: str            # "spfmilter", "pyspf-milter", "floor"
    socket: str          # "unix" or "inet"
    spec: str            # libmilter spec
    address: str         # loadgen address (unix:/path or inet:127.0.0.1:port)
    postfix: str         # smtpd_milters value
    argv: list[str]
    env: dict = field(default_factory=dict)
    stats: str | None = None
    proc: subprocess.Popen | None = None
    logfile: Path | None = None

    @property
    def key(self) -> str:
        return f"{self.name}/{self.socket}"

    def start(self) -> None:
        self.logfile = RUN / f"{self.name}-{self.socket}.log"
        out = open(self.logfile, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, **self.env}, start_new_session=True)
        out.close()

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.key} exited:\n{self.log_tail()}")
        if self.socket == "unix":
            return Path(self.address[5:]).exists()
        port = int(self.address.rsplit(":", 1)[1])
        want = f":{port:04X}"
        with open("/proc/net/tcp") as f:
            return any(p[1].endswith(want) and p[3] == "0A" for p in (line.split() for line in list(f)[1:]))

    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc else []

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except (OSError, AttributeError):
            return ""

    def probe(self) -> dict | None:
        """Samples from spfmilter_probe.py since the last call, over all its workers
        (None for other milters)."""
        if not self.stats:
            return None
        merged: dict = {"decisions": [], "evals": [], "resolver_calls": 0, "cache_entries": 0,
                        "workers": 0}
        for path in Path(self.stats).parent.glob(Path(self.stats).name + ".*"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(str(path))
            except OSError:  # a worker that is gone
                s.close()
                continue
            data = b""
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
            s.close()
            one = json.loads(data)
            merged["decisions"] += one["decisions"]
            merged["evals"] += one["evals"]
            merged["resolver_calls"] += one["resolver_calls"]
            merged["cache_entries"] += one["cache_entries"]
            merged["workers"] += 1
        return merged

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait(5)


def make_milters(with_inet: bool = True) -> list[Milter]:
    py = sys.executable
    milters = []
    ports = {"spfmilter": 12101, "pyspf-milter": 12102, "floor": 12103, "shape-floor": 12104}
    for sock_kind in ("unix", "inet") if with_inet else ("unix",):
        extra = ("shape-floor",) if sock_kind == "unix" else ()
        w1 = ("spfmilter-w1",) if sock_kind == "unix" else ()
        for name in ("spfmilter",) + w1 + ("pyspf-milter", "floor") + extra:
            tag = f"{name}-{sock_kind}".replace("+", "-")
            if sock_kind == "unix":
                path = SOCK / f"{tag}.sock"
                spec, address, pf = f"unix:{path}", f"unix:{path}", f"unix:{path}"
            else:
                port = ports[name]
                spec, address, pf = f"inet:{port}@127.0.0.1", f"inet:127.0.0.1:{port}", f"inet:127.0.0.1:{port}"
            if name in SPFMILTERS:
                conf = RUN / f"{tag}.conf"
                conf.write_text("\n".join([
                    f"Socket = {spec}", "Nameservers = 127.0.0.1:53", "Authserv_Id = mx.bench.test",
                    "skip_addresses =", "UMask = 000", f"Workers = {WORKERS[name]}", ""]))
                stats = str(SOCK / f"{tag}.stats")
                m = Milter(name, sock_kind, spec, address, pf,
                           [py, "-m", "bench.spfmilter_probe", "-c", str(conf), "--log", "stderr"],
                           env={"SPFMILTER_BENCH_STATS": stats}, stats=stats)
            elif name == "pyspf-milter":
                conf = RUN / f"{tag}.conf"
                pyspf_spec = f"local:{path}" if sock_kind == "unix" else spec
                conf.write_text("\n".join([
                    "debugLevel = 1", "TestOnly = 1", "HELO_reject = Fail", "Mail_From_reject = Fail",
                    "PermError_reject = False", "TempError_Defer = False",
                    # nothing skipped: smtp-source connects from 127.0.0.1
                    "skip_addresses = 192.0.2.255/32", "InternalHosts = 192.0.2.254",
                    "Header_Type = AR", "Authserv_Id = mx.bench.test", f"Socket = {pyspf_spec}",
                    f"PidFile = {RUN}/{tag}.pid", "UserID = root", "UMask = 0", ""]))
                m = Milter(name, sock_kind, spec, address, pf,
                           [str(PYSPF_VENV / "bin" / "pyspf-milter"), str(conf)])
            else:
                m = Milter(name, sock_kind, spec, address, pf,
                           [py, "-m", "bench.floor_milter", spec]
                           + (["--shape"] if name == "shape-floor" else []))
            milters.append(m)
    return milters


# --- one measured run ----------------------------------------------------------------

def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def measure(m: Milter, nsd: NSD, conc: int, txs: list, seconds: float) -> dict:
    pids = m.pids()
    reset_peak_rss(pids)
    m.probe()  # drop samples from before this run
    q0, nsd0, cpu0 = nsd.queries(), nsd.cpu(), cpu_seconds(pids)
    r = loadgen.run(m.address, conc, txs, seconds, procs=1 if conc == 1 else 2)
    cpu1, nsd1, q1 = cpu_seconds(m.pids()), nsd.cpu(), nsd.queries()
    # the worker process: spfmilter's supervisor is a pre-fork copy whose pages it shares
    peak = max((status_kb(p, "VmHWM") for p in m.pids()), default=0)
    pss = pss_mb(m.pids())
    probe = m.probe()
    ok = max(r["ok"], 1)
    lat = r["latencies_ms"]
    out = {
        "tx": r["ok"], "errors": r["errors"], "rejected": r["rejected"],
        "tx_per_s": r["ok"] / r["elapsed"] if r["elapsed"] else 0.0,
        "p50_ms": pct(lat, 0.50), "p99_ms": pct(lat, 0.99),
        "cpu_s_per_1000": (cpu1 - cpu0) / ok * 1000,
        "peak_rss_mb": peak / 1024,
        "pss_mb": pss,
        "dns_queries_per_tx": (q1 - q0) / ok,
        "dns_server_cpu_s_per_1000": (nsd1 - nsd0) / ok * 1000,
        "client_cpu_s_per_1000": r["client_cpu"] / ok * 1000,
        "headers_per_tx": r["mods"] / ok,
    }
    if probe is not None:
        d = sorted(probe["decisions"])
        out["decision_p50_ms"] = pct(d, 0.5) * 1000 if d else float("nan")
        out["decision_p99_ms"] = pct(d, 0.99) * 1000 if d else float("nan")
    return out


# --- the matrix -------------------------------------------------------------------------

class ColdPool:
    """Hands out cold domains; none is ever used twice."""

    def __init__(self, size: int) -> None:
        self.size, self.next = size, 0

    def take(self, n: int, rng: random.Random) -> list:
        n = min(n, self.size - self.next)
        out = [zones.cold_tx(rng, i) for i in range(self.next, self.next + n)]
        self.next += n
        return out


def run_matrix(milters: list[Milter], nsd: NSD, rounds: int, seconds: float, cold: ColdPool,
               cold_cap: int, with_inet: bool) -> list[dict]:
    by = {m.key: m for m in milters}
    order = list(MILTER_ORDER)
    cells = [("unix", "warm", c) for c in CONCURRENCY] + [("unix", "cold", c) for c in CONCURRENCY]
    if with_inet:
        cells += [("inet", "warm", c) for c in CONCURRENCY]
    rows = []
    rng = random.Random(11)
    for rnd in range(1, rounds + 1):
        for sock_kind, mode, conc in cells:
            for name in order:
                if mode == "cold" and name in ("floor", "shape-floor"):
                    continue  # the floors do no DNS: cold is warm for them
                m = by.get(f"{name}/{sock_kind}")
                if m is None:
                    continue
                if mode == "warm":
                    txs = [zones.warm_tx(rng) for _ in range(int(seconds * 12000) + 100)]
                else:
                    txs = cold.take(cold_cap, rng)
                    if not txs:
                        log("cold domains exhausted; skipping")
                        continue
                res = measure(m, nsd, conc, txs, seconds)
                res.update(round=rnd, milter=name, socket=sock_kind, mode=mode, concurrency=conc)
                rows.append(res)
                log(f"round {rnd} {sock_kind:4} {mode} c={conc:<2} {name:12} "
                    f"{res['tx_per_s']:7.0f} tx/s p50 {res['p50_ms']:7.2f} ms p99 {res['p99_ms']:7.2f} ms "
                    f"cpu {res['cpu_s_per_1000']:5.2f} s/1000 dns/tx {res['dns_queries_per_tx']:5.2f} "
                    f"err {res['errors']} rej {res['rejected']}"
                    + (f" decision p50 {res['decision_p50_ms']:.3f} ms" if 'decision_p50_ms' in res else ""))
    return rows


def hold_many(m: Milter, n: int) -> dict:
    """Open ``n`` connections that all stop after RCPT; RSS of the milter while they are open."""
    hold = RUN / f"hold-{m.name}-{m.socket}"
    for p in (hold, Path(str(hold) + ".ready")):
        p.unlink(missing_ok=True)
    rng = random.Random(3)
    txs = [zones.warm_tx(rng) for _ in range(n)]
    reset_peak_rss(m.pids())
    result: dict = {}

    def go() -> None:
        result.update(loadgen.run(m.address, n, txs, 90, procs=1, hold_file=str(hold)))

    t = threading.Thread(target=go, daemon=True)
    t.start()
    ready = Path(str(hold) + ".ready")
    deadline = time.monotonic() + 90
    while not ready.exists() and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.1)
    held = int(ready.read_text()) if ready.exists() else 0
    time.sleep(0.5)
    pids = m.pids()
    rss = max(status_kb(p, "VmRSS") for p in pids) / 1024
    pss = pss_mb(pids)
    workers = max(1, len(pids) - 1) if m.name in SPFMILTERS else 1  # less the supervisor
    threads = sum(status_kb(p, "Threads") for p in pids)  # status_kb parses the number
    hold.write_text("go")
    t.join(120)
    peak = max(status_kb(p, "VmHWM") for p in m.pids()) / 1024
    return {"milter": m.name, "connections_held": held, "rss_mb": rss, "pss_mb": pss,
            "peak_rss_mb": peak, "threads": threads, "completed": result.get("ok", 0),
            "errors": result.get("errors", 0), "processes": len(pids), "workers": workers,
            "pss_per_worker_mb": pss / workers}


# --- Postfix ------------------------------------------------------------------------------

def smtp_source(port: int, sessions: int, messages: int, timeout: float) -> tuple[float, str]:
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", "2048",
           "-M", "o1.mh1.bench.test", "-f", "user@d1.warm.bench.test",
           "-t", "postmaster@mx.bench.test", f"127.0.0.1:{port}"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        err = proc.stderr.strip()
    except subprocess.TimeoutExpired:
        err = "timeout"
    return time.perf_counter() - t0, err


def _drained(lab: PostfixLab) -> None:
    try:
        lab.wait_idle(30)
    except WaitTimeout:
        pass  # counted below: what was not delivered shows in the delivered/sent column


def run_postfix(milters: list[Milter], rounds: int, seconds: float) -> list[dict]:
    by = {m.key: m for m in milters}
    services = {}
    for i, (label, key) in enumerate(POSTFIX_SETUPS):
        if key is None or key in by:
            services[label] = (12500 + i, by[key].postfix if key else "")
    # the test kit's Postfix lab: the documented init/postfix-main.cf milter settings,
    # one smtpd port per set-up, queue on tmpfs, every message to the discard transport
    lab = PostfixLab(RUN / "postfix", None, None, myhostname="mx.bench.test", services=services,
                     queue_tmpfs=True, start_timeout=60, extra_settings={
                         "mydomain": "bench.test", "inet_protocols": "ipv4",
                         "mynetworks": "127.0.0.0/8", "smtpd_client_connection_count_limit": "0",
                         "default_process_limit": "200"})
    lab.start()
    rows = []
    try:
        # a few messages through every set-up first (process start-up, milter caches)
        for label, (port, _) in services.items():
            smtp_source(port, 4, 40, 60)
        _drained(lab)
        rate: dict[tuple[str, int], float] = {}
        for rnd in range(1, rounds + 1):
            for sessions in (1, 16):
                for label, (port, _) in services.items():
                    guess = rate.get((label, sessions))
                    if guess is None:
                        dt_, _ = smtp_source(port, sessions, 20 if sessions == 1 else 64, 120)
                        guess = (20 if sessions == 1 else 64) / dt_
                    count = int(min(max(guess * seconds, 20), 4000))
                    before = lab.log_text().count("status=sent")
                    elapsed, err = smtp_source(port, sessions, count, seconds * 6 + 60)
                    _drained(lab)
                    sent = lab.log_text().count("status=sent") - before
                    rate[(label, sessions)] = count / elapsed
                    row = {"round": rnd, "setup": label, "sessions": sessions, "messages": count,
                           "delivered": sent, "msgs_per_s": count / elapsed,
                           "mean_ms": elapsed / count * 1000 * sessions, "errors": err[:300]}
                    rows.append(row)
                    log(f"round {rnd} postfix s={sessions:<2} {label:18} {row['msgs_per_s']:7.1f} msg/s "
                        f"mean {row['mean_ms']:7.2f} ms ({count} messages, {sent} delivered)"
                        + (f" stderr: {err[:120]}" if err else ""))
    finally:
        rejects = len(re.findall(r"milter-reject|milter.*(?:unavailable|timeout|error)", lab.log_text()))
        lab.stop()
    if rejects:
        log(f"postfix log: {rejects} milter problems")
    return rows


# --- reporting -------------------------------------------------------------------------

def machine() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def version(cmd: list[str]) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (proc.stdout.strip() or proc.stderr.strip()).splitlines()[0]
        except (OSError, IndexError):
            return "?"

    import importlib.metadata as md
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1),
        "spfmilter": version([sys.executable, "-c", "import spfmilter; print(spfmilter.__version__)"]),
        "pymilter": md.version("pymilter"), "pyspf": md.version("pyspf"), "dnspython": md.version("dnspython"),
        "pyspf_milter": version([str(PYSPF_VENV / "bin" / "python"), "-c",
                                 "import importlib.metadata as m; print(m.version('spf-engine'))"]),
        "nsd": version(["nsd", "-v"]),
        "postfix": version(["postconf", "-dh", "mail_version"]),
    }


def median_rows(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        med = dict(zip(keys, key))
        med["rounds"] = len(rs)
        for f, v in rs[0].items():
            if f in keys or f == "round" or not isinstance(v, (int, float)):
                continue
            vals = [r[f] for r in rs if isinstance(r.get(f), (int, float)) and r[f] == r[f]]
            med[f] = statistics.median(vals) if vals else float("nan")
        out.append(med)
    return out


def fmt(v: float, digits: int = 1) -> str:
    if v != v:
        return "–"
    return f"{v:,.{digits}f}"


def met_text(met: bool | None, no: str) -> str:
    return "reported" if met is None else ("yes" if met else no)


def scaling_rows(med: list[dict], cpus: int) -> list[dict]:
    """Workers=1 beside the shipped Workers (unix socket), and what more cores would give."""
    out = []
    for mode, conc in (("warm", 16), ("cold", 16), ("cold", 1), ("warm", 1)):
        for name in SPFMILTERS:
            r = next((x for x in med if (x["milter"], x["socket"], x["mode"], x["concurrency"])
                      == (name, "unix", mode, conc)), None)
            if r:
                out.append({"milter": name, "workers": 1 if name == "spfmilter-w1" else cpus,
                            "mode": mode, "concurrency": conc, **{k: r.get(k, float("nan")) for k in (
                                "tx_per_s", "cpu_s_per_1000", "client_cpu_s_per_1000",
                                "dns_server_cpu_s_per_1000", "dns_queries_per_tx", "p99_ms")}})
    return out


def cores_rows(med: list[dict]) -> list[dict]:
    """Expected tx/s on more cores from the measured milter CPU per transaction (shipped
    Workers, c=16): cores x 1000 / CPU s per 1000 tx, the milter alone on those cores,
    and with a share for the MTA's side of the milter protocol (as the load client used)."""
    out = []
    for mode in ("warm", "cold"):
        r = next((x for x in med if (x["milter"], x["socket"], x["mode"], x["concurrency"])
                  == ("spfmilter", "unix", mode, 16)), None)
        if not r:
            continue
        cpu = r["cpu_s_per_1000"]
        both = cpu + r.get("client_cpu_s_per_1000", 0)
        out.append({"mode": mode, "cpu_s_per_1000": cpu, "client_cpu_s_per_1000": both - cpu,
                    **{f"{c}_cores": c * 1000 / cpu for c in CORES},
                    **{f"{c}_cores_with_mta": c * 1000 / both for c in CORES}})
    return out


def render_md(info: dict, med: list[dict], pfmed: list[dict], held: list[dict], targets: list[dict],
              dnscap: dict, params: dict, polmed: list[dict] | None = None) -> str:
    L = []
    L.append("# spfmilter benchmark results\n")
    L.append(f"Run {info['date']} on {info['nproc']} CPUs ({info['cpu']}), {info['memory_gb']} GB, "
             f"Linux {info['kernel']}, Python {info['python']}.  ")
    L.append(f"spfmilter {info['spfmilter']} (pymilter {info['pymilter']}, pyspf {info['pyspf']}, "
             f"dnspython {info['dnspython']}); pyspf-milter = spf-engine {info['pyspf_milter']}; "
             f"{info['nsd']}; Postfix {info['postfix']}.  ")
    L.append(f"Medians of {params['rounds']} rounds of {params['seconds']:g} s per cell; contenders "
             f"alternated within every cell.  Re-run with `make bench`.\n")
    L.append("## Targets\n")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for t in targets:
        L.append(f"| {t['target']} | {t['measured']} | {met_text(t['met'], '**no**')} |")
    L.append("")
    for sock_kind, mode in (("unix", "warm"), ("unix", "cold"), ("inet", "warm")):
        rows = [r for r in med if r["socket"] == sock_kind and r["mode"] == mode]
        if not rows:
            continue
        L.append(f"## Milter protocol, {sock_kind} socket, {mode} DNS cache\n")
        L.append("| milter | conc. | tx/s | p50 ms | p99 ms | milter CPU s/1000 tx | client CPU s/1000 tx | "
                 "peak RSS MB | PSS MB | DNS queries/tx | SPF decision p50 ms | errors |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for conc in CONCURRENCY:
            for name in MILTER_ORDER:
                r = next((x for x in rows if x["milter"] == name and x["concurrency"] == conc), None)
                if not r:
                    continue
                L.append(f"| {name} | {conc} | {fmt(r['tx_per_s'], 0)} | {fmt(r['p50_ms'], 2)} | "
                         f"{fmt(r['p99_ms'], 2)} | {fmt(r['cpu_s_per_1000'], 2)} | "
                         f"{fmt(r.get('client_cpu_s_per_1000', float('nan')), 2)} | {fmt(r['peak_rss_mb'], 1)} | "
                         f"{fmt(r['pss_mb'], 1)} | "
                         f"{fmt(r['dns_queries_per_tx'], 2)} | {fmt(r.get('decision_p50_ms', float('nan')), 3)} | "
                         f"{fmt(r['errors'], 0)} |")
        L.append("")
    cpus = info["nproc"]
    scal = scaling_rows(med, cpus)
    if scal:
        L.append(f"## Workers: 1 beside {cpus} (the shipped Workers = auto), unix socket\n")
        L.append("| workers | cache | conc. | tx/s | milter CPU s/1000 tx | client CPU s/1000 tx | "
                 "NSD CPU s/1000 tx | DNS queries/tx | p99 ms |")
        L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in scal:
            L.append(f"| {r['workers']} | {r['mode']} | {r['concurrency']} | {fmt(r['tx_per_s'], 0)} | "
                     f"{fmt(r['cpu_s_per_1000'], 2)} | {fmt(r['client_cpu_s_per_1000'], 2)} | "
                     f"{fmt(r['dns_server_cpu_s_per_1000'], 2)} | {fmt(r['dns_queries_per_tx'], 2)} | "
                     f"{fmt(r['p99_ms'], 1)} |")
        L.append("")
    cores = cores_rows(med)
    if cores:
        L.append("## Expected transactions/s on more cores (Workers = auto, c=16, from the CPU per "
                 "transaction measured here)\n")
        L.append("cores x 1000 / milter CPU s per 1000 tx: the milter alone on those cores (the MTA "
                 "elsewhere); \"with the MTA side\" adds the CPU the load client (the MTA's side of the "
                 "milter protocol) used per transaction.  An estimate, not a measurement: it assumes "
                 "the workers scale on more cores as they do from 1 to 2 here.\n")
        L.append("| cache | milter CPU s/1000 tx | " + " | ".join(f"{c} cores" for c in CORES) + " | "
                 + " | ".join(f"{c} cores with the MTA side" for c in CORES) + " |")
        L.append("|---|---:|" + "---:|" * (2 * len(CORES)))
        for r in cores:
            L.append(f"| {r['mode']} | {r['cpu_s_per_1000']:.2f} | "
                     + " | ".join(f"{r[f'{c}_cores']:,.0f}" for c in CORES) + " | "
                     + " | ".join(f"{r[f'{c}_cores_with_mta']:,.0f}" for c in CORES) + " |")
        L.append("")
    warmup = params.get("warmup") or []
    if warmup:
        L.append("## DNS queries to the resolver: each worker has its own cache\n")
        L.append("From empty caches, passes over the warm set (every warm sender domain and HELO name "
                 "once per pass, c=16), NSD's queries per transaction; then, cold, every transaction "
                 "needs its 9 queries whatever the workers.  With N workers the warm set is fetched "
                 "up to N times (once per worker cache) before it is all cached: a local recursive "
                 "resolver (unbound) in front absorbs the repeats.\n")
        L.append("| milter | workers | pass | transactions | DNS queries | queries/tx |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for w in warmup:
            L.append(f"| {w['milter']} | {w['workers']} | {w['pass']} | {w['tx']:,} | {w['queries']:,} | "
                     f"{w['queries_per_tx']:.2f} |")
        L.append("")
    if held:
        L.append("## 500 connections held open at once (after RCPT)\n")
        L.append("| milter | held | workers | largest RSS MB (one process) | PSS MB (all its processes) | "
                 "PSS MB per worker | peak RSS MB | threads | completed afterwards |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for h in held:
            L.append(f"| {h['milter']} | {h['connections_held']} | {h.get('workers', 1)} | {h['rss_mb']:.1f} | "
                     f"{h['pss_mb']:.1f} | {h.get('pss_per_worker_mb', h['pss_mb']):.1f} | "
                     f"{h['peak_rss_mb']:.1f} | {h['threads']} | {h['completed']} |")
        L.append("")
    if pfmed:
        L.append("## Through Postfix (smtp-source, one message per session, 2 KB)\n")
        L.append("| set-up | sessions | msgs/s | mean ms per message | delivered/sent |")
        L.append("|---|---:|---:|---:|---:|")
        for s in (1, 16):
            for label, _ in POSTFIX_SETUPS:
                r = next((x for x in pfmed if x["setup"] == label and x["sessions"] == s), None)
                if r:
                    L.append(f"| {label} | {s} | {fmt(r['msgs_per_s'], 1)} | {fmt(r['mean_ms'], 2)} | "
                             f"{fmt(r['delivered'], 0)}/{fmt(r['messages'], 0)} |")
        L.append("")
    L.extend(policy_bench.render_md(polmed or []))
    if dnscap:
        L.append("## DNS server capacity (2 client processes, 8 queries in flight each)\n")
        for k, v in dnscap.items():
            L.append(f"- {k}: {v['answers_per_s']:,} answers/s ({v['timeouts']} timeouts)")
        L.append("")
    scaling = params.get("cpu_scaling")
    if scaling:
        L.append("## This machine: how far processes scale (pure Python, no milter)\n")
        L.append("| processes at once | work done (x one process) | CPU per unit of work (x one process) |")
        L.append("|---:|---:|---:|")
        base = scaling["1"]["cpu_us_per_round"]
        for n, v in scaling.items():
            L.append(f"| {n} | {v['speedup']:.2f} | {v['cpu_us_per_round'] / base:.2f} |")
        L.append("")
    cost = params.get("dnspython_lookup_cost")
    if cost:
        L.append("## dnspython: CPU per uncached lookup (one thread, against NSD)\n")
        L.append(f"- spfmilter's resolver, cache off (one query from a fresh socket, header checked "
                 f"on the bytes, answer parsed by dnspython, its Answer): {cost['resolver_us']} us")
        L.append(f"- dnspython's cheapest complete lookup (make_query + query.udp on a socket kept "
                 f"open, answer parsed): {cost['leanest_us']} us")
        L.append(f"- {cost['lookups']:,} lookups each")
        L.append("")
    L.append("## How it is measured\n")
    L.append(params["method"] + (policy_bench.METHOD if polmed else ""))
    return "\n".join(L) + "\n"


METHOD = """\
- Everything runs in a private network namespace: NSD (authoritative, 127.0.0.1:53) serves
  `bench.test`; spfmilter uses it through `Nameservers`, pyspf-milter through a private
  bind mount of /etc/resolv.conf.  TTLs are 3600 s (SOA minimum too).
- Records: 300 warm sender domains over 10 providers, `v=spf1 mx a:out... include:_spf.<provider> ~all`
  with `_spf` including two range lists (`_nb1`, `_nb2`: ip4 and ip6): include chains 3 deep,
  `mx` (2 MX hosts) and `a`; HELO names `v=spf1 a include:_nb2... ~all`.  Passing clients come
  from the last range list (every mechanism is walked); 10% of clients are IPv6 and 10% are
  listed nowhere (softfail).  9 DNS queries per transaction when nothing is cached (the HELO
  record includes one of the MAIL FROM tree's range lists).  NSD gives minimal responses, as the
  recursive resolver spfmilter talks to in production does.
- Warm: random (sender, client, HELO) from the warm set, after one pass over all of it.  Cold:
  every transaction a new domain whose whole tree (record, includes, MX hosts, HELO name) is its
  own, so nothing it needs is in any cache.
- Load: bench/loadgen.py speaks the MTA side like Postfix's milter8.c (macros per stage, no-reply
  events batched into the next write, no TCP_NODELAY), one connection per transaction (connect,
  HELO, MAIL, RCPT, DATA, 9 headers, body 2 KB, end of message).  Latency: connect() to the final
  end-of-message reply.  Concurrency 1 uses one client process, 16 and 64 two.
- Milter CPU: utime+stime of the milter's processes and threads (/proc/PID/stat) per 1000
  transactions.  Peak RSS: VmHWM of the milter process, reset before every run (clear_refs);
  spfmilter's supervisor is a fork of it that shares its pages, so the memory of both together
  is given as PSS (/proc/PID/smaps_rollup) at the end of the run.  DNS queries: NSD's
  num.queries per transaction.  SPF decision: wall time of `SPFMilter._evaluate` (HELO and
  MAIL FROM evaluation of one message) inside the milter process (bench/spfmilter_probe.py).
- spfmilter runs with its defaults (both headers: Authentication-Results and one Received-SPF per
  identity; HELO and MAIL FROM checked; a log line per recipient, to a file); pyspf-milter with its
  sample settings (HELO and MAIL FROM checked, Authentication-Results header, its only choice
  on the milter interface); the floor adds one header and asks for no other event.  spfmilter and
  the floor set TCP_NODELAY on their inet listener; pyspf-milter does not.  pyspf-milter checks
  HELO on the CONNECT host name, which Postfix sends as `[address]` without a PTR lookup: it
  evaluates no HELO record (less work than spfmilter, which evaluates the HELO name).
- shape-floor: a pymilter milter that negotiates exactly spfmilter's events (CONNECT and MAIL
  without reply; HELO, RCPT and DATA with a reply; every header without reply; end of message)
  and adds three headers, doing nothing else: the most spfmilter's protocol shape allows
  through pymilter.
- Postfix: one private instance, one smtpd port per set-up, the documented init/postfix-main.cf
  milter settings, queue on tmpfs, every message to the discard transport.  smtp-source sends
  2 KB messages, one per session, from 127.0.0.1; mean latency = elapsed x sessions / messages.
"""


def render_rst(info: dict, targets: list[dict], med: list[dict], pfmed: list[dict], held: list[dict],
               params: dict, polmed: list[dict] | None = None) -> str:
    def cell(milter: str, sock: str, mode: str, conc: int) -> dict:
        return next((r for r in med if (r["milter"], r["socket"], r["mode"], r["concurrency"])
                     == (milter, sock, mode, conc)), {})

    L = ["Performance", "-----------", "",
         "``make bench`` (as root; about 15 minutes) runs spfmilter (as shipped, ``Workers = auto``,",
         "and with ``Workers = 1``) beside pyspf-milter",
         "(spf-engine 3.1.0) and a pymilter milter that only adds one header (the floor),",
         "against NSD serving realistic SPF records (include chains three deep, ``mx``, ``a``,",
         "IPv6 ranges) in a private network namespace, then through a private Postfix.",
         "It installs what it needs itself (``bench/setup.sh``: NSD, Postfix, a separate venv",
         "for pyspf-milter) and writes ``bench/results/latest.md`` (all tables, the method)",
         "and ``latest.json`` (every run).", "",
         f"Latest run: {info['date']}, {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']},",
         f"Python {info['python']}; medians of {params['rounds']} rounds.", "",
         "Milter protocol over a unix socket, warm DNS cache, 16 concurrent connections:", "",
         ".. list-table::", "   :header-rows: 1", "",
         "   * - milter", "     - tx/s", "     - p50 ms", "     - p99 ms",
         "     - CPU s/1000 tx", "     - peak RSS MB", "     - DNS queries/tx"]
    cpus = info["nproc"]
    for name in ("spfmilter", "spfmilter-w1", "pyspf-milter", "floor"):
        r = cell(name, "unix", "warm", 16)
        label = {"spfmilter": f"spfmilter ({cpus} workers)", "spfmilter-w1": "spfmilter (1 worker)"}.get(name, name)
        if r:
            L += [f"   * - {label}", f"     - {r['tx_per_s']:.0f}", f"     - {r['p50_ms']:.2f}",
                  f"     - {r['p99_ms']:.2f}", f"     - {r['cpu_s_per_1000']:.2f}",
                  f"     - {r['peak_rss_mb']:.1f}", f"     - {r['dns_queries_per_tx']:.2f}"]
    scal = scaling_rows(med, cpus)
    if scal:
        L += ["", f"Workers: one beside {cpus} (one per CPU, the default), unix socket; the load client",
              "runs on the same CPUs, so its CPU per transaction is given too:", "",
              ".. list-table::", "   :header-rows: 1", "",
              "   * - workers", "     - cache", "     - concurrency", "     - tx/s",
              "     - milter CPU s/1000 tx", "     - client CPU s/1000 tx", "     - DNS queries/tx"]
        for r in scal:
            L += [f"   * - {r['workers']}", f"     - {r['mode']}", f"     - {r['concurrency']}",
                  f"     - {r['tx_per_s']:.0f}", f"     - {r['cpu_s_per_1000']:.2f}",
                  f"     - {r['client_cpu_s_per_1000']:.2f}", f"     - {r['dns_queries_per_tx']:.2f}"]
    cores = cores_rows(med)
    if cores:
        L += ["", "Expected transactions/s on more cores, from the milter CPU per transaction measured",
              "here at concurrency 16 (cores x 1000 / CPU per 1000 tx; the milter alone on the",
              "cores, and in brackets with the MTA's side of the milter protocol as the load client",
              "used it).  An estimate: it assumes the workers keep scaling as they do from 1 to 2:", "",
              ".. list-table::", "   :header-rows: 1", "",
              "   * - cache", "     - CPU s/1000 tx"] + [f"     - {c} cores" for c in CORES]
        for r in cores:
            L += [f"   * - {r['mode']}", f"     - {r['cpu_s_per_1000']:.2f}"] + [
                f"     - {r[f'{c}_cores']:,.0f} ({r[f'{c}_cores_with_mta']:,.0f})" for c in CORES]
    warmup = params.get("warmup") or []
    if warmup:
        per: dict[str, list[dict]] = {}
        for w in warmup:
            if w["socket"] == "unix":
                per.setdefault(w["milter"], []).append(w)
        L += ["", "Each worker has its own DNS cache: from empty caches, filling the warm set took"]
        L += [", ".join(f"{rows[0]['workers']} worker{'s' if rows[0]['workers'] > 1 else ''}: "
                        + " / ".join(f"{w['queries_per_tx']:.2f}" for w in rows)
                        for rows in per.values())
              + " DNS queries per transaction in successive passes over it (cold: 9 per transaction",
              "whatever the workers).  See *Deployment* for a shared cache in front."]
    L += ["", "Targets:", "", ".. list-table::", "   :header-rows: 1", "",
          "   * - target", "     - measured", "     - met"]
    for t in targets:
        L += [f"   * - {t['target']}", f"     - {t['measured']}", f"     - {met_text(t['met'], 'no')}"]
    if pfmed:
        L += ["", "Through Postfix (smtp-source, 2 KB messages, one per session):", "",
              ".. list-table::", "   :header-rows: 1", "",
              "   * - set-up", "     - msgs/s (1 session)", "     - ms per message",
              "     - msgs/s (16 sessions)"]
        for label, _ in POSTFIX_SETUPS:
            a = next((x for x in pfmed if x["setup"] == label and x["sessions"] == 1), None)
            b = next((x for x in pfmed if x["setup"] == label and x["sessions"] == 16), None)
            if a and b:
                L += [f"   * - {label}", f"     - {a['msgs_per_s']:.0f}", f"     - {a['mean_ms']:.2f}",
                      f"     - {b['msgs_per_s']:.0f}"]
    L += policy_bench.render_rst(polmed or [])

    def pf(label: str) -> dict:
        return next((x for x in pfmed if x["setup"] == label and x["sessions"] == 1), {})

    unix, inet = pf("spfmilter unix"), pf("spfmilter inet")
    L += [""]
    if unix and inet and inet["mean_ms"] <= 1.5 * unix["mean_ms"]:
        L += ["Over TCP (``Socket = inet:...``) there is no delayed-ACK stall: spfmilter sets",
              "``TCP_NODELAY`` on its listening socket, so libmilter's separate end-of-message",
              "packets leave at once, and it asks Postfix for DATA with a reply, so Postfix never",
              "leaves a lone packet unanswered (pyspf-milter's inet rows show what both cost)."]
    elif unix and inet:
        L += [f"Over TCP a message through Postfix takes {inet['mean_ms']:.0f} ms instead of "
              f"{unix['mean_ms']:.1f} ms: spfmilter sets",
              "``TCP_NODELAY`` on its listening socket (libmilter's end-of-message packets leave at",
              "once), but Postfix sends its DATA-stage macros as a packet of their own that the milter",
              "does not answer, and its next write then waits for a delayed ACK (~40 ms).  Use a unix",
              "socket with Postfix."]
    L += ["", "Re-run: ``sudo make bench`` (``BENCH_ARGS='--rounds 1 --seconds 2'`` for a quick look).", ""]
    return "\n".join(L)


# --- main ---------------------------------------------------------------------------------

def only_policy(args: argparse.Namespace, nsd: NSD, started: float) -> int:
    """`--only-policy`: NSD and the policy protocol run, into policy.{md,json} (latest.* untouched)."""
    try:
        nsd.start(0)
        rows = policy_bench.run_policy(RUN, sys.executable, PYSPF_VENV, args.rounds, args.seconds, log)
    finally:
        nsd.stop()
    med = policy_bench.medians(rows)
    targets = policy_bench.targets(med)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "policy.json").write_text(json.dumps({"machine": machine(), "targets": targets,
                                                 "medians": med, "runs": rows}, indent=1) + "\n")
    lines = ["# spfmilter policy against policyd-spf\n", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in targets]
    (out / "policy.md").write_text("\n".join(lines + [""] + policy_bench.render_md(med)
                                             + [policy_bench.METHOD]))
    log(f"done in {time.monotonic() - started:.0f} s; results in {out}/policy.md")
    for t in targets:
        log(f"{'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']}")
    return 0


def inner(args: argparse.Namespace) -> int:
    started = time.monotonic()
    sh("ip", "link", "set", "lo", "up")
    if RUN.exists():
        shutil.rmtree(RUN)
    SOCK.mkdir(parents=True)
    for d in (WORK, RUN, SOCK):
        os.chmod(d, 0o755)
    resolv = RUN / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions attempts:1\n")
    sh("mount", "--bind", str(resolv), "/etc/resolv.conf")  # this mount namespace only
    nsd = NSD()
    if args.only_policy:
        return only_policy(args, nsd, started)
    info = machine()
    log(f"machine: {info}")
    milters: list[Milter] = []
    try:
        n = nsd.start(args.cold_domains)
        log(f"NSD serves {n:,} records ({args.cold_domains:,} cold domains)")
        dnscap = {}
        dnscost = dnspython_lookup_cost(("127.0.0.1", 53))
        log(f"dnspython CPU per uncached lookup: {dnscost}")
        scaling = cpu_scaling()
        log(f"CPU scaling of pure Python processes: {scaling}")
        if not args.no_dns_capacity:
            dnscap["NSD"] = dns_capacity(("127.0.0.1", 53))
            dnscap["tests/dnsserver.py (Python)"] = python_dns_server_capacity()
            log(f"DNS server capacity: {dnscap}")
        milters = make_milters(with_inet=not args.no_inet)
        for m in milters:
            m.start()
        deadline = time.monotonic() + 60
        for m in milters:
            while not m.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{m.key} not ready:\n{m.log_tail()}")
                time.sleep(0.05)
        log("milters ready: " + ", ".join(f"{m.key} pid {m.proc.pid}" for m in milters))
        # warm-up: every warm domain and HELO name once through each spfmilter (fills its cache),
        # a short run through the others (imports, first-use costs)
        # Each spfmilter worker has a cache of its own: passes over the warm set until a
        # pass makes no query (every worker has seen every name), counting NSD's queries.
        warmup: list[dict] = []
        for m in milters:
            if m.name not in SPFMILTERS:
                r = loadgen.run(m.address, 16, zones.all_warm()[:150], 60, procs=2)
                if r["errors"]:
                    raise RuntimeError(f"warm-up of {m.key}: {r['errors']} errors\n{m.log_tail()}")
                continue
            for n in range(1, 13):
                q0 = nsd.queries()
                r = loadgen.run(m.address, 16, zones.all_warm(), 60, procs=2)
                if r["errors"]:
                    raise RuntimeError(f"warm-up of {m.key}: {r['errors']} errors\n{m.log_tail()}")
                q = nsd.queries() - q0
                warmup.append({"milter": m.name, "socket": m.socket, "pass": n, "tx": r["ok"],
                               "queries": q, "queries_per_tx": q / max(r["ok"], 1),
                               "workers": max(1, len(m.pids()) - 1)})
                if q == 0:
                    break
            m.probe()
        log(f"warm-up done: {warmup}")
        params = {"rounds": args.rounds, "seconds": args.seconds, "method": METHOD,
                  "dnspython_lookup_cost": dnscost, "warmup": warmup, "cpu_scaling": scaling}
        cold = ColdPool(args.cold_domains)
        rows = [] if args.no_matrix else run_matrix(milters, nsd, args.rounds, args.seconds, cold,
                                                    args.cold_cap, not args.no_inet)
        held = []
        if not args.no_hold:
            for m in milters:
                if m.socket == "unix" and m.name in (*SPFMILTERS, "pyspf-milter"):
                    h = hold_many(m, args.hold)
                    held.append(h)
                    log(f"held {h['connections_held']} connections on {m.key}: RSS {h['rss_mb']:.1f} MB, "
                        f"{h['threads']} threads; {h['completed']} completed afterwards")
        pf_rows = [] if args.no_postfix else run_postfix(milters, args.rounds, args.postfix_seconds)
        for m in milters:  # the policy run has both CPUs to itself, as every other part
            m.stop()
        pol_rows = [] if args.no_policy else policy_bench.run_policy(
            RUN, sys.executable, PYSPF_VENV, args.rounds, args.seconds, log)
    finally:
        for m in milters:
            m.stop()
        nsd.stop()
    med = median_rows(rows, ("milter", "socket", "mode", "concurrency"))
    pfmed = median_rows(pf_rows, ("setup", "sessions")) if pf_rows else []
    polmed = policy_bench.medians(pol_rows)
    targets = evaluate_targets(med, pfmed, held, dnscost, info["nproc"], scaling) \
        + policy_bench.targets(polmed)
    params["elapsed_s"] = round(time.monotonic() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(
        {"machine": info, "params": {k: v for k, v in params.items() if k != "method"},
         "targets": targets, "medians": med, "postfix_medians": pfmed, "held": held,
         "dns_capacity": dnscap, "dnspython_lookup_cost": dnscost, "runs": rows,
         "postfix_runs": pf_rows, "policy_medians": polmed, "policy_runs": pol_rows},
        indent=1, default=str) + "\n")
    (out / "latest.md").write_text(render_md(info, med, pfmed, held, targets, dnscap, params, polmed))
    (out / "README-section.rst").write_text(render_rst(info, targets, med, pfmed, held, params,
                                                       polmed))
    log(f"done in {params['elapsed_s']} s; results in {out}/latest.md")
    for t in targets:
        log(f"{'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']}")
    return 0


def render_only(out: Path) -> int:
    """Write latest.md and README-section.rst again from latest.json (no measuring)."""
    d = json.loads((out / "latest.json").read_text())
    params = {**d["params"], "method": METHOD}
    polmed = d.get("policy_medians", [])
    targets = evaluate_targets(d["medians"], d["postfix_medians"], d["held"], d.get("dnspython_lookup_cost"),
                               d["machine"]["nproc"], d["params"].get("cpu_scaling")) \
        + policy_bench.targets(polmed)
    (out / "latest.md").write_text(render_md(d["machine"], d["medians"], d["postfix_medians"], d["held"],
                                             targets, d["dns_capacity"], params, polmed))
    (out / "README-section.rst").write_text(render_rst(d["machine"], targets, d["medians"],
                                                       d["postfix_medians"], d["held"], params, polmed))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="length of one milter-protocol run")
    p.add_argument("--postfix-seconds", type=float, default=3.0, help="target length of one Postfix run")
    p.add_argument("--cold-domains", type=int, default=65000,
                   help="at most 65,536: each cold domain has an IPv6 group of its own")
    p.add_argument("--cold-cap", type=int, default=4000, help="most cold domains one run may use")
    p.add_argument("--hold", type=int, default=500, help="connections held open for the RSS check")
    p.add_argument("--no-inet", action="store_true")
    p.add_argument("--no-postfix", action="store_true")
    p.add_argument("--no-hold", action="store_true")
    p.add_argument("--no-dns-capacity", action="store_true")
    p.add_argument("--no-matrix", action="store_true", help="skip the milter-protocol runs")
    p.add_argument("--no-policy", action="store_true", help="skip the policy-protocol runs")
    p.add_argument("--only-policy", action="store_true",
                   help="run only NSD and the policy-protocol runs (results in policy.md/json)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--render-only", action="store_true",
                   help="rewrite latest.md and README-section.rst from latest.json")
    args = p.parse_args()
    if args.render_only:
        return render_only(Path(args.out))
    if os.geteuid() != 0:
        print("bench: needs root (network/mount namespaces, NSD on port 53, Postfix)", file=sys.stderr)
        return 2
    if os.environ.get("SPFMILTER_BENCH_INNER") != "1":
        os.environ["SPFMILTER_BENCH_INNER"] = "1"
        os.chdir(ROOT)
        os.execvp("unshare", ["unshare", "--net", "--mount", "--propagation", "private", "--",
                              sys.executable, "-m", "bench.bench", *sys.argv[1:]])
    return inner(args)


if __name__ == "__main__":
    sys.exit(main())
