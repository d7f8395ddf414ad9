"""Process-memory half of the yara collector: pick processes, scan them, record matches.

libyara reads every readable mapping of a process through /proc/PID/mem. A
mapping of a file on a filesystem served by a user process (FUSE; see
``memory.mounts``) may never answer that read, so a process with such a
mapping is not handed to libyara: its other mappings are read here, page runs
that exist only (``memory.residency``), and scanned as data, the unsafe ones
skipped and counted in ``mappings_not_read``.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import rules as _yararules
from ..memory import residency as _residency
from ..memory.memread import ChunkReader
from ..memory.mounts import FsTypes
from ..memory.procdump import parse_maps

# Largest block handed to libyara at once when a process is read here.
DATA_BLOCK_BYTES = 16 << 20

# Where process information is read from (tests may point it elsewhere).
PROC = "/proc"


@dataclass
class ProcScan:
    """Counts of one process-memory scan."""

    scanned: int = 0
    matched: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)
    matched_pids: dict[int, str] = field(default_factory=dict)
    stopped: str | None = None
    seconds: float = 0.0
    mappings_not_read: int = 0
    not_read_examples: list[dict[str, Any]] = field(default_factory=list)
    suspects_status: str | None = None  # why no suspect was derived (the srcip policy)

    def skip(self, reason: str, pid: int) -> None:
        """Count one process skipped for reason."""
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(pid)

    def summary(self) -> dict[str, Any]:
        """Return the JSON summary of the scan."""
        return {"scanned": self.scanned, "matched": self.matched,
                "skipped": dict(sorted(self.skipped.items())),
                "skipped_examples": dict(sorted(self.examples.items())),
                "stopped": self.stopped, "seconds": round(self.seconds, 3),
                "mappings_not_read": self.mappings_not_read,
                "mappings_not_read_examples": self.not_read_examples,
                **({"suspects_status": self.suspects_status} if self.suspects_status else {})}


def own_lineage(pid: int | None = None) -> set[int]:
    """Return pid (default: ours) and all its ancestors up to init."""
    out: set[int] = set()
    current = pid or os.getpid()
    while current > 1 and current not in out:
        out.add(current)
        current = _ppid(current)
    return out


def _ppid(pid: int) -> int:
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as fh:
            data = fh.read()
        return int(data[data.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _is_kernel_thread(pid: int) -> bool:
    try:
        with open(f"{PROC}/{pid}/status", "rb") as fh:
            status = fh.read()
    except OSError:
        return False
    # Kernel threads have no user memory: no VmSize line.
    return b"\nVmSize:" not in status


def process_info(pid: int) -> dict[str, Any]:
    """Return pid, ppid, name, exe, cmdline, uid and start time of a process (best effort)."""
    import psutil
    info: dict[str, Any] = {"pid": pid}
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            info["ppid"] = proc.ppid()
            info["name"] = proc.name()
            info["create_time"] = proc.create_time()
            info["uids"] = list(proc.uids())
            try:
                info["username"] = proc.username()
            except (KeyError, psutil.Error):
                info["username"] = None
            for key, getter in (("exe", proc.exe), ("cmdline", proc.cmdline)):
                try:
                    info[key] = getter()
                except psutil.Error as err:
                    info[key] = None
                    info[f"{key}_error"] = type(err).__name__
    except psutil.Error as err:
        info["error"] = type(err).__name__
    cmdline = info.get("cmdline")
    if isinstance(cmdline, list):
        info["cmdline"] = [arg[:4096] for arg in cmdline[:256]]
    return info


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"{PROC}/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def select_pids(scope: str, srcip: Any, scan: ProcScan) -> list[int]:
    """Return the pids to scan ("all", or "suspects" of srcip), excluding our lineage."""
    import psutil
    if scope == "suspects":
        from ..suspects import live_suspects
        candidates, scan.suspects_status = live_suspects(srcip, "yara")
    else:
        candidates = sorted(psutil.pids())
    ours = own_lineage()
    out = []
    for pid in candidates:
        if pid in ours:
            scan.skip("self_or_ancestor", pid)
        elif pid == 2 or _is_kernel_thread(pid):
            scan.skip("kernel_thread", pid)
        else:
            out.append(pid)
    return out


def _scan_one(rules: Any, pid: int, timeout_s: int, max_bytes: int) -> tuple[str, Any]:
    """Scan one process; return ("match", matches), ("clean", None) or ("skip", reason)."""
    import yara
    if max_bytes and _rss_bytes(pid) > max_bytes:
        return "skip", "too_large"
    if not os.path.exists(f"{PROC}/{pid}"):
        return "skip", "vanished"
    unsafe = unsafe_mappings(pid)
    if unsafe:
        return _scan_safe_mappings(rules, pid, timeout_s, unsafe)
    try:
        matches = rules.match(pid=pid, timeout=max(1, timeout_s), externals={
            "filename": "", "filepath": "", "extension": "", "owner": ""})
    except yara.TimeoutError:
        return "skip", "yara_timeout"
    except yara.Error as err:
        text = str(err).lower()
        if not os.path.exists(f"{PROC}/{pid}"):
            return "skip", "vanished"
        if "access" in text or "permission" in text or "attach" in text:
            return "skip", "permission_denied"
        return "skip", "error"
    return ("match", matches) if matches else ("clean", None)


def unsafe_mappings(pid: int) -> list[dict[str, Any]]:
    """Return the readable mappings of pid that must not be read (user-served filesystems)."""
    try:
        with open(f"{PROC}/{pid}/maps", "rb") as fh:
            text = fh.read(64 << 20).decode("utf-8", "surrogateescape")
    except OSError:
        return []
    fs = FsTypes(pid)
    out = []
    for m in parse_maps(text):
        why = fs.skip_reason(m.dev, m.inode) if "r" in m.perms else None
        if why:
            out.append({"pid": pid, "start": hex(m.start), "end": hex(m.end), "dev": m.dev,
                        "path": m.path[:4096], "why": why})
    return out


def _scan_safe_mappings(rules: Any, pid: int, timeout_s: int,
                        unsafe: list[dict[str, Any]]) -> tuple[str, Any]:
    """Scan the mappings of pid that are safe to read, as data; skip the unsafe ones."""
    import yara
    skip = {(int(u["start"], 16), int(u["end"], 16)) for u in unsafe}
    try:
        with open(f"{PROC}/{pid}/maps", "rb") as fh:
            maps = parse_maps(fh.read(64 << 20).decode("utf-8", "surrogateescape"))
        mem_fd = os.open(f"{PROC}/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return "skip", "vanished"
    deadline = time.monotonic() + max(1, timeout_s)
    found: list[tuple[int, Any]] = []
    res = _residency.Residency(pid)
    reader = ChunkReader(mem_fd)
    try:
        for m in maps:
            if "r" not in m.perms or (m.start, m.end) in skip or m.skip_reason() is not None:
                continue
            for lo, hi in res.runs(m.start, m.end, m.offset, m.file_backed):
                for base in range(lo, hi, DATA_BLOCK_BYTES):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return "skip", "yara_timeout"
                    size = min(DATA_BLOCK_BYTES, hi - base)
                    data = b"".join(bytes(c) for c in reader.read(base, size, base, []))
                    try:
                        matches = rules.match(data=data, timeout=max(1, int(left)), externals={
                            "filename": "", "filepath": "", "extension": "", "owner": ""})
                    except yara.TimeoutError:
                        return "skip", "yara_timeout"
                    if matches:
                        found.append((base, matches))
    finally:
        res.close()
        os.close(mem_fd)
    return ("blocks", (found, unsafe)) if found else ("clean_partial", unsafe)


def scan_processes(ctx: Any, rules: Any, params: Any, writer: Any, budget: dict[str, int],
                   write_line: Any) -> ProcScan:
    """Scan process memory with rules, writing one JSON line per (process, rule) match."""
    scan = ProcScan()
    started = time.monotonic()
    pids = select_pids(params.process_scope, ctx.request.srcip, scan)
    threads = max(1, params.threads)
    with ThreadPoolExecutor(threads, thread_name_prefix="yara-pid") as pool:
        pending: list[tuple[int, Any]] = []
        index = 0
        while index < len(pids) or pending:
            reason = ctx.should_stop()
            while reason is None and index < len(pids) and len(pending) < threads * 2:
                timeout_s = int(min(params.process_timeout_s, max(ctx.time_left(), 1)))
                pending.append((pids[index], pool.submit(
                    _scan_one, rules, pids[index], timeout_s, params.max_process_bytes)))
                index += 1
            if reason is not None:
                scan.stopped = reason
                for pid in pids[index:]:
                    scan.skip("stopped_before_scan", pid)
                index = len(pids)
            if not pending:
                break
            pid, future = pending.pop(0)
            kind, value = future.result()
            if kind == "skip":
                scan.skip(value, pid)
                continue
            scan.scanned += 1
            blocks = [(0, value)] if kind == "match" else []
            if kind in ("blocks", "clean_partial"):
                found, unsafe = value if kind == "blocks" else ([], value)
                blocks = found
                scan.mappings_not_read += len(unsafe)
                for item in unsafe[:max(0, 20 - len(scan.not_read_examples))]:
                    ctx.note(f"pid {pid}: mapping {item['start']}-{item['end']} "
                             f"({item['path']!r}) not read: {item['why']}")
                room = 20 - len(scan.not_read_examples)
                scan.not_read_examples.extend(unsafe[:max(room, 0)])
            if not blocks:
                continue
            scan.matched += 1
            info = process_info(pid)
            scan.matched_pids[pid] = str(info.get("name") or "")
            for base, matches in blocks:
                for record in _yararules.match_records(matches, params.max_strings,
                                                       params.max_string_bytes):
                    for string in record["strings"]:
                        string["offset"] += base  # a virtual address, as libyara reports
                    write_line(writer, budget, {"type": "process", **info, **record})
    scan.seconds = time.monotonic() - started
    return scan
