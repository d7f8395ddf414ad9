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

import fcntl
import os
import pickle
import pwd
import signal
import struct
from typing import Any, Callable, Iterator

from ... import procfs
from ...evidence.store import utc_iso

PF_KTHREAD = 0x00200000
CMDLINE_MAX_BYTES = 128 * 1024



class ProcessReader:
    """Build process and descriptor records; state shared across pids (caches)."""

    def __init__(self, *, max_fds_per_process: int, temp_dirs: tuple[str, ...],
                 open_files: bool) -> None:
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
        """Add root, cgroup, namespaces and the executable's path, flags and identity.

        The executable is not hashed here (a process is listed whatever its
        executable costs to read); its identity (``exe_dev``, ``exe_inode``,
        ``exe_size``, ``exe_key``) lets the hash phase (hashes.py) find it again.
        """
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
        rec.update(exe=None, exe_link=None, exe_size=None, exe_inode=None, exe_dev=None,
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
        nlink = None
        if link:
            try:
                st = os.stat(base + "exe")  # the running inode, even when deleted
            except OSError as err:
                failed["exe_stat"] = procfs.error_text(err)
            else:
                rec.update(exe_size=st.st_size, exe_inode=st.st_ino, exe_dev=st.st_dev)
                rec["exe_key"] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                  st.st_ctime_ns]
                nlink = st.st_nlink
        rec["exe_deleted"] = deleted or (nlink == 0 and not rec["exe_memfd"])
        if rec["exe_deleted"]:
            rec["exe_replaced"] = _replaced(exe_path, rec)

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


def _replaced(exe_path: str | None, rec: dict[str, Any]) -> bool:
    """Return True when another file now sits at the deleted executable's path."""
    if not exe_path or rec.get("exe_inode") is None:
        return False
    try:
        st = os.stat(exe_path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) != (rec.get("exe_dev"), rec.get("exe_inode"))


# Below this many processes one reader is fast enough; above, a helper shares the work.
PARALLEL_MIN_PROCESSES = 256
# Processes per chunk: the two readers take alternate chunks.
CHUNK = 32
# The pipe from the helper holds about a chunk of ordinary records (F_SETPIPE_SZ).
_PIPE_BYTES = 1 << 20
_FRAME = struct.Struct("=Q")

_Item = tuple[int, dict[str, Any], list[dict[str, Any]]]


def read_processes(reader: ProcessReader, pids: list[int], stop: Callable[[], bool],
                   stats: dict[str, Any] | None = None) -> Iterator[_Item]:
    """Yield (pid, record, fd records) for every pid, in pid order, one at a time.

    With more than one CPU and many processes, a forked helper reads every
    other chunk of ``CHUNK`` pids while this process reads the others; the
    helper sends each process's records as soon as it has them, one pickled
    frame per process, through a pipe that this side drains chunk by chunk.
    Nothing is gathered: memory holds one process's records at a time on
    each side (at most ``max_fds_per_process`` descriptors), whatever the
    host holds, and the helper waits on the pipe when it runs ahead. If the
    helper fails or stops, whatever it did not send is read here. ``stop()``
    is polled every chunk on both sides. When the helper ran to the end, its
    peak resident memory (kB) is put in ``stats["helper_vm_hwm_kb"]``.
    """
    if len(pids) < PARALLEL_MIN_PROCESSES or (os.cpu_count() or 1) < 2:
        yield from _read_serial(reader, pids, stop)
        return
    chunks = [pids[i:i + CHUNK] for i in range(0, len(pids), CHUNK)]
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        pass  # the default pipe size only costs some parallelism
    helper = os.fork()
    if helper == 0:  # the helper: read its chunks, send each process, exit without cleanup
        code = 1
        try:
            os.close(read_fd)
            for chunk in chunks[1::2]:
                if stop():
                    break
                for item in _read_serial(reader, chunk, lambda: False):
                    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                    view = memoryview(_FRAME.pack(len(data)) + data)
                    while view:
                        view = view[os.write(write_fd, view):]
            else:  # every chunk sent: the last frame is the helper's peak memory
                data = pickle.dumps((-1, {"vm_hwm_kb": vm_hwm_kb()}, []))
                os.write(write_fd, _FRAME.pack(len(data)) + data)
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    helper_alive = True
    try:
        for index, chunk in enumerate(chunks):
            if index % 2 == 0 or not helper_alive:
                if stop():
                    return
                yield from _read_serial(reader, chunk, lambda: False)
                continue
            for n, pid in enumerate(chunk):
                item = _receive(read_fd)
                if item is None or item[0] != pid:  # the helper stopped or failed
                    helper_alive = False
                    if stop():
                        return
                    yield from _read_serial(reader, chunk[n:], lambda: False)
                    break
                yield item
        last = _receive(read_fd) if helper_alive else None
        if last is not None and last[0] == -1 and stats is not None:
            stats["helper_vm_hwm_kb"] = last[1].get("vm_hwm_kb")
    finally:
        os.close(read_fd)
        os.kill(helper, signal.SIGKILL)  # done, or the caller stopped early
        os.waitpid(helper, 0)


def vm_hwm_kb(pid: int | str = "self") -> int | None:
    """Return the peak resident memory (VmHWM, kB) of a process, or None."""
    try:
        status = procfs.read_bytes(procfs.path(pid, "status"), 1 << 16)
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(b"VmHWM:"):
            return int(line.split()[1])
    return None


def _receive(fd: int) -> _Item | None:
    """Return the next process the helper sent, or None at the end of the pipe."""
    head = _read_exact(fd, _FRAME.size)
    if head is None:
        return None
    data = _read_exact(fd, _FRAME.unpack(head)[0])
    return None if data is None else pickle.loads(data)


def _read_exact(fd: int, n: int) -> bytes | None:
    parts = []
    while n > 0:
        chunk = os.read(fd, min(n, _PIPE_BYTES))
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _read_serial(reader: ProcessReader, pids: list[int], stop: Callable[[], bool]
                 ) -> Iterator[_Item]:
    for i, pid in enumerate(pids):
        if i % CHUNK == 0 and stop():
            return
        yield (pid, *reader.read(pid))
