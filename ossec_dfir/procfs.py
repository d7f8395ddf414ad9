"""Read one process from /proc: stat and status, cmdline, fds, namespaces, cgroup, exe bytes.

Every function takes a pid and raises ``OSError`` (ENOENT/ESRCH when the
process is gone, EACCES/EPERM when it is not ours); callers record the error
on the process's record and go on. ``PROC`` is a module constant so tests can
point it elsewhere (psutil ``PROCFS_PATH``).
"""
from __future__ import annotations

import errno
import os
import re
import stat
from typing import Any, Callable, Iterable, TypeVar

from .evidence.fs import sha256_fd
from .evidence.text import display

_T = TypeVar("_T")
# What a parser of one table line may raise on a line it does not understand.
LINE_ERRORS = (ValueError, IndexError, KeyError, TypeError, AttributeError, OverflowError,
               UnicodeError)

PROC = "/proc"
NAMESPACES = ("pid", "net", "mnt", "user")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# The process states of /proc/PID/stat, named as psutil names them.
STATES = {"R": "running", "S": "sleeping", "D": "disk-sleep", "T": "stopped",
          "t": "tracing-stop", "Z": "zombie", "X": "dead", "x": "dead", "K": "wake-kill",
          "W": "waking", "P": "parked", "I": "idle"}
# A 64-hex id in a cgroup path names a container (docker, containerd, podman, CRI-O).
_CONTAINER_RE = re.compile(r"[0-9a-f]{64}")
_ACCMODE = {os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}
DELETED_SUFFIX = " (deleted)"


def path(pid: int | str, *parts: str) -> str:
    """Return ``<PROC>/<pid>/<parts>``."""
    return "/".join((PROC, str(pid), *parts))


def error_text(err: BaseException) -> str:
    """Return a short, stable text for an OSError or psutil error on one item."""
    code = getattr(err, "errno", None)
    if code in (errno.EACCES, errno.EPERM) or type(err).__name__ == "AccessDenied":
        return "access denied"
    if code in (errno.ENOENT, errno.ESRCH) or type(err).__name__ in ("NoSuchProcess",
                                                                      "ZombieProcess"):
        return "process gone"
    return f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"


def parse_lines(lines: Iterable[_T], parse: Callable[[_T], dict[str, Any] | None],
                source: str, problems: list[str]) -> list[dict[str, Any]]:
    """Parse a table line by line: a malformed line costs that line only.

    parse returns a record or None (a line to pass over, e.g. a header) and may
    raise on a line it does not understand; such lines are counted and named
    (escaped, cut) in one problem of source.
    """
    out: list[dict[str, Any]] = []
    bad = 0
    first: Any = None
    for line in lines:
        try:
            rec = parse(line)
        except LINE_ERRORS:
            bad += 1
            first = line if first is None else first
            continue
        if rec is not None:
            out.append(rec)
    if bad:
        shown = first.decode("utf-8", "surrogateescape") if isinstance(first, bytes) else first
        problems.append(f"{source}: {bad} malformed line(s) skipped (first: "
                        f"{display(str(shown))[:160]})")
    return out


def read_text(file_path: str, max_bytes: int = 1 << 20) -> str:
    """Read a small pseudo file as text (undecodable bytes replaced)."""
    return read_bytes(file_path, max_bytes).decode("utf-8", "replace")


def read_bytes(file_path: str, max_bytes: int = 1 << 20, single_record: bool = False) -> bytes:
    """Read a pseudo file with os.open/os.read (no buffer of max_bytes is allocated).

    Multi-record seq files (/proc/net/tcp, mountinfo, modules, ...) return whole
    records only, so a read shorter than asked is NOT the end: they are read
    until EOF. ``single_record`` files (/proc/PID/stat, status, cmdline, cgroup,
    fdinfo) are produced in one piece: a first read shorter than a page is the
    whole file, which spares the read that would return EOF.
    """
    fd = os.open(file_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunk = os.read(fd, min(max_bytes, 4096))
        if single_record and len(chunk) < 4096 or not chunk:
            return chunk
        chunks = [chunk]
        left = max_bytes - len(chunk)
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Return True when pid runs (a zombie waiting for its parent counts as dead)."""
    try:
        raw = read_bytes(f"{PROC}/{pid}/stat", 4096, single_record=True)
        return raw.rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def flocked_files() -> set[tuple[int, int, int]]:
    """Return (major, minor, inode) of every file with a flock held (/proc/locks)."""
    held = set()
    for line in read_text(os.path.join(PROC, "locks"), 16 << 20).splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[0] != "->":
            try:
                major, minor, inode = parts[5].split(":")
                held.add((int(major, 16), int(minor, 16), int(inode)))
            except ValueError:
                continue
    return held


def boot_time() -> float:
    """Return the boot time (Unix seconds) from /proc/stat ``btime``."""
    for line in read_text(os.path.join(PROC, "stat"), 1 << 20).splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError(errno.ENODATA, "no btime in /proc/stat")


def stat_and_status(pid: int, boot: float, rec: dict[str, Any]) -> tuple[int, int]:
    """Add what /proc/PID/stat and /proc/PID/status say to rec; return (tty_nr, flags).

    name, status, ppid, nice, num_threads, create_time_epoch, vms, rss
    (bytes), uids and gids ({real, effective, saved}). Raises OSError when the
    process is gone.
    """
    # surrogateescape keeps a name's bytes; writers escape them as \xNN (evidence/text.py)
    raw = read_bytes(f"{PROC}/{pid}/stat", 4096, single_record=True).decode(
        "utf-8", "surrogateescape")
    rpar = raw.rfind(")")
    f = raw[rpar + 2:].split()
    rec["name"] = raw[raw.find("(") + 1:rpar]
    rec["status"] = STATES.get(f[0], f[0])
    rec["ppid"] = int(f[1])
    rec["nice"] = int(f[16])
    rec["num_threads"] = int(f[17])
    rec["create_time_epoch"] = boot + int(f[19]) / CLOCK_TICKS
    rec["vms"] = int(f[20])
    rec["rss"] = int(f[21]) * PAGE_SIZE
    status = read_bytes(f"{PROC}/{pid}/status", 65536, single_record=True)
    rec["uids"] = rec["gids"] = None
    for key, field in ((b"\nUid:", "uids"), (b"\nGid:", "gids")):
        start = status.find(key)
        if start >= 0:
            ids = status[start + 5:status.find(b"\n", start + 5)].split()
            rec[field] = {"real": int(ids[0]), "effective": int(ids[1]), "saved": int(ids[2])}
    return int(f[4]), int(f[6])


def cmdline(pid: int, max_bytes: int) -> list[str]:
    """Return the argument vector of a process (psutil's rules for rewritten titles)."""
    data = read_bytes(path(pid, "cmdline"), max_bytes, single_record=True).decode("utf-8", "surrogateescape")
    if not data:
        return []
    sep = "\x00" if data.endswith("\x00") else " "
    if data.endswith(sep):
        data = data[:-1]
    args = data.split(sep)
    if sep == "\x00" and len(args) == 1 and " " in data:
        args = data.split(" ")
    return args


def readlink(pid: int, name: str) -> str:
    """Return the target of ``/proc/PID/<name>`` (raises OSError)."""
    return os.readlink(path(pid, name))


def namespaces(pid: int, errors: dict[str, str] | None = None) -> dict[str, int | None]:
    """Return the inode number of each namespace of a process (None when unreadable).

    When ``errors`` is given, the error_text() of each unreadable kind is put in it.
    """
    base = f"{PROC}/{pid}/ns/"
    out: dict[str, int | None] = {}
    for kind in NAMESPACES:
        try:
            link = os.readlink(base + kind)
        except OSError as err:
            out[kind] = None
            if errors is not None:
                errors[kind] = error_text(err)
            continue
        out[kind] = int(link[link.index("[") + 1:-1]) if link.endswith("]") else None
    return out


def cgroup(pid: int) -> tuple[str, str | None]:
    """Return (the cgroup text of a process, a container id when the cgroup names one)."""
    text = read_bytes(path(pid, "cgroup"), 65536, single_record=True).decode("utf-8", "replace").strip()
    match = _CONTAINER_RE.search(text)
    return text, match.group(0) if match else None


def terminal_map() -> dict[int, str]:
    """Map tty device numbers to /dev paths (built once per snapshot, not per pid)."""
    out: dict[int, str] = {}
    candidates: list[str] = []
    for directory, prefix in (("/dev", "tty"), ("/dev/pts", "")):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        candidates += [os.path.join(directory, n) for n in names if n.startswith(prefix)]
    for dev_path in candidates:
        try:
            st = os.stat(dev_path)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode):
            out[st.st_rdev] = dev_path
    return out


def fds(pid: int, max_fds: int) -> tuple[list[dict[str, Any]], bool]:
    """Return the open descriptors of a process (kind, target, position, mode) and truncation.

    Position, flags and mode (from fdinfo) are read for files, deleted files
    and memfds, not for device nodes under /dev (except /dev/shm).

    Kinds: ``file``, ``deleted`` (an open file whose name is gone), ``memfd``,
    ``socket`` (with its inode), ``pipe``, ``anon`` (anon_inode), ``other``.
    Raises OSError when the fd directory itself cannot be listed.
    """
    fd_dir = path(pid, "fd")
    names = os.listdir(fd_dir)
    truncated = len(names) > max_fds
    out: list[dict[str, Any]] = []
    fdinfo_dir = path(pid, "fdinfo")
    for name in sorted(names, key=int)[:max_fds]:
        rec: dict[str, Any] = {"fd": int(name)}
        out.append(rec)
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError as err:
            rec["error"] = "closed during the walk" if err.errno == errno.ENOENT \
                else error_text(err)
            continue
        rec["target"] = target
        kind = rec["kind"] = _fd_kind(target)
        if kind == "socket" or kind == "pipe":
            rec["inode"] = int(target[target.index("[") + 1:-1])
        elif kind == "file" or kind == "deleted" or kind == "memfd":
            rec["path"] = target[:-10] if target.endswith(DELETED_SUFFIX) else target
            if target.startswith("/dev/") and not target.startswith("/dev/shm/"):
                continue  # a device node has no meaningful position: no fdinfo read
            try:
                info = read_bytes(f"{fdinfo_dir}/{name}", 4096, single_record=True).decode("ascii", "replace")
            except OSError as err:
                rec["fdinfo_error"] = error_text(err)
            else:
                _parse_fdinfo(info, rec)
    return out, truncated


def _fd_kind(target: str) -> str:
    if target.startswith("/"):
        if target.startswith("/memfd:"):
            return "memfd"
        return "deleted" if target.endswith(DELETED_SUFFIX) else "file"
    if target.startswith("socket:["):
        return "socket"
    if target.startswith("pipe:["):
        return "pipe"
    if target.startswith("anon_inode:"):
        return "anon"
    return "other"


def _parse_fdinfo(info: str, rec: dict[str, Any]) -> None:
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key == "pos":
            rec["position"] = int(value)
        elif key == "flags":
            flags = int(value, 8)
            rec["flags"] = oct(flags)
            rec["mode"] = _ACCMODE.get(flags & os.O_ACCMODE, "?")
            if flags & os.O_APPEND:
                rec["mode"] = "a" if rec["mode"] == "w" else "a+"


class ExeHasher:
    """Hash executables through /proc/PID/exe (works when deleted), once per inode."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cache: dict[tuple[int, int, int, int, int], dict[str, Any]] = {}

    def hash(self, pid: int) -> dict[str, Any]:
        """Return sha256/size/nlink of a process's running executable, or the reason not."""
        exe = path(pid, "exe")
        try:
            st = os.stat(exe)
        except OSError as err:
            return {"exe_hash_error": error_text(err)}
        cached = self._cache.get(_key(st))
        if cached is None:
            try:
                fd = os.open(exe, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as err:
                return {"exe_hash_error": error_text(err)}
            try:
                st = os.fstat(fd)
                cached = self._cache.get(_key(st)) or self._digest(fd, st.st_size)
                self._cache[_key(st)] = cached
            finally:
                os.close(fd)
        return {"exe_size": st.st_size, "exe_inode": st.st_ino, "exe_dev": st.st_dev,
                "exe_nlink": st.st_nlink, **cached}

    def _digest(self, fd: int, size: int) -> dict[str, Any]:
        if size > self.max_bytes:
            return {"exe_sha256": None,
                    "exe_hash_error": f"larger than exe_hash_max_bytes={self.max_bytes}"}
        try:
            digest, _ = sha256_fd(fd)
        except OSError as err:
            return {"exe_sha256": None, "exe_hash_error": error_text(err)}
        return {"exe_sha256": digest}


def _key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
