"""Shipping by hand and on the analyst's side: ship, ship-status, fetch."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..config import Config
from ..errors import EXIT_COMPLETE, EXIT_FAILED, BadRequest
from ..evidence.text import display as _d
from ..ship import outbox, receipts as rc
from ..ship.fetch import fetch
from ..ship.shipper import incident_host_id, ship_pass
from .common import load_config, open_store, print_json


def _targets(config: Config, name: str | None) -> list[Any]:
    if not config.ship:
        raise BadRequest("no ship: targets in the config", "--target")
    if name is None:
        return list(config.ship)
    chosen = [t for t in config.ship if t.name == name]
    if not chosen:
        raise BadRequest(f"no target named {name!r} (configured: "
                         f"{', '.join(t.name for t in config.ship)})", "--target")
    return chosen


def cmd_ship(args: argparse.Namespace) -> int:
    """Ship (or re-ship) an incident now to every target, or to --target."""
    config = load_config(args)
    targets = _targets(config, args.target)
    store = open_store(config)
    try:
        result = ship_pass(store, args.incident, targets)
        if not result.ok:  # the shipper retries with backoff
            outbox.add(store, args.incident, final=True)
    finally:
        store.close()
    for name, error in sorted(result.errors.items()):
        print(f"{name}: failed: {_d(error)}", file=sys.stderr)
    print(f"shipped={result.shipped} pending={result.pending} "
          f"targets={','.join(t.name for t in targets)}")
    return EXIT_COMPLETE if result.ok else EXIT_FAILED


def cmd_ship_status(args: argparse.Namespace) -> int:
    """Show the outbox: incidents still shipping, what each target lacks, the last error."""
    config = load_config(args)
    store = open_store(config)
    rows = []
    try:
        for entry in outbox.entries(store):
            path = os.path.join(store.root, entry["incident"])
            entries = rc.read_manifest(path)
            try:
                incident = store.open_incident(entry["incident"])
                hid = incident_host_id(incident)
                incident.close()
            except Exception:  # noqa: BLE001 - status shows what it can
                hid = "?"
            rows.append({**entry, "remote_id": f"{hid}/{entry['incident']}",
                         "pending": {t.name: len(rc.pending(entries, t.name))
                                     for t in config.ship}})
    finally:
        store.close()
    if args.json:
        print_json(rows)
    else:
        if not rows:
            print("outbox empty")
        for r in rows:
            pending = ",".join(f"{k}:{v}" for k, v in r["pending"].items()) or "-"
            print(f"{_d(r['remote_id'])}  final={r.get('final')} pending={pending} "
                  f"fails={r.get('fails', 0)} last_error={_d(str(r.get('last_error') or '-'))}")
    return EXIT_COMPLETE


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download, decrypt and verify an incident from a target's copy alone (analyst side)."""
    config = load_config(args)
    target = _targets(config, args.target)[0]
    report = fetch(target, args.remote_id, args.dest, args.identity)
    if args.json:
        print_json(report.to_dict())
    else:
        for problem in report.to_dict().get("problems", []):
            print(f"{problem['kind']}: {_d(problem['path'])}: {_d(problem['detail'])}")
        print(f"{'OK' if report.ok else 'FAILED'}: {report.files_checked} files checked, "
              f"manifest tip {report.tip_sha256} -> {os.path.join(args.dest, report.incident)}")
    return EXIT_COMPLETE if report.ok else EXIT_FAILED


def add_parsers(sub: argparse._SubParsersAction, parents: list) -> None:
    """Register ship, ship-status and fetch."""
    p = sub.add_parser("ship", help=cmd_ship.__doc__, parents=parents)
    p.add_argument("incident", help="incident id")
    p.add_argument("--target", help="only this target (default: all)")
    p.set_defaults(func=cmd_ship)
    p = sub.add_parser("ship-status", help=cmd_ship_status.__doc__, parents=parents)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ship_status)
    p = sub.add_parser("fetch", help=cmd_fetch.__doc__, parents=parents)
    p.add_argument("--target", required=True, help="the target to read from")
    p.add_argument("--identity", help="age identity file (targets with encrypt_to)")
    p.add_argument("--json", action="store_true")
    p.add_argument("remote_id", metavar="ID", help="HOST_ID/INCIDENT_ID (see ship-status)")
    p.add_argument("dest", metavar="DEST", help="directory to rebuild the incident in")
    p.set_defaults(func=cmd_fetch)
