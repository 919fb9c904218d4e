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
median over the rounds.  Then the slow-upstream cell: cold DNS, concurrency 1,
spfmilter (both Workers) and pyspf-milter asking bench/slow_upstream.py, which
holds every query ``--slow-ms`` (20 ms) before it goes on to NSD
(``--only-slow`` runs just that cell, into slow.{md,json}).  Then: 500
connections held open at once (RSS), and smtp-source through a private Postfix
with no milter / spfmilter / pyspf-milter; and Postfix's policy protocol
without Postfix: ``spfmilter policy`` against python policyd-spf on
stdin/stdout (bench/policy_bench.py; ``--only-policy`` runs just that part,
into policy.{md,json}).  Results go to bench/results/latest.{md,json} and
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
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import documents, loadgen, policy_bench, replay_bench, report_bench, zones
from bench.matrix import CONCURRENCY, MILTER_ORDER, POSTFIX_SETUPS, SPFMILTERS
from bench.targets import evaluate_targets, slow_targets
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


def spfmilter_milter(name: str, sock_kind: str, tag: str, spec: str, address: str, pf: str,
                     nameserver: str = "127.0.0.1:53") -> Milter:
    """spfmilter (through the timing probe) with ``Workers`` as WORKERS gives for ``name``."""
    conf = RUN / f"{tag}.conf"
    conf.write_text("\n".join([
        f"Socket = {spec}", f"Nameservers = {nameserver}", "Authserv_Id = mx.bench.test",
        "skip_addresses =", "UMask = 000", f"Workers = {WORKERS[name]}", ""]))
    stats = str(SOCK / f"{tag}.stats")
    return Milter(name, sock_kind, spec, address, pf,
                  [sys.executable, "-m", "bench.spfmilter_probe", "-c", str(conf), "--log", "stderr"],
                  env={"SPFMILTER_BENCH_STATS": stats}, stats=stats)


def pyspf_milter(sock_kind: str, tag: str, spec: str, address: str, pf: str,
                 resolv_conf: Path | None = None) -> Milter:
    """pyspf-milter with its sample settings; it reads /etc/resolv.conf, so another
    ``resolv_conf`` is bind-mounted there in a mount namespace of its own."""
    conf = RUN / f"{tag}.conf"
    pyspf_spec = f"local:{address[5:]}" if sock_kind == "unix" else spec
    conf.write_text("\n".join([
        "debugLevel = 1", "TestOnly = 1", "HELO_reject = Fail", "Mail_From_reject = Fail",
        "PermError_reject = False", "TempError_Defer = False",
        # nothing skipped: smtp-source connects from 127.0.0.1
        "skip_addresses = 192.0.2.255/32", "InternalHosts = 192.0.2.254",
        "Header_Type = AR", "Authserv_Id = mx.bench.test", f"Socket = {pyspf_spec}",
        f"PidFile = {RUN}/{tag}.pid", "UserID = root", "UMask = 0", ""]))
    argv = [str(PYSPF_VENV / "bin" / "pyspf-milter"), str(conf)]
    if resolv_conf is not None:
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"', "sh", str(resolv_conf), *argv]
    return Milter("pyspf-milter", sock_kind, spec, address, pf, argv)


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
                m = spfmilter_milter(name, sock_kind, tag, spec, address, pf)
            elif name == "pyspf-milter":
                m = pyspf_milter(sock_kind, tag, spec, address, pf)
            else:
                m = Milter(name, sock_kind, spec, address, pf,
                           [py, "-m", "bench.floor_milter", spec]
                           + (["--shape"] if name == "shape-floor" else []))
            milters.append(m)
    return milters


def start_milters(milters: list[Milter]) -> None:
    for m in milters:
        m.start()
    deadline = time.monotonic() + 60
    for m in milters:
        while not m.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{m.key} not ready:\n{m.log_tail()}")
            time.sleep(0.05)
    log("milters ready: " + ", ".join(f"{m.key} pid {m.proc.pid}" for m in milters if m.proc))


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
        "started": r["started"],  # taken out again by the caller (ColdPool.give_back)
    }
    if probe is not None:
        d = sorted(probe["decisions"])
        out["decision_p50_ms"] = pct(d, 0.5) * 1000 if d else float("nan")
        out["decision_p99_ms"] = pct(d, 0.99) * 1000 if d else float("nan")
    return out


# --- the matrix -------------------------------------------------------------------------

class ColdPool:
    """Hands out cold domains ``start`` to ``end`` - 1; none is ever used twice.

    A run is given more than it can use (its rate is not known before); what
    it never began goes back (``give_back``) and out again first, so later
    rounds do not run out of domains that nothing has asked about yet."""

    def __init__(self, end: int, start: int = 0) -> None:
        self.size, self.next = end, start
        self.unused: list = []

    def take(self, n: int, rng: random.Random) -> list:
        out, self.unused = self.unused[:n], self.unused[n:]
        new = min(n - len(out), self.size - self.next)
        out += [zones.cold_tx(rng, i) for i in range(self.next, self.next + new)]
        self.next += new
        return out

    def give_back(self, txs: list, started: list[int]) -> None:
        """``started``: per load process p (which ran ``txs[p::procs]``), how many it began."""
        procs = len(started)
        self.unused += [tx for p, k in enumerate(started) for tx in txs[p::procs][k:]]


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
                started = res.pop("started")
                if mode == "cold":
                    cold.give_back(txs, started)
                res.update(round=rnd, milter=name, socket=sock_kind, mode=mode, concurrency=conc)
                rows.append(res)
                log(f"round {rnd} {sock_kind:4} {mode} c={conc:<2} {name:12} "
                    f"{res['tx_per_s']:7.0f} tx/s p50 {res['p50_ms']:7.2f} ms p99 {res['p99_ms']:7.2f} ms "
                    f"cpu {res['cpu_s_per_1000']:5.2f} s/1000 dns/tx {res['dns_queries_per_tx']:5.2f} "
                    f"err {res['errors']} rej {res['rejected']}"
                    + (f" decision p50 {res['decision_p50_ms']:.3f} ms" if 'decision_p50_ms' in res else ""))
    return rows


# --- slow upstream ------------------------------------------------------------------------

SLOW_LISTEN = ("127.0.0.2", 53)  # port 53: resolv.conf (pyspf-milter's way to a server) names no port
SLOW_CONTENDERS = ("spfmilter", "spfmilter-w1", "pyspf-milter")


def slow_per_run(seconds: float) -> int:
    """Cold domains one slow-upstream run may use (c=1 and a delay per query allow few)."""
    return int(seconds * 30) + 20


class SlowUpstream:
    """bench/slow_upstream.py: every query held ``delay_ms`` before it goes on to NSD."""

    def __init__(self, delay_ms: float) -> None:
        self.delay_ms = delay_ms
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import select
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.slow_upstream", SLOW_LISTEN[0], str(SLOW_LISTEN[1]),
             "127.0.0.1", "53", str(self.delay_ms / 1000)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        if not ready or not self.proc.stdout.readline().startswith("ready "):
            raise RuntimeError(f"the slow upstream did not start (exit {self.proc.poll()})")

    def round_trips(self, count: int = 20) -> dict:
        """Median milliseconds of one query through it, over UDP and over TCP: the delay it adds."""
        import dns.message
        import dns.query
        udp, tcp = [], []
        for i in range(count):
            q = dns.message.make_query(f"_spf.mh{i % zones.PROVIDERS}.{zones.ZONE}", "TXT")
            for times, ask in ((udp, dns.query.udp), (tcp, dns.query.tcp)):
                t0 = time.perf_counter()
                ask(q, SLOW_LISTEN[0], timeout=2.0, port=SLOW_LISTEN[1])
                times.append((time.perf_counter() - t0) * 1000)
        return {"udp_rtt_ms": statistics.median(udp), "tcp_rtt_ms": statistics.median(tcp)}

    def cpu(self) -> float:
        return cpu_seconds([self.proc.pid]) if self.proc else 0.0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run_slow(nsd: NSD, rounds: int, seconds: float, pool: ColdPool, delay_ms: float) -> tuple[list[dict], dict]:
    """Cold DNS, c=1, unix: spfmilter (both Workers) and pyspf-milter, each started for this cell
    and asking the slow upstream; contenders alternated within every round."""
    up = SlowUpstream(delay_ms)
    resolv = RUN / "resolv-slow.conf"
    resolv.write_text(f"nameserver {SLOW_LISTEN[0]}\noptions attempts:1\n")
    milters = []
    for name in SLOW_CONTENDERS:
        tag = f"{name}-slow"
        a = f"unix:{SOCK / tag}.sock"
        milters.append(spfmilter_milter(name, "unix", tag, a, a, a, f"{SLOW_LISTEN[0]}:{SLOW_LISTEN[1]}")
                       if name in SPFMILTERS else pyspf_milter("unix", tag, a, a, a, resolv))
    rows = []
    try:
        up.start()
        info = {"delay_ms": delay_ms, **up.round_trips()}
        log(f"slow upstream on {SLOW_LISTEN[0]}:{SLOW_LISTEN[1]}: {info}")
        start_milters(milters)
        for m in milters:  # first-use costs (imports, sockets) outside the measured runs
            r = loadgen.run(m.address, 4, zones.all_warm()[:16], 30, procs=1)
            if r["errors"]:
                raise RuntimeError(f"warm-up of {m.key} (slow upstream): {r['errors']} errors\n{m.log_tail()}")
        rng = random.Random(13)
        for rnd in range(1, rounds + 1):
            for m in milters:
                txs = pool.take(slow_per_run(seconds), rng)
                if not txs:
                    log("cold domains for the slow upstream exhausted; skipping")
                    continue
                u0 = up.cpu()
                res = measure(m, nsd, 1, txs, seconds)
                pool.give_back(txs, res.pop("started"))
                res["upstream_cpu_s_per_1000"] = (up.cpu() - u0) / max(res["tx"], 1) * 1000
                res.update(round=rnd, milter=m.name, socket="unix", mode="cold", concurrency=1,
                           upstream_ms=delay_ms)
                rows.append(res)
                log(f"round {rnd} slow upstream {delay_ms:g} ms c=1 {m.name:12} {res['tx_per_s']:6.1f} tx/s "
                    f"p50 {res['p50_ms']:7.2f} ms p99 {res['p99_ms']:7.2f} ms "
                    f"cpu {res['cpu_s_per_1000']:5.2f} s/1000 dns/tx {res['dns_queries_per_tx']:5.2f} "
                    f"err {res['errors']} rej {res['rejected']}")
    finally:
        for m in milters:
            m.stop()
        up.stop()
    return rows, info


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
    (out / "policy.md").write_text(documents.policy_md(targets, med))
    log(f"done in {time.monotonic() - started:.0f} s; results in {out}/policy.md")
    for t in targets:
        log(f"{'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']}")
    return 0


def slow_reserve(args: argparse.Namespace) -> int:
    """Cold domains the slow-upstream cell may use: every round, every contender."""
    return args.rounds * len(SLOW_CONTENDERS) * slow_per_run(args.slow_seconds)


def only_slow(args: argparse.Namespace, nsd: NSD, started: float) -> int:
    """`--only-slow`: NSD and the slow-upstream cell alone, into slow.{md,json} (latest.* untouched)."""
    reserve = slow_reserve(args)
    try:
        nsd.start(reserve)
        rows, info = run_slow(nsd, args.rounds, args.slow_seconds, ColdPool(reserve), args.slow_ms)
    finally:
        nsd.stop()
    med = median_rows(rows, ("milter", "socket", "mode", "concurrency"))
    targets = slow_targets(med, info)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "slow.json").write_text(json.dumps({"machine": machine(), "targets": targets, "slow_upstream": info,
                                               "slow_medians": med, "slow_runs": rows}, indent=1) + "\n")
    (out / "slow.md").write_text(documents.slow_md(targets, med, info))
    log(f"done in {time.monotonic() - started:.0f} s; results in {out}/slow.md")
    for t in targets:
        log(f"{'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']}")
    return 0


def only_replay(out: Path) -> int:
    """`--only-replay`: the replay measurement against the tests' DNS server, into replay.json."""
    from tests.kit.dnsserver import TestDNSServer

    server = TestDNSServer(zones.warm_zonedata(), ttl=3600).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            r = replay_bench.run(server.nameserver, Path(tmp), len(os.sched_getaffinity(0)))
    finally:
        server.stop()
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.json").write_text(json.dumps({"machine": machine(), "replay": r}, indent=1) + "\n")
    log(f"{'MET ' if r['target']['met'] else 'MISS'} {r['target']['target']}: {r['target']['measured']}")
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
    if args.only_slow:
        return only_slow(args, nsd, started)
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
        start_milters(milters)
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
        params = {"rounds": args.rounds, "seconds": args.seconds,
                  "dnspython_lookup_cost": dnscost, "warmup": warmup, "cpu_scaling": scaling}
        # the last cold domains are the slow-upstream cell's, whatever the matrix uses up
        reserve = 0 if args.no_slow else slow_reserve(args)
        cold = ColdPool(args.cold_domains - reserve)
        rows = [] if args.no_matrix else run_matrix(milters, nsd, args.rounds, args.seconds, cold,
                                                    args.cold_cap, not args.no_inet)
        slow_rows, params["slow_upstream"] = ([], {}) if args.no_slow else run_slow(
            nsd, args.rounds, args.slow_seconds, ColdPool(args.cold_domains, args.cold_domains - reserve),
            args.slow_ms)
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
        replayed = None if args.no_replay else replay_bench.run(
            "127.0.0.1", RUN, info["nproc"], server_cpu=lambda: cpu_seconds(tree(nsd.pid)))
        if replayed:
            log(f"replay: {replayed['target']['measured']}")
        report_rows = [] if args.no_report else report_bench.run_report(args.report_messages, log)
    finally:
        for m in milters:
            m.stop()
        nsd.stop()
    med = median_rows(rows, ("milter", "socket", "mode", "concurrency"))
    pfmed = median_rows(pf_rows, ("setup", "sessions")) if pf_rows else []
    polmed = policy_bench.medians(pol_rows)
    slowmed = median_rows(slow_rows, ("milter", "socket", "mode", "concurrency"))
    targets = evaluate_targets(med, pfmed, held, dnscost, info["nproc"], scaling) \
        + slow_targets(slowmed, params["slow_upstream"]) \
        + policy_bench.targets(polmed) + ([replayed["target"]] if replayed else []) \
        + report_bench.targets(report_rows)
    params["elapsed_s"] = round(time.monotonic() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(
        {"machine": info, "params": params,
         "targets": targets, "medians": med, "postfix_medians": pfmed, "held": held,
         "dns_capacity": dnscap, "dnspython_lookup_cost": dnscost, "runs": rows,
         "postfix_runs": pf_rows, "policy_medians": polmed, "policy_runs": pol_rows,
         "replay": replayed, "slow_medians": slowmed, "slow_runs": slow_rows,
         "report_runs": report_rows},
        indent=1, default=str) + "\n")
    write_documents(out, info, med, pfmed, held, targets, dnscap, params, polmed, slowmed)
    log(f"done in {params['elapsed_s']} s; results in {out}/latest.md")
    for t in targets:
        log(f"{'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']}")
    return 0


def write_documents(out: Path, info: dict, med: list[dict], pfmed: list[dict], held: list[dict],
                    targets: list[dict], dnscap: dict, params: dict, polmed: list[dict],
                    slowmed: list[dict]) -> None:
    (out / "latest.md").write_text(documents.latest_md(info, med, pfmed, held, targets, dnscap, params, polmed,
                                                       slowmed))
    (out / "README-section.rst").write_text(documents.readme_section(info, targets, med, pfmed, held, params,
                                                                     polmed, slowmed))


def render_only(out: Path) -> int:
    """Write latest.md and README-section.rst again from latest.json (no measuring)."""
    d = json.loads((out / "latest.json").read_text())
    polmed = d.get("policy_medians", [])
    slowmed = d.get("slow_medians", [])
    targets = evaluate_targets(d["medians"], d["postfix_medians"], d["held"], d.get("dnspython_lookup_cost"),
                               d["machine"]["nproc"], d["params"].get("cpu_scaling")) \
        + slow_targets(slowmed, d["params"].get("slow_upstream")) \
        + policy_bench.targets(polmed) + report_bench.targets(d.get("report_runs", []))
    write_documents(out, d["machine"], d["medians"], d["postfix_medians"], d["held"], targets, d["dns_capacity"],
                    d["params"], polmed, slowmed)
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
    p.add_argument("--no-slow", action="store_true", help="skip the slow-upstream cell")
    p.add_argument("--only-slow", action="store_true",
                   help="run only NSD and the slow-upstream cell (results in slow.md/json)")
    p.add_argument("--slow-ms", type=float, default=20.0,
                   help="delay of every query to the slow upstream, in milliseconds")
    p.add_argument("--slow-seconds", type=float, default=4.0, help="length of one slow-upstream run")
    p.add_argument("--no-replay", action="store_true", help="skip the spfmilter replay run")
    p.add_argument("--only-replay", action="store_true",
                   help="run only the spfmilter replay measurement (no root: the tests' DNS "
                        "server; results in replay.json)")
    p.add_argument("--no-report", action="store_true", help="skip the spfmilter report run")
    p.add_argument("--report-messages", type=int, default=250_000,
                   help="messages in the logs spfmilter report reads (8 lines each)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--render-only", action="store_true",
                   help="rewrite latest.md and README-section.rst from latest.json")
    args = p.parse_args()
    if args.render_only:
        return render_only(Path(args.out))
    if args.only_replay:
        return only_replay(Path(args.out))
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
