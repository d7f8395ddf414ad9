"""Lay out a report dict as neutral blocks that the HTML and Markdown renderers draw.

Blocks hold only plain text made safe for display (``text()``: control and
bidi characters shown as escapes, lone surrogates of invalid UTF-8 shown as
``\\udcNN``, long values cut with a count); the renderers escape that text for
their own syntax. Markup is never built from evidence.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

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
    value = value.replace("\n", "\\n").replace("\t", "\\t")
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


def layout(report: dict[str, Any]) -> list[Block]:
    """Return the blocks of the whole report, most important first."""
    from . import _report_sections as sections
    blocks: list[Block] = [Block("title", title=text(f"Incident {report['incident']}", 200)),
                           para_block(f"Report generated {report['generated']} by "
                                      f"{report['report_tool']} from the incident directory "
                                      "alone.")]
    blocks += _integrity(report)
    blocks += _summary(report)
    blocks += _host(report)
    blocks += _timeline(report)
    blocks += sections.suspects(report)
    blocks += sections.yara(report)
    blocks += sections.file_search(report)
    blocks += sections.capture(report)
    blocks += sections.memory(report)
    blocks += _artifacts(report)
    blocks += _custody(report)
    return blocks


def heading(title: str, anchor: str) -> Block:
    """Return a section heading."""
    return Block("heading", title=title, anchor=anchor)


def _integrity(report: dict[str, Any]) -> list[Block]:
    out = [heading("Integrity (verify)", "integrity")]
    v = report.get("verify")
    if v is None:
        out.append(Block("alert", items=["verify was not run for this report"]))
    elif v.get("ok"):
        out.append(Block("ok", items=[text(
            f"INTACT: {v.get('files_checked')} files re-hashed, {v.get('manifest_entries')} "
            f"manifest entries, chain tip {v.get('manifest_tip_sha256')}", 1000)]))
    else:
        problems = v.get("problems") or []
        out.append(Block("alert", items=[text(
            f"VERIFY FOUND {len(problems)} PROBLEM(S): evidence was modified, removed, added "
            "or left unfinished after collection. Do not rely on the flagged files.", 1000)]))
        rows = [[Cell(text(p.get("kind"), 40), "bad"), p.get("path"), p.get("detail")]
                for p in problems]
        out.append(table_block(["kind", "path", "detail"], rows, limit=500))
    if report.get("read_problems"):
        out.append(Block("alert", items=[text("Read while building this report: " + p, 1000)
                                         for p in report["read_problems"][:50]]))
    return out


def _summary(report: dict[str, Any]) -> list[Block]:
    first = report.get("first_trigger") or {}
    out = [heading("Summary", "summary"),
           kv_block([("Overall outcome", outcome(report.get("overall"))),
                     ("Key (srcip)", report.get("key")), ("Created", report.get("created")),
                     ("First trigger", f"{first.get('command')} {first.get('action')} rule "
                                       f"{first.get('rule_id')} alert {first.get('alert_id')}"),
                     ("Triggers", report.get("triggers_total")),
                     ("Artifacts", len(report.get("artifacts") or [])),
                     ("Collected by", report.get("tool"))])]
    rows = [[c.get("collector"), outcome(c.get("outcome")), c.get("reason"), c.get("started"),
             c.get("ended"), ", ".join(c.get("runs") or []) or "-", c.get("files")]
            for c in report["collectors"]]
    out.append(table_block(["collector", "outcome", "reason", "started", "ended", "evidence",
                            "files"], rows, limit=200, title="Collector outcomes"))
    return out


def _host(report: dict[str, Any]) -> list[Block]:
    h = report.get("host") or {}
    kernel = h.get("kernel") if isinstance(h.get("kernel"), dict) else {}
    osr = h.get("os_release") if isinstance(h.get("os_release"), dict) else {}
    tool = h.get("tool") if isinstance(h.get("tool"), dict) else {}
    clock = h.get("clock") if isinstance(h.get("clock"), dict) else {}
    return [heading("Host identity", "host"), kv_block([
        ("Hostname", h.get("hostname")), ("Machine id", h.get("machine_id")),
        ("Boot id", h.get("boot_id")), ("Boot time", h.get("boot_time")),
        ("Kernel", f"{kernel.get('system')} {kernel.get('release')} {kernel.get('version')} "
                        f"{kernel.get('machine')}"),
        ("OS", osr.get("PRETTY_NAME")), ("Time zone", h.get("timezone")),
        ("Clock at creation (UTC)", clock.get("utc")), ("Collector uid", h.get("collector_uid")),
        ("Tool", f"{tool.get('name')} {tool.get('version')} (Python {tool.get('python')})"),
        ("Libraries", tool.get("libraries"))])]


def _timeline(report: dict[str, Any]) -> list[Block]:
    keys = ("received", "command", "action", "srcip", "rule_id", "alert_id", "user",
            "filename", "location", "status", "protocol")
    trig = table_block(list(keys), [[t.get(k) for k in keys] for t in report["triggers"]],
                       limit=200, total=report.get("triggers_total"), title="Triggers")
    events = table_block(["time (UTC)", "event", "detail"],
                         [[e.get("time"), e.get("event"), e.get("detail")]
                          for e in report["timeline"]], limit=300, title="Timeline")
    return [heading("Triggers and timeline", "timeline"), trig, events]


def _artifacts(report: dict[str, Any]) -> list[Block]:
    rows = [[Cell(text(a.get("path")), "mono"), size(a.get("size")),
             Cell(text(a.get("sha256"), 64), "mono"), a.get("collector"),
             outcome(a.get("outcome")), a.get("reason"),
             Cell(text(a.get("verify"), 40), "bad") if a.get("verify") else Cell("ok", "ok")]
            for a in report["artifacts"]]
    return [heading("Artifacts (every evidence file, size and SHA-256)", "artifacts"),
            para_block("The same list is in SHA256SUMS: sha256sum -c SHA256SUMS in the incident "
                       "directory re-checks it."),
            table_block(["path", "size (bytes)", "sha256", "collector", "outcome", "reason",
                         "verify"], rows, limit=ARTIFACT_ROWS_MAX)]


def _custody(report: dict[str, Any]) -> list[Block]:
    c = report["custody"]
    v = report.get("verify") or {}
    out = [heading("Chain of custody", "custody"),
           para_block("manifest.jsonl is hash-chained: each line holds the SHA-256 of the previous "
                      "line and who wrote it (host, pid, uid, tool). Compare the tip with the "
                      "manifest_sha256 of the outcome log line on the host."),
           kv_block([("Manifest entries", c.get("entries")),
                     ("Unreadable entries", c.get("unreadable_entries")),
                     ("First entry", c.get("first")), ("Last entry", c.get("last")),
                     ("Chain tip (SHA-256 of the last line)", Cell(text(
                         v.get("manifest_tip_sha256"), 64), "mono"))]),
           table_block(["host", "uid", "tool", "entries", "writing processes"],
                       [[w["host"], w["uid"], w["tool"], w["entries"], w["processes"]]
                        for w in c["writers"]], title="Writers"),
           para_block("Re-check a copy:"),
           code_block(["I=/path/to/the/incident", 'ossec-dfir verify "$I" --expect-tip TIP',
                       'cd "$I" && sha256sum -c SHA256SUMS'])]
    return out
