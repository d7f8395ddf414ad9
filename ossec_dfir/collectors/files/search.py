"""The stages of the files collector's pipeline: conditions, content scan, records.

The walk itself is ``_walk.Walk`` (shared with the yara collector). Here:
cheap metadata conditions on the ``lstat`` result (name, size, times relative
to the alert, owner, permission bits), the single bounded read of a file
(SHA-256, a regex over its first bytes, and an optional copy sink), the IOC
list loader, and the JSON record of a file.
"""
from __future__ import annotations

import errno
import fnmatch
import grp
import hashlib
import os
import pwd
import re
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from ...errors import RegexTimeout
from ...evidence.store import utc_iso_ns

CHUNK_BYTES = 1 << 20
MAX_IOC_FILE_BYTES = 64 << 20
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._@+=,-]")

# Permission conditions: a file matches when it has ANY of the listed properties.
PERMISSIONS: dict[str, Callable[[int], bool]] = {
    "setuid": lambda mode: bool(mode & stat.S_ISUID),
    "setgid": lambda mode: bool(mode & stat.S_ISGID),
    "sticky": lambda mode: bool(mode & stat.S_ISVTX),
    "world_writable": lambda mode: bool(mode & stat.S_IWOTH),
    "group_writable": lambda mode: bool(mode & stat.S_IWGRP),
    "executable": lambda mode: bool(mode & 0o111),
}


def parse_time(text: str | None) -> float | None:
    """Return the Unix time of an ISO-8601 / Wazuh timestamp, or None."""
    if not text:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%fZ",
                "%Y-%m-%dT%H:%M:%SZ"):
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    return None


def alert_time(request: Any) -> tuple[float, str]:
    """Return the alert's Unix time and where it came from.

    Wazuh's ``alert.timestamp`` first, then the epoch part of OSSEC's alert id
    (``<epoch>.<offset>``), then the time the trigger was received.
    """
    epoch = parse_time(getattr(request, "alert_timestamp", None))
    if epoch is not None:
        return epoch, "alert_timestamp"
    alert_id = getattr(request, "alert_id", None)
    if alert_id:
        try:
            return float(int(alert_id.split(".", 1)[0])), "alert_id"
        except ValueError:
            pass
    received = parse_time(getattr(request, "received", None))
    if received is not None:
        return received, "received"
    import time
    return time.time(), "now"


def load_ioc_file(path: str) -> set[str]:
    """Read SHA-256 IOCs (one per line, ``sha256sum`` format allowed, ``#`` comments).

    The file must be a regular file owned by root (or us) and not writable by
    group or others; ValueError says why it is refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise ValueError(f"sha256_ioc_file {path}: cannot open ({err.strerror})") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"sha256_ioc_file {path}: not a regular file")
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise ValueError(f"sha256_ioc_file {path}: owned by uid {st.st_uid} with mode "
                             f"{stat.S_IMODE(st.st_mode):04o}; must be root's and not "
                             "writable by group or others")
        if st.st_size > MAX_IOC_FILE_BYTES:
            raise ValueError(f"sha256_ioc_file {path}: larger than {MAX_IOC_FILE_BYTES} bytes")
        chunks = []
        while True:
            data = os.read(fd, CHUNK_BYTES)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
    iocs: set[str] = set()
    for number, raw in enumerate(b"".join(chunks).decode("utf-8", "replace").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        token = line.split()[0]
        if not SHA256_RE.match(token):
            raise ValueError(f"sha256_ioc_file {path}: line {number}: not a SHA-256")
        iocs.add(token.lower())
    return iocs


def resolve_owner(owner: str) -> int | None:
    """Return the uid of a user name or numeric uid string (None when unknown)."""
    if owner.isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        return None


@dataclass
class CheapConditions:
    """Metadata conditions (all must hold); ``rejects`` returns the first that fails."""

    name_regex: re.Pattern[str] | None = None
    path_globs: tuple[str, ...] = ()
    min_size_bytes: int = 0
    max_size_bytes: int = 0
    mtime_since: float | None = None
    ctime_since: float | None = None
    uids: frozenset[int] | None = None
    permissions: tuple[str, ...] = ()

    def rejects(self, path: str, st: os.stat_result) -> str | None:
        """Return the name of the first condition the file fails, or None."""
        if self.path_globs:
            if not any(fnmatch.fnmatchcase(path, g) for g in self.path_globs):
                return "path_globs"
        if self.name_regex is not None and not self.name_regex.search(os.path.basename(path)):
            return "name_regex"
        if st.st_size < self.min_size_bytes or (
                self.max_size_bytes and st.st_size > self.max_size_bytes):
            return "size"
        if self.mtime_since is not None and st.st_mtime < self.mtime_since:
            return "mtime_within_s"
        if self.ctime_since is not None and st.st_ctime < self.ctime_since:
            return "ctime_within_s"
        if self.uids is not None and st.st_uid not in self.uids:
            return "owners"
        if self.permissions and not any(PERMISSIONS[p](st.st_mode) for p in self.permissions):
            return "permissions"
        return None


@dataclass
class ContentScan:
    """What one read of a file found: its hash, a regex match, how much was read."""

    sha256: str | None = None
    bytes_read: int = 0
    complete: bool = True
    regex_offset: int | None = None
    regex_match: bytes | None = None
    regex_timeout: bool = False
    stopped: str | None = None


def scan_content(fd: int, *, max_bytes: int, want_hash: bool,
                 regex: Any = None, regex_max_bytes: int = 0,
                 should_stop: Callable[[], str | None] | None = None,
                 sink: Callable[[bytes], object] | None = None) -> ContentScan:
    """Read a file once from offset 0: hash it, search its first bytes, feed a sink."""
    result = ContentScan()
    digest = hashlib.sha256() if want_hash else None
    head = bytearray()
    offset = 0
    while offset < max_bytes:
        data = os.pread(fd, min(CHUNK_BYTES, max_bytes - offset), offset)
        if not data:
            break
        offset += len(data)
        if digest is not None:
            digest.update(data)
        if regex is not None and len(head) < regex_max_bytes:
            head += data[:regex_max_bytes - len(head)]
        if sink is not None:
            sink(data)
        if should_stop is not None:
            result.stopped = should_stop()
            if result.stopped:
                break
    result.bytes_read = offset
    if result.stopped or (offset >= max_bytes and os.pread(fd, 1, offset)):
        result.complete = False
    if digest is not None:
        result.sha256 = digest.hexdigest()
    if regex is not None:
        try:
            found = regex.search(head)
        except RegexTimeout:
            result.regex_timeout = True
            return result
        if found:
            result.regex_offset = found.start()
            result.regex_match = found.group(0)[:64]
    return result



def skip_reason(err: OSError) -> str:
    """Return the skip reason for a file that could not be opened or read."""
    if err.errno == errno.ENOENT:
        return "vanished"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission_denied"
    if err.errno in (errno.ESTALE, errno.EINVAL, errno.ELOOP):
        return "changed_during_walk"
    if err.errno == errno.EIO:
        return "io_error"
    return "error"


def _name_of(uid: int, group: bool = False) -> str | None:
    try:
        return grp.getgrgid(uid).gr_name if group else pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def stat_record(path: str, st: os.stat_result) -> dict[str, Any]:
    """Return the JSON-safe metadata of a file (times as ISO strings and nanoseconds)."""
    record: dict[str, Any] = {
        "path": path, "size": st.st_size, "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "uid": st.st_uid, "owner": _name_of(st.st_uid), "gid": st.st_gid,
        "group": _name_of(st.st_gid, group=True), "inode": st.st_ino, "dev": st.st_dev,
        "nlink": st.st_nlink}
    for key in ("atime", "mtime", "ctime"):
        ns = getattr(st, f"st_{key}_ns")
        record[key] = utc_iso_ns(ns)
        record[f"{key}_ns"] = ns
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept exactly
        record["path_hex"] = os.fsencode(path).hex()
    return record


def evidence_name(number: int, path: str) -> str:
    """Return a safe evidence file name for a copy: ``0001-<sanitised basename>``."""
    base = _UNSAFE_NAME_CHARS.sub("_", os.path.basename(path))[:100] or "file"
    return f"{number:04d}-{base}"
