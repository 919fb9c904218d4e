"""The benchmark's result documents as blocks (bench/report.py renders them).

Three documents come from one set of results: latest.md (every table and the
method), the README's Performance section (bench/results/README-section.rst,
shorter, in the README's own words) and policy.md (``--only-policy``).  Each
table is built here once from its columns; where the README section is
shorter or words a figure differently, it picks other columns or other
paragraphs, so a figure cannot be computed one way for one document and
another way for the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.matrix import CONCURRENCY, MILTER_ORDER, POSTFIX_SETUPS, SPFMILTERS
from bench.report import Block, Bullets, Column, Heading, Paragraph, Table, render_markdown, render_rst

Row = Mapping[str, Any]

CORES = (4, 8, 16)
NAN = float("nan")

# latest.md's last section; the policy part only when the policy protocol was run.
# Written in the blocks' inline markup: ``literal`` becomes `literal` in Markdown.
METHOD = """\
- Everything runs in a private network namespace: NSD (authoritative, 127.0.0.1:53) serves
  ``bench.test``; spfmilter uses it through ``Nameservers``, pyspf-milter through a private
  bind mount of /etc/resolv.conf.  TTLs are 3600 s (SOA minimum too).
- Records: 300 warm sender domains over 10 providers, ``v=spf1 mx a:out... include:_spf.<provider> ~all``
  with ``_spf`` including two range lists (``_nb1``, ``_nb2``: ip4 and ip6): include chains 3 deep,
  ``mx`` (2 MX hosts) and ``a``; HELO names ``v=spf1 a include:_nb2... ~all``.  Passing clients come
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
  num.queries per transaction.  SPF decision: wall time of ``SPFMilter._evaluate`` (HELO and
  MAIL FROM evaluation of one message) inside the milter process (bench/spfmilter_probe.py).
- spfmilter runs with its defaults (both headers: Authentication-Results and one Received-SPF per
  identity; HELO and MAIL FROM checked; a log line per recipient, to a file); pyspf-milter with its
  sample settings (HELO and MAIL FROM checked, Authentication-Results header, its only choice
  on the milter interface); the floor adds one header and asks for no other event.  spfmilter and
  the floor set TCP_NODELAY on their inet listener; pyspf-milter does not.  pyspf-milter checks
  HELO on the CONNECT host name, which Postfix sends as ``[address]`` without a PTR lookup: it
  evaluates no HELO record (less work than spfmilter, which evaluates the HELO name).
- shape-floor: a pymilter milter that negotiates exactly spfmilter's events (CONNECT and MAIL
  without reply; HELO, RCPT and DATA with a reply; every header without reply; end of message)
  and adds three headers, doing nothing else: the most spfmilter's protocol shape allows
  through pymilter.
- Postfix: one private instance, one smtpd port per set-up, the documented init/postfix-main.cf
  milter settings, queue on tmpfs, every message to the discard transport.  smtp-source sends
  2 KB messages, one per session, from 127.0.0.1; mean latency = elapsed x sessions / messages.
"""

POLICY_METHOD = """\
- Policy protocol: ``spfmilter policy`` and python policyd-spf (spf-engine 3.1.0, its own venv)
  each as two processes fed over stdin/stdout as Postfix's spawn does, one client thread per
  process, requests one after another; every request a new message (new ``instance``) from the
  warm set, so HELO and MAIL FROM are evaluated each time.  Both check HELO and MAIL FROM,
  refuse fail only and answer with one Authentication-Results; policyd-spf has no cache of its
  own and asks NSD on loopback (standing in for the local caching resolver a site gives it),
  spfmilter answers from its resolver's cache after the warm-up.  CPU per request is the
  server process's.
"""

SLOW_METHOD = """\
- Slow upstream: bench/slow_upstream.py on 127.0.0.2:53 (one asyncio loop, no cache) holds every
  query for the delay on a timer, then forwards it to NSD (UDP over UDP with an ID of its own, TCP
  over TCP); a truncated answer costs the client the delay again over TCP.  spfmilter (both
  Workers) and pyspf-milter are started for this cell only: spfmilter with ``Nameservers`` on it,
  pyspf-milter in a mount namespace of its own whose /etc/resolv.conf names it.  Cold DNS (each
  transaction a new domain), concurrency 1, contenders alternated within every round.  At a few
  transactions per second, CPU per transaction includes what the processes spend while they wait.
"""


# --- figures and tables -----------------------------------------------------------------

def fmt(v: float, digits: int = 1) -> str:
    """Thousands grouped, and a dash where a contender has no such figure (NaN)."""
    if v != v:
        return "–"
    return f"{v:,.{digits}f}"


def met_text(met: bool | None, no: str) -> str:
    return "reported" if met is None else ("yes" if met else no)


def bullets(text: str) -> Bullets:
    """A method text written as a list ("- " items, continuation lines indented two spaces)."""
    items: list[str] = []
    for line in text.rstrip("\n").split("\n"):
        if line.startswith("- "):
            items.append(line[2:])
        else:
            items[-1] += "\n" + line.removeprefix("  ")
    return Bullets(tuple(items))


@dataclass(frozen=True)
class Field:
    """A column and how a result row fills it."""

    column: Column
    cell: Callable[[Row], str]


def text(title: str, key: str) -> Field:
    return Field(Column(title), lambda r: str(r[key]))


def count(title: str, key: str) -> Field:
    return Field(Column(title, numeric=True), lambda r: str(r[key]))


def num(title: str, key: str, digits: int, grouped: bool = True) -> Field:
    """``grouped``: as fmt() (latest.md's style); otherwise the plain figure (the README's)."""
    if grouped:
        return Field(Column(title, numeric=True), lambda r: fmt(r.get(key, NAN), digits))
    return Field(Column(title, numeric=True), lambda r: f"{r[key]:.{digits}f}")


def table(fields: Sequence[Field], rows: Iterable[Row]) -> Table:
    return Table(tuple(f.column for f in fields), tuple(tuple(f.cell(r) for f in fields) for r in rows))


def first(rows: Iterable[dict[str, Any]], **want: Any) -> dict[str, Any]:
    """The first row with these values ({} if none), as the tables pick their rows."""
    return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), {})


def cell(med: list[dict[str, Any]], milter: str, sock: str, mode: str, conc: int) -> dict[str, Any]:
    return first(med, milter=milter, socket=sock, mode=mode, concurrency=conc)


def targets_table(targets: list[dict[str, Any]], no: str) -> Table:
    return table([text("target", "target"), text("measured", "measured"),
                  Field(Column("met"), lambda t: met_text(t["met"], no))], targets)


def scaling_rows(med: list[dict[str, Any]], cpus: int) -> list[dict[str, Any]]:
    """Workers=1 beside the shipped Workers (unix socket), and what more cores would give."""
    out = []
    for mode, conc in (("warm", 16), ("cold", 16), ("cold", 1), ("warm", 1)):
        for name in SPFMILTERS:
            r = cell(med, name, "unix", mode, conc)
            if r:
                out.append({"milter": name, "workers": 1 if name == "spfmilter-w1" else cpus,
                            "mode": mode, "concurrency": conc, **{k: r.get(k, NAN) for k in (
                                "tx_per_s", "cpu_s_per_1000", "client_cpu_s_per_1000",
                                "dns_server_cpu_s_per_1000", "dns_queries_per_tx", "p99_ms")}})
    return out


def cores_rows(med: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Expected tx/s on more cores from the measured milter CPU per transaction (shipped
    Workers, c=16): cores x 1000 / CPU s per 1000 tx, the milter alone on those cores,
    and with a share for the MTA's side of the milter protocol (as the load client used)."""
    out = []
    for mode in ("warm", "cold"):
        r = cell(med, "spfmilter", "unix", mode, 16)
        if not r:
            continue
        cpu = r["cpu_s_per_1000"]
        both = cpu + r.get("client_cpu_s_per_1000", 0)
        out.append({"mode": mode, "cpu_s_per_1000": cpu, "client_cpu_s_per_1000": both - cpu,
                    **{f"{c}_cores": c * 1000 / cpu for c in CORES},
                    **{f"{c}_cores_with_mta": c * 1000 / both for c in CORES}})
    return out


def milter_table(rows: list[dict[str, Any]], full: bool) -> Table:
    """Milter-protocol medians; ``full`` adds concurrency, client CPU, PSS, the SPF decision's
    time and errors (latest.md), the README gives the figures a mail administrator compares."""
    g = full
    fields = [text("milter", "milter")]
    fields += [count("conc.", "concurrency")] if full else []
    fields += [num("tx/s", "tx_per_s", 0, g), num("p50 ms", "p50_ms", 2, g), num("p99 ms", "p99_ms", 2, g),
               num("milter CPU s/1000 tx" if full else "CPU s/1000 tx", "cpu_s_per_1000", 2, g)]
    fields += [num("client CPU s/1000 tx", "client_cpu_s_per_1000", 2)] if full else []
    fields += [num("peak RSS MB", "peak_rss_mb", 1, g)]
    fields += [num("PSS MB", "pss_mb", 1)] if full else []
    fields += [num("DNS queries/tx", "dns_queries_per_tx", 2, g)]
    fields += [num("SPF decision p50 ms", "decision_p50_ms", 3), num("errors", "errors", 0)] if full else []
    return table(fields, rows)


def workers_table(scal: list[dict[str, Any]], full: bool) -> Table:
    """Workers=1 beside the shipped Workers; ``full`` adds NSD's CPU and p99 (latest.md)."""
    fields = [count("workers", "workers"), text("cache", "mode"),
              count("conc." if full else "concurrency", "concurrency"),
              num("tx/s", "tx_per_s", 0, grouped=full),
              num("milter CPU s/1000 tx", "cpu_s_per_1000", 2, grouped=full),
              num("client CPU s/1000 tx", "client_cpu_s_per_1000", 2, grouped=full)]
    if full:
        fields.append(num("NSD CPU s/1000 tx", "dns_server_cpu_s_per_1000", 2))
    fields.append(num("DNS queries/tx", "dns_queries_per_tx", 2, grouped=full))
    if full:
        fields.append(num("p99 ms", "p99_ms", 1))
    return table(fields, scal)


def _estimate(key: str, bracketed: str = "") -> Callable[[Row], str]:
    def fill(r: Row) -> str:
        return f"{r[key]:,.0f}" + (f" ({r[bracketed]:,.0f})" if bracketed else "")
    return fill


def cores_table(cores: list[dict[str, Any]], split: bool) -> Table:
    """``split``: the estimate with the MTA side in columns of its own, else in brackets."""
    fields = [text("cache", "mode"),
              Field(Column("milter CPU s/1000 tx" if split else "CPU s/1000 tx", numeric=True),
                    lambda r: f"{r['cpu_s_per_1000']:.2f}")]
    if split:
        fields += [Field(Column(f"{c} cores", numeric=True), _estimate(f"{c}_cores")) for c in CORES]
        fields += [Field(Column(f"{c} cores with the MTA side", numeric=True), _estimate(f"{c}_cores_with_mta"))
                   for c in CORES]
    else:
        fields += [Field(Column(f"{c} cores", numeric=True), _estimate(f"{c}_cores", f"{c}_cores_with_mta"))
                   for c in CORES]
    return table(fields, cores)


def policy_table(med: list[dict[str, Any]], full: bool) -> Table:
    """Policy protocol medians; ``full`` adds latency and unexpected answers (latest.md)."""
    fields = [text("contender", "contender"), count("processes", "concurrency"),
              num("requests/s", "requests_per_s", 0, grouped=full),
              num("CPU ms/request", "cpu_ms_per_request", 3, grouped=False)]
    if full:
        fields += [num("p50 ms", "p50_ms", 2, grouped=False), num("p99 ms", "p99_ms", 2, grouped=False),
                   count("unexpected answers", "unexpected")]
    return table(fields, med)


def slow_table(rows: list[dict[str, Any]], full: bool) -> Table:
    """The slow-upstream cell; ``full`` adds CPU, the forwarder's CPU and errors (latest.md)."""
    fields = [text("milter", "milter"), num("tx/s", "tx_per_s", 1, grouped=full),
              num("p50 ms", "p50_ms", 1, grouped=full), num("p99 ms", "p99_ms", 1, grouped=full)]
    if full:
        fields += [num("milter CPU s/1000 tx", "cpu_s_per_1000", 2),
                   num("slow upstream CPU s/1000 tx", "upstream_cpu_s_per_1000", 2)]
    fields.append(num("DNS queries/tx", "dns_queries_per_tx", 2, grouped=full))
    if full:
        fields.append(num("errors", "errors", 0))
    return table(fields, rows)


def slow_rows(slowmed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cell's medians in the matrix's order of contenders."""
    return [r for name in MILTER_ORDER if (r := first(slowmed, milter=name))]


def slow_delay(rows: list[dict[str, Any]]) -> str:
    return f"{rows[0].get('upstream_ms', 20):g} ms"


def slow_blocks(slowmed: list[dict[str, Any]]) -> list[Block]:
    rows = slow_rows(slowmed)
    if not rows:
        return []
    return [Heading(f"Slow upstream ({slow_delay(rows)} per uncached query), unix socket, cold DNS cache, "
                    f"concurrency 1"),
            slow_table(rows, full=True)]


def policy_blocks(med: list[dict[str, Any]]) -> list[Block]:
    if not med:
        return []
    return [Heading("Policy protocol (stdin/stdout, as Postfix's spawn), warm records"), policy_table(med, full=True)]


# --- latest.md ------------------------------------------------------------------------------

def latest_blocks(info: dict[str, Any], med: list[dict[str, Any]], pfmed: list[dict[str, Any]],
                  held: list[dict[str, Any]], targets: list[dict[str, Any]], dnscap: dict[str, Any],
                  params: dict[str, Any], polmed: list[dict[str, Any]] | None = None,
                  slowmed: list[dict[str, Any]] | None = None) -> list[Block]:
    B: list[Block] = [
        Heading("spfmilter benchmark results", 1),
        Paragraph.of(f"Run {info['date']} on {info['nproc']} CPUs ({info['cpu']}), {info['memory_gb']} GB, "
                     f"Linux {info['kernel']}, Python {info['python']}.",
                     f"spfmilter {info['spfmilter']} (pymilter {info['pymilter']}, pyspf {info['pyspf']}, "
                     f"dnspython {info['dnspython']}); pyspf-milter = spf-engine {info['pyspf_milter']}; "
                     f"{info['nsd']}; Postfix {info['postfix']}.",
                     f"Medians of {params['rounds']} rounds of {params['seconds']:g} s per cell; contenders "
                     f"alternated within every cell.  Re-run with ``make bench``.", hard_breaks=True),
        Heading("Targets"), targets_table(targets, "**no**")]
    for sock_kind, mode in (("unix", "warm"), ("unix", "cold"), ("inet", "warm")):
        rows = [r for r in med if r["socket"] == sock_kind and r["mode"] == mode]
        if rows:
            B += [Heading(f"Milter protocol, {sock_kind} socket, {mode} DNS cache"),
                  milter_table([r for conc in CONCURRENCY for name in MILTER_ORDER
                                if (r := first(rows, milter=name, concurrency=conc))], full=True)]
    B += slow_blocks(slowmed or [])
    cpus = info["nproc"]
    scal = scaling_rows(med, cpus)
    if scal:
        B += [Heading(f"Workers: 1 beside {cpus} (the shipped Workers = auto), unix socket"),
              workers_table(scal, full=True)]
    cores = cores_rows(med)
    if cores:
        B += [Heading("Expected transactions/s on more cores (Workers = auto, c=16, from the CPU per "
                      "transaction measured here)"),
              Paragraph.of("cores x 1000 / milter CPU s per 1000 tx: the milter alone on those cores (the MTA "
                           "elsewhere); \"with the MTA side\" adds the CPU the load client (the MTA's side of the "
                           "milter protocol) used per transaction.  An estimate, not a measurement: it assumes "
                           "the workers scale on more cores as they do from 1 to 2 here."),
              cores_table(cores, split=True)]
    warmup = params.get("warmup") or []
    if warmup:
        B += [Heading("DNS queries to the resolver: each worker has its own cache"),
              Paragraph.of("From empty caches, passes over the warm set (every warm sender domain and HELO name "
                           "once per pass, c=16), NSD's queries per transaction; then, cold, every transaction "
                           "needs its 9 queries whatever the workers.  With N workers the warm set is fetched "
                           "up to N times (once per worker cache) before it is all cached: a local recursive "
                           "resolver (unbound) in front absorbs the repeats."),
              table([text("milter", "milter"), count("workers", "workers"), count("pass", "pass"),
                     Field(Column("transactions", numeric=True), lambda w: f"{w['tx']:,}"),
                     Field(Column("DNS queries", numeric=True), lambda w: f"{w['queries']:,}"),
                     num("queries/tx", "queries_per_tx", 2, grouped=False)], warmup)]
    if held:
        B += [Heading("500 connections held open at once (after RCPT)"),
              table([text("milter", "milter"), count("held", "connections_held"),
                     Field(Column("workers", numeric=True), lambda h: str(h.get("workers", 1))),
                     num("largest RSS MB (one process)", "rss_mb", 1, grouped=False),
                     num("PSS MB (all its processes)", "pss_mb", 1, grouped=False),
                     Field(Column("PSS MB per worker", numeric=True),
                           lambda h: f"{h.get('pss_per_worker_mb', h['pss_mb']):.1f}"),
                     num("peak RSS MB", "peak_rss_mb", 1, grouped=False), count("threads", "threads"),
                     count("completed afterwards", "completed")], held)]
    if pfmed:
        rows = [r for sessions in (1, 16) for label, _ in POSTFIX_SETUPS
                if (r := first(pfmed, setup=label, sessions=sessions))]
        B += [Heading("Through Postfix (smtp-source, one message per session, 2 KB)"),
              table([text("set-up", "setup"), count("sessions", "sessions"), num("msgs/s", "msgs_per_s", 1),
                     num("mean ms per message", "mean_ms", 2),
                     Field(Column("delivered/sent", numeric=True),
                           lambda r: f"{fmt(r['delivered'], 0)}/{fmt(r['messages'], 0)}")], rows)]
    B += policy_blocks(polmed or [])
    if dnscap:
        B += [Heading("DNS server capacity (2 client processes, 8 queries in flight each)"),
              Bullets(tuple(f"{k}: {v['answers_per_s']:,} answers/s ({v['timeouts']} timeouts)"
                            for k, v in dnscap.items()))]
    scaling = params.get("cpu_scaling")
    if scaling:
        base = scaling["1"]["cpu_us_per_round"]
        B += [Heading("This machine: how far processes scale (pure Python, no milter)"),
              table([Field(Column("processes at once", numeric=True), lambda r: r["n"]),
                     num("work done (x one process)", "speedup", 2, grouped=False),
                     Field(Column("CPU per unit of work (x one process)", numeric=True),
                           lambda r: f"{r['cpu_us_per_round'] / base:.2f}")],
                    [{"n": n, **v} for n, v in scaling.items()])]
    cost = params.get("dnspython_lookup_cost")
    if cost:
        B += [Heading("dnspython: CPU per uncached lookup (one thread, against NSD)"),
              Bullets((f"spfmilter's resolver, cache off (one query from a fresh socket, header checked "
                       f"on the bytes, answer parsed by dnspython, its Answer): {cost['resolver_us']} us",
                       f"dnspython's cheapest complete lookup (make_query + query.udp on a socket kept "
                       f"open, answer parsed): {cost['leanest_us']} us",
                       f"{cost['lookups']:,} lookups each"))]
    B += [Heading("How it is measured"),
          bullets(METHOD + (SLOW_METHOD if slowmed else "") + (POLICY_METHOD if polmed else ""))]
    return B


def latest_md(info: dict[str, Any], med: list[dict[str, Any]], pfmed: list[dict[str, Any]],
              held: list[dict[str, Any]], targets: list[dict[str, Any]], dnscap: dict[str, Any],
              params: dict[str, Any], polmed: list[dict[str, Any]] | None = None,
              slowmed: list[dict[str, Any]] | None = None) -> str:
    return render_markdown(latest_blocks(info, med, pfmed, held, targets, dnscap, params, polmed, slowmed))


# --- the README's Performance section -------------------------------------------------------

README_INTRO = Paragraph.of(
    "``make bench`` (as root; about 15 minutes) runs spfmilter (as shipped, ``Workers = auto``,",
    "and with ``Workers = 1``) beside pyspf-milter",
    "(spf-engine 3.1.0) and a pymilter milter that only adds one header (the floor),",
    "against NSD serving realistic SPF records (include chains three deep, ``mx``, ``a``,",
    "IPv6 ranges) in a private network namespace, then through a private Postfix.",
    "It installs what it needs itself (``bench/setup.sh``: NSD, Postfix, a separate venv",
    "for pyspf-milter) and writes ``bench/results/latest.md`` (all tables, the method)",
    "and ``latest.json`` (every run).")

README_MILTERS = ("spfmilter", "spfmilter-w1", "pyspf-milter", "floor")


def readme_blocks(info: dict[str, Any], targets: list[dict[str, Any]], med: list[dict[str, Any]],
                  pfmed: list[dict[str, Any]], held: list[dict[str, Any]], params: dict[str, Any],
                  polmed: list[dict[str, Any]] | None = None,
                  slowmed: list[dict[str, Any]] | None = None) -> list[Block]:
    cpus = info["nproc"]
    labels = {"spfmilter": f"spfmilter ({cpus} workers)", "spfmilter-w1": "spfmilter (1 worker)"}
    milters = [{**r, "milter": labels.get(name, name)} for name in README_MILTERS
               if (r := cell(med, name, "unix", "warm", 16))]
    B: list[Block] = [
        Heading("Performance"), README_INTRO,
        Paragraph.of(f"Latest run: {info['date']}, {cpus} CPUs ({info['cpu']}), Linux {info['kernel']},",
                     f"Python {info['python']}; medians of {params['rounds']} rounds.")]
    # Tables without rows are left out here (reST has no empty table); latest.md keeps its headings.
    if milters:
        B += [Paragraph.of("Milter protocol over a unix socket, warm DNS cache, 16 concurrent connections:"),
              milter_table(milters, full=False)]
    scal = scaling_rows(med, cpus)
    if scal:
        B += [Paragraph.of(f"Workers: one beside {cpus} (one per CPU, the default), unix socket; the load client",
                           "runs on the same CPUs, so its CPU per transaction is given too:"),
              workers_table(scal, full=False)]
    cores = cores_rows(med)
    if cores:
        B += [Paragraph.of("Expected transactions/s on more cores, from the milter CPU per transaction measured",
                           "here at concurrency 16 (cores x 1000 / CPU per 1000 tx; the milter alone on the",
                           "cores, and in brackets with the MTA's side of the milter protocol as the load client",
                           "used it).  An estimate: it assumes the workers keep scaling as they do from 1 to 2:"),
              cores_table(cores, split=False)]
    warmup = params.get("warmup") or []
    if warmup:
        per: dict[str, list[dict[str, Any]]] = {}
        for w in warmup:
            if w["socket"] == "unix":
                per.setdefault(w["milter"], []).append(w)
        B.append(Paragraph.of(
            "Each worker has its own DNS cache: from empty caches, filling the warm set took",
            ", ".join(f"{rows[0]['workers']} worker{'s' if rows[0]['workers'] > 1 else ''}: "
                      + " / ".join(f"{w['queries_per_tx']:.2f}" for w in rows)
                      for rows in per.values())
            + " DNS queries per transaction in successive passes over it (cold: 9 per transaction",
            "whatever the workers).  See *Deployment* for a shared cache in front."))
    slow = [{**r, "milter": labels.get(r["milter"], r["milter"])} for r in slow_rows(slowmed or [])]
    if slow:
        B += [Paragraph.of(f"A slow upstream: every query the milter does not answer from its own cache takes "
                           f"{slow_delay(slow)}",
                           "(a forwarder in front of NSD), cold DNS, one message at a time, unix socket:"),
              slow_table(slow, full=False)]
    if targets:
        B += [Paragraph.of("Targets:"), targets_table(targets, "no")]
    rows = [{"setup": label, "one": a, "sixteen": b} for label, _ in POSTFIX_SETUPS
            if (a := first(pfmed, setup=label, sessions=1)) and (b := first(pfmed, setup=label, sessions=16))]
    if rows:
        B += [Paragraph.of("Through Postfix (smtp-source, 2 KB messages, one per session):"),
              table([text("set-up", "setup"),
                     Field(Column("msgs/s (1 session)", numeric=True), lambda r: f"{r['one']['msgs_per_s']:.0f}"),
                     Field(Column("ms per message", numeric=True), lambda r: f"{r['one']['mean_ms']:.2f}"),
                     Field(Column("msgs/s (16 sessions)", numeric=True),
                           lambda r: f"{r['sixteen']['msgs_per_s']:.0f}")], rows)]
    if polmed:
        B += [Paragraph.of("Postfix's policy protocol (``spfmilter policy`` and python policyd-spf on",
                           "stdin/stdout, one process per client as under ``spawn``, warm records):"),
              policy_table(polmed, full=False)]
    unix, inet = first(pfmed, setup="spfmilter unix", sessions=1), first(pfmed, setup="spfmilter inet", sessions=1)
    if unix and inet and inet["mean_ms"] <= 1.5 * unix["mean_ms"]:
        B.append(Paragraph.of(
            "Over TCP (``Socket = inet:...``) there is no delayed-ACK stall: spfmilter sets",
            "``TCP_NODELAY`` on its listening socket, so libmilter's separate end-of-message",
            "packets leave at once, and it asks Postfix for DATA with a reply, so Postfix never",
            "leaves a lone packet unanswered (pyspf-milter's inet rows show what both cost)."))
    elif unix and inet:
        B.append(Paragraph.of(
            f"Over TCP a message through Postfix takes {inet['mean_ms']:.0f} ms instead of "
            f"{unix['mean_ms']:.1f} ms: spfmilter sets",
            "``TCP_NODELAY`` on its listening socket (libmilter's end-of-message packets leave at",
            "once), but Postfix sends its DATA-stage macros as a packet of their own that the milter",
            "does not answer, and its next write then waits for a delayed ACK (~40 ms).  Use a unix",
            "socket with Postfix."))
    B.append(Paragraph.of("Re-run: ``sudo make bench`` (``BENCH_ARGS='--rounds 1 --seconds 2'`` for a quick look)."))
    return B


def readme_section(info: dict[str, Any], targets: list[dict[str, Any]], med: list[dict[str, Any]],
                   pfmed: list[dict[str, Any]], held: list[dict[str, Any]], params: dict[str, Any],
                   polmed: list[dict[str, Any]] | None = None,
                   slowmed: list[dict[str, Any]] | None = None) -> str:
    return render_rst(readme_blocks(info, targets, med, pfmed, held, params, polmed, slowmed))


# --- policy.md (--only-policy) ---------------------------------------------------------------

def policy_md(targets: list[dict[str, Any]], med: list[dict[str, Any]]) -> str:
    return render_markdown([Heading("spfmilter policy against policyd-spf", 1), targets_table(targets, "**no**"),
                            *policy_blocks(med), bullets(POLICY_METHOD)])


# --- slow.md (--only-slow) -------------------------------------------------------------------

def slow_md(targets: list[dict[str, Any]], slowmed: list[dict[str, Any]], info: dict[str, Any]) -> str:
    rtt = [Paragraph.of(f"One query through the slow upstream: {info['udp_rtt_ms']:.1f} ms over UDP, "
                        f"{info['tcp_rtt_ms']:.1f} ms over TCP (medians of 20).")] if "udp_rtt_ms" in info else []
    return render_markdown([Heading("spfmilter and pyspf-milter behind a slow upstream", 1),
                            targets_table(targets, "**no**"), *slow_blocks(slowmed), *rtt, bullets(SLOW_METHOD)])
