"""Turn an active-response invocation into one validated, frozen Request.

Two protocols (see shared/reference/active-response-protocol.md):

* OSSEC: ``argv = [script, add|delete, user, srcip, alert_id, rule_id, location...,
  filename...]`` with ``-`` for absent fields; the manual form of
  ``agent_control -b`` is ``add - IP (from_the_server) (no_rule_id)``. The
  location may contain spaces and take several slots; the filename is
  shell-escaped by analysisd and may take several slots too (see
  ossec_filename.py for how it is rejoined and un-escaped).
* Wazuh 4.2+: no arguments, one JSON line on stdin.

Every field is attacker-influenced. Nothing here executes anything, and a
field that does not validate refuses the whole invocation (BadRequest), except
the alert's filename: one that cannot be used unambiguously is dropped and
its reason kept in ``Request.filename_refused`` (the entry point refuses the
request when its profile needs the filename).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import select
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..errors import BadRequest
from .ossec_filename import split_extra

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_ARG_CHARS = 4096
MAX_ARGS = 64
MAX_STDIN_BYTES = 1 << 20
STDIN_TIMEOUT_S = 5.0
MAX_RAW_CHARS = 65536

_ALERT_ID = re.compile(r"^\d{1,20}\.\d{1,20}$")
_RULE_ID = re.compile(r"^\d{1,10}$")
_USER = re.compile(r"^[A-Za-z0-9._@?$\\][A-Za-z0-9._@?$\\-]{0,255}$")
_AGENT_ID = re.compile(r"^\d{1,10}$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
MANUAL_ALERT_ID = "(from_the_server)"
MANUAL_RULE_ID = "(no_rule_id)"


@dataclass(frozen=True)
class Request:
    """A validated invocation: what to do, for which IP, triggered by which alert."""

    protocol: str                       # "ossec", "wazuh" or "cli"
    action: str                         # "add" or "delete"
    command: str                        # the AR command / profile name, e.g. dfir-pcap
    srcip: IPAddress | None = None
    user: str | None = None
    alert_id: str | None = None
    rule_id: str | None = None
    agent_id: str | None = None
    agent_name: str | None = None
    location: str | None = None
    filename: str | None = None
    filename_refused: str | None = None  # why the alert's filename was dropped
    extra_args: tuple[str, ...] = ()
    manual: bool = False
    alert_timestamp: str | None = None
    received: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"))
    raw: str = ""

    @property
    def key(self) -> str:
        """Return the incident key of this request (see incident_key)."""
        return incident_key(self.srcip, self.filename)

    def to_record(self) -> dict[str, Any]:
        """Return a JSON-safe dict of every field (the trigger record)."""
        return {"protocol": self.protocol, "action": self.action, "command": self.command,
                "srcip": str(self.srcip) if self.srcip is not None else None,
                "user": self.user, "alert_id": self.alert_id, "rule_id": self.rule_id,
                "agent_id": self.agent_id, "agent_name": self.agent_name,
                "location": self.location, "filename": self.filename,
                "filename_refused": self.filename_refused,
                "extra_args": list(self.extra_args), "manual": self.manual,
                "alert_timestamp": self.alert_timestamp, "received": self.received,
                "raw": self.raw}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Request:
        """Rebuild a Request from to_record() output (re-validating the IP)."""
        values = dict(rec)
        values["srcip"] = parse_ip(rec["srcip"]) if rec.get("srcip") else None
        values["extra_args"] = tuple(rec.get("extra_args") or ())
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in names})


def incident_key(srcip: IPAddress | None, filename: str | None = None) -> str:
    """Return the incident key: what the alert is about.

    The normalised IP (``:`` as ``_``) when there is a srcip; else the alert's
    file as ``file-<first 16 hex of sha256(path bytes)>``; else ``host``.
    """
    if srcip is None:
        if filename:
            return "file-" + hashlib.sha256(os.fsencode(filename)).hexdigest()[:16]
        return "host"
    key = str(srcip).replace(":", "_")
    # "::1" would give "__1", not a safe path component: write the zero group.
    return "0" + key if key.startswith("_") else key


def parse_ip(text: Any, field_name: str = "srcip") -> IPAddress:
    """Validate an IP address strictly (IPv4-mapped IPv6 becomes IPv4)."""
    if not isinstance(text, str) or not text or len(text) > 64:
        raise BadRequest("not an IP address", field_name)
    if text.startswith("-") or not _PRINTABLE.fullmatch(text) or text.strip() != text \
            or "%" in text or "/" in text:
        raise BadRequest("not an IP address", field_name)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as err:
        raise BadRequest("not an IP address", field_name) from err
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _check_text(value: Any, field_name: str, max_chars: int = MAX_ARG_CHARS) -> str:
    if not isinstance(value, str):
        raise BadRequest("must be a string", field_name)
    if len(value) > max_chars:
        raise BadRequest(f"longer than {max_chars} characters", field_name)
    if "\x00" in value or any(ord(c) < 0x20 and c != "\t" for c in value):
        raise BadRequest("contains control characters", field_name)
    return value


def _opt(value: str) -> str | None:
    return None if value in ("-", "") else value


def _user(value: Any) -> str | None:
    if value is None:
        return None
    text = _check_text(value, "user", 256)
    if _opt(text) is None:
        return None
    if not _USER.fullmatch(text):
        raise BadRequest("not a user name", "user")
    return text


def check_filename(value: Any) -> tuple[str | None, str | None]:
    """Return (filename, None) for a usable alert filename, else (None, why not).

    Usable: text without NUL whose bytes (surrogateescape) encode, an absolute
    path without ``.``/``..`` components. Other control characters are valid in
    a file name and kept (refusing them would let an attacker hide a file from
    a filename profile); every log line escapes them. ``-`` or an empty value is
    no filename and no problem.
    """
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, "must be a string"
    if _opt(value) is None:
        return None, None
    if len(value) > MAX_ARG_CHARS:
        return None, f"longer than {MAX_ARG_CHARS} characters"
    if "\x00" in value:
        return None, "contains a NUL character"
    try:
        os.fsencode(value)
    except UnicodeError:
        return None, "not encodable as file system bytes"
    if not value.startswith("/") or "/../" in value + "/" or "/./" in value + "/":
        return None, "must be an absolute, normalised path"
    return value, None


def _action(value: Any) -> str:
    if value not in ("add", "delete"):
        raise BadRequest("must be add or delete", "action")
    return str(value)


def sanitize(text: str, max_chars: int = 512) -> str:
    """Return text safe for a one-line log: printable ASCII, escaped, bounded."""
    out = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return out if len(out) <= max_chars else out[:max_chars] + "...[truncated]"


def from_ossec_argv(command: str, args: list[str]) -> Request:
    """Parse OSSEC's positional arguments (argv without argv[0])."""
    if len(args) > MAX_ARGS:
        raise BadRequest(f"more than {MAX_ARGS} arguments", "argv")
    for i, arg in enumerate(args[:5]):
        _check_text(arg, f"argv[{i + 1}]")
    for i, arg in enumerate(args[5:], 6):  # location and filename: checked once split
        if len(arg) > MAX_ARG_CHARS:
            raise BadRequest(f"longer than {MAX_ARG_CHARS} characters", f"argv[{i}]")
    raw = " ".join(sanitize(a, 256) for a in args)
    if len(args) < 3:
        raise BadRequest("expected: add|delete user srcip [alert_id rule_id ...]", "argv")
    action = _action(args[0])
    user = _user(args[1])
    srcip = None if args[2] == "-" else parse_ip(args[2])
    alert_id = rule_id = None
    manual = False
    if len(args) > 3 and args[3] != "-":
        if args[3] == MANUAL_ALERT_ID:
            manual = True
        elif _ALERT_ID.fullmatch(args[3]):
            alert_id = args[3]
        else:
            raise BadRequest("not an alert id (<epoch>.<offset>)", "alert_id")
    if len(args) > 4 and args[4] != "-":
        if args[4] == MANUAL_RULE_ID:
            manual = True
        elif _RULE_ID.fullmatch(args[4]):
            rule_id = args[4]
        else:
            raise BadRequest("not a rule id (digits)", "rule_id")
    location, name, problem = split_extra(command, args)
    if location is not None:
        location = _opt(_check_text(location, "location"))
    filename = None
    if name is not None:
        filename, problem = check_filename(name)
    return Request(protocol="ossec", action=action, command=command, srcip=srcip, user=user,
                   alert_id=alert_id, rule_id=rule_id, location=location, filename=filename,
                   filename_refused=problem, manual=manual, raw=raw[:MAX_RAW_CHARS])


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def from_wazuh_json(command: str, line: bytes) -> Request:
    """Parse Wazuh's one-line JSON message (bytes as read from stdin)."""
    if not line.strip():
        raise BadRequest("no input on stdin (Wazuh sends one JSON line)", "stdin")
    try:
        text = line.decode("utf-8", "strict")
    except UnicodeDecodeError as err:
        raise BadRequest("stdin is not valid UTF-8", "stdin") from err
    if not text.endswith("\n"):
        raise BadRequest("truncated input: no end of line", "stdin")
    if "\\u0000" in text or "\x00" in text:
        raise BadRequest("NUL character in input", "stdin")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise BadRequest("not valid JSON", "stdin") from err
    if not isinstance(msg, dict) or not isinstance(msg.get("parameters"), dict):
        raise BadRequest("not a Wazuh active-response message", "stdin")
    action = _action(msg.get("command"))
    params = msg["parameters"]
    alert = params.get("alert")
    if alert is None:
        alert = {}
    if not isinstance(alert, dict):
        raise BadRequest("must be an object", "parameters.alert")
    srcip_raw = _get(alert, "data", "srcip")
    srcip = None if srcip_raw is None else parse_ip(srcip_raw, "parameters.alert.data.srcip")
    user = _get(alert, "data", "dstuser") or _get(alert, "data", "srcuser")
    rule_id = _get(alert, "rule", "id")
    if rule_id is not None:
        if not isinstance(rule_id, str) or not _RULE_ID.fullmatch(rule_id):
            raise BadRequest("not a rule id (digits)", "parameters.alert.rule.id")
    alert_id = alert.get("id")
    if alert_id is not None and (not isinstance(alert_id, str) or not _ALERT_ID.fullmatch(alert_id)):
        raise BadRequest("not an alert id (<epoch>.<offset>)", "parameters.alert.id")
    agent_id = _get(alert, "agent", "id")
    if agent_id is not None and (not isinstance(agent_id, str) or not _AGENT_ID.fullmatch(agent_id)):
        raise BadRequest("not an agent id", "parameters.alert.agent.id")
    agent_name = _get(alert, "agent", "name")
    if agent_name is not None:
        agent_name = _check_text(agent_name, "parameters.alert.agent.name", 256)
    location = alert.get("location")
    if location is not None:
        location = _check_text(location, "parameters.alert.location")
    timestamp = alert.get("timestamp")
    if timestamp is not None:
        timestamp = _check_text(timestamp, "parameters.alert.timestamp", 64)
    extra = params.get("extra_args") or []
    if not isinstance(extra, list) or len(extra) > MAX_ARGS:
        raise BadRequest(f"must be a list of at most {MAX_ARGS} strings",
                         "parameters.extra_args")
    extra_args = tuple(_check_text(a, "parameters.extra_args", 256) for a in extra)
    # syscheck.path is passed as it is (JSON, not shell-escaped).
    filename, problem = check_filename(_get(alert, "syscheck", "path"))
    return Request(protocol="wazuh", action=action, command=command, srcip=srcip,
                   user=_user(user), alert_id=alert_id, rule_id=rule_id, agent_id=agent_id,
                   agent_name=agent_name, location=location, filename=filename,
                   filename_refused=problem,
                   extra_args=extra_args, manual=alert_id is None and rule_id is None,
                   alert_timestamp=timestamp, raw=text.strip()[:MAX_RAW_CHARS])


def read_line(fd: int, max_bytes: int = MAX_STDIN_BYTES,
              timeout_s: float = STDIN_TIMEOUT_S) -> bytes:
    """Read exactly one line from fd, bounded in size and time (never to EOF)."""
    buf = bytearray()
    deadline = time.monotonic() + timeout_s
    while len(buf) <= max_bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BadRequest(f"no complete line within {timeout_s:g} s", "stdin")
        try:
            ready, _, _ = select.select([fd], [], [], left)
        except (OSError, ValueError) as err:
            raise BadRequest("stdin is not readable", "stdin") from err
        if not ready:
            continue
        try:
            # One byte at a time past the first newline would be wrong; a pipe
            # from execd carries one line and then nothing until we answer.
            chunk = os.read(fd, min(65536, max_bytes + 1 - len(buf)))
        except OSError as err:
            raise BadRequest("stdin is not readable", "stdin") from err
        if not chunk:
            return bytes(buf)
        nl = chunk.find(b"\n")
        if nl >= 0:
            buf += chunk[:nl + 1]
            return bytes(buf)
        buf += chunk
    raise BadRequest(f"input line longer than {max_bytes} bytes", "stdin")


def check_keys_message(command: str, keys: list[str]) -> bytes:
    """Return Wazuh's check_keys line for this script."""
    return (json.dumps({"version": 1, "origin": {"name": command, "module": "active-response"},
                        "command": "check_keys", "parameters": {"keys": keys}},
                       separators=(",", ":")) + "\n").encode()


def parse_check_keys_answer(line: bytes) -> str:
    """Return "continue" or "abort" from execd's answer (BadRequest otherwise)."""
    try:
        answer = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest("check_keys answer is not JSON", "stdin") from err
    command = answer.get("command") if isinstance(answer, dict) else None
    if command not in ("continue", "abort"):
        raise BadRequest("check_keys answer is neither continue nor abort", "stdin")
    return str(command)
