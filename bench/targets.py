"""The benchmark's targets: each measured figure against what the project asks of it.

Pure functions of the medians (bench/bench.py measures them), so
``python -m bench.bench --render-only`` re-evaluates a stored run as a full one
does.
"""

from __future__ import annotations


def cpu_bound(r: dict, cpus: int) -> float:
    """The most tx/s these CPUs allow the cell's work: milter + load client + NSD."""
    total = r["cpu_s_per_1000"] + r.get("client_cpu_s_per_1000", 0) + r.get("dns_server_cpu_s_per_1000", 0)
    return cpus * 1000 / total if total else float("nan")


def bound_text(r: dict, cpus: int) -> str:
    return (f"; bound on {cpus} CPUs: milter {r['cpu_s_per_1000']:.2f} + load client "
            f"{r.get('client_cpu_s_per_1000', 0):.2f} + NSD {r.get('dns_server_cpu_s_per_1000', 0):.2f} "
            f"s/1000 tx allow at most {cpu_bound(r, cpus):.0f} tx/s")


def workers_targets(med: list[dict], pf: list[dict], held: list[dict], cpus: int,
                    scaling: dict | None = None) -> list[dict]:
    """Issue 13's targets: workers scale, and the cold path keeps up under concurrency."""
    def cell(milter: str, mode: str, conc: int) -> dict:
        return next((r for r in med if (r["milter"], r["socket"], r["mode"], r["concurrency"])
                     == (milter, "unix", mode, conc)), {})

    t = []
    w2, w1, py = cell("spfmilter", "warm", 16), cell("spfmilter-w1", "warm", 16), cell("pyspf-milter", "warm", 16)
    if w2 and w1:
        ratio = w2["tx_per_s"] / w1["tx_per_s"]
        machine_bound = ""
        if scaling and str(cpus) in scaling:
            sc = scaling[str(cpus)]
            machine_bound = (f"; on this machine {cpus} pure-Python processes at once do "
                             f"{sc['speedup']:.2f}x the work of one (each at "
                             f"{sc['cpu_us_per_round'] / scaling['1']['cpu_us_per_round']:.2f}x the CPU "
                             f"per unit of work)")
        t.append({"target": f"warm, c=16, unix: Workers={cpus} >= 1.3x Workers=1 tx/s",
                  "measured": f"{ratio:.2f}x ({w2['tx_per_s']:.0f} vs {w1['tx_per_s']:.0f} tx/s; the load "
                              f"client used {w2['client_cpu_s_per_1000']:.2f} vs {w1['client_cpu_s_per_1000']:.2f} "
                              f"s CPU/1000 tx){bound_text(w2, cpus)}{machine_bound}",
                  "met": ratio >= 1.3})
        cr = w2["cpu_s_per_1000"] / w1["cpu_s_per_1000"]
        t.append({"target": f"warm, c=16, unix: milter CPU per tx with {cpus} workers within 1.15x of 1",
                  "measured": f"{cr:.2f}x ({w2['cpu_s_per_1000']:.2f} vs {w1['cpu_s_per_1000']:.2f} s/1000 tx)",
                  "met": cr <= 1.15})
    if w2 and py:
        ratio = w2["tx_per_s"] / py["tx_per_s"]
        t.append({"target": "warm, c=16, unix: spfmilter (as shipped) >= 6x pyspf-milter tx/s",
                  "measured": f"{ratio:.1f}x ({w2['tx_per_s']:.0f} vs {py['tx_per_s']:.0f} tx/s; per CPU "
                              f"second {py['cpu_s_per_1000'] / w2['cpu_s_per_1000']:.1f}x){bound_text(w2, cpus)}",
                  "met": ratio >= 6})
    c16, c1, pyc = cell("spfmilter", "cold", 16), cell("spfmilter", "cold", 1), cell("pyspf-milter", "cold", 16)
    if c16 and pyc:
        ratio = c16["tx_per_s"] / pyc["tx_per_s"]
        t.append({"target": "cold, c=16, unix: spfmilter (as shipped) >= 1.5x pyspf-milter tx/s",
                  "measured": f"{ratio:.2f}x ({c16['tx_per_s']:.0f} vs {pyc['tx_per_s']:.0f} tx/s; CPU "
                              f"{c16['cpu_s_per_1000']:.2f} vs {pyc['cpu_s_per_1000']:.2f} s/1000 tx)"
                              f"{bound_text(c16, cpus)}",
                  "met": ratio >= 1.5})
    if c16 and c1:
        ratio = c16["cpu_s_per_1000"] / c1["cpu_s_per_1000"]
        c1w1, c16w1 = cell("spfmilter-w1", "cold", 1), cell("spfmilter-w1", "cold", 16)
        extra = (f"; Workers=1: {c16w1['cpu_s_per_1000'] / c1w1['cpu_s_per_1000']:.2f}x "
                 f"({c16w1['cpu_s_per_1000']:.2f} vs {c1w1['cpu_s_per_1000']:.2f})") if c1w1 and c16w1 else ""
        t.append({"target": "cold, unix: spfmilter CPU per tx at c=16 <= 1.3x at c=1",
                  "measured": f"{ratio:.2f}x ({c16['cpu_s_per_1000']:.2f} vs {c1['cpu_s_per_1000']:.2f} "
                              f"s/1000 tx){extra}",
                  "met": ratio <= 1.3})
    h = next((x for x in held if x["milter"] == "spfmilter"), None)
    if h:
        per = h.get("pss_per_worker_mb", h["pss_mb"])
        t.append({"target": "500 connections held: <= 80 MB PSS per worker",
                  "measured": f"{per:.1f} MB PSS per worker ({h['pss_mb']:.1f} MB for the supervisor and "
                              f"{h.get('workers', 1)} workers; largest RSS {h['rss_mb']:.1f} MB), "
                              f"{h['connections_held']} connections held",
                  "met": per <= 80 and h["connections_held"] >= 500})

    def pcell(setup: str) -> dict:
        return next((r for r in pf if (r["setup"], r["sessions"]) == (setup, 16)), {})

    n16, s16, w16, f16 = (pcell(x) for x in ("no milter", "spfmilter unix", "spfmilter-w1 unix", "floor unix"))
    if n16 and s16 and f16:
        t.append({"target": "Postfix, 16 sessions: share of no-milter throughput (reported), beside the "
                            "one-header floor",
                  "measured": f"spfmilter {s16['msgs_per_s'] / n16['msgs_per_s'] * 100:.0f}% "
                              f"({s16['msgs_per_s']:.0f} vs {n16['msgs_per_s']:.0f} msg/s)"
                              + (f", Workers=1 {w16['msgs_per_s'] / n16['msgs_per_s'] * 100:.0f}%" if w16 else "")
                              + f"; the floor {f16['msgs_per_s'] / n16['msgs_per_s'] * 100:.0f}%",
                  "met": None})
    return t


def serial_bound(r: dict) -> float:
    """At c=1 one transaction at a time: milter, load client and NSD work in turn, so their CPU
    per transaction adds up to its time and bounds tx/s on any number of CPUs."""
    total = r["cpu_s_per_1000"] + r.get("client_cpu_s_per_1000", 0) + r.get("dns_server_cpu_s_per_1000", 0)
    return 1000 / total if total else float("nan")


def serial_text(r: dict) -> str:
    return (f"; bound at c=1 (one transaction at a time): milter {r['cpu_s_per_1000']:.2f} + load client "
            f"{r.get('client_cpu_s_per_1000', 0):.2f} + NSD {r.get('dns_server_cpu_s_per_1000', 0):.2f} "
            f"s/1000 tx in turn allow at most {serial_bound(r):.0f} tx/s, "
            f"{r['tx_per_s'] / serial_bound(r) * 100:.0f}% of it reached")


def one_worker_targets(med: list[dict], cpus: int, dnscost: dict | None = None) -> list[dict]:
    """Issue's one-worker targets: spfmilter with Workers=1 against pyspf-milter (one process)
    cold, and against the shape-floor warm; each row says the bound its result meets."""
    def cell(milter: str, mode: str, conc: int) -> dict:
        return next((r for r in med if (r["milter"], r["socket"], r["mode"], r["concurrency"])
                     == (milter, "unix", mode, conc)), {})

    def per_query(r: dict) -> float:
        return r["cpu_s_per_1000"] / r["dns_queries_per_tx"] if r["dns_queries_per_tx"] else float("nan")

    def queries(w: dict, p: dict) -> str:
        return f"DNS queries/tx {w['dns_queries_per_tx']:.2f} vs {p['dns_queries_per_tx']:.2f}"

    t = []
    w1, p1 = cell("spfmilter-w1", "cold", 1), cell("pyspf-milter", "cold", 1)
    if w1 and p1:
        ratio = w1["tx_per_s"] / p1["tx_per_s"]
        t.append({"target": "one worker, cold, c=1, unix: spfmilter-w1 >= 1.3x pyspf-milter tx/s",
                  "measured": f"{ratio:.2f}x ({w1['tx_per_s']:.0f} vs {p1['tx_per_s']:.0f} tx/s; "
                              f"{queries(w1, p1)}){serial_text(w1)}; pyspf-milter's"
                              f"{serial_text(p1).removeprefix('; bound at c=1 (one transaction at a time):')}",
                  "met": ratio >= 1.3})
        cr = w1["cpu_s_per_1000"] / p1["cpu_s_per_1000"]
        floor = ""
        warm = cell("spfmilter-w1", "warm", 1)
        if dnscost and warm:
            least = warm["cpu_s_per_1000"] + dnscost["resolver_us"] * w1["dns_queries_per_tx"] / 1000
            floor = (f"; bound: the warm transaction {warm['cpu_s_per_1000']:.2f} + "
                     f"{w1['dns_queries_per_tx']:.0f} lookups x {dnscost['resolver_us']:.0f} us "
                     f"(spfmilter's resolver alone) = {least:.2f} s/1000 tx, "
                     f"{least / p1['cpu_s_per_1000']:.2f}x pyspf-milter's")
        t.append({"target": "one worker, cold, c=1, unix: spfmilter-w1 CPU per tx <= 0.8x pyspf-milter",
                  "measured": f"{cr:.2f}x ({w1['cpu_s_per_1000']:.2f} vs {p1['cpu_s_per_1000']:.2f} s/1000 tx; "
                              f"CPU per query asked {per_query(w1):.2f} vs {per_query(p1):.2f} ms; "
                              f"{queries(w1, p1)}){floor}",
                  "met": cr <= 0.8})
    w16, p16 = cell("spfmilter-w1", "cold", 16), cell("pyspf-milter", "cold", 16)
    if w16 and p16:
        ratio = w16["tx_per_s"] / p16["tx_per_s"]
        t.append({"target": "one worker, cold, c=16, unix: spfmilter-w1 >= 1.6x pyspf-milter tx/s",
                  "measured": f"{ratio:.2f}x ({w16['tx_per_s']:.0f} vs {p16['tx_per_s']:.0f} tx/s; CPU "
                              f"{w16['cpu_s_per_1000']:.2f} vs {p16['cpu_s_per_1000']:.2f} s/1000 tx; "
                              f"{queries(w16, p16)}){bound_text(w16, cpus)}, "
                              f"{w16['tx_per_s'] / cpu_bound(w16, cpus) * 100:.0f}% of it reached",
                  "met": ratio >= 1.6})
    ww, shp = cell("spfmilter-w1", "warm", 16), cell("shape-floor", "warm", 16)
    if ww and shp:
        ratio = ww["tx_per_s"] / shp["tx_per_s"]
        shape_bound = bound_text(shp, cpus).removeprefix(f"; bound on {cpus} CPUs:")
        t.append({"target": "one worker, warm, c=16, unix: spfmilter-w1 >= 55% of the shape-floor tx/s",
                  "measured": f"{ratio * 100:.0f}% ({ww['tx_per_s']:.0f} vs {shp['tx_per_s']:.0f} tx/s; CPU "
                              f"{ww['cpu_s_per_1000']:.2f} vs {shp['cpu_s_per_1000']:.2f} s/1000 tx)"
                              f"{bound_text(ww, cpus)}, {ww['tx_per_s'] / cpu_bound(ww, cpus) * 100:.0f}% of it "
                              f"reached; the shape-floor's{shape_bound}",
                  "met": ratio >= 0.55})
    return t


def slow_targets(slow: list[dict], info: dict | None = None) -> list[dict]:
    """The slow-upstream cell (every uncached query takes ``delay_ms``): spfmilter's median
    message latency against pyspf-milter's, both spfmilters judged."""
    def cell(milter: str) -> dict:
        return next((r for r in slow if r["milter"] == milter), {})

    py = cell("pyspf-milter")
    ours = [(name, r) for name in ("spfmilter", "spfmilter-w1") if (r := cell(name))]
    if not py or not ours:
        return []
    delay = (info or {}).get("delay_ms", py.get("upstream_ms", 20))
    parts = [f"{name} {r['p50_ms'] / py['p50_ms']:.2f}x ({r['p50_ms']:.0f} ms, {r['tx_per_s']:.1f} tx/s, "
             f"{r['dns_queries_per_tx']:.2f} queries/tx)" for name, r in ours]
    serial = "; ".join(f"{name} {r['dns_queries_per_tx']:.0f} x {delay:g} = {r['dns_queries_per_tx'] * delay:.0f} ms"
                       for name, r in [*ours, ("pyspf-milter", py)])
    rtt = (f"; a query through the slow upstream took {info['udp_rtt_ms']:.1f} ms (UDP), "
           f"{info['tcp_rtt_ms']:.1f} ms (TCP)") if info and "udp_rtt_ms" in info else ""
    worst = max(r["p50_ms"] / py["p50_ms"] for _, r in ours)
    return [{"target": f"slow upstream ({delay:g} ms per uncached query), cold, c=1, unix: spfmilter p50 "
                       f"message latency <= 0.6x pyspf-milter (both Workers)",
             "measured": ", ".join(parts) + f" vs pyspf-milter {py['p50_ms']:.0f} ms ({py['tx_per_s']:.1f} tx/s); "
                         f"bound if the lookups go one after another (the delay alone): {serial}{rtt}",
             "met": worst <= 0.6}]


def evaluate_targets(med: list[dict], pf: list[dict], held: list[dict],
                     dnscost: dict | None = None, cpus: int = 2, scaling: dict | None = None) -> list[dict]:
    def cell(milter: str, sock: str, mode: str, conc: int) -> dict:
        return next((r for r in med if (r["milter"], r["socket"], r["mode"], r["concurrency"])
                     == (milter, sock, mode, conc)), {})

    t = workers_targets(med, pf, held, cpus, scaling) + one_worker_targets(med, cpus, dnscost)
    spf, py, fl = (cell(n, "unix", "warm", 16) for n in ("spfmilter", "pyspf-milter", "floor"))
    if spf and py:
        ratio = spf["tx_per_s"] / py["tx_per_s"]
        t.append({"target": "warm, c=16, unix: spfmilter tx/s >= 5x pyspf-milter",
                  "measured": f"{ratio:.1f}x ({spf['tx_per_s']:.0f} vs {py['tx_per_s']:.0f} tx/s)",
                  "met": ratio >= 5})
    shp = cell("shape-floor", "unix", "warm", 16)
    if spf and fl:
        ratio = spf["tx_per_s"] / fl["tx_per_s"]
        extra = ""
        if shp:
            extra = (f"; a milter with spfmilter's events and header edits but no work (shape-floor) "
                     f"reaches only {shp['tx_per_s'] / fl['tx_per_s'] * 100:.0f}% of the floor, "
                     f"spfmilter {spf['tx_per_s'] / shp['tx_per_s'] * 100:.0f}% of that")
        t.append({"target": "warm, c=16, unix: spfmilter tx/s >= 60% of the floor",
                  "measured": f"{ratio * 100:.0f}% ({spf['tx_per_s']:.0f} vs {fl['tx_per_s']:.0f} tx/s){extra}",
                  "met": ratio >= 0.6})
    warm = [r for r in med if r["milter"] == "spfmilter" and r["mode"] == "warm"]
    if warm:
        worst = max(r["dns_queries_per_tx"] for r in warm)
        t.append({"target": "warm: 0 DNS queries per transaction (spfmilter, every warm cell)",
                  "measured": f"max {worst:.3f} queries/tx", "met": worst < 0.005})
    if spf and "decision_p50_ms" in spf:
        d = spf["decision_p50_ms"]
        t.append({"target": "warm, c=16, unix: SPF decision (HELO + MAIL FROM) <= 0.3 ms median",
                  "measured": f"{d:.3f} ms (c=1: "
                              f"{cell('spfmilter', 'unix', 'warm', 1).get('decision_p50_ms', float('nan')):.3f} ms)",
                  "met": d <= 0.3})
    cold = cell("spfmilter", "unix", "cold", 16)
    if spf and cold:
        ratio = cold["cpu_s_per_1000"] / spf["cpu_s_per_1000"]
        c1w, c1c = cell("spfmilter", "unix", "warm", 1), cell("spfmilter", "unix", "cold", 1)
        per_query = ""
        if c1w and c1c and c1c["dns_queries_per_tx"] > 0:
            per_query = (f"; at c=1 {c1c['cpu_s_per_1000'] / c1w['cpu_s_per_1000']:.2f}x: each of the "
                         f"{c1c['dns_queries_per_tx']:.0f} uncached lookups costs "
                         f"{(c1c['cpu_s_per_1000'] - c1w['cpu_s_per_1000']) / c1c['dns_queries_per_tx'] * 1000:.0f} "
                         f"us of CPU in the milter (the query, its answer, pyspf on a new record), "
                         f"a whole warm transaction {c1w['cpu_s_per_1000'] * 1000:.0f} us")
        if dnscost and c1w:
            floor_us = dnscost["resolver_us"] * (c1c or cold)["dns_queries_per_tx"]
            warm_us = c1w["cpu_s_per_1000"] * 1000
            per_query += (f"; spfmilter's resolver alone costs {dnscost['resolver_us']:.0f} us per lookup "
                          f"(dnspython's cheapest, make_query + query.udp on a socket kept open: "
                          f"{dnscost['leanest_us']:.0f} us), so a cold transaction costs at least the "
                          f"warm one plus its lookups, {warm_us:.0f} + {floor_us:.0f} us "
                          f"= {(warm_us + floor_us) / warm_us:.1f}x warm")
        t.append({"target": "c=16, unix: spfmilter CPU per tx cold <= 2x warm",
                  "measured": f"{ratio:.2f}x ({cold['cpu_s_per_1000']:.2f} vs "
                              f"{spf['cpu_s_per_1000']:.2f} s/1000 tx){per_query}",
                  "met": ratio <= 2})
    h = next((x for x in held if x["milter"] == "spfmilter"), None)
    if h:
        per = h.get("pss_per_worker_mb", h["pss_mb"])
        worst = max(h["rss_mb"], per)
        t.append({"target": "RSS <= 80 MB per milter process with 500 concurrent connections (after the cold "
                            "runs filled the DNS cache)",
                  "measured": f"{h['rss_mb']:.1f} MB RSS of the largest milter process, {per:.1f} MB PSS per "
                              f"worker ({h['pss_mb']:.1f} MB for supervisor and {h.get('workers', 1)} workers), "
                              f"{h['connections_held']} connections held",
                  "met": worst <= 80 and h["connections_held"] >= 500})

    def pcell(setup: str, s: int) -> dict:
        return next((r for r in pf if (r["setup"], r["sessions"]) == (setup, s)), {})

    u, i = pcell("spfmilter unix", 1), pcell("spfmilter inet", 1)
    if u and i:
        ratio = i["mean_ms"] / u["mean_ms"]
        t.append({"target": "Postfix, 1 session: spfmilter inet latency <= 1.5x unix",
                  "measured": f"{ratio:.2f}x ({i['mean_ms']:.2f} vs {u['mean_ms']:.2f} ms per message)",
                  "met": ratio <= 1.5})
    n16, s16 = pcell("no milter", 16), pcell("spfmilter unix", 16)
    if n16 and s16:
        ratio = s16["msgs_per_s"] / n16["msgs_per_s"]
        extra = ""
        f16, h16 = pcell("floor unix", 16), pcell("shape-floor unix", 16)
        if f16 and h16:
            extra = (f"; on the same 2 CPUs the one-header floor keeps "
                     f"{f16['msgs_per_s'] / n16['msgs_per_s'] * 100:.0f}%, "
                     f"the shape-floor {h16['msgs_per_s'] / n16['msgs_per_s'] * 100:.0f}%")
        t.append({"target": "Postfix, 16 sessions: spfmilter keeps >= 80% of no-milter throughput",
                  "measured": f"{ratio * 100:.0f}% ({s16['msgs_per_s']:.0f} vs {n16['msgs_per_s']:.0f} msg/s){extra}",
                  "met": ratio >= 0.8})
    return t
