"""The detached worker: a queue of jobs and a fixed number of worker slots.

The AR entry point records the trigger, writes a job file into
``.state/queue/`` and, when it can take one of ``max_workers`` slot locks
without waiting, starts a worker that inherits the lock and runs detached
(new session, stdio on /dev/null, no inherited descriptors). A worker takes
jobs until the queue is empty, so an alert storm never runs more than
``max_workers`` collections at once and never loses a trigger.

First come is not first served: a worker takes the oldest job of the alert
rule with the fewest queued jobs (the rule id is in the job's name). A flood
of decoy alerts through one rule (forged log lines naming IPs that send
nothing) queues behind every quieter rule, so it cannot push a trigger of
another rule past ``queue_max_age_s``; a job that still waits longer is
recorded as skipped with the reason and a failed outcome line.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time

from ..evidence import fs
from . import delivery, detach, log as arlog
from ..errors import ConfigError, DfirError, StoreError
from ..settings import DEFAULT_CONFIG, Settings
from .request import Request
from ..evidence.store import Store, canonical_json

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the AR hot path
    from typing import Any

    from ..config import Config

# The worker starts niced (START_NICE, its process and its session: detach.py)
# and takes the priority of the process that spawned it back once its config
# is loaded, before it runs a job: in an alert storm its start-up (the YAML,
# every collector) yields the CPU to the AR invocations that execd is waiting
# for; the collections run as before. Only root can take a priority back.
START_NICE = 10


def open_store(config: Settings, create: bool = True) -> Store:
    """Open the evidence store the config names."""
    return Store(config.evidence_root, reserve_bytes=config.reserve_bytes,
                 grouping_window_s=config.grouping_window_s, create=create)


_RULE_GROUP = re.compile(r"[0-9]{1,12}")


def job_group(name: str) -> str:
    """Return the fairness group (the alert's rule id, or "-") of a queued job's name."""
    stem = name[:-len(".json")] if name.endswith(".json") else name
    _, sep, group = stem.rpartition("-r")
    return group if sep and _RULE_GROUP.fullmatch(group) else "-"


def enqueue(store: Store, job: dict[str, Any]) -> str:
    """Write a job atomically into .state/queue/ and return its name.

    The name sorts by time and ends with the alert's rule id (``-r<digits>``,
    ``-r-`` for none), which ``claim_job`` groups by without reading the jobs.
    """
    rule = str((job.get("request") or {}).get("rule_id") or "")
    group = rule if _RULE_GROUP.fullmatch(rule) else "-"
    name = f"{time.time_ns():020d}-{os.getpid()}-{os.urandom(4).hex()}-r{group}.json"
    dfd = store.state_dir_fd("queue")
    try:
        tmp = "." + name
        fd = fs.create_file_at(dfd, tmp)
        try:
            fs.write_all(fd, canonical_json(job).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)
    return name


def queued_jobs(store: Store) -> list[str]:
    """List queued job names, oldest first."""
    dfd = store.state_dir_fd("queue")
    try:
        return sorted(n for n in os.listdir(dfd) if n.endswith(".json") and not n.startswith("."))
    finally:
        os.close(dfd)


def fair_order(names: list[str]) -> list[str]:
    """Return queued job names in the order workers take them.

    Jobs are grouped by rule id; the group with the fewest queued jobs goes
    first (ties: the group whose oldest job is oldest), oldest job first
    within a group, then the next group's. A quiet rule's trigger waits for
    for the jobs of rules with at most as many queued, never for a flood. Each
    claim orders afresh, so the groups take turns as they shrink.
    """
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(job_group(name), []).append(name)
    ordered = sorted(groups.values(), key=lambda jobs: (len(jobs), jobs[0]))
    return [name for jobs in ordered for name in jobs]


def claim_job(store: Store) -> tuple[str, dict[str, Any]] | None:
    """Take the next queued job in fair order (atomic rename into .state/claimed/<pid>.<name>)."""
    qfd = store.state_dir_fd("queue")
    cfd = store.state_dir_fd("claimed")
    try:
        for queued in fair_order([n for n in os.listdir(qfd)
                                  if n.endswith(".json") and not n.startswith(".")]):
            name = f"{os.getpid()}.{queued}"
            try:
                os.rename(queued, name, src_dir_fd=qfd, dst_dir_fd=cfd)
            except FileNotFoundError:
                continue  # another worker took it
            try:
                fd = fs.open_read_at(cfd, name)
                with os.fdopen(fd, "rb") as fh:
                    return name, json.loads(fh.read(1 << 22))
            except (OSError, ValueError):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=cfd)
                continue
        return None
    finally:
        os.close(qfd)
        os.close(cfd)


def done_job(store: Store, name: str) -> None:
    """Remove a finished job from .state/claimed/."""
    cfd = store.state_dir_fd("claimed")
    try:
        os.unlink(name, dir_fd=cfd)
    except OSError:
        pass
    finally:
        os.close(cfd)


def reap_orphans(config: Config, store: Store) -> int:
    """Record as failed the jobs whose worker died (SIGKILL, OOM, reboot); return how many.

    The incident gets an ``outcome`` entry and the log an ``outcome=failed``
    line, so the manager alerts on a collection that never finished.
    """
    from .. import procfs  # not on the AR hot path

    cfd = store.state_dir_fd("claimed")
    reaped = 0
    try:
        for name in os.listdir(cfd):
            pid_text, _, _ = name.partition(".")
            if not pid_text.isdigit() or procfs.pid_alive(int(pid_text)):
                continue
            try:
                fd = fs.open_read_at(cfd, name)
                with os.fdopen(fd, "rb") as fh:
                    job = json.loads(fh.read(1 << 22))
                request = Request.from_record(job["request"])
                reason = f"worker {pid_text} died before the collection ended"
                incident = store.open_incident(job["incident"])
                try:
                    tip = incident.record({"type": "outcome", "trigger": job["trigger"],
                                           "command": request.command, "outcome": "failed",
                                           "reason": reason})
                finally:
                    incident.close()
                log_outcome(config, request, job["incident"], "failed", [], reason, tip, store)
            except (OSError, ValueError, KeyError, DfirError):
                pass
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=cfd)
            reaped += 1
    finally:
        os.close(cfd)
    return reaped


def try_slot(store: Store, max_workers: int) -> int | None:
    """Take a free worker slot lock without waiting; return its fd or None."""
    return store.try_slot("slots", max_workers)


def busy_slots(store: Store, max_workers: int) -> int:
    """Count the worker slots held right now, from /proc/locks.

    Never by taking the locks ourselves: an AR invocation finding every slot
    busy for that moment would queue its job with no worker left to take it.
    """
    from .. import procfs  # not on the AR hot path

    held = procfs.flocked_files()
    busy = 0
    for i in range(max_workers):
        try:
            st = os.stat(store.state_path("slots", f"{i}.lock"), follow_symlinks=False)
        except OSError:
            continue
        busy += (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in held
    return busy


def spawn(slot_fd: int, config_path: str, ossec_dir: str) -> int:
    """Start a detached worker holding slot_fd; return its pid (we do not wait)."""
    args = ["--slot-fd", str(slot_fd), "--config", config_path, "--ossec-dir", ossec_dir,
            "--priority", str(os.getpriority(os.PRIO_PROCESS, 0)),
            "--session-nice", str(detach.session_nice())]
    nice = START_NICE if os.geteuid() == 0 else 0
    return detach.spawn(detach.boot_argv("ossec_dfir.ar.worker", nice, args), slot_fd)


def run_job(config: Config, store: Store, job: dict[str, Any],
            slot_fds: tuple[int, ...] = (), handoff: Any = None) -> str:
    """Run one job's profile in its incident and log the outcome line."""
    from . import shipping  # not on the AR hot path
    request = Request.from_record(job["request"])
    incident = store.open_incident(job["incident"])
    try:
        _start_shipping(config, store, incident.id)
        if time.time() - float(job.get("queued", 0)) > config.queue_max_age_s:
            outcome, reason = "failed", f"waited longer than queue_max_age_s=" \
                                        f"{config.queue_max_age_s:g} in the queue"
            incident.record({"type": "collector", "collector": "*", "trigger": job["trigger"],
                             "outcome": "skipped", "reason": reason})
            outcomes: list[Any] = []
        else:
            from .runner import Runner  # lazily: the AR hot path imports this module too

            runner = Runner(config, store, incident, request, job["trigger"],
                            child_close_fds=slot_fds, on_only_background=handoff)
            outcome = runner.run_profile(config.profile(request.command))
            outcomes = runner.outcomes
            reason = "; ".join(f"{o.collector}: {o.reason}" for o in outcomes if o.reason)
            reason = report_findings(config, store, incident, request, outcomes, reason)
        tip = incident.record({"type": "outcome", "trigger": job["trigger"],
                               "command": request.command, "outcome": outcome})
        extra = {}
        if config.ship:
            shipping.queue(config, store, incident.id, final=True)
            extra["shipped"] = shipping.shipped_field(config, store, incident.id)
        log_outcome(config, request, incident.id, outcome, outcomes, reason, tip, store, extra)
        return outcome
    finally:
        incident.close()


def _start_shipping(config: Config, store: Store, incident_id: str) -> None:
    """Queue the incident for shipping and make sure a shipper runs beside the collectors.

    Shipping never holds up or fails a collection: its errors are left to the shipper.
    """
    from . import shipping  # not on the AR hot path
    if not config.ship:
        return
    try:
        shipping.queue(config, store, incident_id)
        source = config.source if os.path.abspath(config.source) != os.path.abspath(
            DEFAULT_CONFIG) else ""
        shipping.ensure_shipper(config, store, source, config.ossec_dir)
    except (OSError, DfirError, ValueError):
        pass


def report_findings(config: Config, store: Store, incident: Any, request: Request,
                    outcomes: list[Any], reason: str) -> str:
    """Write the finding lines of a job's evidence (before its outcome line); return the
    outcome's reason, extended when the findings could not be reported."""
    from . import findings  # not on the AR hot path
    try:
        findings.report(config, store, incident, request.command,
                        [f for o in outcomes for f in o.files])
    except (OSError, ValueError, DfirError) as err:
        return "; ".join(x for x in (reason, f"findings: not reported ({err})") if x)
    return reason


def log_outcome(config: Config, request: Request, incident_id: str, outcome: str,
                outcomes: list[Any], reason: str, tip: dict[str, Any],
                store: Store | None = None, extra: dict[str, str] | None = None) -> None:
    """Write the final parseable outcome line of one collection (extra fields at the end)."""
    import hashlib
    arlog.outcome(config, {
        "outcome": outcome, "command": request.command,
        "srcip": str(request.srcip) if request.srcip else "-",
        "incident": incident_id,
        "steps": ",".join(f"{o.collector}:{o.outcome}" for o in outcomes) or "-",
        "manifest_sha256": hashlib.sha256((canonical_json(tip) + "\n").encode()).hexdigest(),
        "reason": reason or "-", **(extra or {})}, store)


def main(argv: list[str]) -> int:
    """Worker entry: drain the queue while holding a slot, then deliver kept outcome lines.

    Once the queue is empty and the slot is released, the worker applies the
    retention block when it is enabled (prune.after_job), then lingers
    (``outcome_linger_s``) while outcome lines written with the install's
    logcollector down are pending, and delivers them when it is back.
    """
    import signal

    from . import prune, shipping  # not on the AR hot path
    from ..config import load
    args = dict(zip(argv[::2], argv[1::2]))
    slot = {"fd": int(args["--slot-fd"])}
    ossec_dir = args["--ossec-dir"]
    # When the worker cannot start, the queued jobs wait for one that can; the
    # manager hears of it now (a failed outcome line, rule 100903).
    try:
        config = load(args["--config"] or None, ossec_dir)
    except ConfigError as err:
        arlog.outcome_to(os.path.join(ossec_dir, "logs", "active-responses.log"),
                         arlog.failed_fields("-", None, f"worker cannot start: {err}"))
        return 3
    try:
        store = open_store(config)
    except StoreError as err:
        arlog.outcome_to(config.log_file,
                         arlog.failed_fields("-", None, f"worker cannot start: {err}"))
        return 3
    _restore_priority(args.get("--priority"), args.get("--session-nice"))
    signal.signal(signal.SIGCHLD, detach.reap_spawned)  # workers it hands a slot to
    code = _drain(config, store, slot, args["--config"], ossec_dir)
    with contextlib.suppress(OSError, DfirError):  # resume an outbox left by a crash or reboot
        shipping.ensure_shipper(config, store, args["--config"], ossec_dir)
    if slot["fd"] is not None:  # never linger in a slot
        os.close(slot["fd"])
        slot["fd"] = None
    prune.after_job(config, store, reap_orphans)  # the retention block, when enabled
    try:
        delivery.recover_claims(store)
        delivery.linger(config, store)
    except (OSError, DfirError):
        pass
    return code


def _restore_priority(process: str | None, session: str | None) -> None:
    """Take back the spawner's CPU priority (the worker started niced) before running jobs."""
    try:
        detach.set_priority(int(process or 0), int(session or 0))
    except ValueError:
        pass


def _drain(config: Config, store: Store, slot: dict[str, int | None], config_path: str,
           ossec_dir: str) -> int:
    """Take queued jobs while holding the slot; return the worker's exit code."""
    reap_orphans(config, store)

    def handoff() -> None:
        """Only continuous collectors (captures) are left: give the slot to a new worker."""
        if slot["fd"] is not None:
            try:
                spawn(slot["fd"], config_path, ossec_dir)
            except OSError:
                return  # keep the slot and simply wait
            os.close(slot["fd"])
            slot["fd"] = None

    while True:
        claimed = claim_job(store)
        if claimed is None:
            if slot["fd"] is not None:
                os.close(slot["fd"])
                slot["fd"] = None
            # A job queued while we were releasing the slot would otherwise wait.
            if not queued_jobs(store):
                return 0
            slot["fd"] = try_slot(store, config.max_workers)
            if slot["fd"] is None:
                return 0
            continue
        name, job = claimed
        try:
            run_job(config, store, job, (slot["fd"],) if slot["fd"] is not None else (),
                    handoff)
        except (DfirError, KeyError, ValueError, OSError) as err:
            record = job.get("request") if isinstance(job.get("request"), dict) else {}
            fields = arlog.failed_fields(str(record.get("command") or "-"), record.get("srcip"),
                                         f"{type(err).__name__}: {err}")
            arlog.outcome(config, {**fields, "incident": job.get("incident") or "-"}, store)
        finally:
            done_job(store, name)
        if slot["fd"] is None:
            return 0  # the slot went to another worker with the capture hand-off


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
