"""add/delete lifecycle through the real executables with a long-running capture:
delete overtaking add, a second add while a capture runs, no descriptor leaked
to the detached worker. Needs root (CI runs as root)."""
from __future__ import annotations

import json
import os
import select
import subprocess

import pytest

from ossec_dfir.procfs import pid_alive
from ossec_dfir.evidence.verify import verify
from tests.ar.test_entry import Tree
from tests.conftest import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="captures need root (CI runs as root)")

LONG_CAPTURE = ("profiles:\n  dfir-pcap:\n    steps:\n      - collector: pcap\n"
                "        params: {duration_s: 120, timeout_s: 180, interface: lo, "
                "summary: false}\n")


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path, LONG_CAPTURE)


def argv(tree, action, ip="127.0.0.2"):
    return [tree.script("dfir-pcap"), action, "-", ip, "1764376501.77", "100100",
            "/var/log/auth.log", "-"]


def run(cmd):
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, cwd="/", timeout=30).returncode


def running(tree):
    """Return the status records of the collectors running now (as ossec-dfir status)."""
    path = tree.evidence / ".state" / "running"
    out = []
    for p in path.glob("*.json") if path.exists() else []:
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(info["pid"]):  # a killed collector may linger as a zombie
            out.append(info)
    return out


def running_collectors(tree):
    return [info["collector"] for info in running(tree)]



def collector_entries(tree, name):
    [incident] = tree.incidents()
    manifest = (tree.evidence / incident / "manifest.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, manifest)
            if e["type"] == "collector" and e["collector"] == name]


def test_delete_overtaking_add_still_ends_the_capture(tree):
    assert run(argv(tree, "add")) == 0
    assert run(argv(tree, "delete")) == 0  # at once: the worker may not have started
    # The capture is 120 s long; the outcome only comes this early if delete stopped it.
    outcome = tree.wait_outcome(1, timeout_s=45)[0]
    assert "command=dfir-pcap" in outcome
    [entry] = collector_entries(tree, "pcap")
    # Ending on delete is the normal end (complete). When the delete is there before
    # the worker reaches the capture, the capture is not started at all: skipped, and
    # the reason says why. Which of the two happens depends on the race execd makes.
    if entry["outcome"] == "skipped":
        assert entry["reason"] == "delete received before the collector started", entry
    else:
        assert entry["outcome"] == "complete"
        assert json.dumps(entry["summary"]).count("delete received") >= 1, entry["summary"]
    [incident] = tree.incidents()
    triggers = (tree.evidence / incident / "triggers.jsonl").read_text().splitlines()
    assert [json.loads(t)["action"] for t in triggers] == ["add", "delete"]
    assert verify(str(tree.evidence / incident)).ok


def test_second_add_starts_nothing_but_is_recorded(tree):
    assert run(argv(tree, "add")) == 0
    assert wait_for(lambda: "pcap" in running_collectors(tree)), "capture never started"
    assert run(argv(tree, "add")) == 0
    assert wait_for(lambda: len(collector_entries(tree, "*")) == 1)
    [skipped] = collector_entries(tree, "*")
    assert skipped["outcome"] == "skipped" and "already running" in skipped["reason"]
    assert collector_entries(tree, "pcap") == []  # the running capture has no entry yet
    assert running_collectors(tree).count("pcap") == 1
    assert run(argv(tree, "delete")) == 0
    outcomes = tree.wait_outcome(2, timeout_s=45)
    assert sum("outcome=duplicate" in line for line in outcomes) == 1  # no partial alert
    entries = collector_entries(tree, "pcap")
    assert sorted(e["outcome"] for e in entries)[0] in ("complete", "partial")
    [incident] = tree.incidents()
    pcaps = list((tree.evidence / incident / "pcap").rglob("*.pcap"))
    assert len(pcaps) == 1
    triggers = (tree.evidence / incident / "triggers.jsonl").read_text().splitlines()
    assert [json.loads(t)["action"] for t in triggers] == ["add", "add", "delete"]
    assert verify(str(tree.evidence / incident)).ok


def test_worker_inherits_no_descriptor_and_execd_sees_eof(tree):
    """execd's queue socket leaks into the script as fd 3; the detached worker must
    not keep it (nor stdout) open, or Wazuh's execd would block on it."""
    leak_r, leak_w = os.pipe()
    out_r, out_w = os.pipe()
    proc = subprocess.Popen(argv(tree, "add"), stdin=subprocess.DEVNULL, stdout=out_w,
                            stderr=subprocess.DEVNULL, cwd="/", pass_fds=(leak_w,))
    os.close(leak_w)
    os.close(out_w)
    try:
        assert proc.wait(timeout=30) == 0
        for fd in (leak_r, out_r):
            ready, _, _ = select.select([fd], [], [], 10)
            assert ready and os.read(fd, 1) == b"", "a detached process holds execd's fd"
        assert wait_for(lambda: "pcap" in running_collectors(tree))
    finally:
        os.close(leak_r)
        os.close(out_r)
        run(argv(tree, "delete"))
        tree.wait_outcome(1, timeout_s=45)


MULTI_STEP = ("profiles:\n  dfir-watch:\n    steps:\n      - collector: host\n"
              "      - collector: pcap\n"
              "        params: {duration_s: 120, timeout_s: 180, interface: lo, "
              "summary: false}\n")


def test_second_add_of_a_multi_step_profile_is_a_duplicate(tmp_path):
    """The first add's host step is long finished when the second add comes: the
    second must not run it again nor report complete, but say duplicate."""
    tree = Tree(tmp_path, MULTI_STEP)
    cmd = [tree.script("dfir-watch"), "add", "-", "127.0.0.3", "1764376501.78", "100100",
           "/var/log/auth.log", "-"]
    assert run(cmd) == 0
    assert wait_for(lambda: "pcap" in running_collectors(tree)), "capture never started"
    assert run(cmd) == 0
    second = tree.wait_outcome(1, timeout_s=45)
    assert len(second) == 1 and "outcome=duplicate" in second[0], second
    assert "command=dfir-watch" in second[0] and "steps=*:skipped" in second[0]
    assert len(collector_entries(tree, "host")) == 1  # not run again
    [skipped] = collector_entries(tree, "*")
    assert "dfir-watch already running for this incident" in skipped["reason"]
    assert run([tree.script("dfir-watch"), "delete"] + cmd[2:]) == 0
    outcomes = tree.wait_outcome(2, timeout_s=45)
    assert "outcome=complete" in outcomes[1], outcomes
    assert collector_entries(tree, "pcap")[0]["outcome"] == "complete"
    # Once the first run has ended, a new add runs the profile again.
    assert run(cmd) == 0
    assert wait_for(lambda: len(collector_entries(tree, "host")) == 2)
    assert run([tree.script("dfir-watch"), "delete"] + cmd[2:]) == 0
    assert "outcome=complete" in tree.wait_outcome(3, timeout_s=45)[2]
    [incident] = tree.incidents()
    assert verify(str(tree.evidence / incident)).ok
