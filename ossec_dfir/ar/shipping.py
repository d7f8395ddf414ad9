"""Run the shipper beside and after the collectors: one detached process per store.

The worker queues each incident it collects into the outbox and makes sure a
shipper runs (``ensure_shipper``); the shipper holds ``.state/locks/shipper.lock``
(so one runs at a time), passes over the due outbox entries every
``POLL_S`` seconds while collectors write, and ends once the outbox has been
empty for ``IDLE_EXIT_S``. Collection never waits for it: shipping errors
only back the entry off. When an incident whose collection ended has
everything shipped to every target, a ``outcome=shipped`` line says so.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

from ..config import Config, load
from ..errors import ConfigError, DfirError, StoreError
from ..evidence.store import Store
from ..ship import outbox, receipts as rc
from ..ship.shipper import ship_pass
from . import detach, log as arlog

POLL_S = 1.0
IDLE_EXIT_S = 10.0
# Shipping is network-bound; its CPU (encryption, hashing) yields to the
# collections and to everything else on the host (process and session: detach.py).
SHIPPER_NICE = 10


def queue(config: Config, store: Store, incident_id: str, final: bool = False) -> bool:
    """Put an incident in the outbox when targets are configured; False when it is full
    (recorded in the incident's manifest: its evidence stays on the host only)."""
    if not config.ship:
        return True
    if outbox.add(store, incident_id, final=final):
        return True
    incident = store.open_incident(incident_id)
    try:
        incident.record({"type": "ship", "outcome": "skipped",
                         "targets": [t.name for t in config.ship],
                         "reason": f"the outbox is full ({outbox.MAX_ENTRIES} incidents "
                                   "waiting): not queued for shipping"})
    finally:
        incident.close()
    return False


def ensure_shipper(config: Config, store: Store, config_path: str | None,
                   ossec_dir: str) -> int | None:
    """Start a detached shipper unless one runs or nothing waits; return its pid or None."""
    if not config.ship or not outbox.ids(store):
        return None
    lock_fd = store.try_lock("shipper")
    if lock_fd is None:
        return None  # one runs already
    args = ["--lock-fd", str(lock_fd), "--config", config_path or "", "--ossec-dir", ossec_dir]
    try:
        return detach.spawn(detach.boot_argv("ossec_dfir.ar.shipping", SHIPPER_NICE, args),
                            lock_fd)
    finally:
        os.close(lock_fd)


def shipped_field(config: Config, store: Store, incident_id: str) -> str:
    """Return ``N/M``: files with a receipt from every target, of the incident's files."""
    entries = rc.read_manifest(os.path.join(store.root, incident_id))
    done, total = rc.shipped_counts(entries, [t.name for t in config.ship])
    return f"{done}/{total}"


def _cleared_line(config: Config, store: Store, incident_id: str) -> None:
    arlog.outcome(config, {"outcome": "shipped", "command": "ship", "srcip": "-",
                           "incident": incident_id,
                           "steps": ",".join(f"{t.name}:ok" for t in config.ship),
                           "manifest_sha256": rc.manifest_digest(
                               os.path.join(store.root, incident_id))[0],
                           "reason": "backlog cleared",
                           "shipped": shipped_field(config, store, incident_id)}, store)


def _drop_expired(config: Config, store: Store, entry: dict[str, Any]) -> bool:
    max_age = max(t.max_age_s for t in config.ship)
    if time.time() - float(entry.get("queued") or 0) <= max_age:
        return False
    reason = f"still unshipped after max_age_s={max_age:g}: dropped from the outbox"
    try:
        incident = store.open_incident(entry["incident"])
        try:
            incident.record({"type": "ship", "outcome": "skipped", "reason": reason,
                             "targets": [t.name for t in config.ship]})
        finally:
            incident.close()
    except DfirError:
        pass
    outbox.remove(store, entry["incident"])
    arlog.outcome(config, {"outcome": "failed", "command": "ship", "srcip": "-",
                           "incident": entry["incident"], "steps": "-",
                           "manifest_sha256": "-", "reason": reason}, store)
    return True


def run_once(config: Config, store: Store, clients: dict[str, Any]) -> int:
    """Pass once over the due outbox entries; return how many entries remain."""
    for entry in outbox.due(store):
        iid = entry["incident"]
        if _drop_expired(config, store, entry):
            continue
        try:
            result = ship_pass(store, iid, list(config.ship), clients)
        except StoreError as err:  # the incident is gone: nothing left to ship
            outbox.remove(store, iid)
            arlog.outcome(config, {"outcome": "failed", "command": "ship", "srcip": "-",
                                   "incident": iid, "steps": "-", "manifest_sha256": "-",
                                   "reason": f"cannot ship: {err}"}, store)
            continue
        if not result.ok:
            outbox.failed(store, iid, "; ".join(f"{k}: {v}" for k, v in result.errors.items()))
        elif entry.get("final") and result.pending == 0:
            if outbox.remove(store, iid, if_gen=entry.get("gen")):
                _cleared_line(config, store, iid)
        elif entry.get("fails"):
            outbox.update(store, iid, fails=0, last_error=None)
    return len(outbox.ids(store))


def serve(config: Config, store: Store, idle_exit_s: float = IDLE_EXIT_S) -> None:
    """Ship until the outbox has stayed empty for idle_exit_s."""
    clients: dict[str, Any] = {}
    idle_since: float | None = None
    try:
        while True:
            left = run_once(config, store, clients)
            if left:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_exit_s:
                return
            time.sleep(POLL_S)
    finally:
        for client in clients.values():
            client.close()


def main(argv: list[str]) -> int:
    """Shipper entry (detached): hold the shipper lock and serve the outbox."""
    args = dict(zip(argv[::2], argv[1::2]))
    lock_fd = int(args["--lock-fd"])
    try:
        config = load(args.get("--config") or None, args["--ossec-dir"])
        store = Store(config.evidence_root, reserve_bytes=config.reserve_bytes,
                      grouping_window_s=config.grouping_window_s, create=False)
    except (ConfigError, StoreError):
        return 3
    try:
        serve(config, store)
    finally:
        os.close(lock_fd)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
