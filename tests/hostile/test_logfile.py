"""A FIFO or a device planted at active-responses.log blocks nothing (issue 12 item 9)."""
from __future__ import annotations

import json
import os
import time

import subprocess

from ossec_dfir.ar.simulate import ossec_argv
from tests.ar.test_entry import Tree

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def run_ossec(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the AR as execd does, but bounded: a blocked script fails the test."""
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, cwd="/", env=env, timeout=30)


def _wait_outcome_entry(tree: Tree, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for incident in tree.incidents():
            manifest = tree.evidence / incident / "manifest.jsonl"
            for line in manifest.read_text().splitlines():
                entry = json.loads(line)
                if entry["type"] == "outcome":
                    return entry
        time.sleep(0.1)
    raise AssertionError("the worker recorded no outcome")


def test_a_fifo_without_reader_at_the_log_blocks_nothing(tmp_path):
    tree = Tree(tmp_path)
    tree.log.parent.mkdir(parents=True, exist_ok=True)
    tree.log.unlink(missing_ok=True)  # the empty log install created, replaced
    os.mkfifo(tree.log)
    result = run_ossec(ossec_argv(tree.script("dfir-host"), "add", "203.0.113.30"), ENV)
    assert result.returncode == 0
    assert _wait_outcome_entry(tree)["outcome"] == "complete"


def test_a_fifo_whose_reader_never_reads_blocks_nothing(tmp_path):
    tree = Tree(tmp_path)
    tree.log.parent.mkdir(parents=True, exist_ok=True)
    tree.log.unlink(missing_ok=True)  # the empty log install created, replaced
    os.mkfifo(tree.log)
    reader = os.open(tree.log, os.O_RDONLY | os.O_NONBLOCK)  # holds it open, reads nothing
    try:
        for i in range(3):  # more than a pipe buffer of lines would block without the check
            result = run_ossec(ossec_argv(tree.script("dfir-host"), "add", f"203.0.113.{31 + i}"),
                               ENV)
            assert result.returncode == 0
        assert _wait_outcome_entry(tree)["outcome"] == "complete"
        try:
            data = os.read(reader, 65536)
        except BlockingIOError:
            data = b""
        assert data == b""  # nothing was written into the FIFO
    finally:
        os.close(reader)


def test_a_device_at_the_log_is_refused(tmp_path):
    from ossec_dfir.ar.delivery import append_line
    os.symlink("/dev/null", tmp_path / "link.log")
    assert append_line(str(tmp_path / "link.log"), "x") is False   # a link: never followed
    assert append_line("/dev/null", "x") is False                  # a device: refused
    assert append_line(str(tmp_path / "real.log"), "x") is True
