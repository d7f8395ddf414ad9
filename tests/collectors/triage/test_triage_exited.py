"""Exited processes under execd: zombies and processes that exit mid-read are no denials.

OSSEC's execd reaps its finished scripts up to 90 s late, so every triage
under execd meets zombies; processes also exit while they are being read.
Both are recorded as such, and the snapshot stays complete.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ossec_dfir import procfs
from ossec_dfir.collectors.triage import procs as procs_mod
from ossec_dfir.collectors.triage.procs import ProcessReader
from tests.conftest import evidence_path


def _state(pid: int) -> bytes:
    return procfs.read_bytes(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[0]


def _wait_state(pid: int, want: bytes, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _state(pid) != want:
        assert time.monotonic() < deadline, f"pid {pid} never reached state {want!r}"
        time.sleep(0.01)


def _reader() -> ProcessReader:
    return ProcessReader(max_fds_per_process=64,
                         temp_dirs=("/tmp",), open_files=True)


@pytest.fixture
def execd_like_parent():
    """A parent (like execd) with a finished child that it does not reap for now."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import os,sys,time\n"
         "pid = os.fork()\n"
         "if pid == 0:\n    os._exit(0)\n"
         "print(pid, flush=True)\n"
         "time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        zombie = int(parent.stdout.readline())
        _wait_state(zombie, b"Z")
        yield parent.pid, zombie
    finally:
        parent.kill()
        parent.wait(timeout=10)


def test_a_zombie_is_recorded_as_zombie_not_denied(execd_like_parent):
    parent, zombie = execd_like_parent
    rec, fds = _reader().read(zombie)
    assert rec["status"] == "zombie" and rec["zombie"] is True and rec["ppid"] == parent
    assert rec["denied"] == [] and "errors" not in rec and fds == []
    assert "exited_during_read" not in rec and not rec.get("vanished")
    # What a zombie no longer has is listed as unavailable, never as denied.
    assert {"cwd", "exe", "root", "namespaces"} <= set(rec["unavailable"])
    assert rec["exe"] is None and rec["cwd"] is None


def test_triage_with_zombies_is_complete(run_collector, execd_like_parent):
    parent, zombie = execd_like_parent
    out, incident = run_collector("triage", {"timeout_s": 60})
    procs = {r["pid"]: r for r in map(json.loads, evidence_path(
        incident, "triage/01/processes.jsonl").read_text().splitlines())}
    assert procs[zombie]["zombie"] is True and procs[zombie]["denied"] == []
    summary = json.loads(evidence_path(incident, "triage/01/summary.json").read_text())
    assert summary["counts"]["processes_zombie"] >= 1
    denied = [r for r in procs.values() if r.get("denied")]
    # Only a process that still runs and that root cannot read is a denial (a sandbox's
    # own init in another user namespace is one; a clean Debian host has none).
    for rec in denied:
        assert not rec.get("zombie") and not rec.get("vanished") and rec["pid"] not in (
            parent, zombie)
        assert _reader().read(rec["pid"])[0]["denied"], "a denial that did not persist"
    assert summary["counts"]["processes_with_denied_fields"] == len(denied)
    if denied:
        assert out.outcome == "partial" and out.reason.startswith(
            f"processes: {len(denied)} processes with fields not readable"), out.reason
    else:
        assert out.outcome == "complete", out.reason


@pytest.mark.parametrize("reap", [False, True], ids=["becomes-zombie", "vanishes"])
def test_a_process_that_exits_mid_read(monkeypatch, reap):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _wait_state(child.pid, b"S")
        real_cmdline = procfs.cmdline

        def cmdline_then_exit(pid: int, max_bytes: int):
            # stat was read while it ran; it ends before the rest is read.
            text = real_cmdline(pid, max_bytes)
            if pid == child.pid:
                os.kill(pid, signal.SIGKILL)
                if reap:
                    child.wait(timeout=10)
                else:
                    _wait_state(pid, b"Z")
            return text
        monkeypatch.setattr(procs_mod.procfs, "cmdline", cmdline_then_exit)
        rec, _ = _reader().read(child.pid)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert rec["cmdline"][0] == sys.executable  # what was read is kept
    assert rec["exited_during_read"] is True
    assert rec["denied"] == [] and "errors" not in rec
    assert {"cwd", "exe", "root"} <= set(rec["unavailable"])
    if reap:
        assert rec["vanished"] is True and not rec.get("zombie")
    else:
        assert rec["zombie"] is True and rec["status"] == "zombie"


def test_a_process_reaped_before_its_read_is_vanished():
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    rec, fds = _reader().read(proc.pid)
    assert rec == {"pid": proc.pid, "vanished": True} and fds == []


def test_a_running_process_read_completely_has_no_exit_marks():
    rec, _ = _reader().read(os.getpid())
    assert rec["denied"] == [] and "unavailable" not in rec and "errors" not in rec
    assert not rec.get("zombie") and not rec.get("vanished")
    assert procs_mod.final_state(os.getpid()) == "running"
