"""Shipping receipts: what the manifest says went where, and what remains to ship.

Every object written to a target is recorded by a ``receipt`` entry appended
to the incident's hash-chained manifest (target, key, plaintext and object
SHA-256, object size, time). The manifest itself cannot carry a receipt of
its own last copy: that one is kept in ``.state/ship/<incident id>.json``
(the size and SHA-256 of the manifest as last shipped, per target).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any

from ..evidence import fs
from ..evidence.store import MANIFEST, STATE_DIR

STATE_SUBDIR = "ship"


def read_manifest(incident_path: str) -> list[dict[str, Any]]:
    """Return the manifest entries of an incident directory (not following links)."""
    try:
        fd = os.open(os.path.join(incident_path, MANIFEST),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as fh:
        out = []
        for line in fh:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
        return out


def closed_files(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return the file entries of a manifest by path (the evidence to ship)."""
    return {e["path"]: e for e in entries if e.get("type") == "file" and isinstance(
        e.get("path"), str) and isinstance(e.get("sha256"), str)}


def receipts(entries: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Return (target, path, plaintext sha256) of every receipt in a manifest."""
    return {(str(e.get("target")), str(e.get("path")), str(e.get("sha256")))
            for e in entries if e.get("type") == "receipt"}


def planned_targets(entries: list[dict[str, Any]]) -> set[str]:
    """Return the target names the incident was queued for (its ``ship`` entries)."""
    names: set[str] = set()
    for e in entries:
        if e.get("type") == "ship" and isinstance(e.get("targets"), list):
            names.update(str(n) for n in e["targets"])
    return names


def pending(entries: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """Return the file entries without a receipt from target, in manifest order."""
    done = receipts(entries)
    return [e for e in closed_files(entries).values()
            if (target, e["path"], e["sha256"]) not in done]


def state_path(incident_path: str) -> str:
    """Return the path of the incident's shipping state file."""
    root = os.path.dirname(os.path.abspath(incident_path))
    return os.path.join(root, STATE_DIR, STATE_SUBDIR,
                        os.path.basename(os.path.abspath(incident_path)) + ".json")


def read_state(incident_path: str) -> dict[str, Any]:
    """Return the shipping state of an incident ({} when none)."""
    try:
        fd = os.open(state_path(incident_path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as fh:
        try:
            data = json.loads(fh.read(1 << 20))
        except ValueError:
            return {}
    return data if isinstance(data, dict) else {}


def write_state(state_dir_fd: int, incident_id: str, state: dict[str, Any]) -> None:
    """Replace the shipping state of an incident atomically (in .state/ship/)."""
    fs.check_relpath(incident_id)
    fs.replace_json_at(state_dir_fd, incident_id + ".json", state)


def manifest_digest(incident_path: str) -> tuple[str, int]:
    """Return (sha256, size) of the incident's manifest as it is now."""
    digest, size = fs.sha256_path(os.path.join(incident_path, MANIFEST))
    return digest or hashlib.sha256(b"").hexdigest(), size


def shipped_everywhere(incident_path: str) -> bool:
    """Return True when every file of the incident has a receipt from every target it was
    queued for, and each of them holds the manifest exactly as it is now.

    False for an incident never queued for shipping: retention may delete a
    local incident only when this is True.
    """
    entries = read_manifest(incident_path)
    targets = planned_targets(entries)
    if not targets:
        return False
    if any(pending(entries, t) for t in targets):
        return False
    state = read_state(incident_path)
    try:
        digest, size = manifest_digest(incident_path)
    except OSError:
        return False
    for t in targets:
        shipped = (state.get("manifest") or {}).get(t) or {}
        if shipped.get("sha256") != digest or shipped.get("size") != size:
            return False
    return True


def shipped_counts(entries: list[dict[str, Any]], targets: list[str]) -> tuple[int, int]:
    """Return (files with a receipt from every target, files) for an outcome line."""
    files = closed_files(entries)
    done = receipts(entries)
    shipped = sum(all((t, p, e["sha256"]) in done for t in targets) for p, e in files.items())
    return shipped, len(files)
