"""Host memory image in LiME format from /proc/kcore, /dev/crash or /dev/mem.

LiME (what Volatility 3 and AVML read): for each physical range a 32-byte
header (magic 0x4C694D45, version 1, start and inclusive end physical address,
8 reserved bytes) followed by the range's bytes. One LiME range is written per
top-level "System RAM" range of /proc/iomem, cut into segments of at most
SEGMENT_BYTES, each with its own header written just before its bytes; bytes no
source segment covers and pages that cannot be read are zero-filled and reported
as holes. A stop (timeout, signal, evidence reserve) is taken only between two
segments, so an image cut short still has, for every header, exactly the bytes
it announces: Volatility opens it with what was read.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .memread import CHUNK_BYTES, ChunkReader, add_hole

# Roots of the kernel's pseudo filesystems: constants so tests can use fixtures.
PROC = "/proc"
DEV = "/dev"
SYS = "/sys"

LIME_MAGIC = 0x4C694D45
LIME_VERSION = 1
LIME_HEADER = struct.Struct("<IIQQ8x")
SOURCES = ("kcore", "crash", "mem")
# A kcore smaller than this cannot hold a RAM mapping (header only, or a stub).
MIN_KCORE_BYTES = 64 << 10
# Physical addresses below this are all /dev/mem serves under STRICT_DEVMEM.
STRICT_DEVMEM_LIMIT = 1 << 20
NO_PADDR = (0, 0xFFFFFFFFFFFFFFFF)
# Largest LiME segment: how far past a stop request the image may still read.
SEGMENT_BYTES = 16 << 20
PT_LOAD = 1


@dataclass(frozen=True)
class Piece:
    """Part of a RAM range: its physical start, length and source offset (None: hole)."""

    phys: int
    length: int
    offset: int | None


@dataclass
class Plan:
    """A usable source: its path and, per RAM range (start, inclusive end), the pieces."""

    source: str
    path: str
    ranges: list[tuple[int, int, list[Piece]]] = field(default_factory=list)

    @property
    def image_bytes(self) -> int:
        """Return the size of the LiME file this plan writes."""
        return sum(LIME_HEADER.size * -(-(end + 1 - start) // SEGMENT_BYTES) + end + 1 - start
                   for start, end, _ in self.ranges)

    @property
    def uncovered_bytes(self) -> int:
        """Return the RAM bytes no segment of the source covers."""
        return sum(p.length for _, _, pieces in self.ranges for p in pieces if p.offset is None)


def source_path(source: str) -> str:
    """Return the path of a source name (kcore, crash, mem)."""
    return os.path.join(PROC, "kcore") if source == "kcore" else os.path.join(DEV, source)


def parse_iomem(text: str) -> list[tuple[int, int]]:
    """Return the top-level "System RAM" ranges (start, inclusive end) of /proc/iomem."""
    out = []
    for line in text.splitlines():
        if line[:1].isspace() or ":" not in line:
            continue
        span, _, name = line.partition(":")
        if name.strip() != "System RAM":
            continue
        try:
            start_s, end_s = span.strip().split("-", 1)
            start, end = int(start_s, 16), int(end_s, 16)
        except ValueError:
            continue
        if end >= start:
            out.append((start, end))
    return sorted(out)


def read_ram_ranges() -> tuple[list[tuple[int, int]], str | None]:
    """Return the System RAM ranges, or a reason why they are unknown."""
    path = os.path.join(PROC, "iomem")
    try:
        with open(path, "rb") as fh:
            text = fh.read(4 << 20).decode("ascii", "replace")
    except OSError as err:
        return [], f"{path} not readable ({err.strerror}): container or WSL?"
    ranges = parse_iomem(text)
    if not ranges:
        return [], f"{path} lists no System RAM range"
    if all(start == 0 and end == 0 for start, end in ranges):
        return [], f"{path} shows zeroed addresses (not readable with CAP_SYS_ADMIN)"
    return ranges, None


def lockdown_mode() -> str | None:
    """Return the active kernel lockdown mode ("none", "integrity", ...) or None."""
    try:
        with open(os.path.join(SYS, "kernel", "security", "lockdown"), "rb") as fh:
            text = fh.read(256).decode("ascii", "replace")
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def elf_loads(fd: int) -> list[tuple[int, int, int]]:
    """Return (paddr, file offset, filesz) of the PT_LOADs of an ELF64 core; ValueError if bad."""
    head = os.pread(fd, 64, 0)
    if len(head) < 64 or head[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    if head[4] != 2 or head[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF")
    phoff, = struct.unpack_from("<Q", head, 32)
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    if phentsize < 56 or not phnum:
        raise ValueError(f"no usable program headers (phnum={phnum})")
    table = os.pread(fd, phentsize * phnum, phoff)
    if len(table) < phentsize * phnum:
        raise ValueError("program header table truncated")
    out = []
    for i in range(phnum):
        p_type, _f, off, _va, paddr, filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == PT_LOAD and paddr not in NO_PADDR and filesz:
            out.append((paddr, off, filesz))
    return sorted(out)


def map_ranges(ram: list[tuple[int, int]],
               segments: list[tuple[int, int, int]]) -> list[tuple[int, int, list[Piece]]]:
    """Cover each RAM range with pieces of (paddr, offset, size) segments; gaps are holes."""
    out = []
    for start, end in ram:
        pieces: list[Piece] = []
        pos = start
        for paddr, offset, size in segments:
            lo, hi = max(pos, paddr), min(end + 1, paddr + size)
            if lo >= hi:
                continue
            if lo > pos:
                pieces.append(Piece(pos, lo - pos, None))
            pieces.append(Piece(lo, hi - lo, offset + lo - paddr))
            pos = hi
        if pos <= end:
            pieces.append(Piece(pos, end + 1 - pos, None))
        out.append((start, end, pieces))
    return out


def _identity(ram: list[tuple[int, int]]) -> list[tuple[int, int, list[Piece]]]:
    return [(s, e, [Piece(s, e + 1 - s, s)]) for s, e in ram]


def probe(source: str, ram: list[tuple[int, int]], lockdown: str | None) -> tuple[Plan | None, str]:
    """Return (plan, "") when source can serve the RAM ranges, else (None, why not)."""
    path = source_path(source)
    if not os.path.exists(path):
        return None, f"{path} does not exist"
    if lockdown in ("integrity", "confidentiality") and (source != "kcore"
                                                         or lockdown == "confidentiality"):
        return None, f"{path} blocked by kernel lockdown={lockdown}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        return None, f"{path} cannot be opened ({err.strerror})"
    try:
        if source == "kcore":
            size = os.fstat(fd).st_size
            if size < MIN_KCORE_BYTES:
                return None, f"{path} is empty or tiny ({size} bytes)"
            try:
                ranges = map_ranges(ram, elf_loads(fd))
            except (ValueError, OSError) as err:
                return None, f"{path} is not a usable ELF core ({err})"
            plan = Plan(source, path, ranges)
            if plan.uncovered_bytes == sum(e + 1 - s for s, e in ram):
                return None, f"{path} has no PT_LOAD whose physical address covers System RAM"
            return plan, ""
        probe_at = next((max(s, STRICT_DEVMEM_LIMIT) for s, e in ram if e >= STRICT_DEVMEM_LIMIT),
                        ram[0][0])
        try:
            os.pread(fd, 16, probe_at)
        except OSError as err:
            why = "STRICT_DEVMEM limits it to the first 1 MiB" if source == "mem" else ""
            return None, f"{path} read at {probe_at:#x} refused ({err.strerror}) {why}".strip()
        return Plan(source, path, _identity(ram)), ""
    finally:
        os.close(fd)


def choose(order: tuple[str, ...]) -> tuple[Plan | None, dict[str, str]]:
    """Return the first source of order that can serve, and why the others cannot."""
    ram, why = read_ram_ranges()
    reasons: dict[str, str] = {}
    if why:
        return None, {s: why for s in order}
    lockdown = lockdown_mode()
    for source in order:
        plan, reason = probe(source, ram, lockdown)
        if plan is not None:
            return plan, reasons
        reasons[source] = reason
    return None, reasons


def segments(start: int, end: int, pieces: list[Piece],
             segment_bytes: int) -> list[tuple[int, list[Piece]]]:
    """Cut a RAM range [start, end] into (start, pieces) segments of at most segment_bytes."""
    out: list[tuple[int, list[Piece]]] = []
    pos = start
    while pos <= end:
        stop = min(end + 1, pos + segment_bytes)
        cut = []
        for p in pieces:
            lo, hi = max(pos, p.phys), min(stop, p.phys + p.length)
            if lo < hi:
                cut.append(Piece(lo, hi - lo, None if p.offset is None else p.offset + lo - p.phys))
        out.append((pos, cut))
        pos = stop
    return out


def write_lime(writer: Any, plan: Plan, should_stop: Callable[[], str | None],
               chunk_bytes: int = CHUNK_BYTES, room: Callable[[int], bool] | None = None,
               segment_bytes: int | None = None) -> dict[str, Any]:
    """Write the plan as LiME through an evidence writer; return segments, holes, stop reason.

    should_stop and room (room(n): may n more bytes be written?) are asked before
    each segment, never inside one: every header written is followed by all of
    the bytes its range announces, whenever the image stops.
    """
    holes: list[list[int]] = []
    seg_bytes = segment_bytes or SEGMENT_BYTES
    written = 0
    fd = os.open(plan.path, os.O_RDONLY | os.O_CLOEXEC)
    reader = ChunkReader(fd, chunk_bytes)
    try:
        for start, end, pieces in plan.ranges:
            for seg_start, cut in segments(start, end, pieces, seg_bytes):
                length = sum(p.length for p in cut)
                stopped = should_stop()
                if not stopped and room is not None and not room(LIME_HEADER.size + length):
                    stopped = "evidence reserve reached"
                if stopped:
                    return {"stopped": stopped, "holes": holes, "segments": written,
                            "next_address": seg_start}
                writer.write(LIME_HEADER.pack(LIME_MAGIC, LIME_VERSION, seg_start,
                                              seg_start + length - 1))
                for piece in cut:
                    if piece.offset is None:
                        add_hole(holes, piece.phys, piece.phys + piece.length)
                        chunks = reader.zeros(piece.length)
                    else:
                        chunks = reader.read(piece.offset, piece.length, piece.phys, holes)
                    for data in chunks:
                        writer.write(data)
                written += 1
    finally:
        os.close(fd)
    return {"stopped": None, "holes": holes, "segments": written, "next_address": None}
