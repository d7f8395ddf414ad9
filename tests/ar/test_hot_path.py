"""The AR hot path imports only what it needs to validate, record and hand off (issue 15).

The installed executable runs under its own interpreter with ``-X importtime``
(which lists every module imported), as OSSEC's execd and Wazuh's execd run it.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys

import pytest

from ossec_dfir import configcache
from ossec_dfir.ar.simulate import wazuh_message
from tests.ar.test_entry import Tree

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
HEAVY = ("yaml", "psutil", "scapy", "yara", "ossec_dfir.collectors", "ossec_dfir.ar.runner",
         "ossec_dfir.report", "ossec_dfir.cli", "platform")
# What validating, recording, queueing and starting a worker need, nothing else.
ALLOWED = {"ossec_dfir", "ossec_dfir.errors", "ossec_dfir.config", "ossec_dfir.configcache",
           "ossec_dfir.trust", "ossec_dfir.procfs", "ossec_dfir.hostinfo", "ossec_dfir.ar",
           "ossec_dfir.ar.entry", "ossec_dfir.ar.request", "ossec_dfir.ar.ossec_filename",
           "ossec_dfir.ar.log", "ossec_dfir.ar.delivery", "ossec_dfir.ar.logcollector",
           "ossec_dfir.ar.worker", "ossec_dfir.ar.stops", "ossec_dfir.evidence", "ossec_dfir.evidence.fs",
           "ossec_dfir.evidence.text", "ossec_dfir.evidence.store"}


def _imported(stderr: str) -> set[str]:
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                names.add(name)
    return names


def _heavy(names: set[str]) -> set[str]:
    return {n for n in names if any(n == h or n.startswith(h + ".") for h in HEAVY)}


def run_ossec(script: str, args: list[str]) -> tuple[int, set[str]]:
    proc = subprocess.run([sys.executable, "-I", "-X", "importtime", script, *args],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, cwd="/", env=ENV, timeout=60)
    return proc.returncode, _imported(proc.stderr)


def run_wazuh(script: str, message: dict) -> tuple[int, set[str], dict]:
    """Run as Wazuh's execd does (JSON in, check_keys out, continue in), listing the imports."""
    proc = subprocess.Popen([sys.executable, "-I", "-X", "importtime", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd="/", env=ENV)
    assert proc.stdin and proc.stdout
    proc.stdin.write((json.dumps(message) + "\n").encode())
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "no check_keys message"
    asked = json.loads(proc.stdout.readline())
    proc.stdin.write(b'{"version":1,"origin":{"name":"node01","module":"wazuh-execd"},'
                     b'"command":"continue","parameters":{}}\n')
    proc.stdin.flush()
    _, err = proc.communicate(timeout=60)
    return proc.returncode, _imported(err.decode()), asked


@pytest.fixture
def tree(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the config cache is root's (as the AR runs under execd)")
    return Tree(tmp_path)


def test_the_hot_path_imports_no_yaml_parser_and_no_collector(tree):
    script = tree.script("dfir-host")
    cache = configcache.cache_path(str(tree.ossec), str(tree.conf))
    if os.path.lexists(cache):
        os.unlink(cache)
    # Without a cache the YAML is parsed and the collectors validate their
    # parameters: the import list shows them (so the checks below can fail).
    code, first = run_ossec(script, ["add", "-", "203.0.113.10", "1.1", "5712", "-", "-"])
    assert code == 0
    assert {"yaml", "ossec_dfir.collectors.base"} <= first
    assert os.path.exists(cache)
    cases = [["add", "-", "203.0.113.11", "1.2", "5712", "-", "-"],    # a new incident
             ["add", "-", "203.0.113.11", "1.3", "5712", "-", "-"]]    # the same key again
    for args in cases:
        code, names = run_ossec(script, args)
        assert code == 0
        assert _heavy(names) == set(), args
        assert {n for n in names if n.startswith("ossec_dfir")} <= ALLOWED, args
        assert "ossec_dfir.ar.worker" in names  # it did hand off: the check saw the whole path
    code, names, asked = run_wazuh(script, wazuh_message("add", "203.0.113.12", "5712",
                                                         None, "dfir-host"))
    assert code == 0 and asked["command"] == "check_keys"
    assert _heavy(names) == set()
    assert {n for n in names if n.startswith("ossec_dfir")} <= ALLOWED
    lines = tree.invocation_lines()
    assert len(lines) == 4 and all(" -- accepted: incident=" in x for x in lines), lines
    assert len(tree.incidents()) == 3
    tree.wait_outcome(3)
    code, names = run_ossec(script, ["delete", "-", "203.0.113.11", "1.2", "5712", "-", "-"])
    assert code == 0 and _heavy(names) == set()
    assert {n for n in names if n.startswith("ossec_dfir")} <= ALLOWED
    assert "ossec_dfir.ar.stops" in names and " -- delete: stop requested" in \
        tree.invocation_lines()[-1]


def test_refused_input_imports_nothing_heavy_either(tree):
    script = tree.script("dfir-host")
    run_ossec(script, ["add", "-", "203.0.113.10", "1.1", "5712", "-", "-"])  # fills the cache
    code, names = run_ossec(script, ["add", "-", "not-an-ip;reboot", "1.1", "5712", "-", "-"])
    assert code != 0 and _heavy(names) == set()
    assert "refused" in tree.invocation_lines()[-1]
    tree.wait_outcome(1)  # the first add's worker


def test_the_worker_starts_niced_and_takes_the_priority_back_before_its_jobs():
    """In a storm the worker's start-up yields to the AR invocations; its collections do not."""
    from ossec_dfir.ar import worker
    if os.geteuid() != 0:
        pytest.skip("only root can take a priority back")
    assert f"os.nice({worker.START_NICE})" in worker._BOOT
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.nice(worker.START_NICE)
            niced = os.getpriority(os.PRIO_PROCESS, 0)
            worker._restore_priority("0")
            os.write(write_fd, f"{niced} {os.getpriority(os.PRIO_PROCESS, 0)}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    answer = os.read(read_fd, 64).decode()
    os.close(read_fd)
    assert os.waitpid(pid, 0)[1] == 0
    assert answer == f"{worker.START_NICE} 0"
