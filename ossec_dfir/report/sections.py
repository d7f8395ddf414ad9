"""Lay out the collector sections of a report: suspects, YARA, file search, capture, memory."""
from __future__ import annotations

from typing import Any

from .layout import (Block, Cell, absent_block, code_block, heading, kv_block, outcome, para_block,
    size, table_block, text, warnings_block)

SUSPECTS_MAX = 20
CHILDREN_MAX = 30
HOWTO_CORES_MAX = 10


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _pair(d: dict[str, Any], a: str, b: str) -> str:
    return f"{text(d.get(a), 40)} / {text(d.get(b), 40)}"


def _proc_row(role: str, p: dict[str, Any]) -> list[Any]:
    cmdline = p.get("cmdline")
    if isinstance(cmdline, list):
        cmdline = " ".join(str(a) for a in cmdline)
    return [Cell(role, "bad" if role == "SUSPECT" else ""), p.get("pid"), p.get("ppid"),
            p.get("name"), p.get("username"), p.get("exe"), text(cmdline, 500),
            p.get("create_time")]


def suspects(report: dict[str, Any]) -> list[Block]:
    """Return the process trees around the processes that talked to the srcip."""
    out = [heading("Suspects (processes talking to the srcip)", "suspects")]
    if not report["suspects"]:
        return out + absent_block(report, "triage")
    for run in report["suspects"]:
        out.append(Block("subheading", title=text(f"{run['run']}: srcip {run.get('srcip')}")))
        out += warnings_block(run)
        out.append(para_block(f"Status: {run.get('status') or '-'}; {run.get('total')} record(s)."))
        if run.get("missing"):
            out.append(para_block(run["missing"]))
        for rec in _l(run.get("records"))[:SUSPECTS_MAX]:
            rec = _d(rec)
            conns = [_d(c) for c in _l(rec.get("connections"))]
            if rec.get("pid") is None:
                out.append(para_block("Sockets with the srcip whose owner is unknown: "
                                      + text(rec.get("note"))))
            else:
                rows = [_proc_row(f"parent {n}", _d(p))
                        for n, p in reversed(list(enumerate(_l(rec.get("parents")), 1)))]
                rows.append(_proc_row("SUSPECT", rec))
                children = _l(rec.get("children"))
                rows += [_proc_row("child", _d(c)) for c in children[:CHILDREN_MAX]]
                out.append(table_block(["role", "pid", "ppid", "name", "user", "exe", "cmdline",
                                        "started"], rows, limit=200,
                                       total=len(rows) + max(0, len(children) - CHILDREN_MAX),
                                       title=text(f"Process tree of pid {rec.get('pid')} "
                                                  f"({rec.get('name')})")))
            out.append(table_block(["proto", "local", "remote", "status", "owners (pid/fd)"],
                                   [[c.get("proto"), f"{c.get('local_ip')}:{c.get('local_port')}",
                                     f"{c.get('remote_ip')}:{c.get('remote_port')}",
                                     c.get("status"),
                                     ", ".join(f"{_d(o).get('pid')}/{_d(o).get('fd')}"
                                               for o in _l(c.get("owners"))) or "-"]
                                    for c in conns], limit=20, title="Connections"))
        if run.get("total", 0) > SUSPECTS_MAX:
            out.append(para_block(f"{run['total'] - SUSPECTS_MAX} more suspect records are in "
                                  f"{run['run']}/suspects.jsonl."))
    return out


def _strings(rec: dict[str, Any]) -> str:
    parts = [f"{_d(s).get('id')}@{_d(s).get('offset')}: {_d(s).get('data_ascii')}"
             for s in _l(rec.get("strings"))[:4]]
    more = len(_l(rec.get("strings"))) - 4
    return "; ".join(parts) + (f"; +{more}" if more > 0 else "")


def yara(report: dict[str, Any]) -> list[Block]:
    """Return the YARA hits per run."""
    out = [heading("YARA hits", "yara")]
    if not report["yara"]:
        return out + absent_block(report, "yara")
    for run in report["yara"]:
        out.append(Block("subheading", title=text(f"{run['run']}: {run.get('total')} match(es)")))
        out += warnings_block(run)
        files = _d(_d(run.get("summary")).get("files"))
        procs = _d(_d(run.get("summary")).get("processes"))
        out.append(kv_block([("Files scanned / matched", _pair(files, "scanned", "matched")),
                             ("Files skipped", files.get("skipped")),
                             ("Processes scanned / matched", _pair(procs, "scanned", "matched")),
                             ("Stopped", files.get("stopped"))]))
        if run.get("missing"):
            out.append(para_block(run["missing"]))
        out.append(table_block(["rule", "matches"], run.get("by_rule") or [], title="By rule"))
        rows = []
        for r in run["records"]:
            meta = _d(r.get("meta"))
            where = (r.get("path") if r.get("type") != "process"
                     else f"pid {r.get('pid')} {r.get('name')} {r.get('exe')}")
            rows.append([r.get("type"), f"{r.get('namespace')}:{r.get('rule')}",
                         meta.get("severity"), meta.get("description"), Cell(text(where),
                                                                             "mono"),
                         Cell(text(r.get("sha256"), 64), "mono"), _strings(r)])
        out.append(table_block(["type", "rule", "severity", "description", "file or process",
                                "sha256", "strings"], rows, total=run.get("total"),
                               title="Matches"))
        cores = run.get("cores") or []
        if cores:
            out.append(para_block(f"Cores of matched processes ({len(cores)}); the executable is "
                                  "in the process record above (exe):"))
            out.append(code_block(["I=/path/to/the/incident"] + [
                line for c in cores[:HOWTO_CORES_MAX] for line in c["howto"]]))
    return out


def file_search(report: dict[str, Any]) -> list[Block]:
    """Return the file-search hits per run."""
    out = [heading("File search hits", "files")]
    if not report["file_search"]:
        return out + absent_block(report, "files")
    for run in report["file_search"]:
        out.append(Block("subheading", title=text(f"{run['run']}: {run.get('total')} match(es)")))
        out += warnings_block(run)
        if run.get("missing"):
            out.append(para_block(run["missing"]))
        rows = []
        for r in run["records"]:
            match = _d(r.get("regex_match")).get("text") if r.get("regex_match") else None
            rows.append([Cell(text(r.get("path")), "mono"), r.get("source"), size(r.get("size")),
                         r.get("mode"), r.get("owner") or r.get("uid"), r.get("mtime"),
                         Cell(text(r.get("sha256") or r.get("sha256_head"), 64), "mono"),
                         r.get("ioc_match"), match, r.get("evidence")])
        out.append(table_block(["path", "source", "size", "mode", "owner", "mtime", "sha256",
                                "ioc", "regex match", "copy"], rows, total=run.get("total")))
    return out


def _counts(title: str, pairs: list[Any], what: str) -> Block:
    return table_block([what, "count"], [list(p) for p in pairs], limit=25, title=title)


def capture(report: dict[str, Any]) -> list[Block]:
    """Return the capture summaries: counters, directions, flows, DNS, SNI, HTTP."""
    out = [heading("Packet capture", "pcap")]
    if not report["pcap"]:
        return out + absent_block(report, "pcap")
    for run in report["pcap"]:
        c = _d(run.get("capture"))
        out.append(Block("subheading", title=text(f"{run['run']}: {c.get('filter')} on "
                                                  f"{c.get('interface')}")))
        out += warnings_block(run)
        dropped = c.get("dropped_by_kernel")
        out.append(kv_block([("Backend", c.get("backend")), ("Started", c.get("started")),
                             ("Ended", c.get("ended")), ("Elapsed (s)", c.get("elapsed_s")),
                             ("Stop reason", c.get("stop_reason")), ("Limit", c.get("limit")),
                             ("Packets / bytes written",
                              _pair(c, "packets_written", "bytes_written")),
                             ("Received by filter", c.get("received_by_filter")),
                             ("Dropped by kernel",
                              Cell(text(dropped), "bad" if dropped else "ok"))]))
        if run.get("summary_missing"):
            out.append(para_block(run["summary_missing"]))
            continue
        out.append(table_block(["direction", "packets", "bytes"],
                               [[k, _d(v).get("packets"), _d(v).get("bytes")]
                                for k, v in sorted(_d(run.get("directions")).items())],
                               title="Packets and bytes per direction"))
        out.append(table_block(["proto", "src", "sport", "dst", "dport", "packets", "bytes",
                                "first seen", "last seen"],
                               [[f.get(k) for k in ("proto", "src", "sport", "dst", "dport",
                                                    "packets", "bytes", "first_seen", "last_seen")]
                                for f in run.get("top_flows") or []],
                               limit=25, total=run.get("flows_total"), title="Top flows by bytes"))
        if run.get("flows_not_listed"):
            out.append(para_block(f"{run['flows_not_listed']} flows were not listed by the capture "
                                  "summary (its flow limit)."))
        out.append(_counts("DNS names queried", run.get("dns_names") or [], "name"))
        out.append(_counts("DNS answers", run.get("dns_answers") or [], "name -> data"))
        out.append(_counts("TLS SNI", run.get("tls_sni") or [], "server name"))
        out.append(_counts("HTTP Host headers", run.get("http_hosts") or [], "host"))
        out.append(_counts("HTTP request lines", run.get("http_requests") or [], "request line"))
        if run.get("truncated"):
            out.append(para_block(f"Summary truncated: {run['truncated']}"))
        if run.get("pcap"):
            out.append(para_block("Open the packets:"))
            out.append(code_block([f'tshark -r "$I"/{run["pcap"]} -q -z conv,ip',
                                   f'wireshark "$I"/{run["pcap"]}']))
    return out


def memory(report: dict[str, Any]) -> list[Block]:
    """Return the memory image and cores with how to open them."""
    out = [heading("Memory (host image and process cores)", "memory")]
    if not report["memory"]:
        return out + absent_block(report, "memory")
    steps = {r: c for c in report["collectors"] if c.get("collector") == "memory"
             for r in c.get("runs") or []}
    for run in report["memory"]:
        out.append(Block("subheading", title=text(run["run"])))
        out += warnings_block(run)
        image = run.get("host_image")
        if image:
            out.append(kv_block([("Host image", Cell(text(image.get("path")), "mono")),
                                 ("Size", size(image.get("size"))), ("Format", image.get("format")),
                                 ("Source", image.get("source")), ("Ranges", image.get("ranges")),
                                 ("Zero-filled holes (bytes)", image.get("hole_bytes")),
                                 ("Outcome", outcome(image.get("outcome"))),
                                 ("Reason", image.get("reason"))]))
            out.append(code_block(["I=/path/to/the/incident   # or a copy; nothing is "
                                        "written in it", *run.get("host_image_howto", [])]))
        else:
            hi = _d(_d(steps.get(run["run"], {}).get("summary")).get("host_image"))
            out.append(para_block("No host image: " + (text(hi.get("reason")) if hi else
                                                       "not requested (host_image: false)")))
        if run.get("symbols"):
            out.append(para_block("Symbol material: " + ", ".join(run["symbols"])))
        cores = run.get("cores") or []
        rows = [[c.get("pid"), c.get("comm"), c.get("why"), outcome(c.get("outcome")),
                 c.get("reason"), Cell(text(c.get("core")), "mono"), size(c.get("size")),
                 Cell(text(c.get("sha256"), 64), "mono"), c.get("exe_path"),
                 c.get("exe_deleted")] for c in cores]
        out.append(table_block(["pid", "comm", "why", "outcome", "reason", "core", "size",
                                "sha256", "executable", "deleted"], rows,
                               total=run.get("cores_total"), title="Process cores"))
        howto = [line for c in cores[:HOWTO_CORES_MAX] for line in c.get("howto") or []]
        if howto:
            out.append(para_block("Open a core (ELF, no registers: NT_PRSTATUS needs ptrace; "
                                  "read memory with x/ and find, NT_FILE lists the mappings):"))
            out.append(code_block(["I=/path/to/the/incident"] + howto))
    return out
