"""Collectors as plugins: declared parameters, limits, prerequisites and result.

A collector module in ``ossec_dfir/collectors/`` defines a frozen dataclass of
parameters (defaults included, units in the names: ``timeout_s``,
``max_bytes``) and a ``Collector`` subclass decorated with ``@register``. The
runner checks the prerequisites (``requires_root``, ``requires_any_binary``,
``requires_files`` and ``check()``) before running and records
``skipped: <reason>`` when one is unmet.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .. import trust
from ..errors import ConfigError, Skipped

if TYPE_CHECKING:
    from ..config import Config
    from ..ar.request import Request
    from ..evidence.store import EvidenceWriter, Incident

# Binaries are looked up only in these directories (never $PATH alone: execd's
# environment is inherited and may be anything).
BINARY_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")

# The modules that register collectors (each imports cheaply: heavy libraries
# are imported inside the collector that needs them).
COLLECTOR_MODULES = ("host", "pcap.collector", "triage.collector", "memory.collector",
                     "yara.collector", "files.collector")

OUTCOMES = ("complete", "partial", "failed", "skipped")
# Why a continuous collector (a capture) was told to stop (Context.should_stop).
DELETE_STOP = "delete received"
SHUTDOWN_STOP = "delete received: stopped by execd shutdown (ossec-control stop/restart)"
HAND_STOP = "stopped by hand (ossec-dfir stop)"


@dataclass(frozen=True)
class Params:
    """Base of every collector's parameters: the limits every collector has."""

    timeout_s: float = 300.0

    def ar_timeout_problem(self, ar_timeout_s: int | None) -> str | None:
        """Return why these parameters would end before the AR delete (None: they fit)."""
        return None


@dataclass
class Result:
    """What a collector run reports: an outcome, a reason and a summary."""

    outcome: str = "complete"
    reason: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def degrade(self, reason: str) -> None:
        """Turn a complete result into partial, keeping the first reason."""
        if self.outcome == "complete":
            self.outcome = "partial"
        if not self.reason:
            self.reason = reason


class Collector(abc.ABC):
    """Base class of collectors. Subclasses set the class attributes and run()."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params_type: ClassVar[type[Params]] = Params
    requires_root: ClassVar[bool] = False
    requires_any_binary: ClassVar[tuple[str, ...]] = ()
    requires_files: ClassVar[tuple[str, ...]] = ()
    # True for continuous collectors (a capture) that end on an AR ``delete``.
    stops_on_delete: ClassVar[bool] = False
    # CPU priority (nice increment) and I/O class: "idle", "best-effort" or "normal".
    nice: ClassVar[int] = 10
    ionice: ClassVar[str] = "best-effort"

    def check(self, ctx: Context, params: Params) -> str | None:
        """Return why this collector cannot run here (None when it can)."""
        return None

    @abc.abstractmethod
    def run(self, ctx: Context, params: Params) -> Result:
        """Collect evidence through ctx and return the result."""


REGISTRY: dict[str, type[Collector]] = {}
_LOADED = False


def register(cls: type[Collector]) -> type[Collector]:
    """Class decorator: add a collector to the registry by its name."""
    if not cls.name or cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"collector name missing or taken: {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


def load_collectors() -> dict[str, type[Collector]]:
    """Import every collector module and return the registry (cheap: heavy imports are lazy)."""
    global _LOADED
    if not _LOADED:
        for name in COLLECTOR_MODULES:
            importlib.import_module(f"{__package__}.{name}")
        _LOADED = True
    return REGISTRY


def get_collector(name: str) -> type[Collector]:
    """Return the collector class registered under name."""
    registry = load_collectors()
    if name not in registry:
        raise ConfigError([f"unknown collector {name!r} (known: {', '.join(sorted(registry))})"])
    return registry[name]


def build_params(cls: type[Collector], values: dict[str, Any], where: str = "") -> Params:
    """Build a collector's frozen params from defaults plus values, checking types."""
    problems: list[str] = []
    fields = {f.name: f for f in dataclasses.fields(cls.params_type)}
    kwargs: dict[str, Any] = {}
    defaults = cls.params_type()
    for key, value in (values or {}).items():
        if key not in fields:
            problems.append(f"{where}{key}: unknown parameter of collector {cls.name!r} "
                            f"(known: {', '.join(sorted(fields))})")
            continue
        default = getattr(defaults, key)
        coerced, error = _coerce(value, default)
        if error:
            problems.append(f"{where}{key}: {error}")
        else:
            kwargs[key] = coerced
    if problems:
        raise ConfigError(problems)
    params = cls.params_type(**kwargs)
    validate = getattr(params, "validate", None)
    if validate is not None:
        errors = validate()
        if errors:
            raise ConfigError([f"{where}{e}" for e in errors])
    return params


def _coerce(value: Any, default: Any) -> tuple[Any, str | None]:
    """Coerce a YAML value to the type of the parameter's default."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value, None
        return None, f"must be true or false, not {value!r}"
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return (value, None) if value >= 0 else (None, "must not be negative")
        return None, f"must be an integer, not {value!r}"
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (float(value), None) if value >= 0 else (None, "must not be negative")
        return None, f"must be a number, not {value!r}"
    if isinstance(default, str):
        if isinstance(value, str):
            return value, None
        return None, f"must be a string, not {value!r}"
    if isinstance(default, tuple):
        if isinstance(value, (list, tuple)) and all(
                isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            return tuple(value), None
        return None, f"must be a list of strings or numbers, not {value!r}"
    if default is None:
        return value, None
    return None, f"unsupported parameter type {type(default).__name__}"


def find_binary(name: str, configured: dict[str, str] | None = None) -> str | None:
    """Return an absolute path for a tool: the configured one or a fixed directory list.

    Run as root, a tool that a non-root user could change (trust.py) is never
    returned: it is as good as absent.
    """
    path = (configured or {}).get(name)
    candidates = [path] if path else [os.path.join(d, name) for d in BINARY_DIRS]
    for candidate in candidates:
        if os.path.isabs(candidate) and os.path.isfile(candidate) and \
                os.access(candidate, os.X_OK) and \
                (os.geteuid() != 0 or not trust.path_problems(candidate)):
            return candidate
    return None


def is_root() -> bool:
    """Return True when running with effective uid 0."""
    return os.geteuid() == 0


def unmet_prerequisite(cls: type[Collector], ctx: Context, params: Params) -> str | None:
    """Return the first unmet prerequisite of a collector as a reason, or None."""
    if cls.requires_root and not is_root():
        return f"needs root (running as uid {os.geteuid()})"
    if cls.requires_any_binary and not any(
            find_binary(b, ctx.config.binaries) for b in cls.requires_any_binary):
        return "needs one of the binaries " + ", ".join(cls.requires_any_binary) + \
            " (looked in " + ":".join(BINARY_DIRS) + " and the config's binaries:)"
    for path in cls.requires_files:
        if not os.path.exists(path):
            return f"needs {path}, which does not exist on this host"
    return cls().check(ctx, params)


class Context:
    """What a running collector may use: the request, the incident, limits, writers."""

    def __init__(self, *, config: Config, request: Request, incident: Incident,
                 collector: str, run_dir: str, params: Params, deadline: float,
                 stop_check: Any = None) -> None:
        self.config = config
        self.request = request
        self.incident = incident
        self.collector = collector
        self.run_dir = run_dir
        self.params = params
        self.deadline = deadline
        self._stop_check = stop_check
        self.terminated = False
        self.notes: list[str] = []
        self.files: list[str] = []
        # A continuous collector's capture slot (ar/slots.py: held, or waited for with
        # wait(stop); claim_waiter() and release() to yield it), set by the runner.
        self.capture_slot: Any = None

    # -- time and stopping --------------------------------------------------
    def time_left(self) -> float:
        """Return the seconds left before this collector's timeout."""
        return self.deadline - time.monotonic()

    def should_stop(self) -> str | None:
        """Return why the collector must stop now (timeout, delete, signal) or None."""
        if self.terminated:
            return "terminated by signal"
        if time.monotonic() >= self.deadline:
            return f"timeout_s={self.params.timeout_s} reached"
        if self._stop_check is not None:
            return self._stop_check()
        return None

    # -- evidence -----------------------------------------------------------
    def writer(self, name: str, meta: dict[str, Any] | None = None) -> EvidenceWriter:
        """Open a new evidence file ``<run_dir>/<name>`` through the incident store."""
        w = self.incident.writer(self.collector, f"{self.run_dir}/{name}",
                                 params=dataclasses.asdict(self.params), meta=meta)
        self.files.append(w.relpath)
        return w

    def write_bytes(self, name: str, data: bytes, meta: dict[str, Any] | None = None) -> str:
        """Write one whole evidence file and return its sha256."""
        with self.writer(name, meta) as w:
            w.write(data)
        return w.sha256

    def write_json(self, name: str, obj: Any, meta: dict[str, Any] | None = None) -> str:
        """Write obj as pretty JSON into one evidence file; return its sha256.

        Host text that is not valid UTF-8 is escaped as ``\\xNN`` (evidence/text.py).
        """
        from ..evidence.text import json_doc
        return self.write_bytes(name, json_doc(obj), meta)

    def note(self, message: str) -> None:
        """Record a remark for the collector's manifest entry (e.g. a skipped item)."""
        if len(self.notes) < 1000:
            self.notes.append(message[:1000])

    def free_bytes(self) -> int:
        """Return the bytes that may still be written before the store's reserve."""
        return self.incident.store.free_bytes() - self.incident.store.reserve_bytes

    # -- tools --------------------------------------------------------------
    def binary(self, name: str) -> str | None:
        """Return the absolute path of a tool (config's binaries:, then fixed dirs)."""
        return find_binary(name, self.config.binaries)

    def run_tool(self, argv: list[str], timeout_s: float | None = None,
                 max_output_bytes: int = 16 << 20) -> subprocess.CompletedProcess[bytes]:
        """Run a tool with an argv list (never a shell), bounded in time and output."""
        limit = self.time_left() if timeout_s is None else min(timeout_s, self.time_left())
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=max(limit, 0.1), check=False, close_fds=True,
                              env={"PATH": ":".join(BINARY_DIRS), "LC_ALL": "C"})
        proc.stdout = proc.stdout[:max_output_bytes]
        proc.stderr = proc.stderr[:max_output_bytes]
        return proc


def which_or_none(name: str) -> str | None:
    """Return shutil.which(name) restricted to BINARY_DIRS (for reports)."""
    return shutil.which(name, path=":".join(BINARY_DIRS))


__all__ = ["Collector", "Context", "Params", "Result", "Skipped", "register",
           "load_collectors", "get_collector", "build_params", "find_binary", "is_root"]
