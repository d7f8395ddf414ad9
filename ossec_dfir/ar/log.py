"""Write one-line records to OSSEC's active-responses.log.

Invocation lines follow the stock scripts: ``date`` output, the script path
and its (sanitised) arguments, then `` -- `` and what happened. Outcome lines
start with ``ossec-dfir: `` so the shipped decoder (etc/ossec.conf.d/) can
turn them into alerts on the manager.
"""
from __future__ import annotations

import os
import time

from .request import sanitize

MAX_LINE_CHARS = 4096


def _append(log_file: str, line: str) -> bool:
    line = line.replace("\n", " ").replace("\r", " ")[:MAX_LINE_CHARS] + "\n"
    try:
        os.makedirs(os.path.dirname(log_file), mode=0o750, exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o640)
    except OSError:
        return False
    try:
        os.write(fd, line.encode("ascii", "backslashreplace"))
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def invocation(log_file: str, argv0: str, args_text: str, status: str) -> bool:
    """Append the one line every invocation writes (OSSEC style)."""
    stamp = time.strftime("%a %b %d %H:%M:%S %Z %Y")
    return _append(log_file, f"{stamp} {sanitize(argv0, 256)} {args_text} -- {status}")


def outcome(log_file: str, fields: dict[str, object]) -> bool:
    """Append a parseable outcome line: ``ossec-dfir: key=value ...``."""
    parts = []
    for key, value in fields.items():
        text = sanitize(str(value), 512).replace(" ", "_") if key != "reason" else \
            '"' + sanitize(str(value), 1024).replace('"', "'") + '"'
        parts.append(f"{key}={text}")
    return _append(log_file, "ossec-dfir: " + " ".join(parts))
