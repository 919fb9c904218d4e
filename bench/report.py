"""A benchmark report as a list of document blocks, and its Markdown and reST renderers.

The results are turned into blocks once (bench/documents.py); each output
format is then only a way of writing blocks down, so latest.md and the
README's Performance section cannot drift apart in what a table holds.

Text in blocks is plain text with reST-style inline literals (````make bench````)
and ``*emphasis*``/``**strong**``, which read the same in both formats; the
Markdown renderer turns the literals into single backticks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Block", "Bullets", "Column", "Heading", "Paragraph", "Table", "render_markdown", "render_rst"]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2  # 1 is the document's title


@dataclass(frozen=True)
class Paragraph:
    """Lines as they are to be wrapped; ``hard_breaks`` keeps each line a line of its own."""

    lines: tuple[str, ...]
    hard_breaks: bool = False

    @classmethod
    def of(cls, *lines: str, hard_breaks: bool = False) -> Paragraph:
        return cls(tuple(lines), hard_breaks)


@dataclass(frozen=True)
class Bullets:
    """One item per bullet; an item may span lines (its continuation lines are indented)."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Column:
    title: str
    numeric: bool = False  # right-aligned where the format can say so


@dataclass(frozen=True)
class Table:
    columns: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError("a table needs at least one column")
        # A cell that spans lines or a row of the wrong width would silently
        # shift every later cell of the table in both formats.
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"table row has {len(row)} cells for {len(self.columns)} columns: {row!r}")
        for cell in (c.title for c in self.columns):
            _one_line(cell)
        for row in self.rows:
            for cell in row:
                _one_line(cell)


Block = Heading | Paragraph | Bullets | Table


def _one_line(cell: str) -> None:
    if "\n" in cell or "\r" in cell:
        raise ValueError(f"table cell spans lines: {cell!r}")


# --- Markdown ---------------------------------------------------------------------------

_LITERAL = re.compile(r"``(.+?)``")


def _md_inline(text: str) -> str:
    return _LITERAL.sub(r"`\1`", text)


def _md_cell(text: str) -> str:
    return _md_inline(text).replace("|", "\\|")


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return "#" * block.level + " " + _md_inline(block.text)
    if isinstance(block, Paragraph):
        sep = "  \n" if block.hard_breaks else "\n"  # two trailing spaces: a Markdown line break
        return sep.join(_md_inline(line) for line in block.lines)
    if isinstance(block, Bullets):
        return "\n".join("- " + _md_inline(item).replace("\n", "\n  ") for item in block.items)
    lines = ["| " + " | ".join(_md_cell(c.title) for c in block.columns) + " |",
             "|" + "".join("---:|" if c.numeric else "---|" for c in block.columns)]
    lines += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in block.rows]
    return "\n".join(lines)


def render_markdown(blocks: Sequence[Block]) -> str:
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


# --- reStructuredText ---------------------------------------------------------------------

#: Underline characters by heading level, as README.rst uses them.
RST_UNDERLINE = {1: "=", 2: "-", 3: "~"}


def _rst_block(block: Block) -> str:
    if isinstance(block, Heading):
        return block.text + "\n" + RST_UNDERLINE[block.level] * len(block.text)
    if isinstance(block, Paragraph):
        if block.hard_breaks:
            return "\n".join("| " + line for line in block.lines)  # a line block
        return "\n".join(block.lines)
    if isinstance(block, Bullets):
        return "\n".join("- " + item.replace("\n", "\n  ") for item in block.items)
    # list-table: cells of any width without drawing a grid, and diffs of one row stay one row
    if not block.rows:
        # docutils rejects a list-table with no body; the document must leave such a table out
        raise ValueError(f"a reST table needs at least one row: {[c.title for c in block.columns]}")
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in ((c.title for c in block.columns), *block.rows):
        cells = list(row)
        lines.append(f"   * - {cells[0]}".rstrip())
        lines += [f"     - {cell}".rstrip() for cell in cells[1:]]
    return "\n".join(lines)


def render_rst(blocks: Sequence[Block]) -> str:
    return "\n\n".join(_rst_block(b) for b in blocks) + "\n"
