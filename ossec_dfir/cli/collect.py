"""Live operations: collect by hand, status of running collections, stop a capture."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
from typing import Any

from ..errors import EXIT_COMPLETE, BadRequest, ConfigError
from ..procfs import pid_alive
from .common import EXIT_BY_OUTCOME, load_config, open_store, print_json

_FILE_KEY = re.compile(r"^file-[0-9a-f]{16}$")


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
    from ..collectors.base import build_params, get_collector, load_collectors
    from ..config import DEFAULT_CONFIG, Profile, Step
    from ..ar.request import Request, check_filename, parse_ip
    from ..ar.runner import Runner
    from ..ar.worker import log_outcome, report_findings

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
    if args.detach and args.name not in config.profiles or args.detach and params:
        raise ConfigError([f"--detach runs a profile of the config as the AR would "
                           f"({', '.join(sorted(config.profiles))}), without --param"])
    srcip = parse_ip(args.srcip) if args.srcip else None
    filename, problem = check_filename(args.filename)
    if problem:
        raise BadRequest(problem, "--filename")
    req = Request(protocol="cli", action="add", command=args.name, srcip=srcip,
                  filename=filename,
                  raw=" ".join(["ossec-dfir collect", args.name] + (
                      ["--srcip", args.srcip] if args.srcip else []) + (
                      ["--filename", args.filename] if args.filename else []) + [
                      f"--param {p}" for p in args.param])[:2000])
    entry.needs_file(profile, req)
    if args.detach:
        # The AR's own path: trigger, queue, a detached worker; the worker writes
        # the outcome line to the log when the collection ends.
        queued = entry.queue(config, req, config.source if config.source != DEFAULT_CONFIG
                             else "")
        print(f"incident {queued.incident}{' (new)' if queued.created else ''}: {queued.path}")
        print(f"queued: trigger {queued.trigger}, {queued.started}; the outcome line goes to "
              f"{config.log_file} (ossec-dfir status, ossec-dfir show {queued.incident})")
        return EXIT_COMPLETE
    store = open_store(config, create=True)
    trigger = entry._trigger_record(req, "accepted")
    incident, created = store.incident_for(req.key, hostinfo.identity, trigger)
    incident.append_trigger(trigger)
    print(f"incident {incident.id}{' (new)' if created else ''}: {incident.path}", flush=True)
    continuous = [s for s in profile.steps if get_collector(s.collector).stops_on_delete]
    for step in continuous:
        print(f"{step.collector}: runs until `ossec-dfir stop {req.srcip or req.key}`, Ctrl-C, or "
              f"duration_s={getattr(step.params, 'duration_s', step.params.timeout_s):g} s "
              f"(use --detach to run it in the background)", flush=True)
    runner = Runner(config, store, incident, req, trigger["trigger_id"])
    previous = signal.signal(signal.SIGINT, _stop_on_interrupt(store, req)) \
        if continuous else None
    try:
        outcome = runner.run_profile(profile)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    tip = incident.record({"type": "outcome", "trigger": trigger["trigger_id"],
                           "command": req.command, "outcome": outcome})
    reason = "; ".join(f"{o.collector}: {o.reason}" for o in runner.outcomes if o.reason)
    reason = report_findings(config, store, incident, req, runner.outcomes, reason)
    log_outcome(config, req, incident.id, outcome, runner.outcomes, reason, tip)
    incident.close()
    for o in runner.outcomes:
        print(f"  {o.collector:10s} {o.outcome:9s} {o.reason or ''}")
    print(f"outcome: {outcome} (outcome line in {config.log_file})")
    return EXIT_BY_OUTCOME[outcome]


def _stop_on_interrupt(store: Any, req: Any) -> Any:
    """Return a SIGINT handler: the first Ctrl-C stops the capture as a delete would."""
    from ..ar.runner import request_stop

    def handler(signum: int, frame: Any) -> None:
        request_stop(store, req.command, req.key)
        print("\nstopping the capture as a delete would (Ctrl-C again to abort)", flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return handler


def cmd_status(args: argparse.Namespace) -> int:
    """Show running collectors (bytes so far), queued jobs, busy worker slots and the outbox."""
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
    from ..ship import outbox
    status = {"running": running, "queued": len(worker.queued_jobs(store)),
              "busy_workers": worker.busy_slots(store, config.max_workers),
              "max_workers": config.max_workers, "outbox": len(outbox.ids(store))}
    if args.json:
        print_json(status)
    else:
        print(f"workers {status['busy_workers']}/{status['max_workers']} busy, "
              f"{status['queued']} queued, {status['outbox']} incidents waiting to ship "
              "(ossec-dfir ship-status)")
        for r in running:
            print(f"  pid {r['pid']} {r['collector']:8s} {r['incident']} {r['bytes']} bytes "
                  f"since {r['started']}")
    return EXIT_COMPLETE


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the continuous collections (captures) for an IP, as a delete would."""
    from ..ar.request import incident_key, parse_ip
    from ..ar.runner import ALL_COMMANDS, request_stop
    if args.srcip == "host" or _FILE_KEY.fullmatch(args.srcip):
        key = args.srcip
    else:
        key = incident_key(parse_ip(args.srcip))
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
    p.add_argument("--detach", action="store_true",
                   help="queue the profile for a detached worker (as the AR does), print the "
                        "incident and return at once")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="collector parameter (YAML value); with a collector name")
    p.set_defaults(func=cmd_collect)
    p = sub.add_parser("status", help=cmd_status.__doc__, parents=parents)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("stop", help=cmd_stop.__doc__, parents=parents)
    p.add_argument("srcip", help="IP address, 'host', or a file key (file-<16 hex>)")
    p.add_argument("--command", help="only this AR command's collection (default: all)")
    p.set_defaults(func=cmd_stop)
