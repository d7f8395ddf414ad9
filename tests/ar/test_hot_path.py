"""The AR hot path imports only what it needs to validate, record and hand off (issue 15).

The installed executable runs with the interpreter and flags of its shebang
(as OSSEC's execd and Wazuh's execd run it) plus ``-X importtime``, which lists
every module imported.
"""
from __future__ import annotations

import json
import os
import select
import subprocess

import pytest

from ossec_dfir import configcache
from ossec_dfir.ar.simulate import wazuh_message
from tests.ar.test_entry import Tree

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
HEAVY = ("yaml", "psutil", "scapy", "yara", "ossec_dfir.collectors", "ossec_dfir.ar.runner",
         "ossec_dfir.report", "ossec_dfir.cli", "ossec_dfir.config", "platform",
         # the standard library's costly ones: dataclasses (inspect, ast, dis), typing,
         # subprocess, socket, OpenSSL's hashlib, datetime, decimal; and no .pth file's
         "dataclasses", "inspect", "typing", "subprocess", "socket", "hashlib", "_hashlib",
         "datetime", "decimal", "sitecustomize", "_distutils_hack")
# What validating, recording, queueing and starting a worker need, nothing else.
ALLOWED = {"ossec_dfir", "ossec_dfir.errors", "ossec_dfir.record", "ossec_dfir.settings",
           "ossec_dfir.configcache", "ossec_dfir.trust", "ossec_dfir.hostinfo", "ossec_dfir.ar",
           "ossec_dfir.ar.entry", "ossec_dfir.ar.request", "ossec_dfir.ar.ossec_filename",
           "ossec_dfir.ar.log", "ossec_dfir.ar.delivery", "ossec_dfir.ar.logcollector",
           "ossec_dfir.ar.worker", "ossec_dfir.ar.detach", "ossec_dfir.ar.stops",
           "ossec_dfir.evidence", "ossec_dfir.evidence.fs", "ossec_dfir.evidence.text",
           "ossec_dfir.evidence.store"}


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


def shebang(script: str) -> list[str]:
    """Return the interpreter and its flags as the script's first line names them."""
    with open(script) as fh:
        first = fh.readline()
    assert first.startswith("#!"), first
    return first[2:].split()


def run_ossec(script: str, args: list[str]) -> tuple[int, set[str]]:
    proc = subprocess.run([*shebang(script), "-X", "importtime", script, *args],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, cwd="/", env=ENV, timeout=60)
    return proc.returncode, _imported(proc.stderr)


def run_wazuh(script: str, message: dict) -> tuple[int, set[str], dict]:
    """Run as Wazuh's execd does (JSON in, check_keys out, continue in), listing the imports."""
    proc = subprocess.Popen([*shebang(script), "-X", "importtime", script],
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
