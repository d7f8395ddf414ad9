"""Process records for the triage collector, read from /proc in one pass per process.

psutil's per-process path (``Process.as_dict``) costs about 0.3 ms per
process (it re-reads /proc/stat for the boot time and parses stat three
times), more than ``lsof`` plus ``ps`` together; the fields are therefore read
here with psutil's own rules (states, name completion, cmdline separators),
one read of stat, status and cmdline each.

One record per process (``processes.jsonl``) and one per open descriptor
(``open_files.jsonl``). A field /proc refuses to a running process is
``null`` and named in the record's ``denied`` list. A process that has exited
is not a denial: a zombie (exited, not yet reaped, e.g. a script execd has
not waited for) gets ``zombie: true``; one that disappears before or while it
is read gets ``vanished: true``; either keeps what was read and lists the
fields it no longer had in ``unavailable`` (see _classify). Nothing here
raises for one process.
"""
from __future__ import annotations

import os
import pickle
import pwd
import signal
from typing import Any, Callable, Iterator

from ... import procfs
from ...evidence.store import utc_iso

PF_KTHREAD = 0x00200000
CMDLINE_MAX_BYTES = 128 * 1024



class ProcessReader:
    """Build process and descriptor records; state shared across pids (caches)."""

    def __init__(self, *, exe_hash_max_bytes: int, max_fds_per_process: int,
                 temp_dirs: tuple[str, ...], open_files: bool) -> None:
        self.hasher = procfs.ExeHasher(exe_hash_max_bytes)
        self.max_fds = max_fds_per_process
        self.temp_dirs = tuple(d.rstrip("/") + "/" for d in temp_dirs)
        self.open_files = open_files
        self.ttys = procfs.terminal_map()
        self.boot = procfs.boot_time()
        self._users: dict[int, str] = {}

    def read(self, pid: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Return (the process record, its descriptor records) for one pid."""
        rec: dict[str, Any] = {"pid": pid}
        failed: dict[str, str] = {}  # field -> why /proc did not give it
        try:
            tty_nr, flags = procfs.stat_and_status(pid, self.boot, rec)
        except OSError as err:
            if procfs.error_text(err) == "process gone":
                return {"pid": pid, "vanished": True}, []
            return {"pid": pid, "denied": ["stat"], "errors": {"stat": procfs.error_text(err)}}, []
        kernel_thread = bool(flags & PF_KTHREAD)
        rec["create_time"] = utc_iso(rec.pop("create_time_epoch"))
        rec["terminal"] = self.ttys.get(tty_nr, f"dev:{tty_nr}") if tty_nr else None
        rec["kernel_thread"] = kernel_thread
        rec["username"] = self._username(rec["uids"]["real"]) if rec.get("uids") else None
        try:
            rec["cmdline"] = procfs.cmdline(pid, CMDLINE_MAX_BYTES)
        except OSError as err:
            rec["cmdline"] = None
            failed["cmdline"] = procfs.error_text(err)
        if len(rec["name"]) >= 15 and rec["cmdline"]:
            # stat truncates the name to 15 bytes; psutil completes it from argv[0].
            argv0 = os.path.basename(rec["cmdline"][0])
            if argv0.startswith(rec["name"]):
                rec["name"] = argv0
        try:
            rec["cwd"] = os.readlink(f"{procfs.PROC}/{pid}/cwd")
        except OSError as err:
            rec["cwd"] = None
            failed["cwd"] = procfs.error_text(err)
        self._procfs_fields(pid, rec, failed, kernel_thread)
        fd_records: list[dict[str, Any]] = []
        if self.open_files and not kernel_thread:
            fd_records = self._fds(pid, rec, failed)
        _classify(pid, rec, failed)
        return rec, fd_records

    def _username(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name

    def _procfs_fields(self, pid: int, rec: dict[str, Any], failed: dict[str, str],
                       kernel_thread: bool) -> None:
        """Add root, cgroup, namespaces and the executable's path, flags and hash."""
        base = f"{procfs.PROC}/{pid}/"
        try:
            rec["root"] = os.readlink(base + "root")
        except OSError as err:
            rec["root"] = None
            failed["root"] = procfs.error_text(err)
        try:
            rec["cgroup"], rec["container_id"] = procfs.cgroup(pid)
        except OSError as err:
            rec["cgroup"] = rec["container_id"] = None
            failed["cgroup"] = procfs.error_text(err)
        ns_errors: dict[str, str] = {}
        rec["namespaces"] = procfs.namespaces(pid, ns_errors)
        if ns_errors:
            # One kind of failure names the field; access denied wins (it is a real denial).
            failed["namespaces"] = "access denied" if "access denied" in ns_errors.values() \
                else sorted(ns_errors.values())[0]
        rec.update(exe=None, exe_link=None, exe_sha256=None, exe_size=None, exe_inode=None,
                   exe_deleted=False, exe_replaced=False, exe_memfd=False, exe_in_temp=False)
        if kernel_thread:
            return
        try:
            link = rec["exe_link"] = os.readlink(base + "exe")
        except OSError as err:
            failed["exe"] = procfs.error_text(err)
            link = ""
        deleted = link.endswith(procfs.DELETED_SUFFIX)
        exe_path = rec["exe"] = (link[:-len(procfs.DELETED_SUFFIX)] if deleted else link) or None
        rec["exe_memfd"] = link.startswith("/memfd:")
        rec["exe_in_temp"] = rec["exe_memfd"] or bool(link.startswith(self.temp_dirs))
        hashed = self.hasher.hash(pid)
        rec["exe_sha256"] = hashed.get("exe_sha256")
        rec["exe_size"] = hashed.get("exe_size")
        rec["exe_inode"] = hashed.get("exe_inode")
        if "exe_hash_error" in hashed:
            rec["exe_hash_error"] = hashed["exe_hash_error"]
            if hashed["exe_hash_error"] in ("access denied", "process gone"):
                failed["exe_sha256"] = hashed["exe_hash_error"]
        rec["exe_deleted"] = deleted or (hashed.get("exe_nlink") == 0
                                         and not rec["exe_memfd"])
        if rec["exe_deleted"]:
            rec["exe_replaced"] = _replaced(exe_path, hashed)

    def _fds(self, pid: int, rec: dict[str, Any],
             failed: dict[str, str]) -> list[dict[str, Any]]:
        try:
            fd_records, truncated = procfs.fds(pid, self.max_fds)
        except OSError as err:
            rec["num_fds"] = None
            failed["open_files"] = procfs.error_text(err)
            return []
        rec["num_fds"] = len(fd_records)
        if truncated:
            rec["open_files_truncated"] = f"max_fds_per_process={self.max_fds} reached"
        for fd_rec in fd_records:
            fd_rec["pid"] = pid
        return fd_records


def final_state(pid: int) -> str:
    """Return what pid is now: running, zombie (exited, not reaped) or vanished."""
    try:
        raw = procfs.read_bytes(procfs.path(pid, "stat"), 4096, single_record=True)
    except OSError:
        return "vanished"
    state = raw.rsplit(b")", 1)[-1].split()[:1]
    return "zombie" if state in ([b"Z"], [b"X"]) else "running"


def _classify(pid: int, rec: dict[str, Any], failed: dict[str, str]) -> None:
    """Name why fields are missing: an exited process, or a real denial or error.

    A zombie has released its memory, files, cwd, root and namespaces; a
    process that exits while it is read loses them mid-way. Neither is a
    denial: such a record gets ``zombie: true`` and/or ``vanished: true``
    (``exited_during_read: true`` when stat still showed it alive) and the
    fields it no longer had in ``unavailable``. Only a process still running
    when its read ends can have ``denied`` fields (EACCES/EPERM) or ``errors``.
    """
    was_zombie = rec.get("status") == "zombie"
    state = "zombie" if was_zombie and not failed else None
    if failed and state is None:
        state = final_state(pid)
    if was_zombie or state == "zombie":
        rec["zombie"] = True
        rec["status"] = "zombie"
    if state == "vanished":
        rec["vanished"] = True
    if rec.get("zombie") or rec.get("vanished"):
        if not was_zombie:
            rec["exited_during_read"] = True
        if failed:
            rec["unavailable"] = sorted(failed)
        rec["denied"] = []
        return
    rec["denied"] = sorted(k for k, v in failed.items() if v == "access denied")
    errors = {k: v for k, v in failed.items() if v != "access denied"}
    if errors:
        rec["errors"] = errors


def _replaced(exe_path: str | None, hashed: dict[str, Any]) -> bool:
    """Return True when another file now sits at the deleted executable's path."""
    if not exe_path or "exe_inode" not in hashed:
        return False
    try:
        st = os.stat(exe_path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) != (hashed.get("exe_dev"), hashed.get("exe_inode"))


# Below this many processes one reader is fast enough; above, a helper shares the work.
PARALLEL_MIN_PROCESSES = 256


def read_processes(reader: ProcessReader, pids: list[int], stop: Callable[[], bool]
                   ) -> Iterator[tuple[int, dict[str, Any], list[dict[str, Any]]]]:
    """Yield (pid, record, fd records) for every pid, in pid order.

    With more than one CPU and many processes, a forked helper reads the second
    half while this process reads the first (the records come back pickled
    through a pipe): the snapshot takes about half the time, with less skew
    between the first and the last process. If the helper fails, its half is
    read here. ``stop()`` is polled every 32 processes on both sides.
    """
    if len(pids) < PARALLEL_MIN_PROCESSES or (os.cpu_count() or 1) < 2:
        yield from _read_serial(reader, pids, stop)
        return
    half = len(pids) // 2
    theirs = pids[half:]
    read_fd, write_fd = os.pipe()
    helper = os.fork()
    if helper == 0:  # the helper: read, pickle, exit without running any cleanup
        code = 1
        try:
            os.close(read_fd)
            data = pickle.dumps(list(_read_serial(reader, theirs, stop)),
                                protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    received: list[tuple[int, dict[str, Any], list[dict[str, Any]]]] | None = None
    try:
        yield from _read_serial(reader, pids[:half], stop)
        chunks = []
        while True:
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        _, status = os.waitpid(helper, 0)
        helper = 0
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            received = pickle.loads(b"".join(chunks))
    finally:
        os.close(read_fd)
        if helper:  # the caller stopped early: end the helper
            os.kill(helper, signal.SIGKILL)
            os.waitpid(helper, 0)
    if received is None:
        yield from _read_serial(reader, theirs, stop)
    else:
        yield from received


def _read_serial(reader: ProcessReader, pids: list[int], stop: Callable[[], bool]
                 ) -> Iterator[tuple[int, dict[str, Any], list[dict[str, Any]]]]:
    for i, pid in enumerate(pids):
        if i % 32 == 0 and stop():
            return
        yield (pid, *reader.read(pid))
