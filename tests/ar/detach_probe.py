"""Started by tests/ar/test_detach.py through detach.spawn: reports what it was given."""
from __future__ import annotations

import json
import os
import sys


def _session_nice() -> int | None:
    try:
        with open("/proc/self/autogroup", "rb") as fh:
            return int(fh.read().rsplit(b"nice", 1)[1])
    except (OSError, ValueError, IndexError):
        return None


def main(argv: list[str]) -> int:
    """Write the report into the descriptor argv[0] names, then exit."""
    fd = int(argv[0])
    # what is open once the listing's own descriptor is closed again
    fds = sorted(int(n) for n in os.listdir("/proc/self/fd")
                 if os.path.exists(f"/proc/self/fd/{n}"))
    report = {"pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
              "nice": os.getpriority(os.PRIO_PROCESS, 0), "session_nice": _session_nice(),
              "cwd": os.getcwd(), "env": dict(os.environ), "fds": fds,
              "stdio": [os.readlink(f"/proc/self/fd/{n}") for n in (0, 1, 2)],
              "argv": sys.argv[2:]}
    os.write(fd, json.dumps(report).encode())
    os.close(fd)
    return 0
