"""Process records for the triage collector: psutil first, /proc for the rest.

One record per process (``processes.jsonl``) and one per open descriptor
(``open_files.jsonl``). A field psutil or /proc refuses is ``null`` and named
in the record's ``denied`` list; a process that vanishes mid-read keeps what
was read and gets ``gone: true``. Nothing here raises for one process.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Callable

from .. import _procfs

# psutil attributes read for every process (one oneshot() per process).
PSUTIL_ATTRS = ("ppid", "name", "exe", "cmdline", "cwd", "username", "uids", "gids",
                "create_time", "status", "num_threads", "memory_info", "nice")
_DENIED = object()
PF_KTHREAD = 0x00200000


def utc_iso(epoch: float | None) -> str | None:
    """Return a Unix time as an ISO-8601 UTC string (None stays None)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ProcessReader:
    """Build process and descriptor records; state shared across pids (caches)."""

    def __init__(self, *, exe_hash_max_bytes: int, max_fds_per_process: int,
                 temp_dirs: tuple[str, ...], open_files: bool) -> None:
        self.hasher = _procfs.ExeHasher(exe_hash_max_bytes)
        self.max_fds = max_fds_per_process
        self.temp_dirs = tuple(d.rstrip("/") + "/" for d in temp_dirs)
        self.open_files = open_files
        self.ttys = _procfs.terminal_map()

    def read(self, pid: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Return (the process record, its descriptor records) for one pid."""
        import psutil

        rec: dict[str, Any] = {"pid": pid}
        denied: list[str] = []
        errors: dict[str, str] = {}
        try:
            proc = psutil.Process(pid)
            info = proc.as_dict(list(PSUTIL_ATTRS), ad_value=_DENIED)
        except psutil.NoSuchProcess:
            rec["gone"] = True
            return rec, []
        except psutil.AccessDenied:
            info = {k: _DENIED for k in PSUTIL_ATTRS}
        for key in PSUTIL_ATTRS:
            value = info.get(key, _DENIED)
            if value is _DENIED:
                denied.append(key)
                value = None
            rec[key] = value
        rec["uids"] = _triple(rec["uids"])
        rec["gids"] = _triple(rec["gids"])
        mem = rec.pop("memory_info")
        rec["rss"] = mem.rss if mem is not None else None
        rec["vms"] = mem.vms if mem is not None else None
        if "memory_info" in denied:
            denied[denied.index("memory_info")] = "rss"
            denied.append("vms")
        rec["create_time"] = utc_iso(rec["create_time"])
        kernel_thread = self._stat(pid, rec, errors)
        self._procfs_fields(pid, rec, denied, errors, kernel_thread)
        fd_records: list[dict[str, Any]] = []
        if self.open_files and not kernel_thread:
            fd_records = self._fds(pid, rec, denied, errors)
        if errors.values() and all(v == "process gone" for v in errors.values()) \
                and not os.path.exists(_procfs.path(pid)):
            rec["gone"] = True
        rec["denied"] = sorted(set(denied))
        if errors:
            rec["errors"] = errors
        return rec, fd_records

    def _stat(self, pid: int, rec: dict[str, Any], errors: dict[str, str]) -> bool:
        """Add terminal from /proc/PID/stat; return True for a kernel thread."""
        try:
            fields = _procfs.stat_fields(pid)
        except OSError as err:
            errors["stat"] = _procfs.error_text(err)
            rec["terminal"] = None
            return False
        tty_nr = int(fields[4])
        rec["terminal"] = self.ttys.get(tty_nr, f"dev:{tty_nr}") if tty_nr else None
        kernel_thread = bool(int(fields[6]) & PF_KTHREAD)
        rec["kernel_thread"] = kernel_thread
        return kernel_thread

    def _procfs_fields(self, pid: int, rec: dict[str, Any], denied: list[str],
                       errors: dict[str, str], kernel_thread: bool) -> None:
        reads: dict[str, Callable[[], Any]] = {"root": lambda: _procfs.readlink(pid, "root"),
                                               "exe_link": lambda: _procfs.readlink(pid, "exe"),
                                               "cgroup": lambda: _procfs.cgroup(pid)}
        for key, read in reads.items():
            try:
                rec[key] = read()
            except OSError as err:
                rec[key] = None
                if not (kernel_thread and key == "exe_link"):
                    _record_error(key, err, denied, errors)
        cgroup = rec.pop("cgroup")
        rec["cgroup"], rec["container_id"] = cgroup if cgroup else (None, None)
        rec["namespaces"] = _procfs.namespaces(pid)
        if any(v is None for v in rec["namespaces"].values()) and not _gone(pid):
            denied.append("namespaces")
        link = rec["exe_link"]
        rec["exe_memfd"] = bool(link and link.startswith("/memfd:"))
        rec["exe_deleted"] = bool(link and link.endswith(_procfs.DELETED_SUFFIX))
        exe_path = (link[:-len(_procfs.DELETED_SUFFIX)] if rec["exe_deleted"] else link) \
            if link else rec["exe"]
        rec["exe_in_temp"] = bool(exe_path and exe_path.startswith(self.temp_dirs)) \
            or rec["exe_memfd"]
        if kernel_thread:
            rec["exe_sha256"] = None
            return
        hashed = self.hasher.hash(pid)
        rec.update({k: hashed.get(k) for k in ("exe_sha256", "exe_size", "exe_inode")})
        if "exe_hash_error" in hashed:
            rec["exe_hash_error"] = hashed["exe_hash_error"]
            if hashed["exe_hash_error"] == "access denied":
                denied.append("exe_sha256")
        if hashed.get("exe_nlink") == 0 and not rec["exe_memfd"]:
            rec["exe_deleted"] = True
        rec["exe_replaced"] = _replaced(exe_path, hashed) if rec["exe_deleted"] else False

    def _fds(self, pid: int, rec: dict[str, Any], denied: list[str],
             errors: dict[str, str]) -> list[dict[str, Any]]:
        try:
            fd_records, truncated = _procfs.fds(pid, self.max_fds)
        except OSError as err:
            rec["num_fds"] = None
            _record_error("open_files", err, denied, errors)
            return []
        rec["num_fds"] = len(fd_records)
        if truncated:
            rec["open_files_truncated"] = f"max_fds_per_process={self.max_fds} reached"
        for fd_rec in fd_records:
            fd_rec["pid"] = pid
        return fd_records


def _triple(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    return {"real": value[0], "effective": value[1], "saved": value[2]}


def _gone(pid: int) -> bool:
    return not os.path.exists(_procfs.path(pid))


def _record_error(key: str, err: OSError, denied: list[str], errors: dict[str, str]) -> None:
    text = _procfs.error_text(err)
    if text == "access denied":
        denied.append(key)
    else:
        errors[key] = text


def _replaced(exe_path: str | None, hashed: dict[str, Any]) -> bool:
    """Return True when another file now sits at the deleted executable's path."""
    if not exe_path or "exe_inode" not in hashed:
        return False
    try:
        st = os.stat(exe_path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) != (hashed.get("exe_dev"), hashed.get("exe_inode"))
