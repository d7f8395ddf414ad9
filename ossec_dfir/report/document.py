"""The whole report document: every section in order, most important first."""
from __future__ import annotations

from typing import Any

from . import sections
from .layout import (ARTIFACT_ROWS_MAX, Block, Cell, code_block, heading, kv_block, outcome,
                     para_block, size, table_block, text)


def layout(report: dict[str, Any]) -> list[Block]:
    """Return the blocks of the whole report, most important first."""
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
