"""Draw report blocks as one self-contained HTML page: inline CSS, no script, no asset.

Every value is passed through ``html.escape``; tags, attributes and class names
come from this module only. The Content-Security-Policy forbids every fetch and
script, so even a missed escape could not load or run anything.
"""
from __future__ import annotations

from html import escape
from typing import Any

from .layout import OUTCOME_CLASSES, Block, Cell, text
from .document import layout

CSP = "default-src 'none'; style-src 'unsafe-inline'"
_STYLES = set(OUTCOME_CLASSES.values()) | {"mono"}
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1400px;color:#222;
padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #345;padding-bottom:.2em;
margin-top:1.8em}h3{font-size:1.1em;margin:1.2em 0 .4em}h4{font-size:1em;margin:.8em 0 .3em}
nav{font-size:.95em}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.4em 0 1em;width:100%;table-layout:auto}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#e8edf2}tr:nth-child(even) td{background:#f8f9fa}
table.kv th{width:16em}
.mono,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:#f2f2f2;border:1px solid #ccc;padding:.6em;white-space:pre-wrap;
overflow-wrap:anywhere}
.ok{color:#116329;font-weight:600}.warn{color:#8a5300;font-weight:600}
.bad{color:#b00020;font-weight:700}.skip{color:#666;font-style:italic}
div.alert{background:#fde8e8;border:2px solid #b00020;padding:.6em 1em;margin:.6em 0}
div.alert p{margin:.2em 0;font-weight:600;color:#7a0014}
div.okbox{background:#e6f4ea;border:1px solid #116329;padding:.5em 1em;margin:.6em 0}
div.skipbox{background:#f1f1f1;border:1px dashed #888;padding:.5em 1em;margin:.6em 0}
p.left{color:#555;font-style:italic}
"""


def _e(value: str) -> str:
    return escape(value, quote=True)


def _cell(tag: str, cell: Cell) -> str:
    style = f' class="{cell.style}"' if cell.style in _STYLES else ""
    return f"<{tag}{style}>{_e(cell.value)}</{tag}>"


def _table(block: Block) -> str:
    parts = []
    if block.title:
        parts.append(f"<h4>{_e(block.title)}</h4>")
    if not block.items:
        parts.append('<p class="left">none</p>')
        return "\n".join(parts)
    parts.append("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in block.headers)
                 + "</tr></thead><tbody>")
    for row in block.items:
        parts.append("<tr>" + "".join(_cell("td", c) for c in row) + "</tr>")
    parts.append("</tbody></table>")
    if block.left_out:
        parts.append(f'<p class="left">{block.left_out} more row(s) left out of this table; '
                     "see the evidence file.</p>")
    return "\n".join(parts)


def _block(block: Block) -> str:
    kind = block.kind
    if kind == "title":
        return f"<h1>{_e(block.title)}</h1>"
    if kind == "heading":
        return f'<h2 id="{_e(block.anchor)}">{_e(block.title)}</h2>'
    if kind == "subheading":
        return f"<h3>{_e(block.title)}</h3>"
    if kind == "para":
        return "".join(f"<p>{_e(t)}</p>" for t in block.items)
    if kind in ("alert", "ok", "skip"):
        cls = {"alert": "alert", "ok": "okbox", "skip": "skipbox"}[kind]
        return f'<div class="{cls}">' + "".join(f"<p>{_e(t)}</p>" for t in block.items) \
            + "</div>"
    if kind == "kv":
        return '<table class="kv"><tbody>' + "".join(
            f"<tr><th>{_e(k)}</th>{_cell('td', v)}</tr>" for k, v in block.items) \
            + "</tbody></table>"
    if kind == "table":
        return _table(block)
    if kind == "code":
        return "<pre>" + _e("\n".join(block.items)) + "</pre>"
    return f"<p>{_e(text(block.items))}</p>"


def render_html(report: dict[str, Any]) -> str:
    """Return the report as one self-contained HTML document."""
    return page(f"ossec-dfir report {report.get('incident')}", layout(report))


def page(title_text: str, blocks: list[Block]) -> str:
    """Return blocks as one self-contained HTML document (CSP: no fetch, no script)."""
    toc = [(b.anchor, b.title) for b in blocks if b.kind == "heading"]
    body = [_block(b) for b in blocks]
    nav = "<nav>" + "".join(f'<a href="#{_e(a)}">{_e(t)}</a>' for a, t in toc) + "</nav>"
    if len(body) > 2:
        body.insert(2, nav)
    title = _e(text(title_text, 200))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="referrer" content="no-referrer">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
