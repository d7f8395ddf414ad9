"""Read the manager's alerts (alerts.json when enabled, else alerts.log) for ossec-dfir's lines.

Only alerts whose logged line is an ossec-dfir outcome or finding line and
whose location is an ``active-responses.log`` are kept: the same text sent
through syslog by any local user (``logger``) also decodes, but comes from
another file. Reading is streamed and bounded (bytes read, alerts kept).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

MAX_READ_BYTES = 4 << 30        # of one alerts file
MAX_ALERTS = 200000             # ossec-dfir alerts kept
MAX_BLOCK_BYTES = 1 << 20       # one alerts.log block
AR_LOG = "active-responses.log"
PREFIXES = ("ossec-dfir: outcome=", "ossec-dfir: finding=")

_HEAD = re.compile(r"^\*\* Alert (\d+)\.(\d+):")
_WHERE = re.compile(r"^\d{4} \w{3} \d{2} \d{2}:\d{2}:\d{2} (.*)$")
_RULE = re.compile(r"^Rule: (\d+) \(level (\d+)\)")


@dataclass(frozen=True)
class Alert:
    """One alert raised for an ossec-dfir line."""

    epoch: float
    rule_id: str
    level: int
    agent: str
    location: str
    line: str


def agent_of(location: str) -> tuple[str, str]:
    """Return (agent name, file) of an alert location: ``(name) ip->file`` or ``host->file``."""
    where, _, path = location.rpartition("->")
    if where.startswith("(") and ")" in where:
        return where[1:where.index(")")], path
    return where or "-", path


def _keep(location: str, line: str) -> bool:
    path = agent_of(location)[1]
    return line.startswith(PREFIXES) and (path == AR_LOG or path.endswith("/" + AR_LOG))


def _blocks(fh: Any) -> Iterator[list[str]]:
    """Yield the lines of each ``** Alert`` block of alerts.log (bounded)."""
    block: list[str] = []
    size = 0
    read = 0
    for raw in fh:
        read += len(raw)
        if read > MAX_READ_BYTES:
            break
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if _HEAD.match(line):
            if block:
                yield block
            block, size = [line], len(raw)
            continue
        if block and size + len(raw) <= MAX_BLOCK_BYTES:
            block.append(line)
            size += len(raw)
    if block:
        yield block


def parse_log(fh: Any) -> Iterator[Alert]:
    """Yield the ossec-dfir alerts of an alerts.log opened in binary mode."""
    for block in _blocks(fh):
        if len(block) < 4:
            continue
        where = _WHERE.match(block[1])
        rule = _RULE.match(block[2])
        if not where or not rule:
            continue
        location = where.group(1)
        for line in block[3:]:
            if _keep(location, line):
                yield Alert(float(_HEAD.match(block[0]).group(1)), rule.group(1),  # type: ignore[union-attr]
                            int(rule.group(2)), agent_of(location)[0], location, line)
                break


def parse_json(fh: Any) -> Iterator[Alert]:
    """Yield the ossec-dfir alerts of an alerts.json (OSSEC or Wazuh), binary mode."""
    read = 0
    for raw in fh:
        read += len(raw)
        if read > MAX_READ_BYTES:
            break
        if len(raw) > MAX_BLOCK_BYTES:
            continue
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("rule"), dict):
            continue
        line, location = str(doc.get("full_log") or ""), str(doc.get("location") or "")
        if not _keep(location, line):
            continue
        rule = doc["rule"]
        agent = doc.get("agent") if isinstance(doc.get("agent"), dict) else {}
        name = str(agent.get("name") or doc.get("agent_name") or agent_of(location)[0])
        yield Alert(_epoch(doc), str(rule.get("id") or rule.get("sidid") or "-"),
                    int(rule.get("level") or 0), name, location, line)


def _epoch(doc: dict[str, Any]) -> float:
    if isinstance(doc.get("TimeStamp"), (int, float)):
        return float(doc["TimeStamp"]) / 1000
    stamp = str(doc.get("timestamp") or "")
    try:
        return datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(
            tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0.0


def alerts_file(ossec_dir: str) -> tuple[str, str]:
    """Return (path, "json" or "log"): alerts.json when the manager writes it, else alerts.log."""
    base = os.path.join(ossec_dir, "logs", "alerts")
    path = os.path.join(base, "alerts.json")
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        return path, "json"
    return os.path.join(base, "alerts.log"), "log"


def read_alerts(path: str, kind: str, since: float = 0.0) -> list[Alert]:
    """Return the ossec-dfir alerts of one alerts file (not through a link), at most MAX_ALERTS."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    out: list[Alert] = []
    with os.fdopen(fd, "rb") as fh:
        for alert in (parse_json if kind == "json" else parse_log)(fh):
            if alert.epoch >= since:
                out.append(alert)
                if len(out) >= MAX_ALERTS:
                    break
    return out
