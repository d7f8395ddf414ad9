"""The ``ossec-dfir`` command: collect by hand, list, show, verify, export, status, stop."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from typing import Any

from . import __version__
from ._fs import sha256_path
from ._procfs import pid_alive
from .config import Config, ENV_CONFIG, load
from .errors import EXIT_BAD_INPUT, EXIT_COMPLETE, EXIT_FAILED, EXIT_PARTIAL, EXIT_STORE, \
    BadRequest, ConfigError, DfirError, StoreError
from .store import INCIDENT_JSON, Store

EXIT_BY_OUTCOME = {"complete": EXIT_COMPLETE, "duplicate": EXIT_COMPLETE, "partial": EXIT_PARTIAL,
                   "failed": EXIT_FAILED}


def resolve_ossec_dir(args: argparse.Namespace) -> None:
    """Default --ossec-dir: the tree of a config at <dir>/etc/ossec-dfir.yml, else /var/ossec.

    Relative paths in a config (yara's rules_dirs) are below its OSSEC tree.
    """
    if getattr(args, "ossec_dir", None) is None:
        path = args.config or os.environ.get(ENV_CONFIG)
        if path and os.path.basename(os.path.dirname(os.path.abspath(path))) == "etc":
            args.ossec_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        else:
            args.ossec_dir = "/var/ossec"


def _config(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get(ENV_CONFIG)
    resolve_ossec_dir(args)
    if path is None:
        candidate = os.path.join(args.ossec_dir, "etc", "ossec-dfir.yml")
        path = candidate if os.path.exists(candidate) else None
    return load(path, args.ossec_dir)


def _store(config: Config, create: bool = False) -> Store:
    return Store(config.evidence_root, reserve_bytes=config.reserve_bytes,
                 grouping_window_s=config.grouping_window_s, create=create)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


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
    from . import entry, hostinfo
    from .collector import build_params, load_collectors
    from .config import Profile, Step
    from .request import Request, parse_ip
    from .runner import Runner

    config = _config(args)
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
    store = _store(config, create=True)
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
    store = _store(_config(args))
    rows = []
    for incident_id in store.incident_ids():
        s = _incident_summary(store, incident_id)
        rows.append({"id": incident_id, "key": s["key"], "created": s["created"],
                     "triggers": len(s["triggers"]), "files": len(s["files"]),
                     "outcomes": s["outcomes"]})
    if args.json:
        _print(rows)
    else:
        for r in rows:
            print(f"{r['id']}  triggers={r['triggers']} files={r['files']} "
                  f"outcomes={','.join(r['outcomes']) or '-'}")
    return EXIT_COMPLETE


def _resolve_incident(config: Config, ref: str) -> str:
    """Return the path of an incident given its id or a directory path."""
    if os.path.sep in ref or ref.startswith("."):
        return os.path.abspath(ref)
    return os.path.join(config.evidence_root, ref)


def cmd_show(args: argparse.Namespace) -> int:
    """Show one incident: triggers, collector outcomes, files."""
    config = _config(args)
    path = _resolve_incident(config, args.incident)
    store = Store(os.path.dirname(path), create=False)
    s = _incident_summary(store, os.path.basename(path))
    if args.json:
        _print(s)
        return EXIT_COMPLETE
    print(f"incident {s['id']}  ({s['path']})\n  host {s['hostname']}  created {s['created']}")
    print(f"triggers ({len(s['triggers'])}):")
    for t in s["triggers"]:
        print(f"  {t.get('received')} {t.get('command')} {t.get('action')} "
              f"srcip={t.get('srcip') or '-'} rule={t.get('rule_id') or '-'} "
              f"alert={t.get('alert_id') or '-'} [{t.get('status')}]")
    print(f"collectors ({len(s['collectors'])}):")
    for c in s["collectors"]:
        print(f"  {c['collector']:10s} {c['outcome']:9s} {c.get('reason') or ''}")
    print(f"files ({len(s['files'])}):")
    for f in s["files"]:
        print(f"  {f['sha256'][:16]}  {f['size']:>12}  {f['path']}"
              f"{'  [' + f['outcome'] + ']' if f['outcome'] != 'complete' else ''}")
    return EXIT_COMPLETE


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash an incident and check its manifest chain; exit 0 only when intact."""
    from .verify import verify
    path = _resolve_incident(_config(args), args.incident)
    report = verify(path, args.expect_tip)
    if args.json:
        _print(report.to_dict())
    else:
        for p in report.problems:
            print(f"{p['kind'].upper():10s} {p['path']}: {p['detail']}")
        print(f"{report.incident}: {'OK' if report.ok else 'PROBLEMS'} "
              f"({report.files_checked} files re-hashed, {report.entries} manifest entries, "
              f"tip {report.tip_sha256})")
    return EXIT_COMPLETE if report.ok else EXIT_PARTIAL


def cmd_export(args: argparse.Namespace) -> int:
    """Write <incident>.tar.gz and <incident>.tar.gz.sha256."""
    path = _resolve_incident(_config(args), args.incident)
    name = os.path.basename(path)
    out = os.path.abspath(args.output or f"{name}.tar.gz")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        tar.add(path, arcname=name, recursive=True)
    digest, _ = sha256_path(out)
    sfd = os.open(out + ".sha256", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(sfd, "w") as fh:
        fh.write(f"{digest}  {os.path.basename(out)}\n")
    print(f"{out}\n{out}.sha256")
    return EXIT_COMPLETE


def cmd_report(args: argparse.Namespace) -> int:
    """Write the incident report (self-contained HTML, or Markdown) outside the incident."""
    from .report import build_report, render_html, render_markdown
    path = _resolve_incident(_config(args), args.incident)
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


def cmd_status(args: argparse.Namespace) -> int:
    """Show running collectors (bytes so far), queued jobs and busy worker slots."""
    from . import worker
    config = _config(args)
    store = _store(config, create=True)
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
        _print(status)
    else:
        print(f"workers {status['busy_workers']}/{status['max_workers']} busy, "
              f"{status['queued']} queued")
        for r in running:
            print(f"  pid {r['pid']} {r['collector']:8s} {r['incident']} {r['bytes']} bytes "
                  f"since {r['started']}")
    return EXIT_COMPLETE


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the continuous collections (captures) for an IP, as a delete would."""
    from .request import incident_key, parse_ip
    from .runner import ALL_COMMANDS, request_stop
    key = incident_key(None if args.srcip == "host" else parse_ip(args.srcip))
    store = _store(_config(args), create=True)
    request_stop(store, args.command or ALL_COMMANDS, key)
    print(f"stop requested for {key} ({args.command or 'all commands'})")
    return EXIT_COMPLETE


def rule_problems(config: Config) -> list[str]:
    """Return the problems of every YARA rules directory the profiles use (file and line)."""
    from . import _yararules
    from .collectors.yara_scan import resolve_rules_dirs
    problems: list[str] = []
    checked: set[tuple[str, ...]] = set()
    for name, profile in sorted(config.profiles.items()):
        for i, step in enumerate(profile.steps):
            if step.collector != "yara":
                continue
            dirs = tuple(resolve_rules_dirs(config.ossec_dir, step.params.rules_dirs))
            if dirs in checked:
                continue
            checked.add(dirs)
            problems += [f"profiles.{name}.steps[{i}] (yara rules): {p}"
                         for p in _yararules.check_rules(dirs)]
    return problems


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration and the YARA rules it uses; list the profiles."""
    config = _config(args)
    problems = rule_problems(config)
    for problem in problems:
        print(f"{config.source}: {problem}")
    print(f"{config.source}: {'OK' if not problems else 'PROBLEMS'}")
    for name, profile in sorted(config.profiles.items()):
        print(f"  {name}: " + " -> ".join(
            s.collector + (" (background)" if s.background else "") for s in profile.steps))
    return EXIT_COMPLETE if not problems else EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ossec-dfir command."""
    from . import demo, install, simulate
    parser = argparse.ArgumentParser(prog="ossec-dfir", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ossec-dfir {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, None), (common, argparse.SUPPRESS)):
        target.add_argument("--config", default=default,
                            help=f"config file (default: ${ENV_CONFIG}, then "
                                 "<ossec-dir>/etc/ossec-dfir.yml, then the defaults)")
        target.add_argument("--ossec-dir", default=default,
                            help="OSSEC/Wazuh directory (default: the tree of --config when it "
                                 "is <dir>/etc/ossec-dfir.yml, else /var/ossec)")
    parents = [common]
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("collect", help=cmd_collect.__doc__, parents=parents)
    p.add_argument("name", help="profile (e.g. dfir-triage) or collector (e.g. triage)")
    p.add_argument("--srcip", help="the attacker's IP (validated)")
    p.add_argument("--filename", help="a file named by the alert (yara/files scan it first)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="collector parameter (YAML value); with a collector name")
    p.set_defaults(func=cmd_collect)
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
    p = sub.add_parser("status", help=cmd_status.__doc__, parents=parents)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("stop", help=cmd_stop.__doc__, parents=parents)
    p.add_argument("srcip", help="IP address, or 'host'")
    p.add_argument("--command", help="only this AR command's collection (default: all)")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("check-config", help=cmd_check_config.__doc__, parents=parents)
    p.set_defaults(func=cmd_check_config)
    install.add_parser(sub, parents)
    simulate.add_parser(sub, parents)
    demo.add_parser(sub, parents)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ossec-dfir command; return its exit code."""
    args = build_parser().parse_args(argv)
    resolve_ossec_dir(args)
    try:
        return int(args.func(args))
    except (BadRequest, ConfigError) as err:
        print(f"ossec-dfir: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreError as err:
        print(f"ossec-dfir: evidence store: {err}", file=sys.stderr)
        return EXIT_STORE
    except DfirError as err:
        print(f"ossec-dfir: {err}", file=sys.stderr)
        return err.exit_code
    except FileExistsError as err:
        print(f"ossec-dfir: exists already, not overwritten: {err.filename}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `ossec-dfir show ID | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_COMPLETE


if __name__ == "__main__":
    sys.exit(main())
