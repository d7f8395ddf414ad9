"""Sessions and system state for the triage collector: users, modules, mounts, taint, auth log.

Each function returns records and a list of problems (why a source could not
be read); none raises for a missing or unreadable source.
"""
from __future__ import annotations

import os
import re
import stat
import time
from typing import Any

from ... import procfs
from ...evidence.store import utc_iso, utc_iso_ns

SYS = "/sys"
# Bits of /proc/sys/kernel/tainted (Documentation/admin-guide/tainted-kernels.rst).
TAINT_FLAGS = ("P proprietary module", "F module force-loaded", "S out-of-spec system",
               "R module force-unloaded", "M machine check", "B bad page",
               "U taint requested by user space", "D kernel died (oops/BUG)",
               "A ACPI table overridden", "W warning issued", "C staging driver",
               "I firmware workaround", "O out-of-tree module", "E unsigned module",
               "L soft lockup", "K live-patched", "X auxiliary taint", "T randstruct build",
               "N test module")


def users() -> tuple[list[dict[str, Any]], list[str]]:
    """Return the logged-in sessions (utmp) with their start times in UTC."""
    import psutil

    try:
        sessions = psutil.users()
    except OSError as err:
        return [], [f"users: {procfs.error_text(err)}"]
    return [{"name": u.name, "terminal": u.terminal, "host": u.host,
             "started": utc_iso(u.started), "pid": getattr(u, "pid", None)}
            for u in sessions], []


def clock() -> dict[str, Any]:
    """Return boot time, uptime and the collection time (UTC)."""
    import psutil

    boot = psutil.boot_time()
    return {"boot_time": utc_iso(boot), "uptime_s": round(time.time() - boot, 3),
            "collected": utc_iso(time.time())}


def kernel_taint() -> tuple[dict[str, Any], list[str]]:
    """Return the kernel taint value and its decoded flags."""
    try:
        value = int(procfs.read_text(os.path.join(procfs.PROC, "sys", "kernel", "tainted"),
                                      64).strip())
    except (OSError, ValueError) as err:
        return {"value": None}, [f"kernel taint: {procfs.error_text(err)}"]
    flags = [name for bit, name in enumerate(TAINT_FLAGS) if value >> bit & 1]
    return {"value": value, "flags": flags, "tainted": value != 0}, []


def modules() -> tuple[list[dict[str, Any]], list[str]]:
    """Return the loaded kernel modules (/proc/modules) with their taint flags."""
    path = os.path.join(procfs.PROC, "modules")
    try:
        text = procfs.read_text(path, 4 << 20)
    except OSError as err:
        if not os.path.exists(path):
            return _builtin_modules(), [f"modules: {path} does not exist (kernel without "
                                        "loadable module support); listed /sys/module "
                                        "instead (built-in modules, no sizes)"]
        return [], [f"modules: {procfs.error_text(err)}"]

    def parse(line: str) -> dict[str, Any]:
        f = line.split()
        rec: dict[str, Any] = {"name": f[0], "size": int(f[1]), "refcount": _int(f[2]),
                               "used_by": [d for d in f[3].strip(",").split(",")
                                           if d and d != "-"],
                               "state": f[4], "address": f[5] if len(f) > 5 else None,
                               "taint": f[6].strip("()") if len(f) > 6 else ""}
        rec["sys_taint"] = _read_sys(f[0], "taint")
        return rec
    problems: list[str] = []
    out = procfs.parse_lines((ln for ln in text.split("\n") if ln.strip()), parse, "modules",
                             problems)
    return out, problems


def _builtin_modules() -> list[dict[str, Any]]:
    try:
        names = sorted(os.listdir(os.path.join(SYS, "module")))
    except OSError:
        return []
    return [{"name": n, "size": None, "state": _read_sys(n, "initstate") or "builtin",
             "taint": _read_sys(n, "taint")} for n in names]


def _read_sys(module: str, name: str) -> str | None:
    try:
        return procfs.read_text(os.path.join(SYS, "module", module, name), 256).strip()
    except OSError:
        return None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def mounts() -> tuple[list[dict[str, Any]], list[str]]:
    """Return the mounts of the host's mount namespace (pid 1, else our own)."""
    problems: list[str] = []
    for pid in ("1", "self"):
        try:
            # bytes kept (surrogateescape): a user's FUSE mount point may be any name
            text = procfs.read_bytes(procfs.path(pid, "mountinfo"), 8 << 20).decode(
                "utf-8", "surrogateescape")
            break
        except OSError as err:
            problems.append(f"mounts: /proc/{pid}/mountinfo: {procfs.error_text(err)}")
    else:
        return [], problems

    def parse(line: str) -> dict[str, Any]:
        pre, sep, post = line.partition(" - ")
        f, g = pre.split(), post.split()
        if not sep:
            raise ValueError("no separator")
        return {"mount_id": int(f[0]), "parent_id": int(f[1]), "device": f[2],
                "root": _unescape(f[3]), "mount_point": _unescape(f[4]),
                "options": f[5], "optional": f[6:], "fstype": g[0],
                "source": _unescape(g[1]), "super_options": g[2] if len(g) > 2 else None,
                "namespace_of": pid}
    bad: list[str] = []
    out = procfs.parse_lines((ln for ln in text.split("\n") if ln.strip()), parse, "mounts", bad)
    return out, (problems if pid == "self" else []) + bad


def _unescape(text: str) -> str:
    """Undo the octal escapes of mountinfo (space is \\040), keeping the name's bytes."""
    if "\\" not in text:
        return text
    raw = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8) & 0xFF]),
                 text.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


def auth_log_tail(paths: tuple[str, ...], max_lines: int, max_bytes: int
                  ) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Return the last max_lines lines (at most max_bytes read) of the first readable auth log."""
    problems: list[str] = []
    for log_path in paths:
        try:
            fd = os.open(log_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as err:
            if os.path.lexists(log_path):
                problems.append(f"auth log {log_path}: {procfs.error_text(err)}")
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                problems.append(f"auth log {log_path}: not a regular file")
                continue
            start = max(0, st.st_size - max_bytes)
            data = os.pread(fd, st.st_size - start, start)
        except OSError as err:
            problems.append(f"auth log {log_path}: {procfs.error_text(err)}")
            continue
        finally:
            os.close(fd)
        lines = data.split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first line was cut by max_bytes
        if lines and not lines[-1]:
            lines.pop()
        lines = lines[-max_lines:] if max_lines else []
        info = {"path": log_path, "size": st.st_size, "mtime": utc_iso_ns(st.st_mtime_ns),
                "read_from_offset": start, "lines": len(lines)}
        return ([{"path": log_path, "line": line.decode("utf-8", "replace")} for line in lines],
                info, problems)
    if not problems:
        problems.append("auth log: none of " + ", ".join(paths) + " exists")
    return [], {"path": None}, problems
