"""Verify an incident: re-hash every file, check the manifest chain, name every problem."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from .fs import sha256_path
from .store import GENESIS, INCIDENT_ID_RE, MANIFEST, STORE_FILES, SUMS, TRIGGERS


@dataclass
class Report:
    """The findings of verify(): empty problem lists mean the incident is intact."""

    incident: str
    files_checked: int = 0
    entries: int = 0
    tip_sha256: str = GENESIS
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return True when nothing is modified, missing, extra or unfinished."""
        return not self.problems

    def add(self, kind: str, path: str, detail: str) -> None:
        """Record one problem (kind: modified, missing, extra, unfinished, chain, ...)."""
        self.problems.append({"kind": kind, "path": path, "detail": detail})

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"incident": self.incident, "ok": self.ok, "files_checked": self.files_checked,
                "manifest_entries": self.entries, "manifest_tip_sha256": self.tip_sha256,
                "problems": self.problems}


def _walk(top: str) -> list[str]:
    """List every non-directory below top (relative paths), links included, not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        rel = os.path.relpath(dirpath, top)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append(os.path.normpath(os.path.join(rel, name)))
    return sorted(out)


def _read_store_file(path: str, name: str) -> bytes | None:
    """Read a store file without following a link (None when absent)."""
    try:
        fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def verify(path: str, expect_tip: str | None = None) -> Report:
    """Check an incident directory (works on a copy: needs nothing but the directory)."""
    path = os.path.abspath(path)
    report = Report(os.path.basename(path))
    if not INCIDENT_ID_RE.fullmatch(report.incident):
        report.add("layout", path, "not an incident directory name")
    for name in (MANIFEST, SUMS, TRIGGERS):
        if os.path.islink(os.path.join(path, name)):
            report.add("modified", name, "a symbolic link, not the store's own file")
    try:
        data = _read_store_file(path, MANIFEST)
    except OSError as err:
        report.add("missing", MANIFEST, f"cannot read the manifest ({err.strerror})")
        return report
    if data is None:
        report.add("missing", MANIFEST, "no manifest")
        return report
    lines = data.splitlines(keepends=True)

    prev = GENESIS
    files: dict[str, dict[str, Any]] = {}
    begun: dict[str, dict[str, Any]] = {}
    trigger_hashes: list[str] = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            report.add("chain", MANIFEST, f"line {number} is not JSON")
            prev = hashlib.sha256(line).hexdigest()
            continue
        if not isinstance(entry, dict) or entry.get("prev") != prev:
            report.add("chain", MANIFEST,
                       f"line {number} (seq {entry.get('seq')}) does not chain to the previous "
                       "line: a line was removed, inserted or altered")
        if isinstance(entry, dict) and entry.get("seq") != number:
            report.add("chain", MANIFEST, f"line {number} has seq {entry.get('seq')}")
        prev = hashlib.sha256(line).hexdigest()
        if not isinstance(entry, dict):
            report.add("chain", MANIFEST, f"line {number} is not a JSON object")
            continue
        kind = entry.get("type")
        if kind in ("begin", "file") and not isinstance(entry.get("path"), str):
            report.add("chain", MANIFEST, f"line {number} has no valid path")
            continue
        if kind == "begin":
            begun[entry.get("path", "")] = entry
        elif kind == "file":
            files[entry.get("path", "")] = entry
        elif kind == "trigger":
            trigger_hashes.append(str(entry.get("line_sha256", "")))
    report.entries = len(lines)
    report.tip_sha256 = prev
    if expect_tip and expect_tip != prev:
        report.add("chain", MANIFEST, f"manifest tip {prev} differs from the expected "
                                      f"{expect_tip} (lines missing at the end?)")

    for relpath, entry in sorted(files.items()):
        full = os.path.join(path, relpath)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            report.add("missing", relpath, "recorded in the manifest but absent")
            continue
        if not stat.S_ISREG(st.st_mode):
            report.add("modified", relpath, "no longer a regular file")
            continue
        digest, size = sha256_path(full)
        report.files_checked += 1
        if digest != entry.get("sha256") or size != entry.get("size"):
            report.add("modified", relpath,
                       f"sha256 {digest} size {size}, manifest says {entry.get('sha256')} "
                       f"size {entry.get('size')}")

    for relpath in _walk(path):
        if relpath in STORE_FILES or relpath in files:
            continue
        if relpath in begun:
            report.add("unfinished", relpath, "opened but never closed (collector crashed "
                                              "or was killed while writing)")
        elif os.path.islink(os.path.join(path, relpath)):
            report.add("extra", relpath, "a symbolic link, not written by ossec-dfir")
        else:
            report.add("extra", relpath, "not recorded in the manifest")

    _check_triggers(path, trigger_hashes, report)
    _check_sums(path, files, report)
    return report


def _check_triggers(path: str, expected: list[str], report: Report) -> None:
    try:
        data = _read_store_file(path, TRIGGERS)
    except OSError:
        data = None
    lines = data.splitlines(keepends=True) if data else []
    actual = [hashlib.sha256(line).hexdigest() for line in lines]
    if actual != expected:
        report.add("modified", TRIGGERS,
                   f"{len(actual)} trigger lines do not match the {len(expected)} "
                   "recorded in the manifest")


def _check_sums(path: str, files: dict[str, dict[str, Any]], report: Report) -> None:
    try:
        data = _read_store_file(path, SUMS)
    except OSError:
        data = None
    text = data.decode("ascii", "replace") if data else ""
    listed = [line.split("  ", 1) for line in text.splitlines() if line.strip()]
    sums = {p: h for h, p in (x for x in listed if len(x) == 2)}
    expected = {p: e.get("sha256") for p, e in files.items()}
    if sums != expected:
        report.add("modified", SUMS, "does not list exactly the files of the manifest")
