"""Load and validate ``ossec-dfir.yml``: every error at once, with key and line.

The shipped ``etc/ossec-dfir.yml`` holds every default; the package carries
the same file (``ossec_dfir/default-config.yml``). A user's file is merged over
it: top-level keys replace, ``collectors.<name>`` maps merge, a profile of the
same name replaces the shipped one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from . import trust
from .errors import ConfigError
# The AR entry point's part (no dataclasses, no YAML): settings.py.
from .settings import (CONFIG_NAME, DEFAULT_AR_TIMEOUT_S, DEFAULT_CONFIG, ENV_CONFIG,
    EXPECT_VALUES, Response, Settings, config_path_for, ossec_dir_of_script)

__all__ = ["CONFIG_NAME", "DEFAULT_CONFIG", "ENV_CONFIG", "EXPECT_VALUES", "Config", "Profile",
           "Response", "Retention", "Settings", "Step", "config_path_for", "load",
           "ossec_dir_of_script", "timeout_notes", "validate"]

_TOP_KEYS = {
    "evidence_root": (str, type(None)), "log_file": (str, type(None)),
    "grouping_window_s": (int, float), "reserve_bytes": (int,), "max_workers": (int,), "max_captures": (int,),
    "queue_max_age_s": (int, float), "check_keys": (bool,), "check_keys_timeout_s": (int, float),
    "outcome_linger_s": (int, float), "ship": (list, type(None)), "findings_max_lines": (int,),
    "binaries": (dict,), "collectors": (dict,), "profiles": (dict,), "retention": (dict,),
}
_STEP_KEYS = {"collector", "params", "background"}
_PROFILE_KEYS = {"description", "steps", "stateful", "expect", "ar_timeout_s"}
MAX_AR_TIMEOUT_S = 30 * 86400


@dataclass(frozen=True)
class Step:
    """One collector run of a profile, with its parameters."""

    collector: str
    params: Any  # the collector's frozen Params
    background: bool = False


@dataclass(frozen=True)
class Profile:
    """What one AR command runs, in order."""

    name: str
    description: str
    steps: tuple[Step, ...]
    stateful: bool = True
    expect: str = "srcip"
    ar_timeout_s: int | None = DEFAULT_AR_TIMEOUT_S


@dataclass(frozen=True)
class Retention:
    """The retention block: what ``ossec-dfir prune`` deletes, and whether workers prune."""

    enabled: bool = False
    incident_age_days: float = 90.0
    state_age_days: float = 7.0
    interval_s: float = 3600.0


_RETENTION_KEYS = {"enabled": (bool,), "incident_age_days": (int, float),
                   "state_age_days": (int, float), "interval_s": (int, float)}


def _retention(raw: Any, where: Callable[[str], str], grouping_window_s: Any,
               problems: list[str]) -> Retention:
    """Validate the retention block; append problems; return the block (defaults on error)."""
    if not isinstance(raw, dict):
        return Retention()
    for key, value in raw.items():
        types = _RETENTION_KEYS.get(key)
        if types is None:
            problems.append(f"{where('retention.' + str(key))}: unknown key "
                            f"(known: {', '.join(sorted(_RETENTION_KEYS))})")
        elif not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            problems.append(f"{where('retention.' + key)}: wrong type {type(value).__name__}")
        elif key != "enabled" and value <= 0:
            problems.append(f"{where('retention.' + key)}: must be positive")
    try:
        policy = Retention(**{k: raw[k] for k in _RETENTION_KEYS if k in raw})
        window = float(grouping_window_s if isinstance(grouping_window_s, (int, float)) else 3600)
        if policy.incident_age_days * 86400 <= window:
            problems.append(f"{where('retention.incident_age_days')}: must be longer than "
                            "grouping_window_s (a trigger could still join the incident)")
        return policy
    except TypeError:
        return Retention()


@dataclass(frozen=True)
class Config(Settings):
    """The validated configuration: the Settings fields (same names, order and defaults), then the rest."""

    evidence_root: str
    log_file: str
    ossec_dir: str
    grouping_window_s: float = 3600.0
    reserve_bytes: int = 1 << 30
    max_workers: int = 4
    max_captures: int = 16
    queue_max_age_s: float = 3600.0
    check_keys: bool = True
    check_keys_timeout_s: float = 5.0
    outcome_linger_s: float = 600.0
    source: str = ""
    responses: dict[str, Response] = field(default_factory=dict)
    findings_max_lines: int = 20
    binaries: dict[str, str] = field(default_factory=dict)
    collectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    retention: Retention = field(default_factory=Retention)
    ship: tuple[Any, ...] = ()  # ship.targets.Target, validated by _ship_targets

    def profile(self, name: str) -> Profile:
        """Return the profile for an AR command name or raise ConfigError."""
        if name not in self.profiles:
            raise ConfigError([f"profiles: no profile named {name!r} "
                               f"(defined: {', '.join(sorted(self.profiles))})"], self.source)
        return self.profiles[name]

    def settings(self) -> Settings:
        """Return the Settings part (what the AR entry point reads) of this configuration."""
        return Settings(**{name: getattr(self, name) for name in Settings.FIELDS})


def _line_map(text: str) -> dict[str, int]:
    """Map dotted key paths of a YAML document to 1-based line numbers."""
    import yaml  # lazily: the AR hot path reads the checked cache (configcache.py)

    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return lines

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for knode, vnode in node.value:
                path = f"{prefix}.{knode.value}" if prefix else str(knode.value)
                lines[path] = knode.start_mark.line + 1
                walk(vnode, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                path = f"{prefix}[{i}]"
                lines[path] = item.start_mark.line + 1
                walk(item, path)
    if root is not None:
        walk(root, "")
    return lines


def _read_yaml(path: str) -> tuple[dict[str, Any], str]:
    import yaml  # lazily: the AR hot path reads the checked cache (configcache.py)

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read(1 << 20)
    except OSError as err:
        raise ConfigError([f"cannot read: {err.strerror}"], path) from err
    except UnicodeDecodeError as err:
        raise ConfigError(["not UTF-8 text"], path) from err
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError([f"{where}not valid YAML ({getattr(err, 'problem', err)})"],
                          path) from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping"], path)
    return data, text


def load(path: str | None, ossec_dir: str = "/var/ossec") -> Config:
    """Load, merge over the defaults, and validate a config file (None: defaults only)."""
    defaults, default_text = _read_yaml(DEFAULT_CONFIG)
    merged = dict(defaults)
    user_text = ""
    source = path or DEFAULT_CONFIG
    if path is not None:
        if not os.path.exists(path):
            raise ConfigError(["config file does not exist"], path)
        untrusted = trust.path_problems(path) if os.geteuid() == 0 else []
        if untrusted:
            # It names the binaries and directories root runs and reads: a file a
            # user can change (or a directory above it) would hand them root.
            raise ConfigError(["running as root, the config file and every directory above it "
                               "must be owned by root and writable by nobody else"] +
                              untrusted, path)
        user, user_text = _read_yaml(path)
        for key, value in user.items():
            if key == "collectors" and isinstance(value, dict) and isinstance(
                    merged.get(key), dict):
                merged[key] = {**merged[key], **{
                    n: {**(merged[key].get(n) or {}), **(v or {})} if isinstance(v, dict) else v
                    for n, v in value.items()}}
            elif key == "profiles" and isinstance(value, dict) and isinstance(
                    merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    try:
        return validate(merged, source, ossec_dir)
    except ConfigError:
        # Only now (rarely) parse the texts again for the line of every problem.
        lines = {k: ("default", v) for k, v in _line_map(default_text).items()}
        lines.update({k: ("user", v) for k, v in _line_map(user_text).items()})
        return validate(merged, source, ossec_dir, lines)


def _response_keys(pdata: dict[str, Any], ppath: str, where: Callable[[str], str],
                   problems: list[str]) -> tuple[str, int | None]:
    """Validate a profile's expect and ar_timeout_s; return them (defaults on error).

    A response keyed by anything but the srcip has no timeout: OSSEC's execd
    keys its pending deletes on the script and the srcip, so every IP-less
    alert would collapse into the first one while its delete is pending.
    """
    expect = pdata.get("expect", "srcip")
    if expect not in EXPECT_VALUES:
        problems.append(f"{where(ppath + '.expect')}: must be one of {', '.join(EXPECT_VALUES)}")
        expect = "srcip"
    default_timeout = DEFAULT_AR_TIMEOUT_S if expect == "srcip" else None
    timeout = pdata.get("ar_timeout_s", default_timeout)
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)
                                or not 1 <= timeout <= MAX_AR_TIMEOUT_S):
        problems.append(f"{where(ppath + '.ar_timeout_s')}: must be null or an integer "
                        f"between 1 and {MAX_AR_TIMEOUT_S}")
        timeout = default_timeout
    if timeout is not None and expect != "srcip":
        problems.append(f"{where(ppath + '.ar_timeout_s')}: must be null with expect: {expect} "
                        "(execd keys pending deletes on the srcip: every alert without one "
                        "would join the first)")
        timeout = None
    return str(expect), timeout


def timeout_notes(config: Config) -> list[str]:
    """Return, per bound profile, the steps that would end before its AR delete comes.

    A capture of a response with a ``<timeout>`` should end on execd's delete
    (up to 90 s late, later when repeated alerts reset the timer), not on its own
    duration_s. Not an error: a short capture may be what the administrator wants.
    """
    notes = []
    for name, profile in sorted(config.profiles.items()):
        if profile.ar_timeout_s is None:
            continue
        for i, step in enumerate(profile.steps):
            why = step.params.ar_timeout_problem(profile.ar_timeout_s)
            if why:
                notes.append(f"profiles.{name}.steps[{i}].params: {why}")
    return notes


def _ship_targets(data: dict[str, Any], where: Callable[[str], str],
                  problems: list[str]) -> tuple[Any, ...]:
    """Validate the ``ship:`` list of targets (ship/targets.py); return the targets."""
    from .ship.targets import parse_targets

    targets, found = parse_targets(data.get("ship"))
    for problem in found:
        key, sep, rest = problem.partition(": ")
        problems.append(f"{where(key)}: {rest}" if sep else problem)
    return tuple(targets)


def validate(data: dict[str, Any], source: str, ossec_dir: str,
             lines: dict[str, tuple[str, int]] | None = None) -> Config:
    """Validate a merged config mapping; raise ConfigError listing every problem."""
    from .collectors.base import build_params, load_collectors

    lines = lines or {}
    problems: list[str] = []

    def where(path: str) -> str:
        origin = lines.get(path)
        if origin is None:
            return path
        return f"{path} (line {origin[1]}{' of the defaults' if origin[0] == 'default' else ''})"

    for key, value in data.items():
        if key not in _TOP_KEYS:
            problems.append(f"{where(key)}: unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
        elif not isinstance(value, _TOP_KEYS[key]) or isinstance(value, bool) and \
                bool not in _TOP_KEYS[key]:
            problems.append(f"{where(key)}: wrong type {type(value).__name__}")
    for key in ("grouping_window_s", "reserve_bytes", "queue_max_age_s", "check_keys_timeout_s",
                "outcome_linger_s"):
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            problems.append(f"{where(key)}: must not be negative")
    for key in ("max_workers", "max_captures"):
        value = data.get(key)
        if isinstance(value, int) and not 1 <= value <= 64:
            problems.append(f"{where(key)}: must be between 1 and 64")
    value = data.get("findings_max_lines")
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 1000:
        problems.append(f"{where('findings_max_lines')}: must be between 0 and 1000")
    for key in ("evidence_root", "log_file"):
        value = data.get(key)
        if isinstance(value, str) and not os.path.isabs(value):
            problems.append(f"{where(key)}: must be an absolute path")

    binaries = data.get("binaries") or {}
    if isinstance(binaries, dict):
        for name, path in binaries.items():
            if not isinstance(path, str) or not os.path.isabs(path):
                problems.append(f"{where('binaries.' + str(name))}: must be an absolute path")
            elif os.geteuid() == 0 and os.path.lexists(path):
                problems += [f"{where('binaries.' + str(name))}: {p} (root would run it)"
                             for p in trust.path_problems(path)]

    registry = load_collectors()
    collectors = data.get("collectors") or {}
    if isinstance(collectors, dict):
        for name, values in collectors.items():
            if name not in registry:
                problems.append(f"{where('collectors.' + str(name))}: unknown collector "
                                f"(known: {', '.join(sorted(registry))})")
            elif values is not None and not isinstance(values, dict):
                problems.append(f"{where('collectors.' + name)}: must be a mapping")
            else:
                try:
                    build_params(registry[name], values or {}, f"{where('collectors.' + name)}.")
                except ConfigError as err:
                    problems.extend(err.problems)

    retention = _retention(data.get("retention") or {}, where, data.get("grouping_window_s"),
                           problems)
    profiles: dict[str, Profile] = {}
    raw_profiles = data.get("profiles") or {}
    if isinstance(raw_profiles, dict):
        for pname, pdata in raw_profiles.items():
            ppath = f"profiles.{pname}"
            if not isinstance(pdata, dict) or not isinstance(pdata.get("steps"), list) \
                    or not pdata["steps"]:
                problems.append(f"{where(ppath)}: needs a non-empty 'steps' list")
                continue
            unknown = set(pdata) - _PROFILE_KEYS
            if unknown:
                problems.append(f"{where(ppath)}: unknown keys {sorted(unknown)}")
            steps = []
            for i, step in enumerate(pdata["steps"]):
                spath = f"{ppath}.steps[{i}]"
                if not isinstance(step, dict) or not isinstance(step.get("collector"), str):
                    problems.append(f"{where(spath)}: needs 'collector: <name>'")
                    continue
                if set(step) - _STEP_KEYS:
                    problems.append(f"{where(spath)}: unknown keys {sorted(set(step) - _STEP_KEYS)}")
                cname = step["collector"]
                if cname not in registry:
                    problems.append(f"{where(spath)}: unknown collector {cname!r} "
                                    f"(known: {', '.join(sorted(registry))})")
                    continue
                values = dict((collectors or {}).get(cname) or {}) if isinstance(
                    collectors, dict) else {}
                if step.get("params") is not None and not isinstance(step.get("params"), dict):
                    problems.append(f"{where(spath + '.params')}: must be a mapping")
                    continue
                values.update(step.get("params") or {})
                try:
                    params = build_params(registry[cname], values, f"{where(spath)}.params.")
                except ConfigError as err:
                    problems.extend(err.problems)
                    continue
                background = step.get("background", False)
                if not isinstance(background, bool):
                    problems.append(f"{where(spath + '.background')}: must be true or false")
                steps.append(Step(cname, params, bool(background)))
            expect, ar_timeout_s = _response_keys(pdata, ppath, where, problems)
            stateful = pdata.get("stateful", ar_timeout_s is not None)
            if not isinstance(stateful, bool):
                problems.append(f"{where(ppath + '.stateful')}: must be true or false")
            profiles[pname] = Profile(pname, str(pdata.get("description") or ""), tuple(steps),
                                      bool(stateful), expect, ar_timeout_s)
    ship = _ship_targets(data, where, problems)
    if problems:
        raise ConfigError(problems, source)
    evidence_root = data.get("evidence_root") or os.path.join(ossec_dir, "dfir")
    log_file = data.get("log_file") or os.path.join(ossec_dir, "logs", "active-responses.log")
    return Config(evidence_root=evidence_root, log_file=log_file, ossec_dir=ossec_dir,
                  grouping_window_s=float(data.get("grouping_window_s", 3600)),
                  reserve_bytes=int(data.get("reserve_bytes", 1 << 30)),
                  max_workers=int(data.get("max_workers", 4)),
                  max_captures=int(data.get("max_captures", 16)),
                  queue_max_age_s=float(data.get("queue_max_age_s", 3600)),
                  check_keys=bool(data.get("check_keys", True)),
                  check_keys_timeout_s=float(data.get("check_keys_timeout_s", 5)),
                  outcome_linger_s=float(data.get("outcome_linger_s", 600)),
                  findings_max_lines=int(data.get("findings_max_lines", 20)),
                  binaries=dict(binaries) if isinstance(binaries, dict) else {},
                  collectors=dict(collectors) if isinstance(collectors, dict) else {},
                  profiles=profiles, retention=retention, source=source, ship=ship,
                  responses={n: Response(n, p.stateful, p.expect, p.ar_timeout_s)
                             for n, p in profiles.items()})
