"""bench/report.py: one block list, written as Markdown and as reST, keeps every table's shape.

The reST side is checked by parsing it with docutils (as the README is built):
any warning or error fails, so a table that would render broken in the README
cannot pass.  The Markdown side is checked cell by cell, as a Markdown table
has no parser here.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from docutils import nodes
from docutils.core import publish_doctree

from bench import documents, policy_bench
from bench.report import Bullets, Column, Heading, Paragraph, Table, render_markdown, render_rst
from bench.targets import evaluate_targets, slow_targets
from tests.kit import ROOT

TABLE = Table((Column("milter"), Column("tx/s", numeric=True), Column("p99 ms", numeric=True)),
              (("spfmilter", "1,120", "42.77"), ("pyspf-milter", "149", "–"), ("floor | shape", "", "9.58")))

BLOCKS = [Heading("Performance"),
          Paragraph.of("Run on 2 CPUs,", "Python 3.11; re-run with ``make bench``."),
          Paragraph.of("first line", "second line", hard_breaks=True),
          TABLE,
          Bullets(("one item", "an item that\nspans two lines with ``code``")),
          Paragraph.of("Targets:"),
          Table((Column("target"), Column("met")), (("warm: 0 DNS queries", "**no**"),))]
EMPTY = Table((Column("target"), Column("met")), ())


def _doctree(rst: str) -> nodes.document:
    """Parse as the README is parsed; a docutils warning (level 2) or worse raises."""
    warnings = io.StringIO()
    doc = publish_doctree(rst, settings_overrides={"halt_level": 2, "report_level": 1,
                                                   "warning_stream": warnings})
    assert warnings.getvalue() == ""
    return doc


def _rows(table: nodes.table) -> tuple[list[list[str]], list[list[str]]]:
    def cells(part: type[nodes.Element]) -> list[list[str]]:
        return [[entry.astext() for entry in row.findall(nodes.entry)]
                for section in table.findall(part) for row in section.findall(nodes.row)]
    return cells(nodes.thead), cells(nodes.tbody)


def _md_cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return [c.replace("\\|", "|") for c in re.split(r"(?<!\\) \| ", line[2:-2])]


def test_rst_tables_parse_with_one_entry_per_column_and_no_docutils_warning() -> None:
    doc = _doctree(render_rst(BLOCKS))
    tables = list(doc.findall(nodes.table))
    assert len(tables) == 2
    head, body = _rows(tables[0])
    assert head == [["milter", "tx/s", "p99 ms"]]
    assert body == [list(row) for row in TABLE.rows]
    assert _rows(tables[1]) == ([["target", "met"]], [["warm: 0 DNS queries", "no"]])


def test_rst_keeps_headings_line_blocks_literals_and_multiline_bullets() -> None:
    doc = _doctree(render_rst(BLOCKS))
    assert doc["title"] == "Performance"
    assert [lit.astext() for lit in doc.findall(nodes.literal)] == ["make bench", "code"]
    assert [line.astext() for line in doc.findall(nodes.line)] == ["first line", "second line"]
    items = [item.astext() for item in doc.findall(nodes.list_item)]
    assert items == ["one item", "an item that\nspans two lines with code"]


def test_markdown_table_has_one_cell_per_column_and_its_alignment_row() -> None:
    md = render_markdown(BLOCKS)
    lines = md.splitlines()
    start = lines.index("| milter | tx/s | p99 ms |")
    assert lines[start + 1] == "|---|---:|---:|"
    body = lines[start + 2:start + 2 + len(TABLE.rows)]
    assert [_md_cells(line) for line in body] == [list(row) for row in TABLE.rows]
    assert lines[start + 2 + len(TABLE.rows)] == ""  # the table ends before the next block
    assert "| target | met |\n|---|---|\n| warm: 0 DNS queries | **no** |\n" in md


def test_a_table_without_rows_is_a_header_in_markdown_and_refused_in_rest() -> None:
    # docutils rejects an empty list-table: the README section must leave such a table out
    assert render_markdown([EMPTY]) == "| target | met |\n|---|---|\n"
    with pytest.raises(ValueError, match="at least one row"):
        render_rst([EMPTY])


def test_markdown_writes_literals_hard_breaks_and_bullets_its_own_way() -> None:
    md = render_markdown(BLOCKS)
    assert md.startswith("## Performance\n\nRun on 2 CPUs,\nPython 3.11; re-run with `make bench`.\n\n")
    assert "first line  \nsecond line\n\n" in md
    assert "- one item\n- an item that\n  spans two lines with `code`\n" in md


@pytest.mark.parametrize("row", [("a", "b"), ("a", "b", "c", "d")])
def test_a_row_of_the_wrong_width_is_refused(row: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="cells for 3 columns"):
        Table((Column("a"), Column("b"), Column("c")), (row,))


def test_a_cell_spanning_lines_is_refused() -> None:
    # it would end the reST list-table's entry and the Markdown table's row mid-cell
    with pytest.raises(ValueError, match="spans lines"):
        Table((Column("a"),), (("one\ntwo",),))


def test_readme_section_from_the_stored_run_is_valid_rest_with_full_tables() -> None:
    d = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    polmed = d.get("policy_medians", [])
    targets = evaluate_targets(d["medians"], d["postfix_medians"], d["held"], d.get("dnspython_lookup_cost"),
                               d["machine"]["nproc"], d["params"].get("cpu_scaling")) \
        + policy_bench.targets(polmed)
    rst = documents.readme_section(d["machine"], targets, d["medians"], d["postfix_medians"], d["held"],
                                   d["params"], polmed)
    doc = _doctree(rst)
    assert doc["title"] == "Performance"
    tables = list(doc.findall(nodes.table))
    assert tables
    for table in tables:
        head, body = _rows(table)
        assert body and all(len(row) == len(head[0]) for row in body)
    met = [row[2] for row in _rows(tables[[_rows(t)[0][0][0] for t in tables].index("target")])[1]]
    assert met == [documents.met_text(t["met"], "no") for t in targets]


# --- the one-worker targets and the slow-upstream cell, from a small set of results -------------

INFO = {"date": "2026-12-05 09:00 UTC", "nproc": 2, "cpu": "Test CPU", "memory_gb": 4.0, "kernel": "6.1",
        "python": "3.11.7", "spfmilter": "0.1.0", "pymilter": "1.0.5", "pyspf": "2.0.14", "dnspython": "2.9.2",
        "pyspf_milter": "3.1.0", "nsd": "NSD version 4.6.1", "postfix": "3.7.11"}
PARAMS = {"rounds": 3, "seconds": 4.0}


def _cell(milter: str, mode: str, conc: int, tx: float, cpu: float, queries: float) -> dict[str, object]:
    return {"milter": milter, "socket": "unix", "mode": mode, "concurrency": conc, "rounds": 3,
            "tx_per_s": tx, "p50_ms": 1000 / tx * conc, "p99_ms": 3000 / tx * conc, "cpu_s_per_1000": cpu,
            "client_cpu_s_per_1000": 0.25, "dns_server_cpu_s_per_1000": 0.1 if queries else 0.0,
            "peak_rss_mb": 50.0, "pss_mb": 60.0, "dns_queries_per_tx": queries, "errors": 0}


MED = [_cell("spfmilter-w1", "cold", 1, 500, 1.8, 9), _cell("pyspf-milter", "cold", 1, 360, 2.4, 8),
       _cell("spfmilter-w1", "cold", 16, 420, 2.2, 9), _cell("pyspf-milter", "cold", 16, 250, 4.4, 8),
       _cell("spfmilter-w1", "warm", 16, 1500, 0.7, 0), _cell("shape-floor", "warm", 16, 3000, 0.38, 0),
       _cell("spfmilter-w1", "warm", 1, 1200, 0.6, 0)]
DNSCOST = {"resolver_us": 100.0, "leanest_us": 120.0, "lookups": 3000}


def _slow(milter: str, p50: float, queries: float) -> dict[str, object]:
    return {"milter": milter, "socket": "unix", "mode": "cold", "concurrency": 1, "rounds": 3,
            "tx_per_s": 1000 / p50, "p50_ms": p50, "p99_ms": p50 * 1.5, "cpu_s_per_1000": 2.0,
            "upstream_cpu_s_per_1000": 0.3, "dns_queries_per_tx": queries, "errors": 0, "upstream_ms": 20.0}


SLOW_INFO = {"delay_ms": 20.0, "udp_rtt_ms": 20.4, "tcp_rtt_ms": 21.0}


def _one_worker(med: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    rows = evaluate_targets(med, [], [], DNSCOST, 2)
    return {t["target"].split(": ", 1)[1]: t for t in rows if t["target"].startswith("one worker")}


def test_one_worker_targets_judge_workers_1_against_pyspf_milter_and_the_shape_floor() -> None:
    t = _one_worker(MED)
    assert list(t) == ["spfmilter-w1 >= 1.3x pyspf-milter tx/s", "spfmilter-w1 CPU per tx <= 0.8x pyspf-milter",
                       "spfmilter-w1 >= 1.6x pyspf-milter tx/s", "spfmilter-w1 >= 55% of the shape-floor tx/s"]
    # 500/360 = 1.39x; 1.8/2.4 = 0.75x; 420/250 = 1.68x; 1500/3000 = 50%
    assert [r["met"] for r in t.values()] == [True, True, True, False]
    assert t["spfmilter-w1 >= 1.3x pyspf-milter tx/s"]["measured"].startswith("1.39x (500 vs 360 tx/s; "
                                                                              "DNS queries/tx 9.00 vs 8.00)")
    assert t["spfmilter-w1 >= 55% of the shape-floor tx/s"]["measured"].startswith("50% (1500 vs 3000 tx/s")


def test_one_worker_targets_say_the_bound_each_result_meets() -> None:
    t = _one_worker(MED)
    # c=1: CPU of milter, load client and NSD in turn: 1000 / (1.8 + 0.25 + 0.1) = 465 tx/s
    assert "allow at most 465 tx/s, 108% of it reached" in t["spfmilter-w1 >= 1.3x pyspf-milter tx/s"]["measured"]
    # the least a cold transaction can cost: warm c=1 0.6 + 9 lookups x 100 us = 1.50 s/1000 tx
    assert "= 1.50 s/1000 tx, 0.62x pyspf-milter's" in t["spfmilter-w1 CPU per tx <= 0.8x pyspf-milter"]["measured"]
    # c=16 on 2 CPUs: 2000 / (2.2 + 0.25 + 0.1) = 784 tx/s
    assert "allow at most 784 tx/s, 54% of it reached" in t["spfmilter-w1 >= 1.6x pyspf-milter tx/s"]["measured"]
    assert "allow at most 2105 tx/s, 71% of it reached" in \
        t["spfmilter-w1 >= 55% of the shape-floor tx/s"]["measured"]


def test_one_worker_targets_need_both_cells_of_a_comparison() -> None:
    t = _one_worker([r for r in MED if r["milter"] != "shape-floor" and r["concurrency"] != 16])
    assert list(t) == ["spfmilter-w1 >= 1.3x pyspf-milter tx/s", "spfmilter-w1 CPU per tx <= 0.8x pyspf-milter"]


@pytest.mark.parametrize(("w1_p50", "met"), [(95.0, True), (100.0, False)])
def test_slow_upstream_target_holds_both_spfmilters_to_0_6x_pyspf_milter(w1_p50: float, met: bool) -> None:
    slow = [_slow("spfmilter", 90.0, 9), _slow("spfmilter-w1", w1_p50, 9), _slow("pyspf-milter", 160.0, 8)]
    [t] = slow_targets(slow, SLOW_INFO)
    assert t["met"] is met
    assert t["target"] == ("slow upstream (20 ms per uncached query), cold, c=1, unix: spfmilter p50 message "
                           "latency <= 0.6x pyspf-milter (both Workers)")
    assert t["measured"].startswith(f"spfmilter 0.56x (90 ms, 11.1 tx/s, 9.00 queries/tx), spfmilter-w1 "
                                    f"{w1_p50 / 160:.2f}x ({w1_p50:.0f} ms")
    assert ("the delay alone): spfmilter 9 x 20 = 180 ms; spfmilter-w1 9 x 20 = 180 ms; "
            "pyspf-milter 8 x 20 = 160 ms; a query through the slow upstream took 20.4 ms (UDP)") in t["measured"]


def test_slow_upstream_target_needs_pyspf_milter_and_a_spfmilter() -> None:
    assert slow_targets([_slow("pyspf-milter", 160.0, 8)], SLOW_INFO) == []
    assert slow_targets([_slow("spfmilter", 90.0, 9)], SLOW_INFO) == []


SLOWMED = [_slow("pyspf-milter", 160.0, 8), _slow("spfmilter-w1", 100.0, 9), _slow("spfmilter", 90.0, 9)]


def test_latest_md_has_the_slow_upstream_table_in_the_matrix_order_and_its_method() -> None:
    targets = evaluate_targets(MED, [], [], DNSCOST, 2) + slow_targets(SLOWMED, SLOW_INFO)
    md = documents.latest_md(INFO, MED, [], [], targets, {}, PARAMS, [], SLOWMED)
    lines = md.splitlines()
    start = lines.index("## Slow upstream (20 ms per uncached query), unix socket, cold DNS cache, concurrency 1")
    assert _md_cells(lines[start + 2]) == ["milter", "tx/s", "p50 ms", "p99 ms", "milter CPU s/1000 tx",
                                           "slow upstream CPU s/1000 tx", "DNS queries/tx", "errors"]
    body = [_md_cells(line) for line in lines[start + 4:start + 7]]
    assert body == [["spfmilter", "11.1", "90.0", "135.0", "2.00", "0.30", "9.00", "0"],
                    ["spfmilter-w1", "10.0", "100.0", "150.0", "2.00", "0.30", "9.00", "0"],
                    ["pyspf-milter", "6.2", "160.0", "240.0", "2.00", "0.30", "8.00", "0"]]
    assert "- Slow upstream: bench/slow_upstream.py on 127.0.0.2:53" in md
    assert "| slow upstream (20 ms per uncached query), cold, c=1" in md


def test_latest_md_without_the_slow_cell_has_neither_its_table_nor_its_method() -> None:
    md = documents.latest_md(INFO, MED, [], [], [], {}, PARAMS, [], [])
    assert "Slow upstream" not in md


def test_readme_section_shows_the_slow_upstream_table_and_its_target_as_valid_rest() -> None:
    targets = evaluate_targets(MED, [], [], DNSCOST, 2) + slow_targets(SLOWMED, SLOW_INFO)
    doc = _doctree(documents.readme_section(INFO, targets, MED, [], [], PARAMS, [], SLOWMED))
    tables = [_rows(t) for t in doc.findall(nodes.table)]
    assert ([["milter", "tx/s", "p50 ms", "p99 ms", "DNS queries/tx"]],
            [["spfmilter (2 workers)", "11.1", "90.0", "135.0", "9.00"],
             ["spfmilter (1 worker)", "10.0", "100.0", "150.0", "9.00"],
             ["pyspf-milter", "6.2", "160.0", "240.0", "8.00"]]) in tables
    [(head, body)] = [t for t in tables if t[0][0][0] == "target"]
    assert [(row[0].split(": ", 1)[1], row[2]) for row in body if row[0].startswith(("one worker", "slow"))] == [
        ("spfmilter-w1 >= 1.3x pyspf-milter tx/s", "yes"), ("spfmilter-w1 CPU per tx <= 0.8x pyspf-milter", "yes"),
        ("spfmilter-w1 >= 1.6x pyspf-milter tx/s", "yes"), ("spfmilter-w1 >= 55% of the shape-floor tx/s", "no"),
        ("spfmilter p50 message latency <= 0.6x pyspf-milter (both Workers)", "no")]
