"""Detached helpers (worker, shipper) start in a session of their own, niced where the
kernel shares CPU, with nothing of their spawner's but the one descriptor handed over."""
from __future__ import annotations

import json
import os
import time

import pytest

from ossec_dfir.ar import detach, worker

AUTOGROUP = os.path.exists("/proc/self/autogroup")


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data


def _wait_gone(pid: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        detach.reap_spawned()
        if pid not in detach._spawned:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} was not reaped")


def test_spawn_detaches_niced_with_only_the_handed_descriptor():
    read_fd, write_fd = os.pipe()
    leaked = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaked, True)  # as a descriptor execd left open would be
    try:
        pid = detach.spawn(detach.boot_argv("tests.ar.detach_probe", 7, [str(write_fd), "x"]),
                           write_fd)
    finally:
        os.close(leaked)
        os.close(write_fd)
    report = json.loads(_read_all(read_fd))
    os.close(read_fd)
    _wait_gone(pid)
    assert report["pid"] == pid
    assert report["sid"] == pid and report["pgid"] == pid  # a new session, leading it
    assert report["nice"] == os.getpriority(os.PRIO_PROCESS, 0) + 7 or report["nice"] == 19
    if AUTOGROUP:
        assert report["session_nice"] == 7
    assert report["cwd"] == "/"
    assert report["env"] == detach.ENV
    assert report["stdio"] == ["/dev/null"] * 3
    assert report["fds"] == sorted({0, 1, 2, write_fd})  # not the leaked one
    assert report["argv"] == [str(write_fd), "x"]


def test_spawned_processes_are_reaped_not_left_as_zombies():
    read_fd, write_fd = os.pipe()
    try:
        pid = detach.spawn(detach.boot_argv("tests.ar.detach_probe", 0, [str(write_fd)]),
                           write_fd)
    finally:
        os.close(write_fd)
    _read_all(read_fd)
    os.close(read_fd)
    _wait_gone(pid)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # collected by reap_spawned: no zombie left


def test_set_priority_sets_process_and_session():
    if os.geteuid() != 0:
        pytest.skip("only root can take a priority back")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.setsid()
            detach.set_priority(worker.START_NICE)
            niced = (os.getpriority(os.PRIO_PROCESS, 0), detach.session_nice())
            worker._restore_priority("0", "0")
            back = (os.getpriority(os.PRIO_PROCESS, 0), detach.session_nice())
            os.write(write_fd, json.dumps([niced, back]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    niced, back = json.loads(_read_all(read_fd))
    os.close(read_fd)
    assert os.waitpid(pid, 0)[1] == 0
    assert niced == [worker.START_NICE, worker.START_NICE if AUTOGROUP else 0]
    assert back == [0, 0]


def test_the_worker_boot_nices_before_any_import():
    argv = detach.boot_argv("ossec_dfir.ar.worker", worker.START_NICE, [])
    code = argv[argv.index("-c") + 1]
    assert code.index(f"os.nice({worker.START_NICE})") < code.index("from ossec_dfir")
    assert f'fh.write("{worker.START_NICE}")' in code and detach.AUTOGROUP in code
