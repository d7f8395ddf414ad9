"""Dump a live process's memory as an ELF core file (readelf -l, gdb -c).

The process is read through ``/proc/PID/maps`` and ``/proc/PID/mem``. Only
pages that exist are captured: present in RAM or in swap (``residency``), so a
huge mapping that was never touched costs nothing. Each readable mapping
becomes PT_LOADs covering all of it: one with the bytes for each run of
captured pages, one with ``p_filesz`` 0 for each run not captured (gdb reads
it as zeros, or from the mapped file); the ranges not captured are recorded
with the reason. Mappings on filesystems that a user process serves (FUSE,
network filesystems: ``mounts``) are never read. The PT_NOTE carries, per
thread, NT_PRSTATUS and NT_PRFPREG, then NT_PRPSINFO, NT_AUXV and NT_FILE
(``elfnotes``). With ``stop=True`` the threads are held by ``freeze`` (ptrace,
bounded by ``max_stop_s``, released even if this process is killed) so that
registers and memory agree. Unreadable pages are zero-filled and listed as
holes.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import elfnotes, freeze
from .memread import PAGE, ChunkReader
from .mounts import FsTypes
from .residency import Residency

if TYPE_CHECKING:
    from ..base import Context

# Root of procfs, a constant so tests can point it elsewhere.
PROC = "/proc"
MAX_HOLES_LISTED = 200
# e_phnum is 16 bits (PN_XNUM extension not used): at most this many PT_LOADs.
MAX_SEGMENTS = 0xFFFE
# Pseudo mappings never dumped (kernel data, not the process's memory).
SKIP_PSEUDO = frozenset({"[vvar]", "[vvar_vclock]", "[vsyscall]"})
# Device mappings are skipped (reading one may hang or have side effects),
# except these, which are ordinary shared memory.
DEVICE_OK_PREFIXES = ("/dev/zero", "/dev/shm/")
NOT_RESIDENT = "not resident (never touched, or file pages not in memory)"
OVER_BUDGET = "over max_bytes"

PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
NT_PRPSINFO, NT_FILE, NT_AUXV = elfnotes.NT_PRPSINFO, elfnotes.NT_FILE, elfnotes.NT_AUXV
ET_CORE, EV_CURRENT = 4, 1
EHDR_SIZE, PHDR_SIZE = 64, 56


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str

    @property
    def size(self) -> int:
        """Return the mapping's length in bytes."""
        return self.end - self.start

    @property
    def file_backed(self) -> bool:
        """Return True for a mapping of a file (inode set, absolute path)."""
        return self.inode != 0 and self.path.startswith("/")

    def skip_reason(self, fs: FsTypes | None = None) -> str | None:
        """Return why this mapping is not dumped, or None when it is."""
        if "r" not in self.perms:
            return "not readable"
        if self.path in SKIP_PSEUDO:
            return "kernel pseudo mapping"
        if self.path.startswith("/dev/") and not self.path.startswith(DEVICE_OK_PREFIXES):
            return "device mapping"
        return fs.skip_reason(self.dev, self.inode) if fs is not None else None


def parse_maps(text: str) -> list[Mapping]:
    """Parse the text of /proc/PID/maps into mappings (bad lines are ignored)."""
    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        try:
            start_s, end_s = parts[0].split("-", 1)
            out.append(Mapping(int(start_s, 16), int(end_s, 16), parts[1], int(parts[2], 16),
                               parts[3], int(parts[4]), parts[5] if len(parts) > 5 else ""))
        except ValueError:
            continue
    return out


def host_machine() -> int:
    """Return the ELF e_machine of this host (read from the running interpreter)."""
    try:
        with open("/proc/self/exe", "rb") as fh:
            head = fh.read(20)
        if head[:4] == b"\x7fELF":
            return struct.unpack_from("<H", head, 18)[0]
    except OSError:
        pass
    return 62  # EM_X86_64


def _proc_text(pid: int, name: str, max_bytes: int = 1 << 20) -> bytes:
    with open(os.path.join(PROC, str(pid), name), "rb") as fh:
        return fh.read(max_bytes)


def _flags(perms: str) -> int:
    return (PF_R if "r" in perms else 0) | (PF_W if "w" in perms else 0) | \
        (PF_X if "x" in perms else 0)


def _stopped_state(pid: int) -> str:
    try:
        stat = _proc_text(pid, "stat").decode("ascii", "replace")
        return stat[stat.rindex(")") + 2:].split()[0]
    except (OSError, ValueError, IndexError):
        return "?"


@dataclass
class Segment:
    """One PT_LOAD: a range of a mapping, captured (bytes in the core) or not."""

    mapping: Mapping
    start: int
    end: int
    filesz: int
    why_not: str | None = None  # for the part [start + filesz, end) not captured
    offset: int = 0


def _merge_runs(runs: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in runs:
        if out and lo - out[-1][1] <= gap:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _segments_of(m: Mapping, runs: list[tuple[int, int]]) -> list[Segment]:
    segs: list[Segment] = []
    pos = m.start
    for lo, hi in runs:
        lo, hi = max(lo, m.start), min(hi, m.end)
        if lo >= hi:
            continue
        if lo > pos:
            segs.append(Segment(m, pos, lo, 0, NOT_RESIDENT))
        segs.append(Segment(m, lo, hi, hi - lo))
        pos = hi
    if pos < m.end:
        segs.append(Segment(m, pos, m.end, 0, NOT_RESIDENT))
    return segs


def plan_segments(dumped: list[Mapping], residency: Residency) -> list[Segment]:
    """Return the PT_LOADs covering the mappings: captured runs and the gaps between them.

    When the runs would need more than MAX_SEGMENTS program headers, runs of a
    mapping separated by small gaps are joined (the gap is read as well),
    doubling the gap allowed until they fit.
    """
    runs = {m: residency.runs(m.start, m.end, m.offset, m.file_backed) for m in dumped}
    gap = 0
    while True:
        segs = [seg for m in dumped for seg in _segments_of(m, _merge_runs(runs[m], gap))]
        if len(segs) <= MAX_SEGMENTS or gap > (1 << 40):
            break
        gap = max(PAGE, gap * 2)
    return segs[:MAX_SEGMENTS]


def apply_cap(segs: list[Segment], cap: int | None) -> None:
    """Cut the captured bytes of segs to cap (whole pages; None: no cap)."""
    budget = None if cap is None else max(0, cap) // PAGE * PAGE
    for seg in segs:
        if budget is not None and seg.filesz > budget:
            seg.filesz, seg.why_not = budget, OVER_BUDGET
        if budget is not None:
            budget -= seg.filesz


def _threads(pid: int, frozen: list[elfnotes.Thread]) -> list[elfnotes.Thread]:
    """Return the process's threads (the main one first) with what is known of registers."""
    known = {t.tid: t for t in frozen}
    try:
        tids = sorted(int(t) for t in os.listdir(os.path.join(PROC, str(pid), "task"))
                      if t.isdigit())
    except OSError:
        tids = sorted(known)
    tids = sorted(set(tids) | set(known), key=lambda t: (t != pid, t))[:freeze.MAX_THREADS]
    out = []
    for tid in tids:
        thread = known.get(tid) or elfnotes.Thread(tid)
        if thread.regs is None:
            thread.regs = elfnotes.syscall_regs(pid, tid)
            thread.source = "syscall" if thread.regs else "none"
        out.append(thread)
    return out


def dump_process_core(ctx: Context, pid: int, name: str, max_bytes: int,
                      *, stop: bool = False, max_stop_s: float = freeze.MAX_STOP_S
                      ) -> dict[str, Any]:
    """Write the memory of process pid as an ELF core ``<run_dir>/<name>``.

    ``max_bytes`` caps the size of the core file (0: no cap). Returns a record:
    pid, file, size, sha256, segments, dumped_bytes, skipped mappings,
    not_captured ranges with bytes per reason, holes (unreadable ranges,
    zero-filled), threads and registers, stop, outcome ("complete", "partial"
    when capped or stopped, "failed" when the process could not be read) and
    reason. Process errors never raise; store errors (ReserveReached) do.
    With ``stop=True`` the threads are held by ptrace for at most max_stop_s.
    """
    record: dict[str, Any] = {"pid": pid, "file": None, "outcome": "failed", "reason": None}
    holder = freeze.Freeze(pid, max_stop_s) if stop else None
    try:
        frozen = holder.start() if holder is not None else []
        try:
            maps_text = _proc_text(pid, "maps", 64 << 20).decode("utf-8", "surrogateescape")
            mem_fd = os.open(os.path.join(PROC, str(pid), "mem"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            record["reason"] = f"cannot read /proc/{pid}: {err.strerror or err}"
            return record
        try:
            return _write_core(ctx, pid, name, max_bytes, maps_text, mem_fd, record, frozen,
                               holder)
        finally:
            os.close(mem_fd)
    finally:
        if holder is not None:
            record["stop"] = holder.release()
        else:
            record.setdefault("stop", {"enabled": False})


def _write_core(ctx: Context, pid: int, name: str, max_bytes: int, maps_text: str,
                mem_fd: int, record: dict[str, Any], frozen: list[elfnotes.Thread],
                holder: freeze.Freeze | None) -> dict[str, Any]:
    mappings = parse_maps(maps_text)
    fs = FsTypes(pid)
    reasons_by_map = {m: m.skip_reason(fs) for m in mappings}
    dumped = [m for m in mappings if reasons_by_map[m] is None]
    record["skipped_mappings"] = [
        {"start": hex(m.start), "end": hex(m.end), "perms": m.perms, "dev": m.dev,
         "path": m.path, "why": why} for m, why in reasons_by_map.items() if why][:100]
    if not dumped:
        record["reason"] = f"pid {pid} has no readable mapping (exited or a kernel thread)"
        return record
    residency = Residency(pid, ctx.should_stop)
    try:
        segs = plan_segments(dumped, residency)
    finally:
        residency.close()
    threads = _threads(pid, frozen)
    files = [(m.start, m.end, m.offset, m.path) for m in mappings if m.file_backed]
    notes = elfnotes.build(pid, threads, files)
    phnum = len(segs) + 1
    offset = EHDR_SIZE + PHDR_SIZE * phnum + len(notes)
    offset += -offset % PAGE
    # max_bytes caps the whole file: headers and notes count too
    apply_cap(segs, max_bytes - offset if max_bytes > 0 else None)
    for seg in segs:
        seg.offset = offset
        offset += seg.filesz
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, EV_CURRENT, 0, 0,
                       b"\0" * 7, ET_CORE, host_machine(), EV_CURRENT, 0, EHDR_SIZE, 0, 0,
                       EHDR_SIZE, PHDR_SIZE, phnum, 64, 0, 0)
    note_off = EHDR_SIZE + PHDR_SIZE * phnum
    phdrs = [struct.pack("<IIQQQQQQ", PT_NOTE, 0, note_off, 0, 0, len(notes), 0, 4)]
    phdrs += [struct.pack("<IIQQQQQQ", PT_LOAD, _flags(s.mapping.perms), s.offset, s.start, 0,
                          s.filesz, s.end - s.start, PAGE) for s in segs]
    holes: list[list[int]] = []
    reader = ChunkReader(mem_fd)
    meta: dict[str, Any] = {"pid": pid, "format": "ELF core"}
    with ctx.writer(name, meta=meta) as w:
        w.write(ehdr + b"".join(phdrs) + notes)
        stopped_by = None
        for seg in segs:
            if not seg.filesz:
                continue
            stopped_by = ctx.should_stop()
            if stopped_by is not None:
                break  # the file ends here; the headers say what is missing
            if seg.offset > w.size:
                w.write(b"\0" * (seg.offset - w.size))
            for data in reader.read(seg.start, seg.filesz, seg.start, holes):
                w.write(data)
        stop_info = holder.release() if holder is not None else {"enabled": False}
        out = _summary(segs, holes, threads, residency, stop_info, max_bytes, stopped_by, w.size)
        w.meta.update(out["meta"])
        if out["partial"]:
            w.mark_partial("; ".join(out["reasons"]))
    record.update(out["meta"])
    record.update({"file": w.relpath, "size": w.size, "sha256": w.sha256, "stop": stop_info,
                   "outcome": "partial" if out["partial"] else "complete",
                   "reason": record["reason"] or ("; ".join(out["reasons"]) or None)})
    return record


def _summary(segs: list[Segment], holes: list[list[int]], threads: list[elfnotes.Thread],
             residency: Residency, stop_info: dict[str, Any], max_bytes: int,
             stopped_by: str | None, size: int) -> dict[str, Any]:
    """Return the core's meta (what was and was not captured) and why it is partial."""
    not_captured: list[list[Any]] = []
    nc_bytes: dict[str, int] = {}
    for seg in segs:
        missing = seg.end - seg.start - seg.filesz
        if missing and seg.why_not:
            nc_bytes[seg.why_not] = nc_bytes.get(seg.why_not, 0) + missing
            if len(not_captured) < MAX_HOLES_LISTED:
                not_captured.append([hex(seg.start + seg.filesz), hex(seg.end), seg.why_not])
    cut = sum(1 for s in segs if s.why_not == OVER_BUDGET)
    reasons = []
    if cut:
        reasons.append(f"max_bytes={max_bytes} reached ({cut} segments cut)")
    if stopped_by:
        reasons.append(f"stopped: {stopped_by} (core truncated at {size} bytes)")
    if stop_info.get("ended_by") == "max_stop_s":
        reasons.append(f"process resumed after max_stop_s={stop_info.get('max_stop_s')} "
                       "before the core was complete")
    if holes:
        reasons.append(f"{len(holes)} unreadable ranges zero-filled")
    meta = {"segments": len(segs), "dumped_bytes": sum(s.filesz for s in segs),
            "mapped_bytes": sum(s.end - s.start for s in segs),
            "not_captured": not_captured, "not_captured_bytes": nc_bytes,
            "residency": sorted(residency.methods), "residency_errors": residency.errors[:10],
            "truncated_segments": cut,
            "holes": [[hex(a), hex(b)] for a, b in holes[:MAX_HOLES_LISTED]],
            "hole_bytes": sum(b - a for a, b in holes),
            "threads": [{"tid": t.tid, "registers": t.source} for t in threads[:100]],
            "thread_count": len(threads)}
    partial = bool(cut or stopped_by or stop_info.get("ended_by") == "max_stop_s")
    return {"meta": meta, "reasons": reasons, "partial": partial}
