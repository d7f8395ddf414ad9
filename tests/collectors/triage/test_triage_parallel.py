"""The process walk shared with a forked helper gives the same records as one reader."""
from __future__ import annotations

import os

import psutil

from ossec_dfir.collectors.triage import procs
from ossec_dfir.collectors.triage.procs import ProcessReader, read_processes


def reader():
    return ProcessReader(max_fds_per_process=64,
                         temp_dirs=("/tmp",), open_files=True)


def test_parallel_walk_matches_the_serial_one(monkeypatch):
    monkeypatch.setattr(procs, "PARALLEL_MIN_PROCESSES", 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    pids = sorted(psutil.pids())
    got = list(read_processes(reader(), pids, lambda: False))
    assert [pid for pid, _, _ in got] == pids
    mine = next(rec for pid, rec, _ in got if pid == os.getpid())
    assert mine["pid"] == os.getpid() and mine["cmdline"]
    last = got[-1][1]
    assert last["pid"] == pids[-1]  # read by the helper, came back through the pipe


def test_helper_failure_falls_back_to_reading_here(monkeypatch):
    monkeypatch.setattr(procs, "PARALLEL_MIN_PROCESSES", 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)

    def broken(*args, **kwargs):
        raise RuntimeError("the helper cannot pickle")
    monkeypatch.setattr(procs.pickle, "dumps", broken)
    pids = sorted(psutil.pids())
    got = [pid for pid, _, _ in read_processes(reader(), pids, lambda: False)]
    assert got == pids


def test_stopping_early_ends_the_helper(monkeypatch):
    monkeypatch.setattr(procs, "PARALLEL_MIN_PROCESSES", 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    before = set(psutil.Process().children())
    gen = read_processes(reader(), sorted(psutil.pids()), lambda: False)
    next(gen)
    gen.close()
    assert set(psutil.Process().children()) == before  # killed and reaped


def test_a_shared_socket_is_named_by_its_lowest_pid_whatever_the_walk_order():
    """The parallel walk meets a socket's holders in any order; the record does not change."""
    from ossec_dfir.collectors.triage.net import attach_owners
    records = []
    for held in ([(4242, 7), (17, 3), (4242, 5)], [(4242, 5), (4242, 7), (17, 3)]):
        rec = {"inode": 99}
        attach_owners([rec], {99: held})
        records.append(rec)
    assert records[0] == records[1]
    assert (records[0]["pid"], records[0]["fd"]) == (17, 3)
    assert records[0]["owners"] == [{"pid": 17, "fd": 3}, {"pid": 4242, "fd": 5},
                                    {"pid": 4242, "fd": 7}]
