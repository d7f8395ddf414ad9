"""The incident evidence store: the only writer of evidence.

Layout of one incident (``<evidence_root>/<incident id>/``)::

    incident.json       host identity and the first trigger (in the manifest)
    triggers.jsonl      every AR invocation for this incident, append-only
    manifest.jsonl      append-only, hash-chained: begin/file/trigger/collector entries
    SHA256SUMS          ``sha256sum -c`` compatible list of closed evidence files
    <collector>/<run>/  what each collector run wrote

Directories are 0700, files 0600, created exclusively below directory
descriptors without following links; nothing is ever overwritten.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time

from . import fs, text as _text
from .. import __version__
from ..errors import ReserveReached, StoreError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the AR hot path
    from collections.abc import Iterator
    from decimal import Decimal
    from typing import Any, Callable

MANIFEST = "manifest.jsonl"
SUMS = "SHA256SUMS"
TRIGGERS = "triggers.jsonl"
INCIDENT_JSON = "incident.json"
STORE_FILES = frozenset({MANIFEST, SUMS, TRIGGERS})
GENESIS = "0" * 64
INCIDENT_ID_RE = re.compile(r"^\d{8}T\d{6}Z_[A-Za-z0-9._-]{1,64}$")
STATE_DIR = ".state"
# The reserve is re-read from statvfs at least every this many bytes.
_RESERVE_RECHECK_BYTES = 64 * 1024 * 1024


def utc_iso(epoch: float | int | Decimal | None) -> str | None:
    """Return a Unix time as an ISO-8601 UTC string with microseconds (None stays None).

    The time is truncated to the microsecond, never rounded: a file changed at
    ...54.9999999 stays in second 54 (datetime.fromtimestamp would round it to 55).
    A float is converted exactly (Decimal) before truncating.
    """
    if epoch is None:
        return None
    import math
    from decimal import Decimal  # not on the AR hot path (its times are integers)

    micros = math.floor(Decimal(epoch) * 1_000_000)
    return _iso_micros(micros)


def utc_iso_ns(ns: int | None) -> str | None:
    """Return a Unix time in nanoseconds (``st_mtime_ns``) as ISO-8601 UTC, truncated."""
    if ns is None:
        return None
    return _iso_micros(int(ns) // 1000)


def _iso_micros(micros: int) -> str:
    seconds, fraction = divmod(micros, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:06d}Z"


def utc_now() -> str:
    """Return the current UTC time as an ISO-8601 string with microseconds (truncated)."""
    return utc_iso_ns(time.time_ns()) or ""


def canonical_json(obj: Any) -> str:
    """Serialise obj as one ASCII JSON line with sorted keys (stable hashing).

    Host text that is not valid UTF-8 is escaped (evidence/text.py), never an error.
    """
    return _text.dumps(obj, sort_keys=True, separators=(",", ":"))


def custody() -> dict[str, Any]:
    """Return who is writing: host, pid, uid and tool version (chain of custody)."""
    return {"host": os.uname().nodename, "pid": os.getpid(), "uid": os.geteuid(),
            "tool": f"ossec-dfir {__version__}"}


class Store:
    """An evidence root holding incidents, with the reserve and grouping policy."""

    def __init__(self, root: str, reserve_bytes: int = 0, grouping_window_s: float = 3600,
                 create: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.reserve_bytes = int(reserve_bytes)
        self.grouping_window_s = float(grouping_window_s)
        self.root_fd = fs.open_root(self.root, create=create)
        self._state_fd: int | None = None

    def close(self) -> None:
        """Release the directory descriptors."""
        for fd in (self.root_fd, self._state_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- state (locks, queue, stop markers, status): not evidence ---------
    def state_dir_fd(self, *parts: str) -> int:
        """Return an fd of ``.state/<parts>`` (created 0700); the caller closes it."""
        if self._state_fd is None:
            self._state_fd = fs.open_dir_at(self.root_fd, STATE_DIR, create=True)
        return fs.open_dirs_at(self._state_fd, list(parts), create=True)

    def state_path(self, *parts: str) -> str:
        """Return the path of ``.state/<parts>`` (for display and tests)."""
        return os.path.join(self.root, STATE_DIR, *parts)

    def _lock_fd(self, directory: str, name: str, blocking: bool) -> int | None:
        """Open and flock ``.state/<directory>/<name>``; None when busy (non-blocking)."""
        fs.check_relpath(name)
        dfd = self.state_dir_fd(directory)
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold ``.state/locks/<name>.lock`` (waiting for it) for the with block."""
        fd = self._lock_fd("locks", name + ".lock", blocking=True)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def try_lock(self, name: str) -> int | None:
        """Take ``.state/locks/<name>.lock`` without waiting; return its fd (close to
        release; a forked child holding a copy holds the lock too) or None."""
        return self._lock_fd("locks", name + ".lock", blocking=False)

    def try_slot(self, kind: str, count: int) -> int | None:
        """Take one of count ``.state/<kind>/<i>.lock`` without waiting; return its fd."""
        for i in range(count):
            fd = self._lock_fd(kind, f"{i}.lock", blocking=False)
            if fd is not None:
                return fd
        return None

    # -- space --------------------------------------------------------------
    def free_bytes(self) -> int:
        """Return the bytes available to us on the evidence filesystem."""
        st = os.fstatvfs(self.root_fd)
        return st.f_bavail * st.f_frsize

    def check_reserve(self, want_bytes: int = 0) -> int:
        """Return how many bytes may still be written, raising if none may."""
        free = self.free_bytes()
        allowance = free - self.reserve_bytes
        if allowance < max(want_bytes, 1):
            raise ReserveReached(free, self.reserve_bytes, self.root)
        return allowance

    # -- incidents ----------------------------------------------------------
    def incident_ids(self) -> list[str]:
        """List the incident ids under the root, oldest first."""
        return sorted(n for n in os.listdir(self.root_fd) if INCIDENT_ID_RE.fullmatch(n))

    def open_incident(self, incident_id: str) -> Incident:
        """Open an existing incident by id."""
        if not INCIDENT_ID_RE.fullmatch(incident_id):
            raise StoreError("not an incident id", incident_id)
        try:
            fd = fs.open_dir_at(self.root_fd, incident_id)
        except StoreError as err:
            raise StoreError("no such incident", incident_id) from err
        return Incident(self, incident_id, fd)

    def incident_for(self, key: str, identity: Callable[[], dict[str, Any]],
                     first_trigger: dict[str, Any]) -> tuple[Incident, bool]:
        """Return the open incident for key within the grouping window, or a new one.

        The second value is True when the incident was created by this call.
        """
        fs.check_relpath(key)
        with self.lock("key-" + key):
            current = self.current_incident(key)
            if current is not None:
                try:
                    incident = self.open_incident(current)
                except StoreError:
                    incident = None
                if incident is not None:
                    if time.time() - incident.last_activity() <= self.grouping_window_s:
                        return incident, False
                    incident.close()
            incident = self._create_incident(key, identity, first_trigger)
            self._write_current(key, incident.id)
            return incident, True

    def current_incident(self, key: str) -> str | None:
        """Return the id of the latest incident of a key (None when there is none)."""
        dfd = self.state_dir_fd("current")
        try:
            fd = fs.open_read_at(dfd, key)
        except OSError:
            return None
        finally:
            os.close(dfd)
        try:
            value = os.read(fd, 256).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        return value if INCIDENT_ID_RE.fullmatch(value) else None

    def _write_current(self, key: str, incident_id: str) -> None:
        dfd = self.state_dir_fd("current")
        try:
            tmp = f".{key}.{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            fd = fs.create_file_at(dfd, tmp)
            try:
                fs.write_all(fd, incident_id.encode() + b"\n")
            finally:
                os.close(fd)
            os.replace(tmp, key, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)

    def _create_incident(self, key: str, identity: Callable[[], dict[str, Any]],
                         first_trigger: dict[str, Any]) -> Incident:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for attempt in range(1000):
            incident_id = f"{stamp}_{key}" if attempt == 0 else f"{stamp}_{key}-{attempt}"
            try:
                fd = fs.mkdir_exclusive_at(self.root_fd, incident_id)
                break
            except FileExistsError:
                continue
        else:
            raise StoreError("cannot allocate an incident directory", self.root)
        fs.fsync_dir(self.root_fd)
        incident = Incident(self, incident_id, fd)
        doc = {"incident": incident_id, "key": key, "created": utc_now(),
               "host": identity(), "first_trigger": first_trigger,
               "tool": f"ossec-dfir {__version__}"}
        with incident.writer("store", INCIDENT_JSON, small=True) as w:
            w.write(_text.json_doc(doc))
        return incident


class Incident:
    """One incident directory: writers, triggers, and the hash-chained manifest."""

    def __init__(self, store: Store, incident_id: str, dir_fd: int) -> None:
        self.store = store
        self.id = incident_id
        self.dir_fd = dir_fd
        self.path = os.path.join(store.root, incident_id)
        self.on_bytes: Callable[[int], None] | None = None

    def close(self) -> None:
        """Release the directory descriptor."""
        with contextlib.suppress(OSError):
            os.close(self.dir_fd)

    def last_activity(self) -> float:
        """Return the time of the last trigger (or creation) as a Unix timestamp."""
        for name in (TRIGGERS, MANIFEST):
            try:
                return os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False).st_mtime
            except OSError:
                continue
        return os.fstat(self.dir_fd).st_mtime

    # -- manifest -----------------------------------------------------------
    @contextlib.contextmanager
    def _manifest_locked(self) -> Iterator[int]:
        fd = fs.open_append_at(self.dir_fd, MANIFEST)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    def tip(self) -> tuple[str, int]:
        """Return (sha256 of the last manifest line, its seq): what ``--expect-tip`` checks."""
        return self._tip()

    def _tip(self) -> tuple[str, int]:
        """Return (sha256 of the last manifest line, its seq)."""
        try:
            fd = fs.open_read_at(self.dir_fd, MANIFEST)
        except FileNotFoundError:
            return GENESIS, 0
        try:
            last = _last_line(fd)
        finally:
            os.close(fd)
        if last is None:
            return GENESIS, 0
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError) as err:
            raise StoreError("manifest tail is corrupt", self.path) from err
        return fs.small_sha256(last).hexdigest(), seq

    def record(self, entry: dict[str, Any], before: Callable[[], None] | None = None,
               sums_line: str | None = None, sync: bool = True) -> dict[str, Any]:
        """Append one hash-chained entry to the manifest (fsynced) and return it.

        sync=False leaves the fsync to the next entry (the manifest is append-only:
        the next fsync makes both durable), for an entry nothing acts on before then.
        """
        with self._manifest_locked() as mfd:
            if before is not None:
                before()
            prev, seq = self._tip()
            full = {"seq": seq + 1, "time": utc_now(), **entry, "custody": custody(),
                    "prev": prev}
            fs.write_all(mfd, (canonical_json(full) + "\n").encode())
            if sync:
                os.fsync(mfd)
            if sums_line is not None:
                sfd = fs.open_append_at(self.dir_fd, SUMS)
                try:
                    fs.write_all(sfd, sums_line.encode())
                    os.fsync(sfd)
                finally:
                    os.close(sfd)
        return full

    def manifest(self) -> list[dict[str, Any]]:
        """Return the parsed manifest entries (no verification: see verify.py)."""
        try:
            fd = fs.open_read_at(self.dir_fd, MANIFEST)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "rb") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def triggers(self) -> list[dict[str, Any]]:
        """Return the trigger records of this incident."""
        try:
            fd = fs.open_read_at(self.dir_fd, TRIGGERS)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "rb") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def append_trigger(self, trigger: dict[str, Any]) -> dict[str, Any]:
        """Append a trigger to triggers.jsonl and chain its hash into the manifest."""
        line = (canonical_json(trigger) + "\n").encode()

        def write_line() -> None:
            fd = fs.open_append_at(self.dir_fd, TRIGGERS)
            try:
                fs.write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return self.record({"type": "trigger", "path": TRIGGERS,
                            "line_sha256": fs.small_sha256(line).hexdigest(),
                            "trigger": trigger.get("trigger_id"),
                            "action": trigger.get("action"), "command": trigger.get("command"),
                            "status": trigger.get("status")}, before=write_line)

    # -- evidence -----------------------------------------------------------
    def new_run_dir(self, collector: str) -> str:
        """Allocate ``<collector>/<NN>`` for one collector run and return it."""
        fs.check_relpath(collector)
        cfd = fs.open_dir_at(self.dir_fd, collector, create=True)
        try:
            for n in range(1, 10000):
                name = f"{n:02d}"
                try:
                    os.close(fs.mkdir_exclusive_at(cfd, name))
                    return f"{collector}/{name}"
                except FileExistsError:
                    continue
        finally:
            os.close(cfd)
        raise StoreError("too many runs", f"{self.path}/{collector}")

    def writer(self, collector: str, relpath: str, params: dict[str, Any] | None = None,
               meta: dict[str, Any] | None = None, small: bool = False) -> EvidenceWriter:
        """Open a new evidence file for writing (hashing, reserve-checked).

        small: a document of a few KiB written whole by the AR entry point: hashed
        with fs.small_sha256 (no OpenSSL to load), and its begin entry is made
        durable with its file entry (one manifest fsync where a long write has two).
        """
        return EvidenceWriter(self, collector, relpath, params or {}, meta or {}, small)


class EvidenceWriter:
    """Write one evidence file: exclusive create, SHA-256 while writing, manifest on close."""

    def __init__(self, incident: Incident, collector: str, relpath: str,
                 params: dict[str, Any], meta: dict[str, Any], small: bool = False) -> None:
        parts = fs.check_relpath(relpath)
        if relpath in STORE_FILES:
            raise StoreError("reserved store file name", relpath)
        self.incident = incident
        self.collector = collector
        self.relpath = relpath
        self.params = params
        self.meta = dict(meta)
        self.started = utc_now()
        self.size = 0
        self.outcome: str | None = None
        self.reason: str | None = None
        if small:
            self._hash = fs.small_sha256()
        else:
            import hashlib  # OpenSSL's SHA-256, for bulk evidence
            self._hash = hashlib.sha256()
        self._allowance = 0
        self.closed = False
        incident.store.check_reserve()
        dfd = fs.open_dirs_at(incident.dir_fd, parts[:-1], create=True)
        try:
            self.fd = fs.create_file_at(dfd, parts[-1])
            fs.fsync_dir(dfd)
        finally:
            os.close(dfd)
        incident.record({"type": "begin", "path": relpath, "collector": collector,
                         "started": self.started}, sync=not small)

    def _reserve(self, n: int) -> None:
        if n <= self._allowance:
            self._allowance -= n
            return
        store = self.incident.store
        try:
            allowance = store.check_reserve(n)
        except ReserveReached as err:
            err.path = self.relpath
            self.mark_partial(str(err))
            raise
        self._allowance = min(allowance, _RESERVE_RECHECK_BYTES) - n

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write data whole (or not at all when it would cross the reserve)."""
        n = len(data)
        if not n:
            return 0
        self._reserve(n)
        try:
            fs.write_all(self.fd, data)
        except OSError as err:
            self.mark_partial(f"write failed: {err.strerror}")
            raise StoreError(f"write failed ({err.strerror})", self.relpath) from err
        self._hash.update(data)
        self.size += n
        if self.incident.on_bytes is not None:
            self.incident.on_bytes(n)
        return n

    def copy_from_fd(self, src_fd: int, max_bytes: int | None = None,
                     chunk_bytes: int = 1 << 20) -> int:
        """Copy from src_fd (a pipe or file) until EOF or max_bytes; return bytes copied."""
        copied = 0
        while max_bytes is None or copied < max_bytes:
            want = chunk_bytes if max_bytes is None else min(chunk_bytes, max_bytes - copied)
            data = os.read(src_fd, want)
            if not data:
                break
            self.write(data)
            copied += len(data)
        return copied

    def mark_partial(self, reason: str) -> None:
        """Record that this file is incomplete, with the reason (kept on close)."""
        self.outcome = "partial"
        self.reason = self.reason or reason

    @property
    def sha256(self) -> str:
        """Return the hex SHA-256 of what has been written so far."""
        return self._hash.hexdigest()

    def close(self, outcome: str | None = None, reason: str | None = None) -> dict[str, Any]:
        """Flush, fsync and record the file in the manifest and SHA256SUMS."""
        if self.closed:
            return {}
        self.closed = True
        try:
            os.fsync(self.fd)
        except OSError as err:
            self.mark_partial(f"fsync failed: {err.strerror}")
        finally:
            os.close(self.fd)
        if outcome == "partial" and reason:
            self.mark_partial(reason)
        final_outcome = self.outcome or outcome or "complete"
        digest = self.sha256
        return self.incident.record(
            {"type": "file", "path": self.relpath, "size": self.size, "sha256": digest,
             "collector": self.collector, "params": self.params, "meta": self.meta,
             "started": self.started, "ended": utc_now(), "outcome": final_outcome,
             "reason": self.reason},
            sums_line=f"{digest}  {self.relpath}\n")

    def __enter__(self) -> EvidenceWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self.outcome is None:
            self.mark_partial(f"{type(exc).__name__}: {exc}")
        self.close()


def _last_line(fd: int) -> bytes | None:
    """Return the last complete line of a file (with its newline), or None."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    block = 65536
    end = size
    tail = b""
    while end > 0:
        start = max(0, end - block)
        tail = os.pread(fd, end - start, start) + tail
        end = start
        idx = tail.rfind(b"\n", 0, len(tail) - 1)
        if idx >= 0:
            return tail[idx + 1:]
    return tail
