"""The policy protocol without Postfix: ``spfmilter policy`` against python policyd-spf.

Both run as Postfix's ``spawn`` runs them: one process per policy client, the
protocol on its stdin and stdout, requests one after the other.  Each request
is a new message (its own ``instance``) from the benchmark's warm set, so
both evaluate HELO and MAIL FROM every time, against the same NSD records.
Contenders alternate within every cell; the tables show medians over rounds.

policyd-spf (PyPI spf-engine 3.1.0, in bench/setup.sh's venv) keeps no DNS
cache of its own: a site gives it a local caching resolver, which NSD on
loopback stands in for (every answer is as near as a warm cache's).
spfmilter keeps its resolver's cache, as in production.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import zones

CONCURRENCY = (1, 2)
ORDER = ("spfmilter policy", "policyd-spf")
TARGET = 5.0   # spfmilter policy requests/s, as a multiple of policyd-spf's


def request(tx: zones.Tx, n: int) -> bytes:
    return (f"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
            f"client_address={tx.client_ip}\nclient_name=unknown\nreverse_client_name=unknown\n"
            f"helo_name={tx.helo}\nsender={tx.sender}\nrecipient=postmaster@mx.bench.test\n"
            f"recipient_count=0\nqueue_id=\ninstance=b{n:x}\nsize=0\nsasl_method=\n"
            f"sasl_username=\nsasl_sender=\nccert_subject=\nccert_issuer=\n"
            f"ccert_fingerprint=\nencryption_protocol=\nencryption_cipher=\n"
            f"encryption_keysize=0\netrn_domain=\nstress=\n\n").encode()


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    import os
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """One policy process (as one spawn child), and the client side of its pipes."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err)
        self.count = 0

    def ask(self, tx: zones.Tx) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.count += 1
        self.proc.stdin.write(request(tx, self.count))
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        blank = self.proc.stdout.readline()
        if not answer or blank != b"\n":
            raise RuntimeError(f"{self.name}: no answer (exit {self.proc.poll()})")
        return answer.decode(errors="replace").strip()

    def cpu(self) -> float:
        return _cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Contender:
    name: str
    argv: list[str]


def contenders(run: Path, python: str, pyspf_venv: Path) -> list[Contender]:
    """Both with HELO and MAIL FROM checked, refusing fail only, one Authentication-Results."""
    spf_conf = run / "policy-spfmilter.conf"
    spf_conf.write_text("Nameservers = 127.0.0.1:53\nAuthserv_Id = mx.bench.test\n"
                        "skip_addresses =\nHeader_Type = AR\n")
    py_conf = run / "policyd-spf.conf"
    py_conf.write_text("debugLevel = 1\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\n"
                       "PermError_reject = False\nTempError_Defer = False\n"
                       "skip_addresses = 192.0.2.255/32\nHeader_Type = AR\n"
                       "Authserv_Id = mx.bench.test\n")
    return [Contender("spfmilter policy", [python, "-m", "spfmilter", "policy", "-c", str(spf_conf),
                                           "--log-file", str(run / "policy-spfmilter.decisions")]),
            Contender("policyd-spf", [str(pyspf_venv / "bin" / "policyd-spf"), str(py_conf)])]


def _kind(answer: str) -> str:
    low = answer.lower()  # policyd-spf writes "prepend", spfmilter "PREPEND"
    for prefix, kind in (("action=prepend ", "prepend"), ("action=dunno", "dunno"),
                         ("action=5", "reject")):
        if low.startswith(prefix):
            return kind
    return "other"


def measure(servers: list[Server], txs: list[zones.Tx], seconds: float) -> dict:
    """Each server gets its own client thread for ``seconds``; requests/s and CPU per request."""
    cpu0 = [s.cpu() for s in servers]
    results: list[tuple[int, list[float], dict[str, int]]] = []
    samples: dict[str, str] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    started = time.monotonic()

    def client(server: Server, offset: int) -> None:
        n, lat, kinds = 0, [], {}  # type: ignore[var-annotated]
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            answer = server.ask(txs[(offset + n) % len(txs)])
            lat.append(time.perf_counter() - t0)
            kind = _kind(answer)
            kinds[kind] = kinds.get(kind, 0) + 1
            samples.setdefault(kind, answer[:160])
            n += 1
        with lock:
            results.append((n, lat, kinds))

    threads = [threading.Thread(target=client, args=(s, i * 7919)) for i, s in enumerate(servers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    cpu = sum(s.cpu() for s in servers) - sum(cpu0)
    total = sum(n for n, _, _ in results)
    lat = sorted(x for _, ls, _ in results for x in ls)
    kinds: dict[str, int] = {}
    for _, _, k in results:
        for key, v in k.items():
            kinds[key] = kinds.get(key, 0) + v
    return {"requests": total, "requests_per_s": total / elapsed if elapsed else 0.0,
            "cpu_ms_per_request": cpu / max(total, 1) * 1000,
            "p50_ms": lat[len(lat) // 2] * 1000 if lat else float("nan"),
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan"),
            "answers": kinds, "samples": samples, "unexpected": kinds.get("other", 0)}


def run_policy(run: Path, python: str, pyspf_venv: Path, rounds: int, seconds: float,
               log: Callable[[str], None]) -> list[dict]:
    """Start ``max(CONCURRENCY)`` processes per contender, warm them (every warm domain
    and HELO name once), then measure each cell, contenders alternating."""
    rng = random.Random(23)
    txs = [zones.warm_tx(rng) for _ in range(20000)]
    pool: dict[str, list[Server]] = {}
    rows = []
    try:
        for c in contenders(run, python, pyspf_venv):
            pool[c.name] = [Server(c.name, c.argv, run / f"{c.name.replace(' ', '-')}.stderr")
                            for _ in range(max(CONCURRENCY))]
        for name, servers in pool.items():
            for s in servers:
                for tx in zones.all_warm():
                    s.ask(tx)
            log(f"policy warm-up done: {name}")
        for rnd in range(1, rounds + 1):
            for conc in CONCURRENCY:
                for name in ORDER:
                    r = measure(pool[name][:conc], txs, seconds)
                    r.update(round=rnd, contender=name, concurrency=conc)
                    rows.append(r)
                    log(f"round {rnd} policy c={conc} {name:16} {r['requests_per_s']:7.0f} req/s "
                        f"cpu {r['cpu_ms_per_request']:6.3f} ms/req p50 {r['p50_ms']:6.2f} ms "
                        f"p99 {r['p99_ms']:6.2f} ms answers {r['answers']} e.g. {r['samples']}")
    finally:
        for servers in pool.values():
            for s in servers:
                s.stop()
    return rows


def medians(rows: list[dict]) -> list[dict]:
    out = []
    for conc in CONCURRENCY:
        for name in ORDER:
            rs = [r for r in rows if (r["contender"], r["concurrency"]) == (name, conc)]
            if rs:
                out.append({"contender": name, "concurrency": conc, "rounds": len(rs),
                            **{k: statistics.median(r[k] for r in rs)
                               for k in ("requests_per_s", "cpu_ms_per_request", "p50_ms", "p99_ms")},
                            "unexpected": sum(r["unexpected"] for r in rs)})
    return out


def targets(med: list[dict]) -> list[dict]:
    out = []
    for conc in CONCURRENCY:
        s = next((r for r in med if (r["contender"], r["concurrency"]) == (ORDER[0], conc)), None)
        p = next((r for r in med if (r["contender"], r["concurrency"]) == (ORDER[1], conc)), None)
        if s and p and p["requests_per_s"]:
            ratio = s["requests_per_s"] / p["requests_per_s"]
            cpu = p["cpu_ms_per_request"] / s["cpu_ms_per_request"] if s["cpu_ms_per_request"] else 0
            out.append({"target": f"policy protocol, warm, c={conc}: spfmilter policy requests/s "
                                  f">= {TARGET:g}x policyd-spf",
                        "measured": f"{ratio:.1f}x ({s['requests_per_s']:.0f} vs "
                                    f"{p['requests_per_s']:.0f} req/s; CPU per request "
                                    f"{s['cpu_ms_per_request']:.3f} vs "
                                    f"{p['cpu_ms_per_request']:.3f} ms, {cpu:.1f}x less)",
                        "met": ratio >= TARGET and s["unexpected"] == 0})
    return out
