"""Verify an incident: re-hash every file, check the manifest chain, name every problem.

The manifest and the trigger log are read line by line: memory grows with the
number of evidence files (a path, a digest and a size each), not with the
manifest's size, and at most MAX_PROBLEMS problems are listed (the rest counted).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any, BinaryIO

from .fs import sha256_path
from .store import GENESIS, INCIDENT_ID_RE, MANIFEST, STORE_FILES, SUMS, TRIGGERS

MAX_PROBLEMS = 1000
# A manifest line longer than this is not one the store wrote (its entries are bounded).
MAX_LINE_BYTES = 16 << 20


@dataclass
class Report:
    """The findings of verify(): empty problem lists mean the incident is intact."""

    incident: str
    files_checked: int = 0
    entries: int = 0
    tip_sha256: str = GENESIS
    problems: list[dict[str, Any]] = field(default_factory=list)
    problems_not_listed: int = 0

    @property
    def ok(self) -> bool:
        """Return True when nothing is modified, missing, extra or unfinished."""
        return not self.problems and not self.problems_not_listed

    def add(self, kind: str, path: str, detail: str) -> None:
        """Record one problem (kind: modified, missing, extra, unfinished, chain, ...)."""
        if len(self.problems) >= MAX_PROBLEMS:
            self.problems_not_listed += 1
            return
        self.problems.append({"kind": kind, "path": path, "detail": detail})

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"incident": self.incident, "ok": self.ok, "files_checked": self.files_checked,
                "manifest_entries": self.entries, "manifest_tip_sha256": self.tip_sha256,
                "problems": self.problems, "problems_not_listed": self.problems_not_listed}


def _walk(top: str) -> list[str]:
    """List every non-directory below top (relative paths), links included, not followed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        rel = os.path.relpath(dirpath, top)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append(os.path.normpath(os.path.join(rel, name)))
    return sorted(out)


def _open_store_file(path: str, name: str) -> BinaryIO | None:
    """Open a store file for reading without following a link (None when absent)."""
    try:
        fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    return os.fdopen(fd, "rb")


def _lines(fh: BinaryIO) -> Iterator[bytes]:
    """Yield the lines of fh, each cut at MAX_LINE_BYTES (a longer line is never valid)."""
    while True:
        line = fh.readline(MAX_LINE_BYTES)
        if not line:
            return
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            digest = hashlib.sha256(line)
            while True:  # hash the rest of the overlong line without keeping it
                more = fh.readline(MAX_LINE_BYTES)
                digest.update(more)
                if not more or more.endswith(b"\n"):
                    break
            yield b"\x00overlong " + digest.hexdigest().encode()
            continue
        yield line


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
        manifest = _open_store_file(path, MANIFEST)
    except OSError as err:
        report.add("missing", MANIFEST, f"cannot read the manifest ({err.strerror})")
        return report
    if manifest is None:
        report.add("missing", MANIFEST, "no manifest")
        return report

    prev = GENESIS
    files: dict[str, tuple[Any, Any]] = {}   # path -> (sha256, size)
    begun: set[str] = set()
    trigger_hashes: list[str] = []
    number = 0
    with manifest:
        for number, line in enumerate(_lines(manifest), 1):
            prev = _check_entry(line, number, prev, files, begun, trigger_hashes, report)
    report.entries = number
    report.tip_sha256 = prev
    if expect_tip and expect_tip != prev:
        report.add("chain", MANIFEST, f"manifest tip {prev} differs from the expected "
                                      f"{expect_tip} (lines missing at the end?)")

    for relpath, (sha256, size_recorded) in sorted(files.items()):
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
        if digest != sha256 or size != size_recorded:
            report.add("modified", relpath,
                       f"sha256 {digest} size {size}, manifest says {sha256} "
                       f"size {size_recorded}")

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


def _check_entry(line: bytes, number: int, prev: str, files: dict[str, tuple[Any, Any]],
                 begun: set[str], trigger_hashes: list[str], report: Report) -> str:
    """Check one manifest line against the chain; keep what the file checks need.

    Returns the line's hash (the next line's expected ``prev``).
    """
    line_hash = hashlib.sha256(line).hexdigest()
    if line.startswith(b"\x00overlong "):
        report.add("chain", MANIFEST, f"line {number} is longer than {MAX_LINE_BYTES} bytes")
        return line[len(b"\x00overlong "):].decode("ascii")
    try:
        entry = json.loads(line)
    except ValueError:
        report.add("chain", MANIFEST, f"line {number} is not JSON")
        return line_hash
    if not isinstance(entry, dict) or entry.get("prev") != prev:
        seq = entry.get("seq") if isinstance(entry, dict) else None
        report.add("chain", MANIFEST,
                   f"line {number} (seq {seq}) does not chain to the previous "
                   "line: a line was removed, inserted or altered")
    if isinstance(entry, dict) and entry.get("seq") != number:
        report.add("chain", MANIFEST, f"line {number} has seq {entry.get('seq')}")
    if not isinstance(entry, dict):
        report.add("chain", MANIFEST, f"line {number} is not a JSON object")
        return line_hash
    kind = entry.get("type")
    if kind in ("begin", "file") and not isinstance(entry.get("path"), str):
        report.add("chain", MANIFEST, f"line {number} has no valid path")
        return line_hash
    if kind == "begin":
        begun.add(entry["path"])
    elif kind == "file":
        files[entry["path"]] = (entry.get("sha256"), entry.get("size"))
    elif kind == "trigger":
        trigger_hashes.append(str(entry.get("line_sha256", "")))
    return line_hash


def _check_triggers(path: str, expected: list[str], report: Report) -> None:
    try:
        fh = _open_store_file(path, TRIGGERS)
    except OSError:
        fh = None
    count = 0
    same = True
    if fh is not None:
        with fh:
            for count, line in enumerate(_lines(fh), 1):
                if count > len(expected) or hashlib.sha256(line).hexdigest() != expected[count - 1]:
                    same = False
    if not same or count != len(expected):
        report.add("modified", TRIGGERS,
                   f"{count} trigger lines do not match the {len(expected)} "
                   "recorded in the manifest")


def _check_sums(path: str, files: dict[str, tuple[Any, Any]], report: Report) -> None:
    try:
        fh = _open_store_file(path, SUMS)
    except OSError:
        fh = None
    listed: dict[str, str] = {}
    well_formed = True
    if fh is not None:
        with fh:
            for line in _lines(fh):
                text = line.decode("ascii", "replace").rstrip("\n")
                if not text.strip():
                    continue
                digest, sep, relpath = text.partition("  ")
                if not sep or relpath in listed:
                    well_formed = False
                    continue
                listed[relpath] = digest
    expected = {p: sha for p, (sha, _) in files.items()}
    if not well_formed or listed != expected:
        report.add("modified", SUMS, "does not list exactly the files of the manifest")
