"""Read what psutil has no answer for from /proc: fds, namespaces, cgroups, exe bytes.

Every function takes a pid and raises ``OSError`` (ENOENT/ESRCH when the
process is gone, EACCES/EPERM when it is not ours); callers record the error
on the process's record and go on. ``PROC`` is a module constant so tests can
point it elsewhere (psutil ``PROCFS_PATH``).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from typing import Any

PROC = "/proc"
NAMESPACES = ("pid", "net", "mnt", "uts", "ipc", "user", "cgroup")
# A 64-hex id in a cgroup path names a container (docker, containerd, podman, CRI-O).
_CONTAINER_RE = re.compile(r"(?:docker|libpod|crio|cri-containerd|containerd)?[-/:]?([0-9a-f]{64})")
_NS_RE = re.compile(r"^[a-z_]+:\[(\d+)\]$")
_ACCMODE = {os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}
DELETED_SUFFIX = " (deleted)"


def path(pid: int | str, *parts: str) -> str:
    """Return ``<PROC>/<pid>/<parts>``."""
    return os.path.join(PROC, str(pid), *parts)


def error_text(err: BaseException) -> str:
    """Return a short, stable text for an OSError or psutil error on one item."""
    code = getattr(err, "errno", None)
    if code in (errno.EACCES, errno.EPERM) or type(err).__name__ == "AccessDenied":
        return "access denied"
    if code in (errno.ENOENT, errno.ESRCH) or type(err).__name__ in ("NoSuchProcess",
                                                                      "ZombieProcess"):
        return "process gone"
    return f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"


def is_denied(err: BaseException) -> bool:
    """Return True when an error means 'not allowed' rather than 'gone'."""
    return error_text(err) == "access denied"


def read_text(file_path: str, max_bytes: int = 1 << 20) -> str:
    """Read a small pseudo file as text (undecodable bytes replaced)."""
    with open(file_path, "rb") as fh:
        return fh.read(max_bytes).decode("utf-8", "replace")


def readlink(pid: int, name: str) -> str:
    """Return the target of ``/proc/PID/<name>`` (raises OSError)."""
    return os.readlink(path(pid, name))


def namespaces(pid: int) -> dict[str, int | None]:
    """Return the inode number of each namespace of a process (None when unreadable)."""
    out: dict[str, int | None] = {}
    for kind in NAMESPACES:
        try:
            match = _NS_RE.match(os.readlink(path(pid, "ns", kind)))
        except OSError:
            out[kind] = None
            continue
        out[kind] = int(match.group(1)) if match else None
    return out


def cgroup(pid: int) -> tuple[str, str | None]:
    """Return (the cgroup text of a process, a container id when the cgroup names one)."""
    text = read_text(path(pid, "cgroup"), 65536).strip()
    match = _CONTAINER_RE.search(text)
    return text, match.group(1) if match else None


def stat_fields(pid: int) -> list[str]:
    """Return /proc/PID/stat split after the command name (field 3 is index 0)."""
    raw = read_text(path(pid, "stat"), 4096)
    return raw[raw.rfind(")") + 2:].split()


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

    Kinds: ``file``, ``deleted`` (an open file whose name is gone), ``memfd``,
    ``socket`` (with its inode), ``pipe``, ``anon`` (anon_inode), ``other``.
    Raises OSError when the fd directory itself cannot be listed.
    """
    fd_dir = path(pid, "fd")
    names = os.listdir(fd_dir)
    truncated = len(names) > max_fds
    out: list[dict[str, Any]] = []
    for name in sorted(names, key=int)[:max_fds]:
        rec: dict[str, Any] = {"fd": int(name)}
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError as err:
            rec["error"] = error_text(err)
            out.append(rec)
            continue
        rec["target"] = target
        kind = _fd_kind(target)
        rec["kind"] = kind
        if kind == "socket" or kind == "pipe":
            rec["inode"] = int(target[target.index("[") + 1:-1])
        if kind in ("file", "deleted", "memfd"):
            rec["path"] = target[:-len(DELETED_SUFFIX)] if target.endswith(DELETED_SUFFIX) \
                else target
            try:
                info = read_text(path(pid, "fdinfo", name), 4096)
            except OSError as err:
                rec["fdinfo_error"] = error_text(err)
            else:
                _parse_fdinfo(info, rec)
        out.append(rec)
    return out, truncated


def _fd_kind(target: str) -> str:
    if target.startswith("socket:["):
        return "socket"
    if target.startswith("pipe:["):
        return "pipe"
    if target.startswith("anon_inode:"):
        return "anon"
    if target.startswith("/memfd:"):
        return "memfd"
    if target.startswith("/"):
        return "deleted" if target.endswith(DELETED_SUFFIX) else "file"
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
        self._cache: dict[tuple[int, int, int, int], dict[str, Any]] = {}

    def hash(self, pid: int) -> dict[str, Any]:
        """Return sha256/size/nlink of a process's running executable, or the reason not."""
        try:
            fd = os.open(path(pid, "exe"), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as err:
            return {"exe_hash_error": error_text(err)}
        try:
            st = os.fstat(fd)
            out: dict[str, Any] = {"exe_size": st.st_size, "exe_inode": st.st_ino,
                                   "exe_dev": st.st_dev, "exe_nlink": st.st_nlink}
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._cache.get(key)
            if cached is None:
                cached = self._digest(fd, st.st_size)
                self._cache[key] = cached
            out.update(cached)
            return out
        finally:
            os.close(fd)

    def _digest(self, fd: int, size: int) -> dict[str, Any]:
        if size > self.max_bytes:
            return {"exe_sha256": None,
                    "exe_hash_error": f"larger than exe_hash_max_bytes={self.max_bytes}"}
        digest = hashlib.sha256()
        try:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
        except OSError as err:
            return {"exe_sha256": None, "exe_hash_error": error_text(err)}
        return {"exe_sha256": digest.hexdigest()}
