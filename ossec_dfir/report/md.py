"""Draw report blocks as Markdown for a ticket (GitHub / GitLab / Jira-with-Markdown).

Every value is escaped for Markdown and for the HTML that Markdown allows:
``\\ ` * _ [ ] | ~ #`` get a backslash, ``& < >`` become entities, newlines
were already made visible by ``text()``, and URLs are defanged (``hxxp``,
``[://]``, ``[.]``) so a ticket never links to or fetches attacker addresses.
Ticket-system references are broken with a zero-width space (``&#8203;``)
after the sigil, so evidence cannot notify or link anyone or anything:
``@user`` mentions (GitHub, GitLab, Jira Cloud), ``#123`` / ``!123`` /
``~label`` / ``%milestone`` / ``$snippet`` / ``&epic`` references (GitHub,
GitLab), and ``GH-123``-style short links.
"""
from __future__ import annotations

import re
from typing import Any

from .document import layout
from .layout import Block

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")
_SCHEME = re.compile(r"(?i)\b(h)(tt)(ps?)(://)")
# A sigil followed by a word character is a reference to someone or something.
_REFERENCE = re.compile(r"([@#!~%$&^])(?=[\w\"'-])|\b(GH)(-\d)")
_ZWSP = "\ue000"  # a private-use mark for the zero-width space, written &#8203; after escaping


def md(value: str) -> str:
    """Return value escaped for Markdown inline text and table cells."""
    value = _SCHEME.sub(lambda m: f"{m.group(1)}xx{m.group(3)}{m.group(4)}", value)
    value = value.replace("://", "[://]")
    value = re.sub(r"(?i)\bwww\.", "www[.]", value)
    value = _REFERENCE.sub(lambda m: (m.group(1) or m.group(2)) + _ZWSP + (m.group(3) or ""),
                           value.replace(_ZWSP, ""))
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = value.replace("\r", "\\r").replace("\n", "\\n")
    return _MD_SPECIAL.sub(r"\\\1", value).replace(_ZWSP, "&#8203;")


def _table(block: Block) -> list[str]:
    lines = [f"#### {md(block.title)}", ""] if block.title else []
    if not block.items:
        return lines + ["_none_", ""]
    lines.append("| " + " | ".join(md(h) for h in block.headers) + " |")
    lines.append("|" + "---|" * len(block.headers))
    for row in block.items:
        lines.append("| " + " | ".join(md(c.value) or " " for c in row) + " |")
    if block.left_out:
        lines += ["", f"_{block.left_out} more row(s) left out of this table; see the "
                      "evidence file._"]
    return lines + [""]


def _code(items: list[str]) -> list[str]:
    # A fence longer than any backtick run inside: the block cannot be closed early.
    longest = max((len(run) for item in items for run in re.findall(r"`+", item)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "sh", *items, fence, ""]


def _block(block: Block) -> list[str]:
    kind = block.kind
    if kind == "title":
        return [f"# {md(block.title)}", ""]
    if kind == "heading":
        return [f"## {md(block.title)}", ""]
    if kind == "subheading":
        return [f"### {md(block.title)}", ""]
    if kind == "para":
        return [md(t) for t in block.items] + [""]
    if kind == "alert":
        return [f"> **{md(t)}**" for t in block.items] + [""]
    if kind in ("ok", "skip"):
        return [f"> {md(t)}" for t in block.items] + [""]
    if kind == "kv":
        return ["| | |", "|---|---|"] + [f"| **{md(k)}** | {md(v.value)} |"
                                         for k, v in block.items] + [""]
    if kind == "table":
        return _table(block)
    if kind == "code":
        return _code(list(block.items))
    return []


def render_markdown(report: dict[str, Any]) -> str:
    """Return the report as Markdown."""
    lines: list[str] = []
    for block in layout(report):
        lines += _block(block)
    return "\n".join(lines).rstrip() + "\n"
