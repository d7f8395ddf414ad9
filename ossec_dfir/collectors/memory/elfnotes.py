"""Build the PT_NOTE of a process core: what gdb needs besides the memory.

Per thread NT_PRSTATUS (registers) and NT_PRFPREG (floating point), then for
the process NT_PRPSINFO, NT_AUXV (so gdb relocates a position-independent
executable and finds the shared libraries) and NT_FILE, in the order the
kernel writes them: the first thread's notes first, the process notes after
its NT_PRSTATUS.
"""
from __future__ import annotations

import os
import platform
import struct
from dataclasses import dataclass

from .memread import PAGE

PROC = "/proc"

NT_PRSTATUS, NT_PRFPREG, NT_PRPSINFO, NT_AUXV = 1, 2, 3, 6
NT_FILE = 0x46494C45
# Size of elf_gregset_t (the registers PTRACE_GETREGSET NT_PRSTATUS returns).
GREGS_BYTES = {"x86_64": 27 * 8, "aarch64": 34 * 8}
# x86_64 user_regs_struct slots filled from /proc/PID/task/TID/syscall.
_X86_SYSCALL_SLOTS = {"orig_rax": 15, "rdi": 14, "rsi": 13, "rdx": 12, "r10": 7, "r8": 9,
                      "r9": 8, "rip": 16, "cs": 17, "rsp": 19, "ss": 20}


@dataclass
class Thread:
    """One thread of the dumped process: its id and what is known of its registers."""

    tid: int
    regs: bytes | None = None
    fpregs: bytes | None = None
    source: str = "none"  # "ptrace", "syscall" (pc and sp only) or "none"


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    """Return one ELF note (name and descriptor padded to 4 bytes)."""
    name_z = name + b"\0"
    return (struct.pack("<III", len(name_z), len(desc), ntype) + name_z +
            b"\0" * (-len(name_z) % 4) + desc + b"\0" * (-len(desc) % 4))


def read_proc(pid: int, name: str, max_bytes: int = 1 << 20) -> bytes:
    """Return up to max_bytes of /proc/<pid>/<name>."""
    with open(os.path.join(PROC, str(pid), name), "rb") as fh:
        return fh.read(max_bytes)


def _stat_fields(pid: int, tid: int | None = None) -> tuple[bytes, list[str]]:
    where = f"task/{tid}/stat" if tid else "stat"
    stat = read_proc(pid, where).decode("ascii", "replace")
    comm = stat[stat.index("(") + 1:stat.rindex(")")].encode()[:16]
    return comm, stat[stat.rindex(")") + 2:].split()


def prpsinfo(pid: int) -> bytes:
    """Build the 64-bit struct elf_prpsinfo from /proc/PID/stat, status and cmdline."""
    state, ppid, pgrp, sid, nice, flags, comm = "R", 0, 0, 0, 0, 0, b""
    try:
        comm, rest = _stat_fields(pid)
        state, ppid, pgrp, sid = rest[0], int(rest[1]), int(rest[2]), int(rest[3])
        flags, nice = int(rest[6]), int(rest[16])
    except (OSError, ValueError, IndexError):
        pass
    uid = gid = 0
    try:
        for line in read_proc(pid, "status").decode("ascii", "replace").splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        args = read_proc(pid, "cmdline", 80).replace(b"\0", b" ").strip()[:79]
    except OSError:
        args = b""
    sname = state[:1].encode() or b"R"
    zomb = b"\1" if sname == b"Z" else b"\0"
    state_num = "RSDTZW".find(state[:1]) if state[:1] in "RSDTZW" else 0
    return struct.pack("<ccccxxxxQIIiiii16s80s", bytes([state_num]), sname, zomb,
                       struct.pack("<b", max(-128, min(127, nice))), flags & (2**64 - 1),
                       uid, gid, pid, ppid, pgrp, sid, comm, args)


def prstatus(pid: int, thread: Thread) -> bytes:
    """Build the 64-bit struct elf_prstatus of one thread (ids, signals, times, registers)."""
    ppid = pgrp = sid = 0
    times = [0, 0]
    sigpend = sighold = 0
    try:
        _, rest = _stat_fields(pid, thread.tid)
        ppid, pgrp, sid = int(rest[1]), int(rest[2]), int(rest[3])
        tick = os.sysconf("SC_CLK_TCK")
        times = [int(rest[11]) * 1_000_000 // tick, int(rest[12]) * 1_000_000 // tick]
        for line in read_proc(pid, f"task/{thread.tid}/status").decode().splitlines():
            if line.startswith("SigPnd:"):
                sigpend = int(line.split()[1], 16)
            elif line.startswith("SigBlk:"):
                sighold = int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    gregs = GREGS_BYTES.get(platform.machine(), 0)
    regs = (thread.regs or b"")[:gregs].ljust(gregs, b"\0")
    head = struct.pack("<iiihxxQQiiii", 0, 0, 0, 0, sigpend, sighold, thread.tid, ppid,
                       pgrp, sid)
    tv = b"".join(struct.pack("<qq", t // 1_000_000, t % 1_000_000) for t in times)
    body = head + tv + bytes(32) + regs + struct.pack("<i", 1 if thread.fpregs else 0)
    return body + b"\0" * (-len(body) % 8)


def syscall_regs(pid: int, tid: int) -> bytes | None:
    """Return x86_64 registers (pc, sp, syscall and its arguments) of a blocked thread.

    Read from /proc/PID/task/TID/syscall, which the kernel fills for a thread
    sleeping in a system call; None when running or on another architecture.
    """
    if platform.machine() != "x86_64":
        return None
    try:
        fields = read_proc(pid, f"task/{tid}/syscall", 512).decode("ascii").split()
        values = [int(f, 0) & (2**64 - 1) for f in fields]
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if len(values) != 9:
        return None  # "running", or "-1 sp pc" (blocked outside a system call)
    slots = [0] * 27
    named = dict(zip(("orig_rax", "rdi", "rsi", "rdx", "r10", "r8", "r9", "rsp", "rip"), values))
    named.update(cs=0x33, ss=0x2B)
    for key, value in named.items():
        slots[_X86_SYSCALL_SLOTS[key]] = value
    return struct.pack("<27Q", *slots)


def auxv(pid: int) -> bytes:
    """Return /proc/PID/auxv (empty when unreadable)."""
    try:
        return read_proc(pid, "auxv", 8192)
    except OSError:
        return b""


def nt_file(files: list[tuple[int, int, int, str]]) -> bytes:
    """Build NT_FILE from (start, end, file offset, path) of the file-backed mappings."""
    head = struct.pack("<QQ", len(files), PAGE)
    table = b"".join(struct.pack("<QQQ", s, e, off // PAGE) for s, e, off, _ in files)
    names = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for _, _, _, p in files)
    return head + table + names


def build(pid: int, threads: list[Thread], files: list[tuple[int, int, int, str]]) -> bytes:
    """Return the note segment: thread 1 (PRSTATUS, process notes, FP), then the others."""
    process = (note(b"CORE", NT_PRPSINFO, prpsinfo(pid)) + note(b"CORE", NT_AUXV, auxv(pid)) +
               note(b"CORE", NT_FILE, nt_file(files)))
    if not threads:
        return process
    out = b""
    for i, thread in enumerate(threads):
        out += note(b"CORE", NT_PRSTATUS, prstatus(pid, thread))
        if i == 0:
            out += process
        if thread.fpregs:
            out += note(b"CORE", NT_PRFPREG, thread.fpregs)
    return out
