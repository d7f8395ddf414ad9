"""The hash phase of triage: executables hashed after every process is listed, by priority.

Hashing costs what the executable's size costs (a sparse 128 MiB file reads
as 128 MiB of zeros), so it never stands between a process and its record in
``processes.jsonl``: the process walk only notes each executable's identity
(``exe_key``: device, inode, size, mtime, ctime) and queues it here. After
the other sections, the queue is hashed in priority order:

1. ``suspect``: a process talking to the srcip;
2. ``deleted``: its executable has no name left (unlinked or replaced);
3. ``memfd``: it runs from a memfd;
4. ``temp``: its executable lies below ``temp_dirs``;
5. ``other``: the rest, executables shared by more processes first, then
   smaller ones first (more processes covered per byte), then by pid.

Each executable (by ``exe_key``) is read once. A budget in time
(``hash_budget_s``, also bounded by the step's own deadline) and in bytes
(``hash_budget_bytes``) bounds the phase; when it runs out, every process
not hashed is still written to ``exe_hashes.jsonl`` with the reason, and the
summary names the budget. An executable larger than the bytes left is passed
over (the next, smaller ones may still fit); one larger than
``exe_hash_max_bytes`` is never read.

The executables of the flagged classes (deleted, memfd, temp) are opened
(``/proc/PID/exe``) as the walk lists them, up to ``MAX_HELD_FDS``: an
implant that exits before the hash phase is still hashed from its inode.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from ... import procfs

PRIORITIES = ("suspect", "deleted", "memfd", "temp", "other")
# Executables of flagged processes kept open from the walk to the hash phase.
MAX_HELD_FDS = 256
# Processes named in the summary as not hashed (all of them are in exe_hashes.jsonl).
MAX_NAMED = 100
_CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass
class Candidate:
    """One process whose executable is to be hashed."""

    pid: int
    exe: str | None
    key: tuple[int, ...] | None
    flag: str  # deleted, memfd, temp or other (suspect is decided at hash time)
    error: str | None = None  # why the executable's identity is unknown
    fd: int | None = None


def _key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class HashQueue:
    """The executables of the listed processes, waiting for the hash phase."""

    def __init__(self, max_held_fds: int = MAX_HELD_FDS) -> None:
        self.candidates: list[Candidate] = []
        self.max_held_fds = max_held_fds
        self.held = 0
        self.users: dict[tuple[int, ...], int] = {}  # processes per executable

    def add(self, rec: dict[str, Any], exe_key: list[int] | None) -> None:
        """Queue the executable of one listed process (kernel threads and exited ones not).

        exe_key is the identity the walk read (procs.py ``exe_key``), or None.
        """
        if rec.get("kernel_thread") or rec.get("vanished") or rec.get("zombie") \
                or "stat" in (rec.get("denied") or ()):
            return
        key = tuple(exe_key) if exe_key else None
        flag = ("deleted" if rec.get("exe_deleted") else "memfd" if rec.get("exe_memfd")
                else "temp" if rec.get("exe_in_temp") else "other")
        cand = Candidate(rec["pid"], rec.get("exe"), key, flag)
        if key is None:
            field = "exe" if rec.get("exe_link") is None else "exe_stat"
            why = "access denied" if field in (rec.get("denied") or ()) else \
                (rec.get("errors") or {}).get(field, "unknown")
            cand.error = f"executable not readable ({field}: {why})"
        else:
            self.users[key] = self.users.get(key, 0) + 1
            if flag != "other" and self.held < self.max_held_fds:
                cand.fd = _open_same(rec["pid"], key)
                self.held += cand.fd is not None
        self.candidates.append(cand)

    def close(self) -> None:
        """Close every executable still held open."""
        for cand in self.candidates:
            if cand.fd is not None:
                os.close(cand.fd)
                cand.fd = None
        self.held = 0

    def ordered(self, suspects: set[int]) -> list[tuple[str, Candidate]]:
        """Return (priority, candidate) in the order they are hashed."""
        def priority(c: Candidate) -> str:
            return "suspect" if c.pid in suspects else c.flag

        def sort_key(item: tuple[str, Candidate]) -> tuple[int, int, int, int]:
            name, c = item
            users = self.users.get(c.key, 0) if c.key else 0
            size = c.key[2] if c.key else 0
            if name == "other":
                return (PRIORITIES.index(name), -users, size, c.pid)
            return (PRIORITIES.index(name), 0, 0, c.pid)
        return sorted(((priority(c), c) for c in self.candidates), key=sort_key)

    def run(self, suspects: set[int], write: Callable[[dict[str, Any]], bool], *,
            budget_s: float, budget_bytes: int, max_file_bytes: int,
            deadline: float) -> dict[str, Any]:
        """Hash the queue in priority order, write one record per process; return the summary.

        write(record) writes one record of ``exe_hashes.jsonl``. deadline is
        a ``time.monotonic()`` value the phase never passes (the step's).
        """
        started = time.monotonic()
        until = min(started + budget_s, deadline)
        done: dict[tuple[int, ...], dict[str, Any]] = {}
        used = 0
        ran_out: str | None = None
        hashed = not_hashed = 0
        reasons: dict[str, int] = {}
        named: list[dict[str, Any]] = []
        try:
            for name, cand in self.ordered(suspects):
                rec: dict[str, Any] = {"pid": cand.pid, "exe": cand.exe, "priority": name}
                if cand.key is not None:
                    rec.update(exe_dev=cand.key[0], exe_inode=cand.key[1], exe_size=cand.key[2])
                result = done.get(cand.key) if cand.key else None
                if result is not None:
                    rec.update(result, cached=True)
                elif cand.error:
                    rec.update(exe_sha256=None, reason=cand.error)
                elif ran_out == "time" or time.monotonic() >= until:
                    ran_out = "time"
                    rec.update(exe_sha256=None, reason=f"hash_budget_s={budget_s} ran out"
                               + ("" if until < deadline else " (the step's timeout_s)"))
                elif cand.key is not None and cand.key[2] > max_file_bytes:
                    result = {"exe_sha256": None,
                              "reason": f"larger than exe_hash_max_bytes={max_file_bytes}"}
                    done[cand.key] = result
                    rec.update(result)
                elif cand.key is not None and used + cand.key[2] > budget_bytes:
                    ran_out = ran_out or "bytes"
                    rec.update(exe_sha256=None, reason=(
                        f"hash_budget_bytes={budget_bytes} ran out "
                        f"({budget_bytes - used} bytes left, executable {cand.key[2]} bytes)"))
                else:
                    result, read = _hash(cand, until)
                    used += read
                    if result.get("reason") == "time":
                        ran_out = "time"
                        result["reason"] = f"hash_budget_s={budget_s} ran out while reading"
                    elif cand.key is not None and result.get("exe_sha256"):
                        done[cand.key] = result
                    rec.update(result)
                if rec.get("exe_sha256"):
                    hashed += 1
                else:
                    not_hashed += 1
                    reason = str(rec.get("reason"))
                    reasons[reason] = reasons.get(reason, 0) + 1
                    if len(named) < MAX_NAMED:
                        named.append({"pid": cand.pid, "priority": name, "reason": reason})
                if not write(rec):
                    break
        finally:
            self.close()
        return {"budget_s": budget_s, "budget_bytes": budget_bytes, "bytes_read": used,
                "elapsed_s": round(time.monotonic() - started, 3), "processes": len(self.candidates),
                "hashed": hashed, "not_hashed": not_hashed, "ran_out": ran_out,
                "not_hashed_reasons": reasons, "not_hashed_first": named}


def _open_same(pid: int, key: tuple[int, ...]) -> int | None:
    """Open /proc/PID/exe when it is still the executable key names; None otherwise."""
    try:
        fd = os.open(procfs.path(pid, "exe"), _OPEN_FLAGS)
    except OSError:
        return None
    try:
        if _key(os.fstat(fd)) == key:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _hash(cand: Candidate, until: float) -> tuple[dict[str, Any], int]:
    """Return ({exe_sha256} or {exe_sha256: None, reason}, bytes read) for one executable."""
    fd = cand.fd
    cand.fd = None
    if fd is None:
        try:
            fd = os.open(procfs.path(cand.pid, "exe"), _OPEN_FLAGS)
        except OSError as err:
            text = procfs.error_text(err)
            return {"exe_sha256": None, "reason": "process exited before the hash phase"
                    if text == "process gone" else text}, 0
    read = 0
    try:
        st = os.fstat(fd)
        if _key(st) != cand.key:
            return {"exe_sha256": None, "reason": "executable changed since the process "
                    "was listed (pid reused, or the file rewritten)"}, 0
        digest = hashlib.sha256()
        while read < st.st_size:  # never past the size listed (a file still growing)
            if time.monotonic() >= until:
                return {"exe_sha256": None, "reason": "time"}, read
            chunk = os.pread(fd, min(_CHUNK, st.st_size - read), read)
            if not chunk:
                break
            read += len(chunk)
            digest.update(chunk)
        if read != st.st_size:
            return {"exe_sha256": None, "reason": f"read {read} bytes of {st.st_size}"}, read
        return {"exe_sha256": digest.hexdigest()}, read
    except OSError as err:
        return {"exe_sha256": None, "reason": procfs.error_text(err)}, read
    finally:
        os.close(fd)
