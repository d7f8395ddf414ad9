"""Build the incident report from the incident directory alone (works on a copy).

``build_report(path)`` reads incident.json, triggers.jsonl, the manifest, the
collectors' evidence files named in the manifest and a fresh ``verify()``,
and returns one JSON-ready dict; ``render_html`` / ``render_markdown`` turn it
into a self-contained HTML page or a Markdown text for a ticket.

Every string read from evidence is attacker-influenced. Files are read only
when the manifest names them, below the incident directory, without following
links, with bounded sizes and record counts; the renderers escape everything.
"""
from __future__ import annotations

import os
import re
import shlex
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from .. import __version__
from .read import Reader
from .read import as_dict as _dict
from .read import as_list as _list
from .read import as_num as _num
from ..evidence.store import INCIDENT_JSON, MANIFEST, TRIGGERS

COLLECTORS = ("host", "triage", "pcap", "memory", "yara", "files")
MAX_TIMELINE = 2000
TOP_N = 25
_RUN_FILE_RE = re.compile(r"^(?P<collector>[A-Za-z0-9_-]+)/(?P<run>\d+)/(?P<name>.+)$")


# -- the report --------------------------------------------------------------
def build_report(incident_path: str, *, run_verify: bool = True) -> dict[str, Any]:
    """Gather everything an analyst reads first from one incident directory."""
    path = os.path.abspath(incident_path)
    reader = Reader(path)
    try:
        doc = _dict(reader.json(INCIDENT_JSON))
        manifest = reader.jsonl(MANIFEST, max_records=10 ** 7)
        triggers = reader.jsonl(TRIGGERS, max_records=MAX_TIMELINE)
        entries = manifest["records"]
        files = [e for e in entries if e.get("type") == "file" and isinstance(e.get("path"), str)]
        steps = [e for e in entries if e.get("type") == "collector"]
        verified = _verify(path) if run_verify else None
        flagged = {str(p.get("path")): p.get("kind")
                   for p in _list((verified or {}).get("problems"))}
        report: dict[str, Any] = {
            "report_tool": f"ossec-dfir {__version__}",
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "incident": os.path.basename(path), "path": path,
            "key": doc.get("key"), "created": doc.get("created"), "tool": doc.get("tool"),
            "host": _dict(doc.get("host")), "first_trigger": _dict(doc.get("first_trigger")),
            "triggers": triggers["records"], "triggers_total": triggers["total"],
            "verify": verified,
            "outcomes": [{k: e.get(k) for k in ("time", "trigger", "command", "outcome")}
                         for e in entries if e.get("type") == "outcome"],
            "collectors": _collectors(steps),
            "artifacts": [_artifact(e, flagged) for e in files],
            "custody": _custody(entries, manifest),
            "timeline": _timeline(triggers["records"], entries),
        }
        report["overall"] = _overall(report["outcomes"])
        by_run = _files_by_run(files)
        report["suspects"] = [_suspects(reader, run, names, flagged)
                              for run, names in by_run.get("triage", {}).items()]
        report["yara"] = [_hits(reader, run, names, "matches.jsonl", flagged)
                          for run, names in by_run.get("yara", {}).items()]
        report["file_search"] = [_hits(reader, run, names, "results.jsonl", flagged)
                                 for run, names in by_run.get("files", {}).items()]
        report["pcap"] = [_capture(reader, run, names, flagged)
                          for run, names in by_run.get("pcap", {}).items()]
        report["memory"] = [_memory(reader, run, names, files, report["host"], flagged)
                            for run, names in by_run.get("memory", {}).items()]
        report["read_problems"] = reader.problems
        return report
    finally:
        reader.close()


def _verify(path: str) -> dict[str, Any]:
    """Return verify()'s findings; a crash on a malformed manifest is itself a finding."""
    from ..evidence.verify import verify
    try:
        return verify(path).to_dict()
    except Exception as err:  # noqa: BLE001 - the report must still show what is readable
        return {"ok": False, "files_checked": 0, "manifest_entries": None,
                "manifest_tip_sha256": None, "problems": [
                    {"kind": "unverifiable", "path": MANIFEST,
                     "detail": f"verify failed: {type(err).__name__}: {err}"}]}


def _overall(outcomes: list[dict[str, Any]]) -> str:
    kinds = {str(o.get("outcome")) for o in outcomes} - {"duplicate"}
    if not kinds:
        return "no outcome recorded" if not outcomes else "complete"
    if kinds == {"complete"}:
        return "complete"
    if kinds == {"failed"}:
        return "failed"
    return "partial"


def _collectors(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in steps:
        runs = sorted({m.group("collector") + "/" + m.group("run")
                       for f in _list(s.get("files")) if isinstance(f, str)
                       for m in [_RUN_FILE_RE.match(f)] if m})
        out.append({"collector": s.get("collector"), "outcome": s.get("outcome"),
                    "reason": s.get("reason"), "started": s.get("started"),
                    "ended": s.get("ended"), "trigger": s.get("trigger"), "runs": runs,
                    "files": len(_list(s.get("files"))), "summary": _dict(s.get("summary"))})
    ran = {str(c["collector"]) for c in out}
    for name in COLLECTORS:
        if name not in ran:
            out.append({"collector": name, "outcome": "not run",
                        "reason": "no step of this collector is recorded in the manifest",
                        "runs": [], "files": 0, "summary": {}})
    return out


def _artifact(entry: dict[str, Any], flagged: dict[Any, Any]) -> dict[str, Any]:
    return {"path": entry.get("path"), "size": entry.get("size"), "sha256": entry.get("sha256"),
            "collector": entry.get("collector"), "outcome": entry.get("outcome"),
            "reason": entry.get("reason"), "ended": entry.get("ended"),
            "verify": flagged.get(entry.get("path"))}


def _custody(entries: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
    writers: Counter[tuple[str, str, str]] = Counter()
    pids: dict[tuple[str, str, str], set[Any]] = {}
    for e in entries:
        c = _dict(e.get("custody"))
        key = (str(c.get("host")), str(c.get("uid")), str(c.get("tool")))
        writers[key] += 1
        pids.setdefault(key, set()).add(c.get("pid"))
    times = [e.get("time") for e in entries if isinstance(e.get("time"), str)]
    return {"entries": manifest["total"], "unreadable_entries": manifest["bad"],
            "first": min(times) if times else None, "last": max(times) if times else None,
            "writers": [{"host": h, "uid": u, "tool": t, "entries": n,
                         "processes": len(pids[(h, u, t)])}
                        for (h, u, t), n in writers.most_common()]}


def _timeline(triggers: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict]:
    events = []
    for t in triggers:
        what = " ".join(str(t.get(k) or "-") for k in ("command", "action"))
        detail = ", ".join(f"{k}={t[k]}" for k in ("srcip", "rule_id", "alert_id", "user",
                                                   "filename", "status") if t.get(k))
        events.append({"time": t.get("received"), "event": f"trigger {what}", "detail": detail})
    for e in entries:
        kind = e.get("type")
        if kind == "collector":
            events.append({"time": e.get("started"),
                           "event": f"{e.get('collector')} started", "detail": ""})
            events.append({"time": e.get("ended"), "event": f"{e.get('collector')} "
                           f"{e.get('outcome')}", "detail": e.get("reason") or ""})
        elif kind == "outcome":
            events.append({"time": e.get("time"), "event": f"outcome {e.get('outcome')}",
                           "detail": f"command {e.get('command')}"})
    events.sort(key=lambda ev: str(ev.get("time") or ""))
    return events[:MAX_TIMELINE]


def _files_by_run(files: list[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """Return {collector: {"<collector>/<NN>": [file names below the run]}}."""
    out: dict[str, dict[str, list[str]]] = {}
    for e in files:
        m = _RUN_FILE_RE.match(str(e.get("path") or ""))
        if m:
            run = f"{m.group('collector')}/{m.group('run')}"
            out.setdefault(m.group("collector"), {}).setdefault(run, []).append(m.group("name"))
    return out


def _warn(run: str, names: list[str], flagged: dict[Any, Any]) -> list[str]:
    return [f"{run}/{n}: verify says {flagged[f'{run}/{n}']}" for n in names
            if f"{run}/{n}" in flagged]


def _suspects(reader: Reader, run: str, names: list[str],
              flagged: dict[Any, Any]) -> dict[str, Any]:
    summary = _dict(reader.json(f"{run}/summary.json")) if "summary.json" in names else {}
    out: dict[str, Any] = {"run": run, "status": summary.get("suspects_status"),
                           "srcip": summary.get("srcip"), "warnings": _warn(run, names, flagged)}
    if "suspects.jsonl" in names:
        got = reader.jsonl(f"{run}/suspects.jsonl", max_records=TOP_N * 4)
        out.update(records=got["records"], total=got["total"])
    else:
        out.update(records=[], total=0, missing="suspects.jsonl was not written")
    return out


def _hits(reader: Reader, run: str, names: list[str], name: str,
          flagged: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"run": run, "warnings": _warn(run, names, flagged)}
    if "summary.json" in names:
        out["summary"] = _dict(reader.json(f"{run}/summary.json"))
    if name in names:
        got = reader.jsonl(f"{run}/{name}")
        out.update(records=got["records"], total=got["total"])
        if name == "matches.jsonl":
            out["by_rule"] = Counter(str(r.get("rule")) for r in got["records"]).most_common()
            out["cores"] = [{"core": f"{run}/{n}",
                             "howto": [f"gdb -c {_ipath(run + '/' + n)} EXECUTABLE",
                                       f"readelf -n {_ipath(run + '/' + n)}"]}
                            for n in sorted(names) if re.fullmatch(r"core\.\d+", n)]
    else:
        out.update(records=[], total=0, missing=f"{name} was not written")
    return out


def _capture(reader: Reader, run: str, names: list[str],
             flagged: dict[Any, Any]) -> dict[str, Any]:
    capture = _dict(reader.json(f"{run}/capture.json")) if "capture.json" in names else {}
    out: dict[str, Any] = {"run": run, "warnings": _warn(run, names, flagged),
                           "pcap": f"{run}/capture.pcap" if "capture.pcap" in names else None,
                           "capture": {k: capture.get(k) for k in (
                               "backend", "interface", "filter", "started", "ended",
                               "elapsed_s", "stop_reason", "limit", "packets_written",
                               "bytes_written", "captured", "received_by_filter",
                               "dropped_by_kernel", "returncode")}}
    if "summary.json" not in names:
        out["summary_missing"] = "summary.json was not written (see the pcap step's summary)"
        return out
    s = _dict(reader.json(f"{run}/summary.json"))
    flows = [f for f in _list(s.get("flows")) if isinstance(f, dict)]
    flows.sort(key=lambda f: (-_num(f.get("bytes")), -_num(f.get("packets"))))
    dns_names: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    for d in _list(s.get("dns")):
        for q in _list(_dict(d).get("questions")):
            dns_names[str(_dict(q).get("name"))] += 1
        for a in _list(_dict(d).get("answers")):
            answers[f"{_dict(a).get('name')} -> {_dict(a).get('data')}"] += 1
    sni = Counter(str(_dict(x).get("server_name")) for x in _list(s.get("tls_sni")))
    hosts = Counter(str(_dict(x).get("host")) for x in _list(s.get("http_requests"))
                    if _dict(x).get("host") is not None)
    lines = Counter(str(_dict(x).get("request_line")) for x in _list(s.get("http_requests")))
    out.update(directions=_dict(s.get("directions")), flows_total=len(flows),
               flows_not_listed=s.get("flows_not_listed"), top_flows=flows[:TOP_N],
               dns_names=dns_names.most_common(), dns_answers=answers.most_common(),
               tls_sni=sni.most_common(), http_hosts=hosts.most_common(),
               http_requests=lines.most_common(), packets_read=s.get("packets_read"),
               truncated=s.get("truncated"), undecodable=s.get("undecodable_packets"))
    return out


def _memory(reader: Reader, run: str, names: list[str], files: list[dict[str, Any]],
            host: dict[str, Any], flagged: dict[Any, Any]) -> dict[str, Any]:
    entry = {e.get("path"): e for e in files}
    out: dict[str, Any] = {"run": run, "warnings": _warn(run, names, flagged),
                           "symbols": sorted(n for n in names if n.startswith("symbols/"))}
    release = _dict(host.get("kernel")).get("release") or "<release>"
    q = shlex.quote
    if "host.lime" in names:
        meta = _dict(entry.get(f"{run}/host.lime", {}).get("meta"))
        image = f"{run}/host.lime"
        out["host_image"] = {"path": image, "size": entry[image].get("size"),
                             "outcome": entry[image].get("outcome"),
                             "reason": entry[image].get("reason"),
                             "source": meta.get("source"), "format": meta.get("format"),
                             "hole_bytes": meta.get("hole_bytes"),
                             "ranges": len(_list(meta.get("ranges")))}
        isf = q(f"isf/linux/{release}.json")
        vol = f"vol -s isf -f {_ipath(image)}"
        out["host_image_howto"] = [
            f"# Volatility 3 needs an ISF symbol table for kernel {release}: build it from",
            "# a vmlinux with debug info for exactly this kernel (compare "
            f"{run}/symbols/uname-a.txt).",
            f"mkdir -p isf/linux && dwarf2json linux --elf {q('vmlinux-' + str(release))} "
            f"--system-map {_ipath(run + '/symbols/System.map')} > {isf}",
            f"{vol} linux.pslist", f"{vol} linux.pstree", f"{vol} linux.sockstat",
            f"{vol} linux.bash", f"{vol} linux.malfind"]
    processes = _list(reader.json(f"{run}/processes.json")) if "processes.json" in names else []
    cores = []
    for p in processes[:TOP_N * 4]:
        p = _dict(p)
        core = p.get("file")
        exe = _dict(p.get("exe")).get("file")
        howto = []
        if isinstance(core, str) and core.startswith(run + "/"):
            exe_arg = _ipath(exe) if isinstance(exe, str) and exe.startswith(run + "/") \
                else "EXECUTABLE"
            howto = [f"gdb {exe_arg} -c {_ipath(core)}", f"readelf -n {_ipath(core)}",
                     f"readelf -l {_ipath(core)}"]
        cores.append({"pid": p.get("pid"), "comm": p.get("comm"), "why": p.get("why"),
                      "outcome": p.get("outcome"), "reason": p.get("reason"),
                      "core": core, "size": p.get("size"), "sha256": p.get("sha256"),
                      "exe_path": _dict(p.get("exe")).get("path"),
                      "exe_deleted": _dict(p.get("exe")).get("deleted"),
                      "hole_bytes": p.get("hole_bytes"), "howto": howto})
    out["cores"] = cores
    out["cores_total"] = len(processes)
    return out


def render_html(report: dict[str, Any]) -> str:
    """Return the report as one self-contained HTML page (no script, no external asset)."""
    from .html import render_html as render
    return render(report)


def render_markdown(report: dict[str, Any]) -> str:
    """Return the report as Markdown for a ticket."""
    from .md import render_markdown as render
    return render(report)


def _ipath(relpath: str) -> str:
    """Return a shell word for relpath below the incident directory held in $I."""
    return '"$I"/' + shlex.quote(relpath)
