"""Record that a delete (or a shutdown) must stop a command's collections for a key.

A delete from execd writes a marker in the store's ``.state/stop/`` which the
running collection's StopCheck (runner.py) sees. Kept apart from the runner
so that the AR entry point, which writes markers on every delete, imports no
collector.
"""
from __future__ import annotations

import os
import time

from ..evidence import fs
from ..evidence.store import Store

# Why a delete stops a capture, as written in the marker; a marker says "delete"
# unless the delete came while the install's logcollector was down, which is
# execd running every pending delete on ossec-control stop/restart.
STOP_DELETE = "delete"
STOP_SHUTDOWN = "shutdown"


def stop_marker_name(command: str, key: str) -> str:
    """Return the marker file name for a command's collection for a key."""
    return f"{command}@{key}"


def request_stop(store: Store, command: str, key: str, why: str = STOP_DELETE) -> None:
    """Record that collections of command (or ALL) for key must stop now, and why
    (STOP_DELETE or STOP_SHUTDOWN)."""
    if why not in (STOP_DELETE, STOP_SHUTDOWN):
        raise ValueError(f"unknown stop cause {why!r}")
    dfd = store.state_dir_fd("stop")
    try:
        name = stop_marker_name(command, key)
        fs.check_relpath(name)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            os.write(fd, f"{time.time():.6f} {why}\n".encode())
            os.utime(fd)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
