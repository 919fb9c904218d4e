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


def evaluate_targets(med: list[dict], pf: list[dict], held: list[dict],
                     dnscost: dict | None = None, cpus: int = 2, scaling: dict | None = None) -> list[dict]:
    def cell(milter: str, sock: str, mode: str, conc: int) -> dict:
        return next((r for r in med if (r["milter"], r["socket"], r["mode"], r["concurrency"])
                     == (milter, sock, mode, conc)), {})

    t = workers_targets(med, pf, held, cpus, scaling)
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
