"""Tell whether the installation's logcollector is reading the active-responses log.

OSSEC's and Wazuh's logcollector write ``<ossec>/var/run/<name>-<pid>.pid``
and hold every monitored file open. A logcollector counts when that pid runs
``<ossec>/bin/<name>`` (a reused pid does not) and has the log's inode open,
already seeked into it (it opens, then seeks to the end: a line appended in
between would be skipped).
"""
from __future__ import annotations

import os
import re
import time

from ..settings import Settings

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the AR hot path
    from typing import Callable

LOGCOLLECTORS = ("ossec-logcollector", "wazuh-logcollector")
PIDFILE_RE = re.compile(r"^(ossec|wazuh)-logcollector-([1-9][0-9]{0,9})\.pid$")
MAX_FDS_SCANNED = 65536
SETTLE_S = 3.0
PROC = "/proc"


def has_install(ossec_dir: str) -> bool:
    """Return True when ossec_dir is an OSSEC or Wazuh install (it has a logcollector)."""
    return any(os.path.exists(os.path.join(ossec_dir, "bin", name)) for name in LOGCOLLECTORS)


def _runs_binary(pid: int, binary: str) -> bool:
    """Return True when pid executes binary (so a reused pid does not count)."""
    try:
        exe = os.readlink(f"{PROC}/{pid}/exe")
    except OSError:
        return False
    exe = exe.removesuffix(" (deleted)")  # upgraded in place while running
    return exe == os.path.realpath(binary)


def _fd_position(pid: int, fd: str) -> int | None:
    try:
        with open(f"{PROC}/{pid}/fdinfo/{fd}", "rb") as fh:
            for raw in fh.read(4096).splitlines():
                if raw.startswith(b"pos:"):
                    return int(raw.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _holds(pid: int, log: os.stat_result, positioned: bool) -> bool:
    """Return True when pid has the log's inode open (and, if positioned, has seeked into it).

    logcollector opens a file and then seeks to its end; a line appended in
    between would be skipped, so before writing, a descriptor still at offset
    0 of a non-empty log does not count yet.
    """
    try:
        entries = os.scandir(f"{PROC}/{pid}/fd")
    except OSError:
        return False
    with entries:
        for count, entry in enumerate(entries):
            if count >= MAX_FDS_SCANNED:
                return False
            try:
                st = os.stat(entry.path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != (log.st_dev, log.st_ino):
                continue
            if not positioned:
                return True
            pos = _fd_position(pid, entry.name)
            if pos is not None and (pos > 0 or log.st_size == 0):
                return True
    return False


def log_holder(ossec_dir: str, log_file: str, positioned: bool = True) -> int | None:
    """Return the pid of this install's running logcollector holding log_file, or None.

    positioned: the descriptor must also have been seeked (before writing);
    after writing, only that the same process still holds the file matters.
    """
    try:
        log = os.stat(log_file)
        names = sorted(os.listdir(os.path.join(ossec_dir, "var", "run")))
    except OSError:
        return None
    for name in names:
        match = PIDFILE_RE.match(name)
        if not match:
            continue
        pid = int(match.group(2))
        binary = os.path.join(ossec_dir, "bin", f"{match.group(1)}-logcollector")
        if _runs_binary(pid, binary) and _holds(pid, log, positioned):
            return pid
    return None


def settled_holder(ossec_dir: str, log_file: str, wait_s: float = SETTLE_S,
                   sleep: Callable[[float], None] = time.sleep) -> int | None:
    """Return log_holder(), waiting up to wait_s while a logcollector holds the log unseeked.

    A descriptor at offset 0 of a non-empty log is either between fopen and
    fseek (microseconds) or on a log that was empty when logcollector opened
    it and whose first lines it has not read yet (its loop reads every
    second): wait for it rather than calling the logcollector down.
    """
    deadline = time.monotonic() + wait_s
    while True:
        pid = log_holder(ossec_dir, log_file)
        if pid is not None or time.monotonic() >= deadline or \
                log_holder(ossec_dir, log_file, positioned=False) is None:
            return pid
        sleep(0.2)


def is_down(config: Settings) -> bool:
    """Return True when an install owns the log but no logcollector of it holds the log."""
    return has_install(config.ossec_dir) and \
        log_holder(config.ossec_dir, config.log_file) is None
