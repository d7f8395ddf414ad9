"""Write finding lines: what a collection found, one bounded line each, for the manager.

After a job's steps, the evidence files the collectors wrote are read back
(yara ``matches.jsonl``, triage ``processes.jsonl`` and ``suspects.jsonl``,
files ``results.jsonl``) and each finding becomes one line in
active-responses.log, before the outcome line::

    ossec-dfir: finding=yara_file command=dfir-yara incident=ID evidence=yara/01/matches.jsonl name=webshell_php pid=- path=/var/www/x.php sha256=ab.. rules_sha256=cd..

Every line has the same fields in the same order (``-`` when one does not
apply), so one decoder reads them all. Kinds: ``yara_file``,
``yara_process``, ``suspect_process`` (name lists why: exe_deleted,
exe_memfd, exe_in_temp, srcip_connection), ``ioc_file`` (a file search
SHA-256 hit). At most ``findings_max_lines`` lines per collection (YARA and
IOC hits first), then one ``finding=omitted`` line whose ``name`` is the
count left out.

Every value is attacker text (a file name, a process's exe path). Values are
written percent-encoded: every byte outside ``A-Za-z0-9._,/+@-`` becomes
``%XX`` (the name's exact bytes, non-UTF-8 included). A value therefore holds
no space, ``=``, quote, control character or line break: it cannot add a
field, shift the decoder's fields or start a line of its own. A value cut at
its bound ends with ``~`` (never produced by the encoding).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator

from ..config import Config
from ..evidence import fs
from ..evidence.store import Incident, Store
from . import log as arlog

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._,/+@-")
MAX_NAME_CHARS = 256
MAX_PATH_CHARS = 1024
MAX_FILE_BYTES = 256 << 20      # bytes of one evidence file read back at most
MAX_RECORD_BYTES = 8 << 20      # one JSON line larger than this is passed over
FIELDS = ("finding", "command", "incident", "evidence", "name", "pid", "path", "sha256",
          "rules_sha256")
KINDS = ("yara_file", "yara_process", "ioc_file", "suspect_process")
_SUSPECT_FLAGS = ("exe_deleted", "exe_memfd", "exe_in_temp")


def quote(value: object, limit: int = MAX_PATH_CHARS) -> str:
    """Return value percent-encoded for a finding line (``-`` for None or empty).

    ``bytes`` are encoded as they are; ``str`` as UTF-8 with surrogateescape,
    so an undecodable byte of a file name comes out as its own ``%XX``.
    """
    if value is None or value == "" or value == b"":
        return "-"
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    out: list[str] = []
    used = 0
    for byte in raw:
        piece = chr(byte) if byte in _SAFE else f"%{byte:02X}"
        if used + len(piece) > limit - 1:
            out.append("~")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def unquote(text: str) -> bytes:
    """Return the bytes a quoted value stands for (``-`` is empty; a trailing ``~`` is dropped)."""
    if text == "-":
        return b""
    text = text[:-1] if text.endswith("~") else text
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%":
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(ord(text[i]))
            i += 1
    return bytes(out)


@dataclass(frozen=True)
class Finding:
    """One thing a collection found."""

    kind: str
    evidence: str
    name: Any
    pid: int | None = None
    path: Any = None
    sha256: str | None = None
    rules_sha256: str | None = None


def format_finding(finding: Finding, command: str, incident: str) -> str:
    """Return the finding line (fixed field order, every value quoted)."""
    pid = finding.pid if isinstance(finding.pid, int) and not isinstance(finding.pid, bool) \
        else None
    values = (quote(finding.kind, 32), quote(command, 64), quote(incident, 256),
              quote(finding.evidence, 256), quote(finding.name, MAX_NAME_CHARS),
              "-" if pid is None else str(pid), quote(finding.path),
              _hex(finding.sha256), _hex(finding.rules_sha256))
    return "ossec-dfir: " + " ".join(f"{key}={value}" for key, value in zip(FIELDS, values))


def format_omitted(count: int, command: str, incident: str) -> str:
    """Return the summary line of the findings left out (``name`` is their count)."""
    return format_finding(Finding("omitted", "-", str(count)), command, incident)


def _hex(value: object) -> str:
    text = value if isinstance(value, str) else ""
    return text.lower() if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text) \
        else "-"


def _raw(record: dict[str, Any], key: str) -> Any:
    """Return a record's field as its exact bytes when the writer kept them (``<key>_hex``)."""
    hexed = record.get(f"{key}_hex")
    if isinstance(hexed, str):
        try:
            return bytes.fromhex(hexed)
        except ValueError:
            pass
    return record.get(key)


def _open_relpath(incident: Incident, relpath: str) -> int | None:
    """Open an evidence file of the incident without following any link; None when absent."""
    parts = relpath.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    dfd = os.dup(incident.dir_fd)
    try:
        for part in parts[:-1]:
            nfd = fs.open_dir_at(dfd, part)
            os.close(dfd)
            dfd = nfd
        return fs.open_read_at(dfd, parts[-1])
    except OSError:
        return None
    except Exception:  # StoreError from open_dir_at (a link, not a directory)
        return None
    finally:
        os.close(dfd)


def read_jsonl(incident: Incident, relpath: str) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of an evidence file (bounded; bad lines passed over)."""
    fd = _open_relpath(incident, relpath)
    if fd is None:
        return
    with os.fdopen(fd, "rb") as fh:
        total = 0
        while total < MAX_FILE_BYTES:
            line = fh.readline(MAX_RECORD_BYTES + 1)
            if not line:
                return
            total += len(line)
            if len(line) > MAX_RECORD_BYTES:
                while line and not line.endswith(b"\n"):  # skip the rest of that line
                    line = fh.readline(MAX_RECORD_BYTES)
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def _rules_hashes(incident: Incident, run: str) -> dict[str, str]:
    """Return {namespace: sha256} of the rule files a yara run loaded (its rules.json)."""
    fd = _open_relpath(incident, f"{run}/rules.json")
    if fd is None:
        return {}
    with os.fdopen(fd, "rb") as fh:
        try:
            doc = json.loads(fh.read(MAX_RECORD_BYTES))
        except ValueError:
            return {}
    files = doc.get("files") if isinstance(doc, dict) else None
    return {f["namespace"]: f["sha256"] for f in files or []
            if isinstance(f, dict) and isinstance(f.get("namespace"), str)}


def yara_findings(incident: Incident, relpath: str) -> Iterator[Finding]:
    """Yield a yara_file or yara_process finding per record of a matches.jsonl."""
    hashes = _rules_hashes(incident, relpath.rsplit("/", 1)[0])
    for rec in read_jsonl(incident, relpath):
        rules_sha = hashes.get(rec.get("namespace"))  # type: ignore[arg-type]
        if rec.get("type") == "file":
            yield Finding("yara_file", relpath, rec.get("rule"), None, _raw(rec, "path"),
                          rec.get("sha256"), rules_sha)
        elif rec.get("type") == "process":
            yield Finding("yara_process", relpath, rec.get("rule"), rec.get("pid"),
                          _raw(rec, "exe"), None, rules_sha)


def ioc_findings(incident: Incident, relpath: str) -> Iterator[Finding]:
    """Yield an ioc_file finding per results.jsonl record whose SHA-256 is a listed IOC."""
    for rec in read_jsonl(incident, relpath):
        if rec.get("ioc_match") is True:
            yield Finding("ioc_file", relpath, "sha256_ioc", None, _raw(rec, "path"),
                          rec.get("sha256"))


def suspect_findings(incident: Incident, relpaths: list[str]) -> Iterator[Finding]:
    """Yield a suspect_process finding per process with a deleted, memfd or temp-dir
    executable (processes.jsonl) or a connection with the srcip (suspects.jsonl);
    one per pid, its reasons merged."""
    found: dict[int, tuple[list[str], Finding]] = {}
    for relpath in relpaths:
        connected = relpath.endswith("/suspects.jsonl")
        for rec in read_jsonl(incident, relpath):
            pid = rec.get("pid")
            if not isinstance(pid, int) or isinstance(pid, bool):
                continue
            why = [flag for flag in _SUSPECT_FLAGS if rec.get(flag) is True]
            if connected:
                why.append("srcip_connection")
            if not why:
                continue
            if pid in found:
                found[pid][0].extend(w for w in why if w not in found[pid][0])
            else:
                found[pid] = (why, Finding("suspect_process", relpath, "", pid,
                                           _raw(rec, "exe"), rec.get("exe_sha256")))
    for pid in sorted(found):
        why, finding = found[pid]
        yield Finding(finding.kind, finding.evidence, ",".join(why), pid, finding.path,
                      finding.sha256)


def collect(incident: Incident, files: list[str]) -> Iterator[Finding]:
    """Yield the findings of a job's evidence files: YARA and IOC hits, then suspects."""
    for relpath in files:
        if relpath.startswith("yara/") and relpath.endswith("/matches.jsonl"):
            yield from yara_findings(incident, relpath)
    for relpath in files:
        if relpath.startswith("files/") and relpath.endswith("/results.jsonl"):
            yield from ioc_findings(incident, relpath)
    yield from suspect_findings(incident, [
        f for f in files if f.startswith("triage/") and
        f.endswith(("/processes.jsonl", "/suspects.jsonl"))])


def finding_lines(findings: Iterator[Finding], command: str, incident: str,
                  max_lines: int) -> list[str]:
    """Return at most max_lines finding lines, then an omitted line when some were left out."""
    lines: list[str] = []
    omitted = 0
    for finding in findings:
        if len(lines) < max_lines:
            lines.append(format_finding(finding, command, incident))
        else:
            omitted += 1
    if omitted:
        lines.append(format_omitted(omitted, command, incident))
    return lines


def report(config: Config, store: Store, incident: Incident, command: str,
           files: list[str]) -> int:
    """Write the finding lines of one job (kept for redelivery like outcome lines); return
    how many lines were written."""
    lines = finding_lines(collect(incident, files), command, incident.id,
                          config.findings_max_lines)
    for line in lines:
        arlog.outcome_line(config, line, store)
    return len(lines)
