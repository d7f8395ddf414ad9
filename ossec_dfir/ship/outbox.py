"""The outbox: incidents with evidence still to ship, in ``.state/outbox/``.

One small JSON file per incident (``<incident id>.json``): when it was
queued, whether its collection has ended (``final``), how many passes failed
in a row and when the next may run (exponential backoff). What exactly is left
to ship is not kept here but read from the manifest (files without a receipt),
so a crash or a reboot loses nothing: the next shipper picks the file up again.

Bounded: at most ``MAX_ENTRIES`` incidents wait; the shipper drops an entry
older than its targets' ``max_age_s`` and records why.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from ..evidence import fs
from ..evidence.store import INCIDENT_ID_RE, Store

MAX_ENTRIES = 10_000
MAX_BACKOFF_S = 600.0
SUBDIR = "outbox"


def _write(store: Store, incident_id: str, entry: dict[str, Any]) -> None:
    dfd = store.state_dir_fd(SUBDIR)
    try:
        fs.replace_json_at(dfd, incident_id + ".json", entry)
    finally:
        os.close(dfd)


def read(store: Store, incident_id: str) -> dict[str, Any] | None:
    """Return the outbox entry of an incident (None when it has none)."""
    dfd = store.state_dir_fd(SUBDIR)
    try:
        entry = fs.read_json_at(dfd, incident_id + ".json", 65536)
    except OSError:
        return None
    except ValueError:
        entry = {}
    finally:
        os.close(dfd)
    return entry if isinstance(entry, dict) else {}


def add(store: Store, incident_id: str, final: bool = False) -> bool:
    """Queue an incident for shipping (kept queued if it is); False when the outbox is full."""
    if not INCIDENT_ID_RE.fullmatch(incident_id):
        raise ValueError(f"not an incident id: {incident_id!r}")
    with store.lock("outbox"):
        entry = read(store, incident_id)
        if entry is None:
            if len(ids(store)) >= MAX_ENTRIES:
                return False
            entry = {"incident": incident_id, "queued": time.time(), "fails": 0}
        entry.update(final=bool(final or entry.get("final")), next_try=0,
                     gen=int(entry.get("gen", 0)) + 1)
        _write(store, incident_id, entry)
    return True


def mark_final(store: Store, incident_id: str) -> None:
    """Record that the incident's collection ended (its last copies may go out)."""
    add(store, incident_id, final=True)


def update(store: Store, incident_id: str, **fields: Any) -> None:
    """Change fields of an existing entry (no-op when it was removed meanwhile)."""
    with store.lock("outbox"):
        entry = read(store, incident_id)
        if entry is not None:
            entry.update(fields)
            _write(store, incident_id, entry)


def failed(store: Store, incident_id: str, error: str) -> float:
    """Count one failed pass and set the next try (backoff 2^n s, at most 600 s); return it."""
    with store.lock("outbox"):
        entry = read(store, incident_id)
        if entry is None:
            return 0.0
        fails = int(entry.get("fails", 0)) + 1
        delay = min(MAX_BACKOFF_S, float(2 ** min(fails, 10)))
        entry.update(fails=fails, next_try=time.time() + delay, last_error=error[:500])
        _write(store, incident_id, entry)
        return delay


def remove(store: Store, incident_id: str, if_gen: int | None = None) -> bool:
    """Remove an incident's entry; with if_gen, only when it was not queued again since."""
    with store.lock("outbox"):
        entry = read(store, incident_id)
        if entry is None:
            return False
        if if_gen is not None and entry.get("gen") != if_gen:
            return False
        dfd = store.state_dir_fd(SUBDIR)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(incident_id + ".json", dir_fd=dfd)
        finally:
            os.close(dfd)
        return True


def ids(store: Store) -> list[str]:
    """List the incident ids in the outbox, oldest incident first."""
    dfd = store.state_dir_fd(SUBDIR)
    try:
        names = os.listdir(dfd)
    finally:
        os.close(dfd)
    return sorted(n[:-5] for n in names
                  if n.endswith(".json") and INCIDENT_ID_RE.fullmatch(n[:-5]))


def entries(store: Store) -> list[dict[str, Any]]:
    """Return every outbox entry (for ``ship-status``)."""
    out = []
    for incident_id in ids(store):
        entry = read(store, incident_id)
        if entry is not None:
            out.append({**entry, "incident": incident_id})
    return out


def due(store: Store, now: float | None = None) -> list[dict[str, Any]]:
    """Return the entries whose backoff has passed."""
    now = time.time() if now is None else now
    return [e for e in entries(store) if float(e.get("next_try") or 0) <= now]
