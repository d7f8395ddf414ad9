"""Reading incidents: list, show, verify, export, report."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..errors import EXIT_COMPLETE, EXIT_PARTIAL, BadRequest, StoreError
from ..config import Config
from ..evidence import retention
from ..evidence.export import export_incident
from ..evidence.fs import sha256_path
from ..evidence.store import INCIDENT_JSON, Store
from ..evidence.text import display as _d
from .common import load_config, open_store, print_json, resolve_incident


def _incident_summary(store: Store, incident_id: str) -> dict[str, Any]:
    inc = store.open_incident(incident_id)
    try:
        manifest = inc.manifest()
        triggers = inc.triggers()
        try:
            with open(os.path.join(inc.path, INCIDENT_JSON)) as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            doc = {}
    finally:
        inc.close()
    steps = [e for e in manifest if e.get("type") == "collector"]
    files = [e for e in manifest if e.get("type") == "file"]
    return {"id": incident_id, "path": inc.path, "key": doc.get("key"),
            "created": doc.get("created"), "hostname": (doc.get("host") or {}).get("hostname"),
            "triggers": triggers, "collectors": [
                {k: s.get(k) for k in ("collector", "outcome", "reason", "started", "ended",
                                       "trigger", "summary")} for s in steps],
            "files": [{k: f.get(k) for k in ("path", "size", "sha256", "collector", "outcome",
                                             "reason")} for f in files],
            "outcomes": [e.get("outcome") for e in manifest if e.get("type") == "outcome"]}


def cmd_incidents(args: argparse.Namespace) -> int:
    """List incidents."""
    store = open_store(load_config(args))
    rows = []
    for incident_id in store.incident_ids():
        s = _incident_summary(store, incident_id)
        rows.append({"id": incident_id, "key": s["key"], "created": s["created"],
                     "triggers": len(s["triggers"]), "files": len(s["files"]),
                     "outcomes": s["outcomes"]})
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{_d(r['id'])}  triggers={r['triggers']} files={r['files']} "
                  f"outcomes={_d(','.join(map(str, r['outcomes'])) or '-')}")
    return EXIT_COMPLETE


def cmd_show(args: argparse.Namespace) -> int:
    """Show one incident: triggers, collector outcomes, files."""
    config = load_config(args)
    path = resolve_incident(config, args.incident)
    store = Store(os.path.dirname(path), create=False)
    s = _incident_summary(store, os.path.basename(path))
    if args.json:
        print_json(s)
        return EXIT_COMPLETE
    # Everything below comes from the evidence (alert fields, host names): shown
    # escaped, so no escape sequence can rewrite or hide what is printed.
    print(f"incident {_d(s['id'])}  ({_d(s['path'])})\n  host {_d(s['hostname'])}  "
          f"created {_d(s['created'])}")
    print(f"triggers ({len(s['triggers'])}):")
    for t in s["triggers"]:
        print(_d(f"  {t.get('received')} {t.get('command')} {t.get('action')} "
                 f"srcip={t.get('srcip') or '-'} rule={t.get('rule_id') or '-'} "
                 f"alert={t.get('alert_id') or '-'} [{t.get('status')}]"))
    print(f"collectors ({len(s['collectors'])}):")
    for c in s["collectors"]:
        print(f"  {_d(c['collector']):10s} {_d(c['outcome']):9s} {_d(c.get('reason') or '')}")
    print(f"files ({len(s['files'])}):")
    for f in s["files"]:
        print(f"  {_d(f['sha256'])[:16]}  {_d(f['size']):>12}  {_d(f['path'])}"
              f"{'  [' + _d(f['outcome']) + ']' if f['outcome'] != 'complete' else ''}")
    return EXIT_COMPLETE


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash an incident and check its manifest chain; exit 0 only when intact."""
    from ..evidence.verify import verify
    path = resolve_incident(load_config(args), args.incident)
    report = verify(path, args.expect_tip)
    if args.json:
        print_json(report.to_dict())
    else:
        for p in report.problems:
            # a planted file name must not hide or fake the verdict line
            print(f"{_d(p['kind']).upper():10s} {_d(p['path'])}: {_d(p['detail'])}")
        if report.problems_not_listed:
            print(f"... and {report.problems_not_listed} more problems not listed")
        print(f"{_d(report.incident)}: {'OK' if report.ok else 'PROBLEMS'} "
              f"({report.files_checked} files re-hashed, {report.entries} manifest entries, "
              f"tip {report.tip_sha256})")
    return EXIT_COMPLETE if report.ok else EXIT_PARTIAL


def cmd_export(args: argparse.Namespace) -> int:
    """Write <incident>.tar.gz and <incident>.tar.gz.sha256."""
    config = load_config(args)
    path = resolve_incident(config, args.incident)
    out = os.path.abspath(args.output or f"{os.path.basename(path)}.tar.gz")
    store = _store_of(config, path)
    tip = None
    if store is not None:
        try:
            tip = retention.manifest_tip(store, os.path.basename(path))
        except StoreError:
            tip = None
    archive, sums = export_incident(path, out)
    print("\n".join(_d(p) for p in (archive, sums)))
    if store is None or tip is None:
        print("export not recorded: the incident is not in the configured evidence root "
              "(prune only deletes incidents recorded as exported)")
        return EXIT_COMPLETE
    try:
        digest, size = sha256_path(archive)
        record = retention.record_export(store, os.path.basename(path), archive, digest, size,
                                         tip)
        print(f"export recorded in {_d(record)} (prune may delete the incident once it is "
              "old enough, as long as nothing is added to it)")
    finally:
        store.close()
    return EXIT_COMPLETE


def _store_of(config: Config, path: str) -> Store | None:
    """Return the configured store when path is one of its incidents, else None."""
    if os.path.realpath(os.path.dirname(path)) != os.path.realpath(config.evidence_root):
        return None
    try:
        return open_store(config)
    except StoreError:
        return None


def cmd_report(args: argparse.Namespace) -> int:
    """Write the incident report (self-contained HTML, or Markdown) outside the incident."""
    from ..report.build import build_report, render_html, render_markdown
    path = resolve_incident(load_config(args), args.incident)
    if not os.path.isdir(path):
        raise StoreError("no such incident directory", path)
    ext = "md" if args.format == "md" else "html"
    out = args.output or f"{os.path.basename(path)}.report.{ext}"
    if out != "-":
        out = os.path.abspath(out)
        real = os.path.realpath(os.path.dirname(out))
        if os.path.commonpath([real, os.path.realpath(path)]) == os.path.realpath(path):
            raise BadRequest("the report must not be written inside the incident directory "
                             "(verify would count it as an extra file)", out)
    report = build_report(path)
    doc = render_markdown(report) if ext == "md" else render_html(report)
    if out == "-":
        sys.stdout.write(doc)
        return EXIT_COMPLETE
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
        fh.write(doc)
    print(out)
    return EXIT_COMPLETE


def add_parsers(sub: argparse._SubParsersAction, parents: list) -> None:
    """Register incidents, show, verify, export and report."""
    p = sub.add_parser("incidents", help=cmd_incidents.__doc__, parents=parents)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_incidents)
    for name, func in (("show", cmd_show), ("verify", cmd_verify)):
        p = sub.add_parser(name, help=func.__doc__, parents=parents)
        p.add_argument("incident", help="incident id or directory")
        p.add_argument("--json", action="store_true")
        if name == "verify":
            p.add_argument("--expect-tip", help="manifest_sha256 from the outcome log line")
        p.set_defaults(func=func)
    p = sub.add_parser("export", help=cmd_export.__doc__, parents=parents)
    p.add_argument("incident")
    p.add_argument("-o", "--output", help="archive path (default ./<id>.tar.gz)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("report", help=cmd_report.__doc__, parents=parents)
    p.add_argument("incident", help="incident id or directory")
    p.add_argument("--format", choices=("html", "md"), default="html")
    p.add_argument("-o", "--output", help="report file, created new (default "
                   "./<id>.report.html or .md); - for stdout")
    p.set_defaults(func=cmd_report)
