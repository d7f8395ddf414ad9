"""Run a profile's collectors for one trigger: prerequisites, locks, limits, outcomes.

Each collector runs in its own forked child (own session and process group,
nice and ionice), so a timeout can end it and everything it started, and a crash in
one collector never stops the next one. The parent records one ``collector``
manifest entry per step whatever happened to the child.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import select
import signal
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ..evidence import fs
from ..collectors.base import (DELETE_STOP, HAND_STOP, SHUTDOWN_STOP, Context, Result,
    get_collector, unmet_prerequisite)
from ..config import Config, Profile, Step
from ..errors import DfirError, ReserveReached, Skipped, StoreError
from . import detach
from .request import Request
from .slots import SLOTS_DIR, CaptureSlot
from .stops import STOP_DELETE, STOP_SHUTDOWN, request_stop, stop_marker_name  # noqa: F401
from ..evidence.store import Incident, Store, utc_now

GRACE_S = 10.0
# After SIGKILL, a collector that is still there (uninterruptible sleep on a
# filesystem that never answers) is waited for this long, then abandoned.
KILL_WAIT_S = 10.0
# Past its deadline, a collector silent on its result pipe this long is killed.
DRAIN_S = 1.0
STATUS_INTERVAL_S = 1.0
STOP_CHECK_INTERVAL_S = 0.2
ALL_COMMANDS = "ALL"


@dataclass
class StepOutcome:
    """The recorded outcome of one profile step."""

    collector: str
    outcome: str
    reason: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    duplicate: bool = False


def overall(outcomes: list[StepOutcome]) -> str:
    """Return complete, partial or failed for a list of step outcomes.

    Steps skipped because the same collector already runs for the incident do
    not count; when every step was such a duplicate the outcome is "duplicate".
    """
    kinds = {o.outcome for o in outcomes if not o.duplicate}
    if not kinds and outcomes:
        return "duplicate"
    if kinds == {"complete"}:
        return "complete"
    if kinds and kinds <= {"failed"}:
        return "failed"
    return "partial"


# -- delete / stop markers (written by stops.py) ------------------------------


def _marker_reason(path: str, default: str) -> str:
    """Return the stop reason a delete marker records (read without following links)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return default
    try:
        words = os.read(fd, 128).split()
    except OSError:
        return default
    finally:
        os.close(fd)
    return SHUTDOWN_STOP if words[1:2] == [STOP_SHUTDOWN.encode()] else default


class StopCheck:
    """Tell a continuous collector whether a delete (or a manual stop) arrived."""

    def __init__(self, store: Store, command: str, key: str, since: float) -> None:
        self.paths = [(store.state_path("stop", stop_marker_name(command, key)),
                       DELETE_STOP),
                      (store.state_path("stop", stop_marker_name(ALL_COMMANDS, key)),
                       HAND_STOP)]
        self.since = since
        self._next = 0.0
        self._answer: str | None = None

    def __call__(self) -> str | None:
        now = time.monotonic()
        if self._answer is None and now >= self._next:
            self._next = now + STOP_CHECK_INTERVAL_S
            for path, why in self.paths:
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError:
                    continue
                if st.st_mtime >= self.since:
                    self._answer = _marker_reason(path, why) if why == DELETE_STOP else why
                    break
        return self._answer


def _epoch(iso: str) -> float:
    try:
        return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=timezone.utc).timestamp()
    except ValueError:
        return time.time()


# -- status (what runs now, bytes so far) ----------------------------------
class StatusFile:
    """A small JSON file per running collector under .state/running/."""

    def __init__(self, store: Store, info: dict[str, Any]) -> None:
        self.store = store
        self.info = dict(info, pid=os.getpid(), started=utc_now(), bytes=0)
        self.name = f"{os.getpid()}.json"
        self._last = 0.0
        self.write(force=True)

    def add_bytes(self, n: int) -> None:
        self.info["bytes"] += n
        self.write()

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < STATUS_INTERVAL_S:
            return
        self._last = now
        self.info["updated"] = utc_now()
        try:
            dfd = self.store.state_dir_fd("running")
        except (OSError, StoreError):
            return
        try:
            tmp = f".{self.name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
            try:
                os.write(fd, json.dumps(self.info).encode())
            finally:
                os.close(fd)
            os.replace(tmp, self.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)

    def remove(self) -> None:
        try:
            dfd = self.store.state_dir_fd("running")
        except (OSError, StoreError):
            return
        try:
            os.unlink(self.name, dir_fd=dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)


def _set_priority(nice: int, ionice: str) -> None:
    """Lower this collector's CPU priority by nice (process and session) and set its I/O class.

    Called in the collector's child once it leads its own session: the
    scheduler shares the CPU between sessions first (detach.py), so the
    session's value is what keeps a nice-15 YARA scan behind the host's work.
    """
    detach.set_priority(os.getpriority(os.PRIO_PROCESS, 0) + nice)
    if ionice in ("idle", "best-effort"):
        try:
            import psutil
            proc = psutil.Process()
            if ionice == "idle":
                proc.ionice(psutil.IOPRIO_CLASS_IDLE)
            else:
                proc.ionice(psutil.IOPRIO_CLASS_BE, 7)
        except (ImportError, OSError, ValueError, AttributeError):
            pass


@dataclass
class _Running:
    step: Step
    pid: int
    read_fd: int
    started: str
    hard_deadline: float
    run_dir: str
    held_fds: tuple[int, ...] = ()  # the collector lock and capture slot, closed at the end


class Runner:
    """Run the steps of a profile for one request in one incident."""

    def __init__(self, config: Config, store: Store, incident: Incident, request: Request,
                 trigger_id: str | None = None, child_close_fds: tuple[int, ...] = (),
                 on_only_background: Callable[[], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.incident = incident
        self.request = request
        self.trigger_id = trigger_id
        self.outcomes: list[StepOutcome] = []
        self._since = _epoch(request.received)
        # Descriptors a collector child must not keep (the worker's slot lock).
        self.child_close_fds = child_close_fds
        # Called once only background (continuous) steps are left to wait for:
        # the worker hands its slot to a new worker instead of idling in it.
        self.on_only_background = on_only_background

    def run_profile(self, profile: Profile) -> str:
        """Run every step (background and continuous steps overlap the next ones).

        One run of a profile per incident at a time: while it runs (a capture
        until its delete), another add of the same command for the incident
        runs nothing and its outcome is ``duplicate``, whatever its steps.
        """
        held = self.store.try_lock(self._profile_lock_name(profile))
        if held is None:
            out = StepOutcome("*", "skipped", f"{profile.name} already running for this "
                                              "incident; trigger recorded only", duplicate=True)
            self.outcomes.append(out)
            self.incident.record({"type": "collector", "collector": "*", "params": {},
                                  "trigger": self.trigger_id, "started": utc_now(),
                                  "ended": utc_now(), "outcome": out.outcome,
                                  "reason": out.reason, "summary": {}, "files": []})
            return overall(self.outcomes)
        closing = self.child_close_fds
        self.child_close_fds = closing + (held,)  # collector children do not keep it
        try:
            return self._run_steps(profile)
        finally:
            self.child_close_fds = closing
            os.close(held)

    def _profile_lock_name(self, profile: Profile) -> str:
        return f"profile-{self.incident.id}-{profile.name}"

    def _run_steps(self, profile: Profile) -> str:
        background: list[_Running] = []
        for step in profile.steps:
            handle = self._start(step)
            if handle is None:
                continue
            if step.background or get_collector(step.collector).stops_on_delete:
                background.append(handle)
            else:
                self._finish(handle)
        if background and self.on_only_background is not None:
            self.on_only_background()
        for handle in background:
            self._finish(handle)
        return overall(self.outcomes)

    # -- one step -----------------------------------------------------------
    def _skip(self, step: Step, reason: str, duplicate: bool = False) -> None:
        out = StepOutcome(step.collector, "skipped", reason, duplicate=duplicate)
        self.outcomes.append(out)
        self._record(step, out, utc_now())

    def _record(self, step: Step, out: StepOutcome, started: str) -> None:
        self.incident.record({"type": "collector", "collector": step.collector,
                              "params": dataclasses.asdict(step.params),
                              "trigger": self.trigger_id, "started": started,
                              "ended": utc_now(), "outcome": out.outcome, "reason": out.reason,
                              "summary": out.summary, "files": out.files})

    def _lock_name(self, step: Step) -> str:
        return f"run-{self.incident.id}-{step.collector}"

    def _start(self, step: Step) -> _Running | None:
        cls = get_collector(step.collector)
        stop_check = StopCheck(self.store, self.request.command, self.request.key, self._since) \
            if cls.stops_on_delete else None
        probe = Context(config=self.config, request=self.request, incident=self.incident,
                        collector=step.collector, run_dir="", params=step.params,
                        deadline=time.monotonic() + step.params.timeout_s,
                        stop_check=stop_check)
        if stop_check is not None and stop_check():
            self._skip(step, "delete received before the collector started")
            return None
        reason = unmet_prerequisite(cls, probe, step.params)
        if reason:
            self._skip(step, reason)
            return None
        try:
            self.store.check_reserve()
        except ReserveReached as err:
            self._skip(step, str(err))
            return None
        # One collector of a kind per incident: the lock is held by this process
        # (and inherited by the child) until the step is finished.
        held = [self.store.try_lock(self._lock_name(step))]
        if held[0] is None:
            self._skip(step, "already running for this incident; trigger recorded only",
                       duplicate=True)
            return None
        capture_slot = None
        if cls.stops_on_delete:
            # Every slot taken: the capture child waits for one (slots.py), and idle
            # captures (no packet after yield_after_s) yield theirs to it.
            slot = self.store.try_slot(SLOTS_DIR, self.config.max_captures)
            capture_slot = CaptureSlot(self.store, self.config.max_captures, slot)
            held.append(slot)
        started = utc_now()
        run_dir = self.incident.new_run_dir(step.collector)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(read_fd)
            for fd in self.child_close_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._child(cls, step, run_dir, write_fd, stop_check, capture_slot)
        os.close(write_fd)
        grace_s = max(GRACE_S, step.params.timeout_s * 0.1)
        return _Running(step, pid, read_fd, started,
                        time.monotonic() + step.params.timeout_s + grace_s, run_dir,
                        tuple(fd for fd in held if fd is not None))

    def _child(self, cls: Any, step: Step, run_dir: str, write_fd: int, stop_check: Any,
               capture_slot: CaptureSlot | None = None) -> None:
        code = 0
        try:
            os.setsid()  # its own session: a process group to end, and a CPU share of its own
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the worker's reaper is not ours
            _set_priority(cls.nice, cls.ionice)
            ctx = Context(config=self.config, request=self.request, incident=self.incident,
                          collector=step.collector, run_dir=run_dir, params=step.params,
                          deadline=time.monotonic() + step.params.timeout_s,
                          stop_check=stop_check)
            ctx.capture_slot = capture_slot

            def on_term(signum: int, frame: Any) -> None:
                ctx.terminated = True
            signal.signal(signal.SIGTERM, on_term)
            signal.signal(signal.SIGINT, on_term)
            status = StatusFile(self.store, {"incident": self.incident.id,
                                             "collector": step.collector,
                                             "command": self.request.command,
                                             "srcip": str(self.request.srcip or "")})
            self.incident.on_bytes = status.add_bytes
            try:
                result = cls().run(ctx, step.params)
                if not isinstance(result, Result):
                    result = Result("failed", "collector returned no Result")
            except ReserveReached as err:
                result = Result("partial", str(err))
            except Skipped as err:  # found out only while running: nothing could be done
                result = Result("skipped", err.reason)
            except DfirError as err:
                result = Result("failed", str(err))
            except Exception as err:  # a collector bug must not stop the others
                tb = traceback.format_exc(limit=5)
                result = Result("failed", f"{type(err).__name__}: {err}",
                                {"traceback": tb[-4000:]})
            finally:
                status.remove()
            if ctx.notes:
                result.summary.setdefault("notes", ctx.notes[:200])
            payload = {"outcome": result.outcome, "reason": result.reason,
                       "summary": result.summary, "files": ctx.files}
            data = json.dumps(payload, default=str).encode()[:8 << 20]
            fs.write_all(write_fd, data)
        except BaseException:  # noqa: BLE001 - the child must always exit
            code = 1
        finally:
            os._exit(code)

    def _finish(self, handle: _Running) -> None:
        chunks: list[bytes] = []
        reason_killed = None
        status: int | None = None
        while True:
            left = handle.hard_deadline - time.monotonic()
            # Past the deadline, a child that is still handing over its result (a
            # background step waited for only after the foreground ones) is read to
            # the end; only one that stays silent is killed.
            ready, _, _ = select.select([handle.read_fd], [], [],
                                        min(left, 1.0) if left > 0 else DRAIN_S)
            if ready:
                data = os.read(handle.read_fd, 1 << 20)
                if not data:
                    break
                chunks.append(data)
            elif left <= 0:
                reason_killed = "did not stop within its timeout; killed"
                status = self._kill(handle.pid)
                break
        os.close(handle.read_fd)
        if status is None:
            # The pipe is closed: the child is exiting. Bounded all the same.
            status = self._wait(handle.pid, handle.hard_deadline - time.monotonic())
            if status is None:
                reason_killed = "did not exit after closing its result pipe; killed"
                status = self._kill(handle.pid)
        abandoned = status is None
        for fd in handle.held_fds:
            if abandoned:
                # The stuck child shares these lock descriptions: unlock them for
                # everyone, so that its slot and lock are free for the next run.
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        try:
            payload = json.loads(b"".join(chunks)) if chunks else None
        except ValueError:
            payload = None
        if abandoned:
            payload = None
            reason_killed = (f"{reason_killed}; still alive {KILL_WAIT_S:g} s after SIGKILL "
                             f"({_process_state(handle.pid)}): abandoned, its lock and slot "
                             "released")
        if payload is None:
            why = reason_killed or f"collector process died ({_describe_status(status)})"
            out = StepOutcome(handle.step.collector, "failed", why)
        else:
            out = StepOutcome(handle.step.collector, payload["outcome"], payload.get("reason"),
                              payload.get("summary") or {}, payload.get("files") or [])
        self.outcomes.append(out)
        self._record(handle.step, out, handle.started)

    @staticmethod
    def _wait(pid: int, timeout_s: float) -> int | None:
        """Return the child's wait status, or None when it is still there after timeout_s."""
        end = time.monotonic() + max(timeout_s, 0.0)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if time.monotonic() >= end:
                return None
            time.sleep(0.05)

    @classmethod
    def _kill(cls, pid: int) -> int | None:
        """End a collector's process group (TERM, then KILL); return its wait status,
        or None when it survives KILL_WAIT_S after SIGKILL (it is then left behind)."""
        for sig, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, KILL_WAIT_S)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            status = cls._wait(pid, wait_s)
            if status is not None:
                return status
        return None


def _process_state(pid: int) -> str:
    """Return the state and kernel wait channel of pid, for the record."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0].decode("ascii", "replace")
    except (OSError, IndexError):
        state = "?"
    try:
        with open(f"/proc/{pid}/wchan", "rb") as fh:
            wchan = fh.read(64).decode("ascii", "replace") or "-"
    except OSError:
        wchan = "?"
    return f"pid {pid} state {state} wchan {wchan}"


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
