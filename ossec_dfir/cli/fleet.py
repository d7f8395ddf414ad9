"""``ossec-dfir fleet``: what the manager heard from every agent (incidents, outcomes, findings)."""
from __future__ import annotations

import argparse
import os
import re
import time

from ..errors import EXIT_BAD_INPUT, EXIT_COMPLETE, BadRequest
from ..report import alerts as _alerts
from ..report import fleet as _fleet
from .common import print_json

_SINCE = re.compile(r"(\d{1,6})([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str | None, now: float) -> float:
    """Return the epoch of --since: a duration back from now (30m, 24h, 7d) or a UTC date."""
    if not value:
        return 0.0
    match = _SINCE.fullmatch(value)
    if match:
        return now - int(match.group(1)) * _UNIT[match.group(2)]
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            import calendar
            return float(calendar.timegm(time.strptime(value, fmt)))
        except ValueError:
            continue
    raise BadRequest(f"--since {value!r}: a duration (30m, 24h, 7d) or a UTC date "
                     "(2026-12-02 or 2026-12-02T10:00:00)")


def cmd_fleet(args: argparse.Namespace) -> int:
    """List per agent the incidents, outcomes, findings and manifest tips from the manager's alerts."""
    since = parse_since(args.since, time.time())
    if args.alerts:
        path = args.alerts
        kind = "json" if path.endswith(".json") else "log"
    else:
        path, kind = _alerts.alerts_file(args.ossec_dir)
    try:
        found = _alerts.read_alerts(path, kind, since)
    except OSError as err:
        print(f"ossec-dfir: cannot read {path}: {err.strerror}")
        return EXIT_BAD_INPUT
    view = _fleet.build(found)
    if args.html:
        fd = os.open(args.html, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o600)  # a new file, never through a link
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(_fleet.render_html(view, path))
        print(f"wrote {args.html}")
    elif args.json:
        print_json({"source": path, **view})
    else:
        print(_fleet.render_text(view), end="")
    return EXIT_COMPLETE


def add_parsers(sub: argparse._SubParsersAction, parents: list) -> None:
    """Register fleet."""
    p = sub.add_parser("fleet", help=cmd_fleet.__doc__, parents=parents)
    p.add_argument("--since", help="only alerts since: 30m, 24h, 7d, or a UTC date")
    p.add_argument("--alerts", help="alerts file to read (default: the manager's "
                                    "logs/alerts/alerts.json when written, else alerts.log)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--html", metavar="FILE", help="write a self-contained page (new file)")
    p.set_defaults(func=cmd_fleet)
