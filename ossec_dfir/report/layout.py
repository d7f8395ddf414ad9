"""Lay out a report dict as neutral blocks that the HTML and Markdown renderers draw.

Blocks hold only plain text made safe for display (``text()``: control and
bidi characters shown as escapes, undecodable bytes of invalid UTF-8 shown as
``\\xNN`` (evidence/text.py), long values cut with a count); the renderers escape that text for
their own syntax. Markup is never built from evidence.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..evidence.text import escape

TEXT_MAX = 300
ROWS_MAX = 50
ARTIFACT_ROWS_MAX = 5000
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069"
                     "\ufeff\ud800-\udfff]")
OUTCOME_CLASSES = {"complete": "ok", "partial": "warn", "failed": "bad", "skipped": "skip",
                   "not run": "skip", "duplicate": "skip"}


def text(value: Any, limit: int = TEXT_MAX) -> str:
    """Return value as display-safe text, cut to limit characters with a count."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    value = escape(value).replace("\n", "\\n").replace("\t", "\\t")
    value = _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}" if ord(m.group()) > 0xff
                        else f"\\x{ord(m.group()):02x}", value)
    if len(value) > limit:
        return f"{value[:limit]}... [{len(value) - limit} more characters]"
    return value


def size(value: Any) -> str:
    """Return a byte count with a human unit."""
    if not isinstance(value, int) or isinstance(value, bool):
        return text(value)
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= factor:
            return f"{value} ({value / factor:.1f} {unit})"
    return str(value)


@dataclass
class Cell:
    """A table cell: text plus an optional style from OUTCOME_CLASSES or 'mono'."""

    value: str
    style: str = ""


def outcome(value: Any) -> Cell:
    """Return an outcome cell styled by its kind."""
    return Cell(text(value, 40), OUTCOME_CLASSES.get(str(value), ""))


@dataclass
class Block:
    """One piece of the report: heading, para, alert, ok, kv, table or code."""

    kind: str
    title: str = ""
    anchor: str = ""
    items: list[Any] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    left_out: int = 0


def table_block(headers: list[str], rows: list[list[Any]], limit: int = ROWS_MAX,
           total: int | None = None, title: str = "") -> Block:
    cells = [[c if isinstance(c, Cell) else Cell(text(c)) for c in row] for row in rows[:limit]]
    total = len(rows) if total is None else max(total, len(rows))
    return Block("table", title=title, headers=headers, items=cells,
                 left_out=max(0, total - len(cells)))


def kv_block(pairs: list[tuple[str, Any]]) -> Block:
    return Block("kv", items=[(k, v if isinstance(v, Cell) else Cell(text(v)))
                              for k, v in pairs])


def para_block(value: str) -> Block:
    return Block("para", items=[text(value, 2000)])


def code_block(lines: list[str]) -> Block:
    return Block("code", items=[text(line, 2000) for line in lines])


def absent_block(report: dict[str, Any], name: str) -> list[Block]:
    """Say why a collector left no evidence, with its recorded reasons."""
    steps = [c for c in report["collectors"] if c.get("collector") == name]
    lines = [f"{name}: {c.get('outcome')} - {c.get('reason') or 'no reason recorded'}"
             + (f" (trigger {c['trigger']})" if c.get("trigger") else "") for c in steps]
    return [Block("skip", items=[text(line, 1000) for line in lines or
                                 [f"{name}: no step recorded"]])]


def warnings_block(run: dict[str, Any]) -> list[Block]:
    return [Block("alert", items=[text(w, 1000) for w in run.get("warnings") or []])] \
        if run.get("warnings") else []


def heading(title: str, anchor: str) -> Block:
    """Return a section heading."""
    return Block("heading", title=title, anchor=anchor)
