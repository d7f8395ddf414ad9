"""Apply the retention policy: old released incidents, and state nobody will read again.

Incidents go by evidence/retention.py's rules (old enough, exported or shipped,
not in use: here "in use" adds the jobs in the queue and the claims, and the
live status files, to the held collection locks). State trimmed, each only
when older than ``state_age_days`` or owned by a dead process:

- ``queue/.<job>`` temp files of an enqueue that died (real jobs stay: the
  worker records a job too old as failed, with its outcome line);
- ``claimed/`` jobs of dead workers are first recorded as failed (reap_orphans:
  outcome line), never dropped silently; ``outcomes/claimed.*`` go back to pending;
- ``stop/`` markers (a marker only stops collections received before it);
- ``running/`` status files of dead collectors, ``capture-waiting/`` entries of
  dead waiters;
- pending outcome lines never delivered: they become the ``# dropped=`` count,
  so the next delivery writes the ``outcome=dropped`` note (rule 100904).

Everything deleted is in ``.state/prune.log`` and one line of active-responses.log.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import Config
from ..errors import BadRequest, DfirError, StoreError
from ..evidence import fs, retention
from ..evidence.store import Store
from ..procfs import pid_alive
from . import delivery, log as arlog
from .slots import GRANTED, WAIT_DIR

PRUNE_LOCK = "prune"
STAMP = "prune.last"
MAX_JOB_BYTES = 1 << 22


@dataclass
class PruneResult:
    """What one prune did (or, dry run, would do)."""

    dry_run: bool
    incidents: list[retention.Decision] = field(default_factory=list)
    state: list[str] = field(default_factory=list)
    reaped: int = 0
    expired_lines: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-ready mapping."""
        return {"dry_run": self.dry_run, "incidents": [d.to_dict() for d in self.incidents],
                "state": self.state, "reaped_jobs": self.reaped,
                "expired_pending_lines": self.expired_lines}

    def summary(self) -> str:
        """Return one line: what was deleted and kept."""
        done = [d for d in self.incidents if d.action in ("deleted", "delete")]
        kept = [d for d in self.incidents if d.action == "keep" and "younger" not in d.reason]
        errors = [d for d in self.incidents if d.action == "error"]
        verb = "would delete" if self.dry_run else "deleted"
        size = "" if self.dry_run else f" ({sum(d.bytes for d in done)} bytes)"
        return (f"prune: {verb} {len(done)} incidents{size}, "
                f"kept {len(kept)} old ones (not released or in use), {len(errors)} errors; "
                f"state: {len(self.state)} files, {self.reaped} orphaned jobs recorded failed, "
                f"{self.expired_lines} pending outcome lines expired")


def _job_incidents(store: Store, directory: str) -> set[str]:
    """Return the incident ids named by the job files of a state directory."""
    ids: set[str] = set()
    dfd = store.state_dir_fd(directory)
    try:
        for name in os.listdir(dfd):
            try:
                fd = fs.open_read_at(dfd, name)
            except OSError:
                continue
            try:
                doc = json.loads(os.read(fd, MAX_JOB_BYTES))
                if isinstance(doc, dict) and isinstance(doc.get("incident"), str):
                    ids.add(doc["incident"])
            except (OSError, ValueError):
                continue
            finally:
                os.close(fd)
    finally:
        os.close(dfd)
    return ids


def _live_status_incidents(store: Store) -> set[str]:
    ids: set[str] = set()
    dfd = store.state_dir_fd("running")
    try:
        for name in os.listdir(dfd):
            pid = name.split(".")[0]
            if not name.endswith(".json") or not pid.isdigit() or not pid_alive(int(pid)):
                continue
            with contextlib.suppress(OSError, ValueError):
                fd = fs.open_read_at(dfd, name)
                try:
                    doc = json.loads(os.read(fd, 1 << 16))
                finally:
                    os.close(fd)
                if isinstance(doc, dict) and isinstance(doc.get("incident"), str):
                    ids.add(doc["incident"])
    finally:
        os.close(dfd)
    return ids


def busy_incidents(store: Store) -> set[str]:
    """Return the ids of incidents in use: held locks, queued or claimed jobs, live collectors."""
    return (retention.held_lock_owners(store) | _job_incidents(store, "queue") |
            _job_incidents(store, "claimed") | _live_status_incidents(store))


# -- state ---------------------------------------------------------------------
def _old(dfd: int, name: str, cutoff: float) -> bool:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mtime < cutoff
    except OSError:
        return False


def _dead_owner(name: str) -> bool:
    pid = name.removeprefix(GRANTED).split("-")[0].split(".")[0]
    return pid.isdigit() and not pid_alive(int(pid))


def _trim_dir(store: Store, directory: str, doomed: Any, dry_run: bool) -> list[str]:
    """Unlink the entries of a state directory that doomed(dfd, name) selects; return them."""
    removed = []
    dfd = store.state_dir_fd(directory)
    try:
        for name in sorted(os.listdir(dfd)):
            if not doomed(dfd, name):
                continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not dry_run:
                    if stat.S_ISDIR(st.st_mode):
                        continue  # state directories hold files only: leave the unexpected
                    os.unlink(name, dir_fd=dfd)
            except OSError:
                continue
            removed.append(f"{directory}/{name}")
    finally:
        os.close(dfd)
    return removed


def _expire_pending(store: Store, cutoff: float, dry_run: bool) -> int:
    """Turn pending lines older than cutoff into the dropped count; return how many."""
    path = delivery.pending_path(store.root)
    try:
        if os.stat(path, follow_symlinks=False).st_mtime >= cutoff:
            return 0
    except OSError:
        return 0
    dfd = store.state_dir_fd(delivery.PENDING_DIR)
    try:
        with store.lock(delivery.LOCK_NAME):
            try:
                dropped, lines = delivery._read_lines(dfd, delivery.PENDING)
            except OSError:
                return 0
            if lines and not dry_run:
                delivery._replace(dfd, dropped + len(lines), [])
            return len(lines)
    finally:
        os.close(dfd)


Reap = Callable[[Config, Store], int]


def trim_state(config: Config, store: Store, state_age_s: float, dry_run: bool,
               result: PruneResult, reap: Reap) -> None:
    """Trim the state directories (see the module docstring); reap records dead workers'
    claimed jobs as failed (worker.reap_orphans)."""
    cutoff = time.time() - state_age_s
    if not dry_run:
        result.reaped = reap(config, store)
        delivery.recover_claims(store)
    else:
        result.state += _trim_dir(store, "claimed", lambda d, n: _dead_owner(n), True)
    result.state += _trim_dir(store, "queue", lambda d, n: n.startswith(".") and _old(d, n, cutoff),
                              dry_run)
    result.state += _trim_dir(store, "stop", lambda d, n: _old(d, n, cutoff), dry_run)
    result.state += _trim_dir(store, "running", lambda d, n: _dead_owner(n) or (
        n.startswith(".") and _old(d, n, cutoff)), dry_run)
    result.state += _trim_dir(store, WAIT_DIR, lambda d, n: _dead_owner(n), dry_run)
    result.expired_lines = _expire_pending(store, cutoff, dry_run)


# -- the whole prune -------------------------------------------------------------
def prune(config: Config, store: Store, max_age_days: float, state_age_days: float,
          reap: Reap, dry_run: bool = False) -> PruneResult:
    """Delete old released incidents and trim state; record it; return what was done."""
    if max_age_days * retention.DAY_S <= config.grouping_window_s:
        raise BadRequest(f"the incident age ({max_age_days:g} days) must be longer than "
                         f"grouping_window_s ({config.grouping_window_s:g} s): a new trigger "
                         "could still join an incident being deleted", "days")
    result = PruneResult(dry_run)
    log_fd = None if dry_run else retention.open_prune_log(store)
    try:
        if log_fd is not None:
            result.incidents += retention.finish_interrupted(store)
            _log(log_fd, result.incidents)
        busy = busy_incidents(store)
        for incident_id in store.incident_ids():
            decision = retention.decide(store, incident_id, max_age_days, busy)
            if decision.action == "delete" and log_fd is not None:
                decision = retention.delete_incident(store, decision,
                                                     lambda: busy_incidents(store))
                _log(log_fd, [decision])
            result.incidents.append(decision)
        trim_state(config, store, state_age_days * retention.DAY_S, dry_run, result, reap)
        if log_fd is not None and (result.state or result.expired_lines or result.reaped):
            retention.log_line(log_fd, {
                "action": "state", "removed": result.state[:1000],
                "removed_count": len(result.state), "reaped_jobs": result.reaped,
                "expired_pending_lines": result.expired_lines})
    finally:
        if log_fd is not None:
            os.close(log_fd)
    if not dry_run:
        arlog.invocation(config.log_file, "ossec-dfir", "prune", result.summary() +
                         f"; see {retention.prune_log_path(store)}")
    return result


def _log(fd: int, decisions: list[retention.Decision]) -> None:
    for d in decisions:
        if d.action in ("deleted", "error"):
            retention.log_line(fd, d.to_dict())


def after_job(config: Config, store: Store, reap: Reap) -> PruneResult | None:
    """Apply the config's retention block from a worker: when enabled, at most once per
    ``interval_s`` and by one worker at a time; never raises."""
    policy = config.retention
    if not policy.enabled:
        return None
    lock_fd = None
    try:
        lock_fd = store.try_lock(PRUNE_LOCK)
        if lock_fd is None:
            return None
        stamp = store.state_path(STAMP)
        with contextlib.suppress(OSError):
            if time.time() - os.stat(stamp, follow_symlinks=False).st_mtime < policy.interval_s:
                return None
        dfd = store.state_dir_fd()
        try:
            fd = os.open(STAMP, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
            os.utime(fd)
            os.close(fd)
        finally:
            os.close(dfd)
        return prune(config, store, policy.incident_age_days, policy.state_age_days, reap)
    except (OSError, DfirError, StoreError):
        return None
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
