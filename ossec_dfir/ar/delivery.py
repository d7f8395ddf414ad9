"""Deliver outcome lines to the manager even across an OSSEC restart.

A line appended to active-responses.log reaches analysisd only when the
installation's logcollector holds the file open: during ``ossec-control
restart`` it is down, and it reopens the file at its end, so a line written
meanwhile is never read. ``write_outcome`` therefore checks for a running
logcollector of the installation that owns the log; when there is none, the
line is also kept in ``.state/outcomes/pending`` of the evidence store
(logcollector.py tells whether a logcollector reads the log). ``flush``
delivers kept lines again, marked ``redelivered=1``, once a logcollector
holds the log: the worker lingers for that (``linger``) and every AR
invocation tries too (``flush_pending``: one stat when nothing is pending).
A flusher claims the pending file by an atomic rename, so two flushers never
deliver the same line. Where no OSSEC or Wazuh install exists (no
``bin/*-logcollector``), nothing is ever kept.
"""
from __future__ import annotations

import contextlib
import os
import stat
import time

from ..settings import Settings
from ..errors import DfirError
from ..evidence import fs
from ..evidence.store import STATE_DIR, Store
from .logcollector import SETTLE_S, has_install, log_holder, settled_holder

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the AR hot path
    from typing import Callable

MAX_LINE_CHARS = 4096
PENDING_DIR = "outcomes"
PENDING = "pending"
CLAIMED_PREFIX = "claimed."
LOCK_NAME = "outcomes"
LINGER_LOCK = "outcomes-linger"
MAX_PENDING_LINES = 1000
MAX_PENDING_BYTES = 1 << 20
DROPPED_HEADER = "# dropped="
REDELIVERED = " redelivered=1"
POLL_S = 1.5


# -- the log file ------------------------------------------------------------
def append_line(log_file: str, line: str) -> bool:
    """Append one line (newlines flattened, bounded) to log_file; return True when written."""
    line = line.replace("\n", " ").replace("\r", " ")[:MAX_LINE_CHARS + len(REDELIVERED)]
    return _append_bytes(log_file, (line + "\n").encode("ascii", "backslashreplace"))


def _append_bytes(log_file: str, data: bytes) -> bool:
    """Append data to log_file, which must be a regular file (never a link, a FIFO, a
    device): the open never blocks (O_NONBLOCK), and anything else is refused."""
    try:
        os.makedirs(os.path.dirname(log_file), mode=0o750, exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW |
                     os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o640)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fs.write_all(fd, data)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


# -- the pending file ---------------------------------------------------------
def pending_path(evidence_root: str) -> str:
    """Return the path of the pending-lines file of a store."""
    return os.path.join(evidence_root, STATE_DIR, PENDING_DIR, PENDING)


def _read_lines(dfd: int, name: str) -> tuple[int, list[str]]:
    """Read a pending-lines file: (lines dropped so far, lines oldest first)."""
    fd = fs.open_read_at(dfd, name)
    with os.fdopen(fd, "rb") as fh:
        text = fh.read(MAX_PENDING_BYTES + MAX_LINE_CHARS * 2).decode("ascii", "replace")
    dropped, lines = 0, []
    for line in text.splitlines():
        if line.startswith(DROPPED_HEADER):
            with contextlib.suppress(ValueError):
                dropped += int(line[len(DROPPED_HEADER):])
        elif line.startswith("ossec-dfir: "):
            lines.append(line[:MAX_LINE_CHARS])
    return dropped, lines


def _bound(dropped: int, lines: list[str]) -> tuple[int, list[str]]:
    """Drop the oldest lines beyond the count and size bounds, counting them."""
    size = sum(len(x) + 1 for x in lines)
    while lines and (len(lines) > MAX_PENDING_LINES or size > MAX_PENDING_BYTES):
        size -= len(lines.pop(0)) + 1
        dropped += 1
    return dropped, lines


def _replace(dfd: int, dropped: int, lines: list[str]) -> None:
    """Write the pending file anew (atomically); the caller holds the lock."""
    tmp = f".{PENDING}.{os.getpid()}.{os.urandom(4).hex()}"
    body = (f"{DROPPED_HEADER}{dropped}\n" if dropped else "") + "".join(x + "\n" for x in lines)
    fd = fs.create_file_at(dfd, tmp, 0o600)
    try:
        fs.write_all(fd, body.encode("ascii", "backslashreplace"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, PENDING, src_dir_fd=dfd, dst_dir_fd=dfd)


def keep(store: Store, lines: list[str], dropped: int = 0) -> None:
    """Add lines (oldest first) to the pending file, within its bounds."""
    dfd = store.state_dir_fd(PENDING_DIR)
    try:
        with store.lock(LOCK_NAME):
            try:
                old_dropped, old = _read_lines(dfd, PENDING)
            except FileNotFoundError:
                old_dropped, old = 0, []
            total, kept = _bound(old_dropped + dropped, old + lines)
            if total == old_dropped and kept == old + lines and not dropped:
                fd = os.open(PENDING, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW |
                             os.O_CLOEXEC, 0o600, dir_fd=dfd)
                try:
                    fs.write_all(fd, "".join(x + "\n" for x in lines).encode(
                        "ascii", "backslashreplace"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                _replace(dfd, total, kept)
    finally:
        os.close(dfd)


def pending_lines(store: Store) -> tuple[int, list[str]]:
    """Return (dropped count, lines) waiting for delivery (for status and tests)."""
    dfd = store.state_dir_fd(PENDING_DIR)
    try:
        return _read_lines(dfd, PENDING)
    except FileNotFoundError:
        return 0, []
    finally:
        os.close(dfd)


def recover_claims(store: Store) -> int:
    """Put back the lines claimed by a flusher that died before delivering; return how many files."""
    from ..procfs import pid_alive

    dfd = store.state_dir_fd(PENDING_DIR)
    recovered = 0
    try:
        for name in os.listdir(dfd):
            pid_text = name[len(CLAIMED_PREFIX):].partition(".")[0]
            if not name.startswith(CLAIMED_PREFIX) or not pid_text.isdigit() or \
                    pid_alive(int(pid_text)):
                continue
            try:
                dropped, lines = _read_lines(dfd, name)
            except OSError:
                continue
            _put_back(store, dfd, name, dropped, lines)
            recovered += 1
    finally:
        os.close(dfd)
    return recovered


def _put_back(store: Store, dfd: int, claimed: str, dropped: int, lines: list[str]) -> None:
    """Return claimed lines to the front of the pending file and remove the claim."""
    with store.lock(LOCK_NAME):
        try:
            now_dropped, now = _read_lines(dfd, PENDING)
        except FileNotFoundError:
            now_dropped, now = 0, []
        total, kept = _bound(dropped + now_dropped, lines + now)
        _replace(dfd, total, kept)
        with contextlib.suppress(OSError):
            os.unlink(claimed, dir_fd=dfd)


# -- writing and delivering ---------------------------------------------------
def write_outcome(config: Settings, line: str, store: Store | None = None) -> bool:
    """Append an outcome line; keep it pending when no logcollector is reading the log.

    The line counts as read only when the same logcollector held the log
    before and after the write. Return True when the line reached the log file.
    """
    if not has_install(config.ossec_dir):
        return append_line(config.log_file, line)
    before = settled_holder(config.ossec_dir, config.log_file)
    written = append_line(config.log_file, line)
    if written and before is not None and \
            log_holder(config.ossec_dir, config.log_file, positioned=False) == before:
        return True
    try:
        _with_store(config, store, lambda st: keep(st, [line[:MAX_LINE_CHARS]]))
    except (OSError, DfirError):
        pass  # the line is in the log at least; nothing else can hold it
    return written


def _with_store(config: Settings, store: Store | None, action: Callable[[Store], int | None]
                ) -> int | None:
    if store is not None:
        return action(store)
    opened = Store(config.evidence_root, reserve_bytes=config.reserve_bytes,
                   grouping_window_s=config.grouping_window_s, create=False)
    try:
        return action(opened)
    finally:
        opened.close()


def dropped_note(count: int) -> str:
    """Return the line that tells how many kept outcome lines were dropped (bounds)."""
    return (f"ossec-dfir: outcome=dropped command=- srcip=- incident=- steps=- "
            f"manifest_sha256=- reason=\"{count} outcome lines written while logcollector "
            f"was down were dropped, oldest first (at most {MAX_PENDING_LINES} lines and "
            f"{MAX_PENDING_BYTES} bytes are kept)\"")


def flush(config: Settings, store: Store, settle_s: float = 0.0) -> int:
    """Deliver the pending lines once when a logcollector holds the log; return how many."""
    path = pending_path(store.root)
    if not os.path.lexists(path):
        return 0
    holder = settled_holder(config.ossec_dir, config.log_file, settle_s)
    if holder is None:
        return 0
    dfd = store.state_dir_fd(PENDING_DIR)
    try:
        claimed = f"{CLAIMED_PREFIX}{os.getpid()}.{os.urandom(4).hex()}"
        with store.lock(LOCK_NAME):
            try:
                os.rename(PENDING, claimed, src_dir_fd=dfd, dst_dir_fd=dfd)
            except FileNotFoundError:
                return 0  # another flusher took them
        try:
            dropped, lines = _read_lines(dfd, claimed)
        except OSError:
            return 0
        out = [x + REDELIVERED for x in lines] + ([dropped_note(dropped)] if dropped else [])
        data = "".join(x.replace("\n", " ") + "\n" for x in out).encode("ascii", "backslashreplace")
        written = _append_bytes(config.log_file, data)
        if written and log_holder(config.ossec_dir, config.log_file, positioned=False) == holder:
            os.unlink(claimed, dir_fd=dfd)
            return len(lines)
        _put_back(store, dfd, claimed, dropped, lines)
        return 0
    finally:
        os.close(dfd)


def flush_pending(config: Settings) -> int:
    """Deliver pending lines from an AR invocation: one stat when there are none."""
    try:
        os.stat(pending_path(config.evidence_root), follow_symlinks=False)
    except OSError:
        return 0
    try:
        return _with_store(config, None, lambda st: flush(config, st)) or 0
    except (OSError, DfirError):
        return 0


def linger(config: Settings, store: Store, sleep: Callable[[float], None] = time.sleep) -> int:
    """Wait (bounded) for a logcollector and deliver the pending lines; return how many.

    One worker lingers per store; it stays until nothing is pending or
    ``outcome_linger_s`` passed since the newest pending line, whichever
    comes first. The caller must hold no worker slot.
    """
    if config.outcome_linger_s <= 0 or not has_install(config.ossec_dir):
        return 0
    path = pending_path(store.root)
    delivered = 0
    started = time.time()
    while True:
        lock_fd = store.try_lock(LINGER_LOCK)
        if lock_fd is None:
            return delivered  # another worker lingers and sees our lines too
        try:
            recover_claims(store)
            while True:
                try:
                    newest = os.stat(path, follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    break
                if time.time() > max(started, newest) + config.outcome_linger_s:
                    break
                delivered += flush(config, store, SETTLE_S)
                if not os.path.lexists(path):
                    break
                sleep(POLL_S)
        finally:
            os.close(lock_fd)
        # A line kept while we were leaving would have found the lock taken: look again.
        try:
            newest = os.stat(path, follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return delivered
        if time.time() > max(started, newest) + config.outcome_linger_s:
            return delivered
