"""triage: a live snapshot of processes, open files, network, sessions and the suspects.

Order of volatility: the socket tables are read first, then every process
(with its descriptors, which name the owners of each socket), then the rest.
Writes into ``triage/<NN>/`` one JSON-lines file per kind:
``processes.jsonl``, ``open_files.jsonl``, ``connections.jsonl``,
``unix_sockets.jsonl``, ``suspects.jsonl``, ``interfaces.jsonl``,
``routes.jsonl``, ``neighbours.jsonl``, ``users.jsonl``, ``auth_log.jsonl``,
``modules.jsonl``, ``mounts.jsonl``, ``exe_hashes.jsonl``, then
``system.json`` (clock, kernel taint, resolver, auth log source) and
``summary.json`` (counts, problems, suspects, the hash budget, timings). A
process that vanishes or refuses a field is recorded on its own record and the
snapshot goes on; the time budget (``timeout_s``) and the caps of every file
(``max_records`` records, ``max_file_bytes`` bytes) end it early, partial.

Every process is listed before any executable is hashed: the hash phase
(hashes.py) comes last, in priority order (suspects, deleted, memfd, temp,
the rest), within ``hash_budget_s`` and ``hash_budget_bytes``.

Memory does not grow with what the host holds: records go to their files as
they are read (one process's descriptors at a time, see procs.py); what
stays for the later sections is bounded: a short summary per process (the
suspects' trees), the executables' identities for the hash phase, and at
most ``max_records`` socket owners (``_MAX_OWNERS`` per socket).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from ... import procfs as _procfs
from .. import suspects
from ..base import Collector, Context, Params, Result, register
from ...errors import ReserveReached, StoreError
from . import net
from . import system
from ...evidence import text as _text
from ...evidence.store import utc_iso
from . import procs as _procs
from .hashes import HashQueue
from .procs import ProcessReader, read_processes

_FLUSH_RECORDS = 512
_FLUSH_BYTES = 1 << 20
# Holders of one socket remembered (for its owners list); more are counted.
_MAX_OWNERS = 32
# A suspect's (and its tree's) command line kept in memory, in characters.
_SUMMARY_CMDLINE_CHARS = 1024
# One encoder for every record (json.dumps with options builds a new one per call).
# Keys keep the order the record was built in (pid, ppid, name first), which is stable.
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
# Processes remembered per net namespace, to read its sockets through one still running.
_NETNS_PIDS = 8
# Seconds of the time budget kept for the cheap sections and the summary.
_TAIL_RESERVE_S = 2.0


@dataclass(frozen=True)
class TriageParams(Params):
    """Parameters of the triage collector."""

    timeout_s: float = 120.0
    max_records: int = 200000
    max_fds_per_process: int = 4096
    max_file_bytes: int = 128 * 1024 * 1024
    open_files: bool = True
    exe_hash_max_bytes: int = 128 * 1024 * 1024
    hash_budget_s: float = 30.0
    hash_budget_bytes: int = 1024 * 1024 * 1024
    temp_dirs: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm")
    auth_logs: tuple[str, ...] = ("/var/log/auth.log", "/var/log/secure")
    auth_log_lines: int = 500
    auth_log_max_bytes: int = 1024 * 1024

    def validate(self) -> list[str]:
        """Return the problems of these parameters (empty when valid)."""
        problems = []
        if self.max_records < 1:
            problems.append("max_records must be at least 1")
        if self.max_fds_per_process < 1:
            problems.append("max_fds_per_process must be at least 1")
        if self.max_file_bytes < 4096:
            problems.append("max_file_bytes must be at least 4096")
        if self.hash_budget_s < 0 or self.hash_budget_bytes < 0:
            problems.append("hash_budget_s and hash_budget_bytes must not be negative")
        problems += [f"temp_dirs: {d!r} is not an absolute path" for d in self.temp_dirs
                     if not isinstance(d, str) or not d.startswith("/")]
        problems += [f"auth_logs: {p!r} is not an absolute path" for p in self.auth_logs
                     if not isinstance(p, str) or not p.startswith("/")]
        return problems


class JsonLines:
    """One JSON-lines evidence file capped in records and bytes, written in small batches."""

    def __init__(self, ctx: Context, name: str, max_records: int, max_bytes: int) -> None:
        self.name = name
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.count = 0
        self.bytes = 0
        self.dropped = 0
        self.cap: str | None = None  # the cap that dropped records
        self._buf: list[str] = []
        self._buf_bytes = 0
        self._writer = ctx.writer(name)

    def add(self, record: dict[str, Any]) -> bool:
        """Queue one record; return False (and count it dropped) past either cap."""
        if self.count >= self.max_records:
            self.cap = self.cap or f"max_records={self.max_records}"
            self.dropped += 1
            return False
        line = _ENCODER.encode(record)  # ASCII: one character per byte
        if "\\ud" in line:  # a host name with undecodable bytes: escaped (\xNN)
            line = _ENCODER.encode(_text.clean(record))
        if self.bytes + len(line) + 1 > self.max_bytes:
            self.cap = self.cap or f"max_file_bytes={self.max_bytes}"
            self.dropped += 1
            return False
        self._buf.append(line)
        self.count += 1
        self.bytes += len(line) + 1
        self._buf_bytes += len(line) + 1
        if len(self._buf) >= _FLUSH_RECORDS or self._buf_bytes >= _FLUSH_BYTES:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the queued records."""
        if self._buf:
            data = ("\n".join(self._buf) + "\n").encode("ascii", "backslashreplace")
            self._buf = []
            self._buf_bytes = 0
            self._writer.write(data)

    def close(self, partial_reason: str | None = None) -> None:
        """Flush and close, marking the file partial when records were dropped or cut."""
        try:
            self.flush()
        finally:
            if self.dropped:
                self._writer.mark_partial(f"{self.cap} reached; "
                                          f"{self.dropped} records not written")
            elif partial_reason:
                self._writer.mark_partial(partial_reason)
            self._writer.close()


class Snapshot:
    """The state of one triage run: output files, problems, what was collected."""

    def __init__(self, ctx: Context, params: TriageParams) -> None:
        self.ctx = ctx
        self.params = params
        self.result = Result()
        self.counts: dict[str, int] = {}
        self.problems: list[str] = []
        self.connections: list[dict[str, Any]] = []
        self.unix_sockets: list[dict[str, Any]] = []
        self.self_netns: int | None = None
        self.netns_pids: dict[int, list[int]] = {}  # a few pids per net namespace
        self.socket_owners: dict[int, list[tuple[int, int]]] = {}
        self.owners_kept = 0
        self.owners_not_kept = 0
        self.processes: dict[int, dict[str, Any]] = {}  # short summaries (suspects' trees)
        self.hash_queue = HashQueue()
        self.suspect_pids: set[int] = set()
        self.memory: dict[str, Any] = {}  # peak resident memory of the readers
        self.system: dict[str, Any] = {}
        self.stopped: str | None = None

    def lines(self, name: str) -> JsonLines:
        """Open one JSON-lines output file of this run."""
        return JsonLines(self.ctx, name, self.params.max_records, self.params.max_file_bytes)

    def write_all(self, name: str, records: list[dict[str, Any]]) -> None:
        """Write a whole list of records into one JSON-lines file."""
        out = self.lines(name)
        try:
            for rec in records:
                out.add(rec)
        finally:
            out.close()
        self.count(name, out)

    def count(self, name: str, out: JsonLines) -> None:
        """Record how many records a closed output file holds (and whether it was capped)."""
        self.counts[name.split(".")[0]] = out.count
        if out.dropped:
            self.result.degrade(f"{name}: {out.cap} reached ({out.dropped} records not "
                                "written)")

    def problem(self, text: str) -> None:
        """Record that one source could not be read (the run becomes partial)."""
        self.problems.append(text)
        self.result.degrade(text)

    def own_socket(self, inode: int, pid: int, fd: int) -> None:
        """Remember that (pid, fd) holds socket inode, within the owners' bounds."""
        held = self.socket_owners.get(inode)
        if self.owners_kept >= self.params.max_records or (held and len(held) >= _MAX_OWNERS):
            self.owners_not_kept += 1
            return
        if held is None:
            held = self.socket_owners[inode] = []
        held.append((pid, fd))
        self.owners_kept += 1

    def check_stop(self, margin_s: float = 0.0) -> str | None:
        """Return (and remember) why the snapshot must stop now."""
        if self.stopped is None:
            why = self.ctx.should_stop()
            if why is None and margin_s and self.ctx.time_left() < margin_s:
                why = f"timeout_s={self.params.timeout_s} nearly reached"
            self.stopped = why
        return self.stopped


@register
class TriageCollector(Collector):
    """Snapshot processes, open files, sockets, network, sessions, modules; find suspects."""

    name = "triage"
    description = ("Live triage: processes (with exe SHA-256), open files, sockets, "
                   "interfaces, routes, neighbours, users, modules, mounts, auth log, "
                   "and the processes talking to the srcip (suspects).")
    params_type = TriageParams
    nice = 0
    requires_files = ("/proc/self/stat",)

    def check(self, ctx: Context, params: Params) -> str | None:
        """Return why triage cannot run here: psutil missing or /proc not mounted."""
        try:
            import psutil  # noqa: F401
        except ImportError:
            return "needs the Python package psutil, which is not installed"
        if not os.path.isdir(os.path.join(_procfs.PROC, "1")):
            return f"{_procfs.PROC} shows no pid 1 (not a procfs mount)"
        return None

    def run(self, ctx: Context, params: Params) -> Result:
        """Write the snapshot files, the suspects and summary.json."""
        assert isinstance(params, TriageParams)
        snap = Snapshot(ctx, params)
        started = time.monotonic()
        timings: dict[str, float] = {}
        sections: list[tuple[str, Callable[[Snapshot], None]]] = [
            ("sockets", _sockets), ("processes", _processes), ("connections", _connections),
            ("suspects", _suspects),
            ("network", _network), ("sessions", _sessions), ("system", _system),
            ("hashes", _hashes)]
        try:
            for name, section in sections:
                if name not in ("connections", "suspects", "hashes") and snap.check_stop():
                    snap.result.degrade(f"{snap.stopped}; sections not collected from {name}")
                    snap.problems.append(f"{name}: not collected ({snap.stopped})")
                    continue
                t0 = time.monotonic()
                try:
                    section(snap)
                except StoreError:
                    raise
                except Exception as err:  # one broken section must not lose the others
                    snap.problem(f"{name}: section failed: {type(err).__name__}: {err}")
                    ctx.note(traceback.format_exc(limit=3)[-900:])
                timings[name] = round(time.monotonic() - t0, 3)
        except ReserveReached as err:
            snap.result.degrade(str(err))
            snap.problems.append(str(err))
            return _finish(snap, timings, started, write=False)
        finally:
            snap.hash_queue.close()
        return _finish(snap, timings, started, write=True)


def _sockets(snap: Snapshot) -> None:
    """Read the socket tables of our net namespace first: the most volatile state."""
    snap.self_netns = net.net_namespace()
    snap.connections, snap.unix_sockets, problems = net.socket_tables()
    for p in problems:
        snap.problem(p)


def _processes(snap: Snapshot) -> None:
    import psutil

    params = snap.params
    reader = ProcessReader(max_fds_per_process=params.max_fds_per_process,
                           temp_dirs=params.temp_dirs, open_files=True)
    inet_by_inode = {c["inode"]: c for c in snap.connections if c["inode"]}
    procs_out = snap.lines("processes.jsonl")
    files_out = snap.lines("open_files.jsonl") if params.open_files else None
    denied_pids = vanished = zombies = exited_during = flagged = deleted_open = 0
    cut: str | None = None
    pids = psutil.pids()
    read = 0
    records = read_processes(reader, pids,
                             lambda: snap.check_stop(_TAIL_RESERVE_S) is not None,
                             snap.memory)
    try:
        for pid, rec, fd_records in records:
            read += 1
            vanished += bool(rec.get("vanished"))
            zombies += bool(rec.get("zombie"))
            exited_during += bool(rec.get("exited_during_read"))
            denied_pids += bool(rec.get("denied"))
            flagged += bool(rec.get("exe_deleted") or rec.get("exe_in_temp"))
            netns = (rec.get("namespaces") or {}).get("net")
            if netns is not None:
                holders = snap.netns_pids.setdefault(netns, [])
                if len(holders) < _NETNS_PIDS:
                    holders.append(pid)
            snap.processes[pid] = _summary(rec)
            exe_key = rec.pop("exe_key", None)  # for the hash phase, not the record
            if not procs_out.add(rec):
                cut = f"{procs_out.cap} reached"
                break
            snap.hash_queue.add(rec, exe_key)
            for fd_rec in fd_records:
                if fd_rec.get("kind") in ("deleted", "memfd"):
                    deleted_open += 1
                elif fd_rec.get("kind") == "socket":
                    snap.own_socket(fd_rec["inode"], pid, fd_rec["fd"])
                    conn = inet_by_inode.get(fd_rec["inode"])
                    if conn is not None:
                        fd_rec["socket"] = {k: conn[k] for k in (
                            "proto", "local_ip", "local_port", "remote_ip", "remote_port",
                            "status")}
                if files_out is not None:
                    files_out.add(fd_rec)
        if read < len(pids) and cut is None:
            cut = f"{snap.check_stop(_TAIL_RESERVE_S) or 'stopped'} after {read} processes"
            snap.result.degrade(cut)
    finally:
        records.close()  # ends the helper reader if we stopped early
        procs_out.close(cut)
        snap.count("processes.jsonl", procs_out)
        if files_out is not None:
            files_out.close(cut)
            snap.count("open_files.jsonl", files_out)
    # Exited processes (zombies that execd has not reaped yet, processes that
    # vanished mid-read) are counted, not problems: only denials make it partial.
    if snap.owners_not_kept:
        snap.problem(f"sockets: {snap.owners_not_kept} socket holders not kept (at most "
                     f"{_MAX_OWNERS} per socket, {params.max_records} in all)")
    snap.counts.update({"processes_vanished": vanished, "processes_zombie": zombies,
                        "processes_exited_during_read": exited_during,
                        "processes_with_denied_fields": denied_pids,
                        "processes_exe_flagged": flagged,
                        "open_files_deleted_or_memfd": deleted_open})
    if denied_pids:
        snap.problem(f"processes: {denied_pids} processes with fields not readable "
                     f"(uid {os.geteuid()}); see their 'denied' lists")


def _connections(snap: Snapshot) -> None:
    """Add the sockets of the other net namespaces, map owners, write the socket files."""
    namespaces = {snap.self_netns}
    for netns, pids in sorted(snap.netns_pids.items()):
        if netns in namespaces:
            continue
        namespaces.add(netns)
        for pid in pids:  # a process that exited since the walk: read through the next one
            inet, unix, problems = net.socket_tables(pid)
            if not problems or _procs.final_state(pid) == "running":
                break
        snap.connections += inet
        snap.unix_sockets += unix
        snap.problems += [f"net namespace {netns} (via pid {pid}): {p}" for p in problems]
    net.attach_owners(snap.connections, snap.socket_owners)
    net.attach_owners(snap.unix_sockets, snap.socket_owners)
    snap.write_all("connections.jsonl", snap.connections)
    snap.write_all("unix_sockets.jsonl", snap.unix_sockets)
    snap.counts["listening"] = sum(1 for c in snap.connections if c["listening"])
    snap.counts["net_namespaces"] = len(namespaces - {None})
    unknown = sum(1 for c in snap.connections if c["pid"] is None and c["inode"])
    if unknown and os.geteuid() != 0:
        snap.problem(f"sockets: owner unknown for {unknown} inet sockets "
                     f"(not root: uid {os.geteuid()})")


def _suspects(snap: Snapshot) -> None:
    srcip = snap.ctx.request.srcip
    why_not = suspects.srcip_problem(srcip)
    records = [] if why_not else suspects.suspects_in(
        snap.processes, snap.connections, srcip, exclude_pids={os.getpid()})
    pids = [r["pid"] for r in records if r["pid"] is not None]
    snap.suspect_pids = set(pids)
    snap.system["suspects_status"] = why_not or (
        f"{len(pids)} processes with a connection to or from {srcip}"
        + ("; some sockets with it have no known owner" if len(pids) < len(records) else ""))
    snap.write_all("suspects.jsonl", records)
    snap.result.summary["suspects"] = pids[:100]
    snap.result.summary["suspects_status"] = snap.system["suspects_status"]


def _network(snap: Snapshot) -> None:
    ip_binary = snap.ctx.binary("ip")

    def run_ip(args: list[str]) -> tuple[str | None, str | None]:
        try:
            proc = snap.ctx.run_tool([ip_binary, *args], timeout_s=10.0,
                                     max_output_bytes=8 << 20)
        except (OSError, ValueError) as err:
            return None, f"ip: {err}"
        except subprocess.TimeoutExpired:
            return None, "ip: no answer within 10 s"
        if proc.returncode != 0:
            return None, f"ip exited {proc.returncode}: " + \
                proc.stderr.decode("utf-8", "replace").strip()[:200]
        return proc.stdout.decode("utf-8", "replace"), None

    for name, read in (("interfaces.jsonl", net.interfaces), ("routes.jsonl", net.routes),
                       ("neighbours.jsonl",
                        lambda: net.neighbours(run_ip if ip_binary else None))):
        records, problems = read()
        for p in problems:
            snap.problem(p)
        snap.write_all(name, records)
    snap.system["resolver"], problems = net.resolver()
    for p in problems:
        snap.problem(p)


def _sessions(snap: Snapshot) -> None:
    records, problems = system.users()
    for p in problems:
        snap.problem(p)
    snap.write_all("users.jsonl", records)
    params = snap.params
    lines, info, problems = system.auth_log_tail(params.auth_logs, params.auth_log_lines,
                                                 params.auth_log_max_bytes)
    # An absent or unreadable auth log is noted, not a partial snapshot.
    snap.problems += problems
    snap.system["auth_log"] = info
    snap.write_all("auth_log.jsonl", lines)


def _system(snap: Snapshot) -> None:
    snap.system["clock"] = system.clock()
    snap.system["kernel_taint"], problems = system.kernel_taint()
    for p in problems:
        snap.problem(p)
    for name, read in (("modules.jsonl", system.modules), ("mounts.jsonl", system.mounts)):
        records, problems = read()
        # A kernel without loadable modules is a fact of the host, not a failure.
        snap.problems += [p for p in problems if "does not exist" in p]
        for p in problems:
            if "does not exist" not in p:
                snap.problem(p)
        snap.write_all(name, records)


def _hashes(snap: Snapshot) -> None:
    """Hash the listed processes' executables by priority, within the hash budget."""
    params = snap.params
    out = snap.lines("exe_hashes.jsonl")
    try:
        budget = snap.hash_queue.run(
            snap.suspect_pids, out.add, budget_s=params.hash_budget_s,
            budget_bytes=params.hash_budget_bytes, max_file_bytes=params.exe_hash_max_bytes,
            deadline=snap.ctx.deadline - _TAIL_RESERVE_S / 2)
    finally:
        out.close()
        snap.count("exe_hashes.jsonl", out)
    snap.system["hash_budget"] = budget
    snap.counts.update({"exe_hashed": budget["hashed"], "exe_not_hashed": budget["not_hashed"]})
    if budget["ran_out"]:
        snap.problem(f"exe hashes: the hash budget ran out ({budget['ran_out']}): "
                     f"{budget['not_hashed']} processes not hashed; see exe_hashes.jsonl")


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    """Return what the suspects' records need of a process, its command line cut."""
    out = {k: rec.get(k) for k in ("pid", "ppid", "name", "exe", "username", "create_time")}
    cmdline = rec.get("cmdline")
    if cmdline and sum(len(a) for a in cmdline) > _SUMMARY_CMDLINE_CHARS:
        kept, total = [], 0
        for arg in cmdline:
            kept.append(arg[:_SUMMARY_CMDLINE_CHARS - total])
            total += len(kept[-1])
            if total >= _SUMMARY_CMDLINE_CHARS:
                break
        out["cmdline"] = kept
        out["cmdline_cut"] = "whole command line in processes.jsonl"
    else:
        out["cmdline"] = cmdline
    return out


def _finish(snap: Snapshot, timings: dict[str, float], started: float, write: bool) -> Result:
    result = snap.result
    if snap.ctx.request.srcip is not None and not result.summary.get("suspects"):
        refused = suspects.srcip_problem(snap.ctx.request.srcip)
        if refused:  # the srcip policy said no: the step's reason says why
            result.reason = f"{result.reason}; {refused}" if result.reason else refused
    taint = snap.system.get("kernel_taint") or {}
    summary = {"collected": utc_iso(time.time()), "uid": os.geteuid(),
               "srcip": str(snap.ctx.request.srcip) if snap.ctx.request.srcip else None,
               "counts": snap.counts, "problems": snap.problems[:500],
               "stopped": snap.stopped, "timings_s": timings,
               "elapsed_s": round(time.monotonic() - started, 3),
               "suspects": result.summary.get("suspects", []),
               "suspects_status": result.summary.get("suspects_status"),
               "hash_budget": snap.system.get("hash_budget"),
               "memory": {"vm_hwm_kb": _procs.vm_hwm_kb(), **snap.memory},
               "kernel_tainted": taint.get("tainted"),
               "outcome": result.outcome, "reason": result.reason}
    if write:
        snap.ctx.write_json("system.json", snap.system)
        snap.ctx.write_json("summary.json", summary)
    result.summary.update({"counts": snap.counts, "elapsed_s": summary["elapsed_s"],
                           "problems": len(snap.problems)})
    return result
