"""Turn an active-response invocation into one validated, frozen Request.

Two protocols (docs/ossec.md tells how OSSEC and Wazuh start a script):

* OSSEC: ``argv = [script, add|delete, user, srcip, alert_id, rule_id, location...,
  filename...]`` with ``-`` for absent fields; the manual form of
  ``agent_control -b`` is ``add - IP (from_the_server) (no_rule_id)``. The
  location may contain spaces and take several slots; the filename is
  shell-escaped by analysisd and may take several slots too (see
  ossec_filename.py for how it is rejoined and un-escaped).
* Wazuh 4.2+: no arguments, one JSON line on stdin.

Every field is attacker-influenced. Nothing here executes anything. Only the
fields the collection acts on refuse the whole invocation (BadRequest) when
they do not validate: the action and the srcip. The alert's filename, when it
cannot be used unambiguously, is dropped and its reason kept in
``Request.filename_refused`` (the entry point refuses the request only when its
profile is about the file: ``expect: filename``). Every other field (user,
location, agent name, timestamp, ids, extra args) is kept as bounded, escaped
text (``\\xNN``) or dropped, with a note in the trigger record.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import time

from ..errors import BadRequest
from ..evidence.fs import small_sha256
from ..evidence.store import utc_now
from ..record import Record
from ..evidence.text import display as _display, escape as _escape
from .ossec_filename import split_extra

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the AR hot path
    from typing import Any

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


class Request(Record):
    """A validated invocation: what to do, for which IP, triggered by which alert.

    Fields, in order: protocol ("ossec", "wazuh" or "cli"), action ("add" or
    "delete"), command (the AR command / profile name, e.g. dfir-pcap), srcip
    (an ipaddress object or None), user, alert_id, rule_id, agent_id,
    agent_name, location, filename, filename_refused (why the alert's filename
    was dropped), extra_args, manual, alert_timestamp, notes (what was escaped,
    cut or dropped from fields the collection does not act on), received (when
    the request arrived, UTC) and raw.
    """

    FIELDS = ("protocol", "action", "command", "srcip", "user", "alert_id", "rule_id",
              "agent_id", "agent_name", "location", "filename", "filename_refused",
              "extra_args", "manual", "alert_timestamp", "notes", "received", "raw")
    DEFAULTS = {"srcip": None, "user": None, "alert_id": None, "rule_id": None,
                "agent_id": None, "agent_name": None, "location": None, "filename": None,
                "filename_refused": None, "extra_args": (), "manual": False,
                "alert_timestamp": None, "notes": (), "raw": ""}
    FACTORIES = {"received": utc_now}  # when it arrived: ISO-8601 UTC, microseconds

    if TYPE_CHECKING:
        protocol: str
        action: str
        command: str
        srcip: IPAddress | None
        user: str | None
        alert_id: str | None
        rule_id: str | None
        agent_id: str | None
        agent_name: str | None
        location: str | None
        filename: str | None
        filename_refused: str | None
        extra_args: tuple[str, ...]
        manual: bool
        alert_timestamp: str | None
        notes: tuple[str, ...]
        received: str
        raw: str

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
                "raw": self.raw, "notes": list(self.notes)}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Request:
        """Rebuild a Request from to_record() output (re-validating the IP)."""
        values = dict(rec)
        for name in ("filename", "user", "location", "agent_name"):
            # a name the JSON record had to escape comes back with its exact bytes
            if isinstance(rec.get(f"{name}_hex"), str) and isinstance(rec.get(name), str):
                try:
                    values[name] = os.fsdecode(bytes.fromhex(rec[f"{name}_hex"]))
                except ValueError:
                    pass
        values["srcip"] = parse_ip(rec["srcip"]) if rec.get("srcip") else None
        values["extra_args"] = tuple(rec.get("extra_args") or ())
        values["notes"] = tuple(rec.get("notes") or ())
        return cls(**{k: v for k, v in values.items() if k in cls.FIELDS})


def incident_key(srcip: IPAddress | None, filename: str | None = None) -> str:
    """Return the incident key: what the alert is about.

    The normalised IP (``:`` as ``_``) when there is a srcip; else the alert's
    file as ``file-<first 16 hex of sha256(path bytes)>``; else ``host``.
    """
    if srcip is None:
        if filename:
            return "file-" + small_sha256(os.fsencode(filename)).hexdigest()[:16]
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


def _kept_text(value: Any, field_name: str, notes: list[str],
               max_chars: int = MAX_ARG_CHARS) -> str | None:
    """Keep a field the collection does not act on as bounded, escaped text, never refusing.

    Control characters and undecodable bytes become ``\\xNN``; a value longer
    than max_chars is cut; a value that is not a string is kept as its JSON
    text. Each change is noted.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        value = json.dumps(value, default=str)[:max_chars + 1]
        notes.append(f"{field_name}: not a string; kept as its JSON text")
    text = _display(value)
    if text != value:
        notes.append(f"{field_name}: control characters or invalid UTF-8 escaped as \\xNN")
    if len(text) > max_chars:
        text = text[:max_chars]
        notes.append(f"{field_name}: longer than {max_chars} characters; cut")
    return text


def _kept_id(value: Any, pattern: re.Pattern[str], field_name: str, what: str,
             notes: list[str]) -> str | None:
    """Return an id that matches pattern, or None with a note showing what came."""
    if value is None or (isinstance(value, str) and pattern.fullmatch(value)):
        return value
    shown = _kept_text(value, field_name, [], 64)
    notes.append(f"{field_name}: not {what}; dropped (was {shown})")
    return None


def _opt(value: str | None) -> str | None:
    return None if value in ("-", "") else value


def _user(value: Any, notes: list[str] | None = None) -> str | None:
    """Return the user as escaped text: never used to act, so never refused (noted)."""
    notes = [] if notes is None else notes
    text = _opt(_kept_text(value, "user", notes, 256))
    if text is not None and not _USER.fullmatch(text):
        notes.append("user: not a plain user name; kept as escaped text, never used to act")
    return text


def _alert_filename(value: Any, field_name: str,
                    notes: list[str]) -> tuple[str | None, str | None]:
    """Return (filename, why it was dropped), noting a dropped name in the trigger record."""
    name, problem = check_filename(value)
    if problem:
        shown = _kept_text(value, field_name, [], 256) if isinstance(value, str) else "-"
        notes.append(f"{field_name}: not usable as the alert's file ({problem}): {shown}")
    return name, problem


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
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            raise BadRequest("must be a string", f"argv[{i + 1}]")
    raw = " ".join(sanitize(a, 256) for a in args)
    if len(args) < 3:
        raise BadRequest("expected: add|delete user srcip [alert_id rule_id ...]", "argv")
    notes: list[str] = []
    action = _action(args[0])
    user = _user(args[1], notes)
    srcip = None if args[2] == "-" else parse_ip(args[2])
    alert_id = rule_id = None
    manual = False
    if len(args) > 3 and args[3] != "-":
        if args[3] == MANUAL_ALERT_ID:
            manual = True
        else:
            alert_id = _kept_id(args[3], _ALERT_ID, "alert_id", "an alert id (<epoch>.<offset>)",
                                notes)
    if len(args) > 4 and args[4] != "-":
        if args[4] == MANUAL_RULE_ID:
            manual = True
        else:
            rule_id = _kept_id(args[4], _RULE_ID, "rule_id", "a rule id (digits)", notes)
    location_text, name, problem = split_extra(command, args)
    location = _opt(_kept_text(location_text, "location", notes)) \
        if location_text is not None else None
    filename = None
    if name is not None:
        filename, problem = _alert_filename(name, "filename", notes)
    elif problem:
        notes.append(f"filename: not usable as the alert's file ({problem})")
    return Request(protocol="ossec", action=action, command=command, srcip=srcip, user=user,
                   alert_id=alert_id, rule_id=rule_id, location=location, filename=filename,
                   filename_refused=problem, notes=tuple(notes[:32]),
                   manual=manual, raw=raw[:MAX_RAW_CHARS])


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
    # Invalid UTF-8 (a file name in syscheck.path) is kept as escaped bytes: only
    # the fields the collection acts on are refused for what they hold.
    text = line.decode("utf-8", "surrogateescape")
    if not text.endswith("\n"):
        raise BadRequest("truncated input: no end of line", "stdin")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise BadRequest("not valid JSON", "stdin") from err
    if not isinstance(msg, dict) or not isinstance(msg.get("parameters"), dict):
        raise BadRequest("not a Wazuh active-response message", "stdin")
    action = _action(msg.get("command"))
    notes: list[str] = []
    params = msg["parameters"]
    alert = params.get("alert")
    if alert is None:
        alert = {}
    if not isinstance(alert, dict):
        raise BadRequest("must be an object", "parameters.alert")
    srcip_raw = _get(alert, "data", "srcip")
    srcip = None if srcip_raw is None else parse_ip(srcip_raw, "parameters.alert.data.srcip")
    user = _get(alert, "data", "dstuser") or _get(alert, "data", "srcuser")
    raw_rule_id = _get(alert, "rule", "id")
    rule_id = _kept_id(raw_rule_id, _RULE_ID, "parameters.alert.rule.id", "a rule id (digits)",
                       notes)
    raw_alert_id = alert.get("id")
    alert_id = _kept_id(raw_alert_id, _ALERT_ID, "parameters.alert.id",
                        "an alert id (<epoch>.<offset>)", notes)
    agent_id = _kept_id(_get(alert, "agent", "id"), _AGENT_ID, "parameters.alert.agent.id",
                        "an agent id", notes)
    agent_name = _kept_text(_get(alert, "agent", "name"), "parameters.alert.agent.name",
                            notes, 256)
    location = _kept_text(alert.get("location"), "parameters.alert.location", notes)
    timestamp = _kept_text(alert.get("timestamp"), "parameters.alert.timestamp", notes, 64)
    extra = params.get("extra_args") or []
    if not isinstance(extra, list) or len(extra) > MAX_ARGS:
        notes.append(f"parameters.extra_args: not a list of at most {MAX_ARGS} strings; dropped")
        extra = []
    extra_args = tuple(_kept_text(a, "parameters.extra_args", notes, 256) or "" for a in extra)
    filename, problem = _alert_filename(_get(alert, "syscheck", "path"),
                                                 "parameters.alert.syscheck.path", notes)
    return Request(protocol="wazuh", action=action, command=command, srcip=srcip,
                   user=_user(user, notes), alert_id=alert_id, rule_id=rule_id,
                   agent_id=agent_id, agent_name=agent_name, location=location,
                   filename=filename, filename_refused=problem,
                   notes=tuple(notes[:32]), extra_args=extra_args,
                   manual=raw_alert_id is None and raw_rule_id is None,
                   alert_timestamp=timestamp, raw=_escape(text.strip())[:MAX_RAW_CHARS])


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
