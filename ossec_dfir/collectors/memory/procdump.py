"""Dump a live process's memory as an ELF core file (readelf -l, gdb -c).

The process is read through ``/proc/PID/maps`` and ``/proc/PID/mem`` without
ptrace, so it keeps running (``stop=True`` freezes it with SIGSTOP for the
dump). The core holds one PT_LOAD per readable mapping and a PT_NOTE with
NT_PRPSINFO and NT_FILE. Registers are not captured (that would need ptrace).
Unreadable pages are zero-filled and listed as holes; a mapping beyond the
byte cap keeps its PT_LOAD with a shorter (possibly zero) p_filesz.
"""
from __future__ import annotations

import os
import signal
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .memread import PAGE, ChunkReader

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

PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
NT_PRPSINFO, NT_FILE = 3, 0x46494C45
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

    def skip_reason(self) -> str | None:
        """Return why this mapping is not dumped, or None when it is."""
        if "r" not in self.perms:
            return "not readable"
        if self.path in SKIP_PSEUDO:
            return "kernel pseudo mapping"
        if self.path.startswith("/dev/") and not self.path.startswith(DEVICE_OK_PREFIXES):
            return "device mapping"
        return None


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


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    name_z = name + b"\0"
    pad = lambda b: b + b"\0" * (-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name_z), len(desc), ntype) + pad(name_z) + pad(desc)


def _proc_text(pid: int, name: str, max_bytes: int = 1 << 20) -> bytes:
    with open(os.path.join(PROC, str(pid), name), "rb") as fh:
        return fh.read(max_bytes)


def _prpsinfo(pid: int) -> bytes:
    """Build the x86_64/aarch64 struct elf_prpsinfo from /proc/PID/stat and status."""
    state, ppid, pgrp, sid, nice, flags, comm = "R", 0, 0, 0, 0, 0, b""
    try:
        stat = _proc_text(pid, "stat").decode("ascii", "replace")
        comm = stat[stat.index("(") + 1:stat.rindex(")")].encode()[:16]
        rest = stat[stat.rindex(")") + 2:].split()
        state, ppid, pgrp, sid = rest[0], int(rest[1]), int(rest[2]), int(rest[3])
        flags, nice = int(rest[6]), int(rest[16])
    except (OSError, ValueError, IndexError):
        pass
    uid = gid = 0
    try:
        for line in _proc_text(pid, "status").decode("ascii", "replace").splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        args = _proc_text(pid, "cmdline", 80).replace(b"\0", b" ").strip()[:79]
    except OSError:
        args = b""
    sname = state[:1].encode() or b"R"
    zomb = b"\1" if sname == b"Z" else b"\0"
    state_num = "RSDTZW".find(state[:1]) if state[:1] in "RSDTZW" else 0
    return struct.pack("<ccccxxxxQIIiiii16s80s", bytes([state_num]), sname, zomb,
                       struct.pack("<b", max(-128, min(127, nice))), flags & (2**64 - 1),
                       uid, gid, pid, ppid, pgrp, sid, comm, args)


def _nt_file(mappings: list[Mapping]) -> bytes:
    files = [m for m in mappings if m.file_backed]
    head = struct.pack("<QQ", len(files), PAGE)
    table = b"".join(struct.pack("<QQQ", m.start, m.end, m.offset // PAGE) for m in files)
    names = b"".join(m.path.encode("utf-8", "surrogateescape") + b"\0" for m in files)
    return head + table + names


def _flags(perms: str) -> int:
    return (PF_R if "r" in perms else 0) | (PF_W if "w" in perms else 0) | \
        (PF_X if "x" in perms else 0)


def _stopped_state(pid: int) -> str:
    try:
        stat = _proc_text(pid, "stat").decode("ascii", "replace")
        return stat[stat.rindex(")") + 2:].split()[0]
    except (OSError, ValueError, IndexError):
        return "?"


def dump_process_core(ctx: Context, pid: int, name: str, max_bytes: int,
                      *, stop: bool = False) -> dict[str, Any]:
    """Write the memory of process pid as an ELF core ``<run_dir>/<name>``.

    ``max_bytes`` caps the memory bytes dumped (0: no cap). Returns a record:
    pid, file, size, sha256, segments, dumped_bytes, skipped mappings, holes
    (unreadable ranges, zero-filled), outcome ("complete", "partial" when
    capped, stopped or with holes, "failed" when the process could not be read)
    and reason. Process errors never raise; store errors (ReserveReached) do.
    With ``stop=True`` the process is stopped (SIGSTOP) during the dump and
    continued afterwards unless it was already stopped.
    """
    record: dict[str, Any] = {"pid": pid, "file": None, "outcome": "failed", "reason": None}
    try:
        maps_text = _proc_text(pid, "maps", 64 << 20).decode("utf-8", "surrogateescape")
        mem_fd = os.open(os.path.join(PROC, str(pid), "mem"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        record["reason"] = f"cannot read /proc/{pid}: {err.strerror or err}"
        return record
    resumed = False
    try:
        if stop and _stopped_state(pid) not in ("T", "t"):
            try:
                os.kill(pid, signal.SIGSTOP)
                resumed = True
            except OSError as err:
                record["reason"] = f"cannot stop pid {pid}: {err.strerror}"
        return _write_core(ctx, pid, name, max_bytes, maps_text, mem_fd, record)
    finally:
        os.close(mem_fd)
        if resumed:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass


def _write_core(ctx: Context, pid: int, name: str, max_bytes: int, maps_text: str,
                mem_fd: int, record: dict[str, Any]) -> dict[str, Any]:
    mappings = parse_maps(maps_text)
    readable = [m for m in mappings if m.skip_reason() is None]
    dumped = readable[:MAX_SEGMENTS]
    record["skipped_mappings"] = [
        {"start": hex(m.start), "end": hex(m.end), "perms": m.perms, "path": m.path,
         "why": m.skip_reason()} for m in mappings if m.skip_reason() is not None][:100]
    if not dumped:
        record["reason"] = f"pid {pid} has no readable mapping (exited or a kernel thread)"
        return record
    notes = _note(b"CORE", NT_PRPSINFO, _prpsinfo(pid)) + _note(b"CORE", NT_FILE,
                                                                  _nt_file(mappings))
    phnum = len(dumped) + 1
    note_off = EHDR_SIZE + PHDR_SIZE * phnum
    offset = note_off + len(notes)
    budget = max_bytes if max_bytes > 0 else None
    plan: list[tuple[Mapping, int, int]] = []  # mapping, file offset, file size
    truncated = len(readable) - len(dumped)
    for m in dumped:
        offset += -offset % PAGE
        filesz = m.size if budget is None else max(0, min(m.size, budget))
        if budget is not None:
            budget -= filesz
        truncated += filesz < m.size
        plan.append((m, offset, filesz))
        offset += filesz
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, EV_CURRENT, 0, 0,
                       b"\0" * 7, ET_CORE, host_machine(), EV_CURRENT, 0, EHDR_SIZE, 0, 0,
                       EHDR_SIZE, PHDR_SIZE, phnum, 64, 0, 0)
    phdrs = [struct.pack("<IIQQQQQQ", PT_NOTE, 0, note_off, 0, 0, len(notes), 0, 4)]
    phdrs += [struct.pack("<IIQQQQQQ", PT_LOAD, _flags(m.perms), off, m.start, 0, size,
                          m.size, PAGE) for m, off, size in plan]
    holes: list[list[int]] = []
    reader = ChunkReader(mem_fd)
    with ctx.writer(name, meta={"pid": pid, "format": "ELF core"}) as w:
        w.write(ehdr + b"".join(phdrs) + notes)
        stopped_by = None
        for m, off, size in plan:
            stopped_by = ctx.should_stop()
            if stopped_by is not None:
                break  # the file ends here; the headers say what is missing
            if off > w.size:
                w.write(b"\0" * (off - w.size))
            for data in reader.read(m.start, size, m.start, holes):
                w.write(data)
        dumped_bytes = sum(size for _, _, size in plan)
        reasons = []
        if truncated:
            reasons.append(f"max_bytes={max_bytes} reached ({truncated} segments cut)")
        if stopped_by:
            reasons.append(f"stopped: {stopped_by} (core truncated at {w.size} bytes)")
        if holes:
            reasons.append(f"{len(holes)} unreadable ranges zero-filled")
        w.meta.update({"segments": len(plan), "dumped_bytes": dumped_bytes,
                       "holes": [[hex(a), hex(b)] for a, b in holes[:MAX_HOLES_LISTED]],
                       "hole_bytes": sum(b - a for a, b in holes)})
        if truncated or stopped_by:
            w.mark_partial("; ".join(reasons))
    record.update({"file": w.relpath, "size": w.size, "sha256": w.sha256,
                   "segments": len(plan), "dumped_bytes": dumped_bytes,
                   "truncated_segments": truncated, "holes": w.meta["holes"],
                   "hole_bytes": w.meta["hole_bytes"],
                   "outcome": "partial" if truncated or stopped_by else "complete",
                   "reason": record["reason"] or ("; ".join(reasons) or None)})
    return record
