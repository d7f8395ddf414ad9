"""Write one-line records to OSSEC's active-responses.log.

Invocation lines follow the stock scripts: ``date`` output, the script path
and its (sanitised) arguments, then `` -- `` and what happened. Outcome lines
start with ``ossec-dfir: `` so the shipped decoder (etc/ossec.conf.d/) can
turn them into alerts on the manager; every outcome line goes through
``outcome()``, which keeps it for redelivery when the installation's
logcollector is not reading the log (delivery.py).
"""
from __future__ import annotations

import time

from . import delivery
from ..settings import Settings
from .request import sanitize

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the AR hot path
    from ..evidence.store import Store

MAX_LINE_CHARS = delivery.MAX_LINE_CHARS


def _append(log_file: str, line: str) -> bool:
    return delivery.append_line(log_file, line[:MAX_LINE_CHARS])


def invocation(log_file: str, argv0: str, args_text: str, status: str) -> bool:
    """Append the one line every invocation writes (OSSEC style)."""
    stamp = time.strftime("%a %b %d %H:%M:%S %Z %Y")
    return _append(log_file, f"{stamp} {sanitize(argv0, 256)} {args_text} -- {status}")


def format_outcome(fields: dict[str, object]) -> str:
    """Return a parseable outcome line: ``ossec-dfir: key=value ...``."""
    parts = []
    for key, value in fields.items():
        text = sanitize(str(value), 512).replace(" ", "_") if key != "reason" else \
            '"' + sanitize(str(value), 1024).replace('"', "'") + '"'
        parts.append(f"{key}={text}")
    line = "ossec-dfir: " + " ".join(parts)
    return line.replace("\n", " ").replace("\r", " ")[:MAX_LINE_CHARS]


def failed_fields(command: str, srcip: object, reason: str) -> dict[str, object]:
    """Return the fields of a failed outcome line with no incident or step to name.

    Every field the shipped decoder reads is there (``-`` when unknown), so the
    manager raises the failed alert (rule 100903) for it too.
    """
    return {"outcome": "failed", "command": command, "srcip": srcip or "-", "incident": "-",
            "steps": "-", "manifest_sha256": "-", "reason": reason}


def outcome_to(log_file: str, fields: dict[str, object]) -> bool:
    """Write an outcome line where no config could be loaded (no redelivery bookkeeping)."""
    return _append(log_file, format_outcome(fields))


def outcome(config: Settings, fields: dict[str, object], store: Store | None = None) -> bool:
    """Write an outcome line to config.log_file, kept for redelivery while no
    logcollector of the install reads the log; return True when it reached the log."""
    return delivery.write_outcome(config, format_outcome(fields), store)


def outcome_line(config: Settings, line: str, store: Store | None = None) -> bool:
    """Write a line already formatted (a finding line) like an outcome line, kept for
    redelivery; return True when it reached the log."""
    return delivery.write_outcome(config, line.replace("\n", " ").replace("\r", " ")
                                  [:MAX_LINE_CHARS], store)
