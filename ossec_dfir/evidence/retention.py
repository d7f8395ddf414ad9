"""Retention of incidents: which may go, and removing them without following a link.

An incident may be deleted only when all of these hold:

- its last activity (``manifest.jsonl``/``triggers.jsonl`` changed) is older than the age;
- it was released: a release predicate says a copy exists elsewhere. Built in:
  ``exported`` (``ossec-dfir export`` wrote ``.state/exported/<id>.json`` with the
  archive's sha256 and the manifest tip it covered, and the tip is still the
  same: nothing was added after the export). Shipping plugs in with
  ``register_release``;
- nothing uses it: no lock of a collection of it is held (``profile-<id>-*``,
  ``run-<id>-*``), no queued or claimed job and no live status file names it
  (the caller adds what it knows with ``busy``).

Deletion renames the directory out of the incident namespace first
(``.pruning-<id>-<random>``, so nothing opens it by id meanwhile), then removes
it entry by entry below directory descriptors: a symbolic link is unlinked, never
followed; another filesystem mounted inside is not entered (the incident stays
half-removed, which the next prune finishes); nothing outside the evidence root
is ever named. Every deletion is a line of ``.state/prune.log`` (JSON), opened
before anything is deleted.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from . import fs
from .store import INCIDENT_ID_RE, INCIDENT_JSON, MANIFEST, STATE_DIR, TRIGGERS, Store, utc_now
from ..errors import StoreError

EXPORTED_DIR = "exported"
PRUNE_LOG = "prune.log"
PRUNING_PREFIX = ".pruning-"
MAX_DEPTH = 64
MAX_RECORD_BYTES = 1 << 16
DAY_S = 86400.0

# A release predicate: (store, incident id, current manifest tip) -> why a copy exists
# elsewhere (e.g. "exported to X.tar.gz sha256 ...") or None.
Release = Callable[[Store, str, str], "str | None"]


@dataclass
class Decision:
    """What prune decided for one incident, and why."""

    incident: str
    action: str  # "delete", "deleted", "keep", "error"
    reason: str
    age_days: float = 0.0
    released_by: str | None = None
    files: int = 0
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as a JSON-ready mapping."""
        return asdict(self)


@dataclass
class Removed:
    """Counts of what a tree removal unlinked, and what it could not."""

    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


# -- the export record --------------------------------------------------------
def manifest_tip(store: Store, incident_id: str) -> str:
    """Return the sha256 of the incident's last manifest line (GENESIS-like "" when empty)."""
    incident = store.open_incident(incident_id)
    try:
        return incident.tip()[0]
    finally:
        incident.close()


def record_export(store: Store, incident_id: str, archive: str, archive_sha256: str,
                  archive_size: int, tip: str) -> str:
    """Write ``.state/exported/<id>.json``: the archive and the manifest tip it covers.

    tip must be read before the archive was written (the archive holds at least
    that much). Returns the path of the record.
    """
    if not INCIDENT_ID_RE.fullmatch(incident_id):
        raise StoreError("not an incident id", incident_id)
    doc = {"incident": incident_id, "archive": archive, "archive_sha256": archive_sha256,
           "archive_size": archive_size, "manifest_tip": tip, "time": utc_now(),
           "uid": os.geteuid()}
    dfd = store.state_dir_fd(EXPORTED_DIR)
    try:
        fs.replace_json_at(dfd, incident_id + ".json", doc)
    finally:
        os.close(dfd)
    return store.state_path(EXPORTED_DIR, incident_id + ".json")


def export_record(store: Store, incident_id: str) -> dict[str, Any] | None:
    """Return the export record of an incident (None when there is none or it is unreadable)."""
    dfd = store.state_dir_fd(EXPORTED_DIR)
    try:
        doc = fs.read_json_at(dfd, incident_id + ".json", MAX_RECORD_BYTES)
    except (OSError, ValueError):
        return None
    finally:
        os.close(dfd)
    return doc if isinstance(doc, dict) else None


def exported_release(store: Store, incident_id: str, tip: str) -> str | None:
    """Release predicate: exported, and nothing was added to the manifest since."""
    doc = export_record(store, incident_id)
    if doc is None or doc.get("incident") != incident_id or doc.get("manifest_tip") != tip:
        return None
    return f"exported to {doc.get('archive')} (sha256 {doc.get('archive_sha256')})"


_RELEASES: dict[str, Release] = {"exported": exported_release}


def register_release(name: str, predicate: Release) -> None:
    """Add a release predicate (shipping: "shipped and acknowledged, nothing added since")."""
    _RELEASES[name] = predicate


def released(store: Store, incident_id: str, tip: str) -> str | None:
    """Return why a copy of the incident exists elsewhere (first predicate that says so)."""
    for name, predicate in _RELEASES.items():
        try:
            why = predicate(store, incident_id, tip)
        except (OSError, ValueError, StoreError):
            why = None
        if why:
            return f"{name}: {why}"
    return None


# -- incidents ----------------------------------------------------------------
def last_activity(store: Store, incident_id: str) -> float:
    """Return the newest change of the incident's manifest or triggers (Unix time)."""
    newest = 0.0
    for name in (MANIFEST, TRIGGERS, INCIDENT_JSON):
        with contextlib.suppress(OSError):
            st = os.stat(os.path.join(incident_id, name), dir_fd=store.root_fd,
                         follow_symlinks=False)
            newest = max(newest, st.st_mtime)
    return newest


def held_lock_owners(store: Store) -> set[str]:
    """Return the incident ids whose collection locks are held right now (/proc/locks)."""
    from ..procfs import flocked_files

    held = flocked_files()
    busy: set[str] = set()
    try:
        dfd = store.state_dir_fd("locks")
    except StoreError:
        return busy
    try:
        for name in os.listdir(dfd):
            for prefix in ("profile-", "run-"):
                if not name.startswith(prefix) or not name.endswith(".lock"):
                    continue
                with contextlib.suppress(OSError):
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in held:
                        # <prefix><id>-<name>.lock: every cut that is an id counts (more is safe)
                        busy.update(_id_prefixes(name[len(prefix):-len(".lock")]))
    finally:
        os.close(dfd)
    return busy


def _id_prefixes(text: str) -> set[str]:
    """Return every prefix of text (cut at a '-') that is an incident id."""
    out = set()
    parts = text.split("-")
    for i in range(1, len(parts) + 1):
        candidate = "-".join(parts[:i])
        if INCIDENT_ID_RE.fullmatch(candidate):
            out.add(candidate)
    return out


def _incident_key(store: Store, incident_id: str) -> str | None:
    """Return the grouping key from incident.json (None when unreadable or unsafe)."""
    try:
        dfd = fs.open_dir_at(store.root_fd, incident_id)
    except StoreError:
        return None
    try:
        doc = fs.read_json_at(dfd, INCIDENT_JSON, MAX_RECORD_BYTES)
        key = doc.get("key") if isinstance(doc, dict) else None
        if isinstance(key, str):
            fs.check_relpath(key)
            return key
    except (OSError, ValueError, StoreError):
        return None
    finally:
        os.close(dfd)
    return None


def decide(store: Store, incident_id: str, max_age_days: float, busy: set[str],
           now: float | None = None) -> Decision:
    """Decide whether one incident may be deleted now (never deletes anything)."""
    now = time.time() if now is None else now
    try:
        st = os.stat(incident_id, dir_fd=store.root_fd, follow_symlinks=False)
    except OSError as err:
        return Decision(incident_id, "error", f"cannot stat: {err.strerror}")
    if not stat.S_ISDIR(st.st_mode):
        return Decision(incident_id, "keep", "not a directory (a link?): never followed, left alone")
    age = (now - last_activity(store, incident_id)) / DAY_S
    if age < max_age_days:
        return Decision(incident_id, "keep", f"younger than {max_age_days:g} days", round(age, 3))
    if incident_id in busy:
        return Decision(incident_id, "keep", "in use (a collection runs or a job is queued)",
                        round(age, 3))
    try:
        tip = manifest_tip(store, incident_id)
    except StoreError as err:
        return Decision(incident_id, "keep", f"manifest unreadable, kept: {err}", round(age, 3))
    why = released(store, incident_id, tip)
    if why is None:
        return Decision(incident_id, "keep", "not exported or shipped (or changed since): "
                        "never deleted", round(age, 3))
    return Decision(incident_id, "delete", "older than the age, released, not in use",
                    round(age, 3), released_by=why)


def delete_incident(store: Store, decision: Decision, recheck: Callable[[], set[str]]) -> Decision:
    """Delete one incident decided "delete": under its key lock, re-checked, then removed.

    recheck returns the busy ids again once the key lock is held (no new job can
    name the incident after that: incident_for waits for the same lock).
    """
    incident_id = decision.incident
    key = _incident_key(store, incident_id)
    lock = store.lock("key-" + key) if key else contextlib.nullcontext()
    with lock:
        if incident_id in recheck():
            decision.action, decision.reason = "keep", "in use (found on the re-check)"
            return decision
        try:
            if released(store, incident_id, manifest_tip(store, incident_id)) is None:
                decision.action, decision.reason = "keep", "changed since the decision"
                return decision
        except StoreError as err:
            decision.action, decision.reason = "keep", f"manifest unreadable: {err}"
            return decision
        hidden = f"{PRUNING_PREFIX}{incident_id}-{os.urandom(4).hex()}"
        try:
            os.rename(incident_id, hidden, src_dir_fd=store.root_fd, dst_dir_fd=store.root_fd)
        except OSError as err:
            decision.action, decision.reason = "error", f"cannot rename: {err.strerror}"
            return decision
        if key and store.current_incident(key) == incident_id:
            dfd = store.state_dir_fd("current")
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(key, dir_fd=dfd)
            finally:
                os.close(dfd)
    removed = remove_tree(store.root_fd, hidden)
    _forget(store, incident_id)
    decision.files, decision.bytes = removed.files, removed.bytes
    if removed.problems:
        decision.action = "error"
        decision.reason = f"partly removed ({hidden} left): " + "; ".join(removed.problems[:5])
    else:
        decision.action = "deleted"
    return decision


def _forget(store: Store, incident_id: str) -> None:
    """Remove the export record and the (free) collection lock files of a deleted incident."""
    with contextlib.suppress(OSError, StoreError):
        dfd = store.state_dir_fd(EXPORTED_DIR)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(incident_id + ".json", dir_fd=dfd)
        finally:
            os.close(dfd)
    with contextlib.suppress(OSError, StoreError):
        dfd = store.state_dir_fd("locks")
        try:
            for name in os.listdir(dfd):
                if name.startswith((f"profile-{incident_id}-", f"run-{incident_id}-")):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)


def finish_interrupted(store: Store) -> list[Decision]:
    """Finish removals that an earlier prune left (``.pruning-*`` in the root)."""
    out = []
    for name in sorted(os.listdir(store.root_fd)):
        if not name.startswith(PRUNING_PREFIX):
            continue
        incident_id = name[len(PRUNING_PREFIX):].rsplit("-", 1)[0]
        removed = remove_tree(store.root_fd, name)
        out.append(Decision(incident_id, "error" if removed.problems else "deleted",
                            "finished an interrupted removal" + (
                                ": " + "; ".join(removed.problems[:5]) if removed.problems else ""),
                            files=removed.files, bytes=removed.bytes))
    return out


def remove_tree(parent_fd: int, name: str, depth: int = 0) -> Removed:
    """Remove parent_fd/name and everything below it; links are unlinked, never followed."""
    out = Removed()
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return out
    except OSError as err:
        out.problems.append(f"{name}: {err.strerror}")
        return out
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(name, dir_fd=parent_fd)
            out.files += 1
            out.bytes += st.st_size if stat.S_ISREG(st.st_mode) else 0
        except OSError as err:
            out.problems.append(f"{name}: {err.strerror}")
        return out
    if depth >= MAX_DEPTH:
        out.problems.append(f"{name}: deeper than {MAX_DEPTH} levels, left")
        return out
    if st.st_dev != os.fstat(parent_fd).st_dev:
        out.problems.append(f"{name}: another filesystem is mounted here, not entered")
        return out
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=parent_fd)
    except OSError as err:
        out.problems.append(f"{name}: {err.strerror}")
        return out
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            out.problems.append(f"{name}: replaced while being removed, left")
            return out
        for entry in os.listdir(fd):
            sub = remove_tree(fd, entry, depth + 1)
            out.files += sub.files
            out.bytes += sub.bytes
            out.problems += [f"{name}/{p}" for p in sub.problems]
    finally:
        os.close(fd)
    if not out.problems:
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError as err:
            out.problems.append(f"{name}: {err.strerror}")
    return out


# -- the record ---------------------------------------------------------------
def open_prune_log(store: Store) -> int:
    """Open ``.state/prune.log`` for appending (never through a link); the caller closes it.

    Opened before anything is deleted: a log that cannot be written stops the prune.
    """
    dfd = store.state_dir_fd()
    try:
        return fs.open_append_at(dfd, PRUNE_LOG)
    finally:
        os.close(dfd)


def log_line(fd: int, doc: dict[str, Any]) -> None:
    """Append one JSON line (with the time) to the open prune log, fsynced."""
    line = json.dumps({"time": utc_now(), **doc}, sort_keys=True) + "\n"
    fs.write_all(fd, line.encode("ascii", "backslashreplace"))
    os.fsync(fd)


def prune_log_path(store: Store) -> str:
    """Return the path of the prune log."""
    return os.path.join(store.root, STATE_DIR, PRUNE_LOG)
