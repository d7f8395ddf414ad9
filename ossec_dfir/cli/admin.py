"""Setting up: install into an OSSEC/Wazuh tree, check the config, simulate execd."""
from __future__ import annotations

import argparse
import json
import os

from ..ar.simulate import find_script, ossec_argv, run_ossec, run_wazuh, wazuh_message
from ..config import Config, timeout_notes
from ..errors import EXIT_BAD_INPUT, EXIT_COMPLETE, InstallError
from ..ossec import install as ossec_install
from ..ossec import conftext, files, manager, ossecconf, push, snippets
from ..ossec.layout import Installation, installation
from .common import load_config


def rule_problems(config: Config) -> list[str]:
    """Return the problems of every YARA rules directory the profiles use (file and line)."""
    from ..collectors.yara import rules as _yararules
    from ..collectors.yara.collector import step_rules_dirs
    problems: list[str] = []
    checked: set[tuple[str, ...]] = set()
    for name, profile in sorted(config.profiles.items()):
        for i, step in enumerate(profile.steps):
            if step.collector != "yara":
                continue
            dirs = tuple(step_rules_dirs(config.ossec_dir, step.params))
            if dirs in checked:
                continue
            checked.add(dirs)
            problems += [f"profiles.{name}.steps[{i}] (yara rules): {p}"
                         for p in _yararules.check_rules(dirs)]
    return problems


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the configuration and the YARA rules it uses; list the profiles."""
    config = load_config(args)
    problems = rule_problems(config)
    for problem in problems:
        print(f"{config.source}: {problem}")
    for note in timeout_notes(config):
        print(f"{config.source}: note: {note}")
    print(f"{config.source}: {'OK' if not problems else 'PROBLEMS'}")
    for name, profile in sorted(config.profiles.items()):
        print(f"  {name}: " + " -> ".join(
            s.collector + (" (background)" if s.background else "") for s in profile.steps))
    return EXIT_COMPLETE if not problems else EXIT_BAD_INPUT


def _check_push(directory: str) -> None:
    """Check the rules of directory as the agents will; raise InstallError on any problem."""
    from ..collectors.yara import rules as _yararules
    problems = _yararules.check_rules([os.path.abspath(directory)])
    if problems:
        raise InstallError("rules not pushed, nothing was installed:\n  "
                           + "\n  ".join(problems), EXIT_BAD_INPUT)


def _push_rules(inst: Installation, directory: str) -> list[str]:
    """Mirror the (checked) rules of directory into the manager's etc/shared/."""
    return push.push_rules(inst, os.path.abspath(directory)) + [
        f"pushed rules reach the agents after a manager restart "
        f"({os.path.join(inst.root, 'bin', inst.flavor + '-control')} restart) and their "
        "next keepalive; profiles with the rules_dirs entry etc/shared (dfir-hunt) use them"]


def cmd_install(args: argparse.Namespace) -> int:
    """Install the AR executables and config into --ossec-dir; with options, edit and check OSSEC's files."""
    config = load_config(args)
    binds = snippets.parse_binds(args.bind or [], config)
    if args.push_rules and "dfir-hunt" in config.profiles and \
            not any(b.command == "dfir-hunt" for b in binds):
        binds.append(snippets.Binding("dfir-hunt", (manager.HUNT_RULE_ID,)))
    problems = ossec_install.unsafe_code_paths() if os.geteuid() == 0 else []
    if problems and not args.allow_unsafe_paths:
        print("refusing to install: execd would run, as root, code that others can change:")
        for problem in problems:
            print(f"  {problem}")
        print("install ossec-dfir in a root-owned virtualenv (e.g. /opt/ossec-dfir), or pass "
              "--allow-unsafe-paths for a test tree")
        return 2
    inst = installation(args.ossec_dir, args.flavor)
    if args.push_rules and not args.manager:
        raise InstallError("--push-rules goes with --manager (rules are pushed from the "
                           "manager's etc/shared/); nothing was installed", EXIT_BAD_INPUT)
    if args.push_rules:
        _check_push(args.push_rules)
    if inst.is_agent and (binds or args.manager):
        raise InstallError(f"{inst.root} is an agent (no {inst.flavor}-analysisd): --bind and "
                           "--manager belong on the manager, whose ossec.conf holds <command> "
                           "and <active-response> and whose analysisd decodes the outcome "
                           "lines; nothing was installed", EXIT_BAD_INPUT)
    print(f"{inst.root}: {inst.flavor} {inst.kind}")
    for line in ossec_install.install_files(config, inst):
        print(line)
    if args.manager:
        for line in manager.install_manager(inst):
            print(line)
    if args.push_rules:
        for line in _push_rules(inst, args.push_rules):
            print(line)
    if args.edit_ossec_conf:
        for line in ossecconf.edit(inst, config, binds):
            print(line)
    else:
        current = files.read_text(inst.ossec_conf) or ""
        block = conftext.marked(ossecconf.new_text(inst, config, current, binds)[0],
                                inst.ossec_conf)
        if block:
            print(f"\nAdd to {inst.ossec_conf} ({inst.flavor}), or run again with "
                  f"--edit-ossec-conf:\n")
            print(block, end="")
        if not args.manager and not inst.is_agent:
            print(f"\nOutcome alerts: run again with --manager (decoder and rules into "
                  f"{inst.decoder_file} and {inst.rules_file})")
    if inst.is_agent:
        print("\nThis is an agent: the <command> and <active-response> blocks go into the "
              "MANAGER's ossec.conf (ossec-dfir install --edit-ossec-conf --manager --bind ... "
              "on the manager); the executables must be here.")
    if not binds and not inst.is_agent:
        print("\nNo rule runs a command yet: bind rules with --bind COMMAND=RULE_ID[,RULE_ID...] "
              "(e.g. --bind dfir-pcap=5712,5720 --bind dfir-yara-file=550,554)")
    runs = snippets.manual_runs(config, binds)
    if runs:
        print("\nManual runs from the manager (the -f name carries the response timeout, as "
              "agent_control -L lists it):")
        for line in runs:
            print(f"  {os.path.join(inst.root, 'bin', line)}")
        if inst.kind == "local":
            print("  (a local install refuses agent 000: run `ossec-dfir collect` here instead)")
    if args.edit_ossec_conf or args.manager:
        print(f"\nRestart to apply: {os.path.join(inst.root, 'bin', inst.flavor + '-control')} "
              "restart")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    """Remove what install added from --ossec-dir; keep the config, YARA rules and evidence."""
    inst = installation(args.ossec_dir, args.flavor)
    for line in ossec_install.uninstall(inst.root, inst.flavor, args.edit_ossec_conf,
                                        args.manager):
        print(line)
    if args.edit_ossec_conf or args.manager:
        print(f"Restart to apply: {os.path.join(inst.root, 'bin', inst.flavor + '-control')} "
              "restart")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run an AR executable as OSSEC's or Wazuh's execd would, and print what happened."""
    script = args.script or find_script(args.command, args.ossec_dir)
    env = dict(os.environ)
    if args.config:
        env["OSSEC_DFIR_CONFIG"] = os.path.abspath(args.config)
    if args.protocol == "ossec":
        argv = ossec_argv(script, args.action, args.srcip, args.user, args.alert_id,
                          args.rule_id, args.location, args.filename, args.manual)
        result = run_ossec(argv, env)
        print("execd (OSSEC) ran: " + " ".join(argv))
    else:
        msg = wazuh_message(args.action, args.srcip, args.rule_id, args.alert_id, args.command)
        result = run_wazuh(script, msg, None if args.check_keys == "none" else args.check_keys,
                           env, cwd=args.ossec_dir if os.path.isdir(args.ossec_dir) else "/")
        print("execd (Wazuh) sent: " + json.dumps(msg))
        if result.check_keys:
            print(f"script answered: {json.dumps(result.check_keys)}; execd replied "
                  f"{args.check_keys}")
    print(f"exit code {result.returncode} after {result.exit_s * 1000:.1f} ms")
    return result.returncode


def add_parsers(sub: argparse._SubParsersAction, parents: list) -> None:
    """Register install, check-config and simulate."""
    p = sub.add_parser("install", help=cmd_install.__doc__, parents=parents)
    p.add_argument("--flavor", choices=("auto", "ossec", "wazuh"), default="auto")
    p.add_argument("--bind", action="append", metavar="COMMAND=RULE_ID[,RULE_ID...]",
                   help="run COMMAND when one of these rules fires (repeatable); without "
                        "--bind only <command> blocks are written, nothing runs")
    p.add_argument("--edit-ossec-conf", action="store_true",
                   help="write the blocks and the <localfile> of active-responses.log into "
                        "ossec.conf (backup first, between markers, checked with -t)")
    p.add_argument("--manager", action="store_true",
                   help="merge the outcome decoder and rules into the manager's local files "
                        "and check them with logtest")
    p.add_argument("--push-rules", metavar="DIR",
                   help="with --manager: check the YARA rules of DIR and mirror them into the "
                        "manager's etc/shared/ as dfir-*.yar, which OSSEC copies to every "
                        "agent (README \"Hunting\")")
    p.add_argument("--allow-unsafe-paths", action="store_true",
                   help="install even if the interpreter or package is writable by non-root")
    p.set_defaults(func=cmd_install)
    p = sub.add_parser("uninstall", help=cmd_uninstall.__doc__, parents=parents)
    p.add_argument("--flavor", choices=("auto", "ossec", "wazuh"), default="auto")
    p.add_argument("--edit-ossec-conf", action="store_true",
                   help="also remove the ossec-dfir block from ossec.conf (backup first)")
    p.add_argument("--manager", action="store_true",
                   help="also remove the ossec-dfir decoder and rules blocks")
    p.set_defaults(func=cmd_uninstall)
    p = sub.add_parser("check-config", help=cmd_check_config.__doc__, parents=parents)
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("simulate", help=cmd_simulate.__doc__, parents=parents)
    p.add_argument("command", help="AR command, e.g. dfir-pcap")
    p.add_argument("--srcip")
    p.add_argument("--protocol", choices=("ossec", "wazuh"), default="ossec")
    p.add_argument("--action", choices=("add", "delete"), default="add")
    p.add_argument("--user")
    p.add_argument("--rule-id", default="100100")
    p.add_argument("--alert-id", default=None)
    p.add_argument("--location", default="/var/log/auth.log")
    p.add_argument("--filename")
    p.add_argument("--manual", action="store_true",
                   help="as agent_control -b: (from_the_server) (no_rule_id)")
    p.add_argument("--check-keys", choices=("continue", "abort", "none"), default="continue")
    p.add_argument("--script", help="executable to run (default: installed, then checkout)")
    p.set_defaults(func=cmd_simulate)
