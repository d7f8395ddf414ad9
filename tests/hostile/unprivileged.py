"""Plant hostile objects as an unprivileged user (nobody) from a forked child, bounded."""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def nobody() -> pwd.struct_passwd:
    """Return the passwd entry of the unprivileged user the tests act as."""
    return pwd.getpwnam("nobody")


def drop_to_nobody() -> None:
    """Drop every privilege of this (forked) process to nobody's uid and gid."""
    user = nobody()
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


def as_nobody(action: Callable[[], None], timeout_s: float = 20.0) -> None:
    """Run action in a forked child as nobody; raise if it fails or outlasts timeout_s."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            drop_to_nobody()
            action()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the unprivileged child outlasted {timeout_s} s")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged child failed"


@contextlib.contextmanager
def public_dir(prefix: str = "dfir-hostile-") -> Iterator[Path]:
    """Yield a fresh sticky world-writable directory under /tmp (like /tmp itself)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o1777)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
