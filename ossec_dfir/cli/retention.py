"""Retention: ``ossec-dfir prune`` (old, exported or shipped incidents; stale state)."""
from __future__ import annotations

import argparse

from ..ar import prune as _prune
from ..ar.worker import reap_orphans
from ..errors import EXIT_COMPLETE, EXIT_PARTIAL
from ..evidence.text import display as _d
from .common import load_config, open_store, print_json


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete incidents older than the age that were exported or shipped; trim stale state."""
    config = load_config(args)
    policy = config.retention
    days = policy.incident_age_days if args.days is None else args.days
    state_days = policy.state_age_days if args.state_days is None else args.state_days
    store = open_store(config)
    try:
        result = _prune.prune(config, store, days, state_days, reap_orphans,
                              dry_run=args.dry_run)
    finally:
        store.close()
    if args.json:
        print_json(result.to_dict())
    else:
        for d in result.incidents:
            if d.action == "keep" and "younger" in d.reason and not args.verbose:
                continue
            what = {"delete": "WOULD DELETE", "deleted": "DELETED", "keep": "KEEP",
                    "error": "ERROR"}[d.action]
            extra = f" [{_d(d.released_by)}]" if d.released_by else ""
            print(f"{what:12s} {_d(d.incident)}  {d.age_days:g} days  {_d(d.reason)}{extra}")
        for name in result.state:
            print(f"{'WOULD TRIM' if args.dry_run else 'TRIMMED':12s} .state/{_d(name)}")
        print(result.summary())
    errors = any(d.action == "error" for d in result.incidents)
    return EXIT_PARTIAL if errors else EXIT_COMPLETE


def add_parsers(sub: argparse._SubParsersAction, parents: list) -> None:
    """Register prune."""
    p = sub.add_parser("prune", help=cmd_prune.__doc__, parents=parents)
    p.add_argument("--days", type=float, help="incident age in days (default: "
                   "retention.incident_age_days)")
    p.add_argument("--state-days", type=float, help="state age in days (default: "
                   "retention.state_age_days)")
    p.add_argument("--dry-run", action="store_true", help="list what would go; change nothing")
    p.add_argument("--verbose", action="store_true", help="also list the young incidents kept")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)
