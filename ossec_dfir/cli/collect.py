"""Live operations: collect by hand, status of running collections, stop a capture."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..errors import EXIT_COMPLETE, ConfigError
from ..procfs import pid_alive
from .common import EXIT_BY_OUTCOME, load_config, open_store, print_json


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    import yaml
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError([f"--param {pair!r}: expected key=value"])
        out[key] = yaml.safe_load(value) if value else ""
    return out


def cmd_collect(args: argparse.Namespace) -> int:
    """Run a profile or one collector now, through the same code path as the AR."""
    from ..ar import entry
    from .. import hostinfo
    from ..collectors.base import build_params, load_collectors
    from ..config import Profile, Step
    from ..ar.request import Request, parse_ip
    from ..ar.runner import Runner

    config = load_config(args)
    params = _parse_params(args.param)
    if args.name in config.profiles and not params:
        profile = config.profiles[args.name]
    elif args.name in load_collectors():
        cls = load_collectors()[args.name]
        values = dict(config.collectors.get(args.name) or {}, **params)
        profile = Profile(args.name, "manual run", (Step(args.name, build_params(cls, values)),))
    else:
        raise ConfigError([f"{args.name!r} is neither a profile nor a collector (profiles: "
                           f"{', '.join(sorted(config.profiles))}; collectors: "
                           f"{', '.join(sorted(load_collectors()))})"])
    srcip = parse_ip(args.srcip) if args.srcip else None
    req = Request(protocol="cli", action="add", command=args.name, srcip=srcip,
                  filename=args.filename,
                  raw=" ".join(["ossec-dfir collect", args.name] + (
                      ["--srcip", args.srcip] if args.srcip else []) + [
                      f"--param {p}" for p in args.param])[:2000])
    store = open_store(config, create=True)
    trigger = entry._trigger_record(req, "accepted")
    incident, created = store.incident_for(req.key, hostinfo.identity, trigger)
    incident.append_trigger(trigger)
    print(f"incident {incident.id}{' (new)' if created else ''}: {incident.path}", flush=True)
    runner = Runner(config, store, incident, req, trigger["trigger_id"])
    outcome = runner.run_profile(profile)
    incident.record({"type": "outcome", "trigger": trigger["trigger_id"],
                     "command": req.command, "outcome": outcome})
    for o in runner.outcomes:
        print(f"  {o.collector:10s} {o.outcome:9s} {o.reason or ''}")
    print(f"outcome: {outcome}")
    return EXIT_BY_OUTCOME[outcome]


def cmd_status(args: argparse.Namespace) -> int:
    """Show running collectors (bytes so far), queued jobs and busy worker slots."""
    from ..ar import worker
    config = load_config(args)
    store = open_store(config, create=True)
    running = []
    run_dir = store.state_path("running")
    for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            with open(os.path.join(run_dir, name)) as fh:
                info = json.load(fh)
            if not pid_alive(int(info["pid"])):
                continue  # a collector that died (killed, crashed) left its file
        except (OSError, ValueError, KeyError):
            continue
        running.append(info)
    status = {"running": running, "queued": len(worker.queued_jobs(store)),
              "busy_workers": worker.busy_slots(store, config.max_workers),
              "max_workers": config.max_workers}
    if args.json:
        print_json(status)
    else:
        print(f"workers {status['busy_workers']}/{status['max_workers']} busy, "
              f"{status['queued']} queued")
        for r in running:
            print(f"  pid {r['pid']} {r['collector']:8s} {r['incident']} {r['bytes']} bytes "
                  f"since {r['started']}")
    return EXIT_COMPLETE


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the continuous collections (captures) for an IP, as a delete would."""
    from ..ar.request import incident_key, parse_ip
    from ..ar.runner import ALL_COMMANDS, request_stop
    key = incident_key(None if args.srcip == "host" else parse_ip(args.srcip))
    store = open_store(load_config(args), create=True)
    request_stop(store, args.command or ALL_COMMANDS, key)
    print(f"stop requested for {key} ({args.command or 'all commands'})")
    return EXIT_COMPLETE


def add_parsers(sub: argparse._SubParsersAction, parents: list) -> None:
    """Register collect, status and stop."""
    p = sub.add_parser("collect", help=cmd_collect.__doc__, parents=parents)
    p.add_argument("name", help="profile (e.g. dfir-triage) or collector (e.g. triage)")
    p.add_argument("--srcip", help="the attacker's IP (validated)")
    p.add_argument("--filename", help="a file named by the alert (yara/files scan it first)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="collector parameter (YAML value); with a collector name")
    p.set_defaults(func=cmd_collect)
    p = sub.add_parser("status", help=cmd_status.__doc__, parents=parents)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("stop", help=cmd_stop.__doc__, parents=parents)
    p.add_argument("srcip", help="IP address, or 'host'")
    p.add_argument("--command", help="only this AR command's collection (default: all)")
    p.set_defaults(func=cmd_stop)
