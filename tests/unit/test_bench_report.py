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
from bench.targets import evaluate_targets
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
