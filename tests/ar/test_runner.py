"""The runner: one failed collector never stops the next; limits and skips are recorded."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import pytest

from ossec_dfir import hostinfo
from ossec_dfir.collectors.base import REGISTRY, Collector, Params, Result, build_params
from ossec_dfir.config import Profile, Step
from ossec_dfir.errors import Skipped
from ossec_dfir.ar.runner import Runner
from tests.conftest import make_request


@dataclass(frozen=True)
class BehaveParams(Params):
    timeout_s: float = 30.0
    behaviour: str = "ok"


class Behave(Collector):
    """A test collector doing what its parameter says (registered only in tests)."""

    name = "test-behave"
    description = "test"
    params_type = BehaveParams

    def run(self, ctx, params):
        if params.behaviour == "raise":
            raise ValueError("collector bug")
        if params.behaviour == "skip":
            raise Skipped("nothing to do here")
        if params.behaviour == "hang":
            while True:  # ignores should_stop and SIGTERM: must be killed
                time.sleep(0.05)
        if params.behaviour == "exit":
            os._exit(9)
        if params.behaviour == "slow":
            time.sleep(3)
        if params.behaviour == "sched":  # where the scheduler puts this collector
            with open("/proc/self/autogroup", "rb") as fh:
                autogroup = fh.read().decode()
            ctx.write_bytes("sched.json", json.dumps({
                "pid": os.getpid(), "sid": os.getsid(0),
                "nice": os.getpriority(os.PRIO_PROCESS, 0),
                "session_nice": int(autogroup.rsplit("nice", 1)[1])}).encode())
        ctx.write_bytes("out.txt", b"ok")
        return Result(summary={"done": True})


class NicedBehave(Behave):
    """The same, declared nice 3 (Behave has the default, 10)."""

    name = "test-behave-niced"
    nice = 3


def run_steps(config, store, behaviours, timeout_s=30.0, cls=Behave):
    REGISTRY.setdefault(cls.name, cls)
    steps = tuple(Step(cls.name, build_params(cls, {"behaviour": b, "timeout_s": timeout_s}))
                  for b in behaviours)
    req = make_request("192.0.2.200")
    incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    runner = Runner(config, store, incident, req, "t")
    try:
        return runner.run_profile(Profile("t", "", steps)), runner.outcomes, incident.manifest()
    finally:
        incident.close()


def test_a_failing_collector_does_not_stop_the_next(config, store):
    overall, outcomes, manifest = run_steps(config, store, ["raise", "exit", "skip", "ok"])
    assert [o.outcome for o in outcomes] == ["failed", "failed", "skipped", "complete"]
    assert "ValueError: collector bug" in outcomes[0].reason
    assert "exit status 9" in outcomes[1].reason
    assert outcomes[2].reason == "nothing to do here"
    assert overall == "partial"
    entries = [e for e in manifest if e["type"] == "collector"]
    assert [e["outcome"] for e in entries] == ["failed", "failed", "skipped", "complete"]


def test_a_collector_past_its_timeout_is_killed(config, store, monkeypatch):
    from ossec_dfir.ar import runner
    monkeypatch.setattr(runner, "GRACE_S", 0.5)
    started = time.monotonic()
    overall, outcomes, _ = run_steps(config, store, ["hang"], timeout_s=1.0)
    assert outcomes[0].outcome == "failed" and "killed" in outcomes[0].reason
    assert overall == "failed"
    assert time.monotonic() - started < 30


def test_all_complete_is_complete(config, store):
    overall, outcomes, manifest = run_steps(config, store, ["ok", "ok"])
    assert overall == "complete"
    files = [e for e in manifest if e["type"] == "file" and e["collector"] == Behave.name]
    assert [f["path"] for f in files] == ["test-behave/01/out.txt", "test-behave/02/out.txt"]


def test_a_collector_that_survives_sigkill_is_abandoned_and_its_lock_released(
        config, store, monkeypatch):
    """A child stuck in uninterruptible sleep (a FUSE server that never answers) outlives
    SIGKILL. Signals are withheld here to make the child outlive its kill deadline the
    same way: the runner must not wait on it without bound, and must free its lock."""
    import re
    import signal

    from ossec_dfir.ar import runner
    monkeypatch.setattr(runner, "GRACE_S", 0.2)
    monkeypatch.setattr(runner, "KILL_WAIT_S", 0.5)
    monkeypatch.setattr(runner.os, "killpg", lambda pid, sig: None)
    started = time.monotonic()
    overall, outcomes, manifest = run_steps(config, store, ["hang", "ok"], timeout_s=1.0)
    monkeypatch.undo()
    pid = int(re.search(r"pid (\d+) state", outcomes[0].reason).group(1))
    try:
        assert outcomes[0].outcome == "failed"
        assert "abandoned" in outcomes[0].reason and "lock and slot released" in outcomes[0].reason
        assert os.path.exists(f"/proc/{pid}")  # it really was still there
        # the next step ran, and the stuck child's lock is free for the next run
        assert outcomes[1].outcome == "complete"
        incident_id = [e for e in manifest if e["type"] == "collector"][0]
        assert incident_id["outcome"] == "failed"
        inc = store.current_incident("192.0.2.200")
        fd = store.try_lock(f"run-{inc}-{Behave.name}")
        assert fd is not None
        os.close(fd)
        assert time.monotonic() - started < 30
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_background_step_that_finished_is_not_killed_after_slow_foreground_steps(
        config, store, monkeypatch):
    """The capture ends in time; the foreground steps outlast its timeout: it stays complete."""
    from ossec_dfir.ar import runner as runner_mod
    monkeypatch.setattr(runner_mod, "GRACE_S", 0.2)
    class Foreground(Behave):
        name = "test-behave-foreground"

    REGISTRY.setdefault(Behave.name, Behave)
    REGISTRY.setdefault(Foreground.name, Foreground)
    steps = (Step(Behave.name, build_params(Behave, {"behaviour": "ok", "timeout_s": 1.0}),
                  background=True),
             Step(Foreground.name, build_params(Foreground, {"behaviour": "slow",
                                                             "timeout_s": 30.0})))
    req = make_request("192.0.2.201")
    incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    try:
        runner = Runner(config, store, incident, req, "t")
        overall = runner.run_profile(Profile("t", "", steps))
    finally:
        incident.close()
    assert [o.outcome for o in runner.outcomes] == ["complete", "complete"], runner.outcomes
    assert overall == "complete"


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="no autogroup scheduling")
def test_a_collector_leads_its_own_session_niced_as_declared(config, store):
    """With autogroup scheduling the CPU is shared between sessions first: a collector's
    nice value holds against the host's other work only when its session carries it."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    reports = []
    for cls in (Behave, NicedBehave):
        overall, outcomes, manifest = run_steps(config, store, ["sched"], cls=cls)
        assert overall == "complete", outcomes
        path = next(e["path"] for e in manifest if e["type"] == "file"
                    and e["path"].endswith("sched.json") and e["collector"] == cls.name)
        incident = next(store.root + "/" + d for d in os.listdir(store.root)
                        if not d.startswith("."))
        with open(os.path.join(incident, path)) as fh:
            reports.append(json.load(fh))
    for cls, report in zip((Behave, NicedBehave), reports):
        assert report["sid"] == report["pid"]  # its own session (and process group)
        assert report["sid"] != os.getsid(0)
        expected = min(19, base + cls.nice)
        assert (report["nice"], report["session_nice"]) == (expected, expected), cls.name
