"""The srcip policy (issue 12 item 13): an address of this host derives nothing.

A process holding a secret talks to another over 127.0.0.1. An alert naming
127.0.0.1 (or ::1, or the host's own address) must not make the memory
collector core it, YARA's suspect scan read it, triage list it as a suspect,
or the capture record the host's loopback traffic; each step says why in its
outcome. The same process reached through a 127/8 address that no interface
holds (the demo's attacker) is still a suspect: the control that shows the
test can fail.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ossec_dfir.collectors import suspects
from tests.collectors.yara.test_yara import MARK, rules_dir  # noqa: F401 - fixture
from tests.conftest import evidence_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="memory cores need root")

# The child connects to the listener given on argv and keeps a secret (the YARA
# test marker) in its memory until its stdin closes.
CHILD = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
    "secret = sys.stdin.readline().strip().encode() * 4\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n")


@pytest.fixture
def talker():
    """Yield (pid, free_ip): a child with a connection on 127.0.0.1 and one on free_ip."""
    free_ip = "127.{}.{}.{}".format(*(1 + b % 254 for b in os.urandom(3)))
    assert suspects.host_interface_of(free_ip) is None
    listeners, children, conns = [], [], []
    try:
        for ip in ("127.0.0.1", free_ip):
            lst = socket.socket()
            lst.bind((ip, 0))
            lst.listen(1)
            listeners.append(lst)
        # one child per address, so each srcip has exactly one suspect of ours
        for lst in listeners:
            ip, port = lst.getsockname()
            child = subprocess.Popen([sys.executable, "-c", CHILD, ip, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            children.append(child)
            conns.append(lst.accept()[0])
            child.stdin.write(MARK + "\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "ready"
        yield children[0].pid, children[1].pid, free_ip
    finally:
        for child in children:
            child.kill()
            child.wait(timeout=10)
        for s in conns + listeners:
            s.close()


def _step_entry(incident, collector):
    return [e for e in incident.manifest()
            if e.get("type") == "collector" and e.get("collector") == collector][-1]


@pytest.mark.parametrize("own", ["127.0.0.1", "::ffff:127.0.0.1"])
def test_own_address_derives_nothing_and_every_step_says_why(run_collector, rules_dir,  # noqa: F811
                                                             talker, own):
    loop_pid, _, _ = talker
    assert loop_pid in [c.pid for c in suspects.connections_with("127.0.0.1")]
    why = "127.0.0.1 is an address of this host (interface lo)"

    outcome, incident = run_collector("memory", {"timeout_s": 60, "host_image": False},
                                      srcip=own)
    assert outcome.summary["processes"]["targets"] == 0
    assert why in outcome.reason and "no process dumped as a suspect" in outcome.reason
    assert why in _step_entry(incident, "memory")["reason"]
    assert not list(evidence_path(incident, ".").glob("memory/*/processes/*/core"))

    outcome, incident = run_collector("yara", {
        "timeout_s": 60, "use_cache": False, "scan_files": False, "scan_processes": True,
        "process_scope": "suspects", "rules_dirs": [str(rules_dir)]}, srcip=own)
    summary = json.loads(evidence_path(incident, "yara/01/summary.json").read_text())
    assert summary["processes"]["scanned"] == 0
    assert why in summary["processes"]["suspects_status"]
    assert why in outcome.reason and "no process scanned as a suspect" in outcome.reason
    assert evidence_path(incident, "yara/01/matches.jsonl").read_text() == ""

    outcome, incident = run_collector("triage", {"open_files": False}, srcip=own)
    assert outcome.summary["suspects"] == []
    assert why in outcome.reason and "no suspects derived" in outcome.reason

    outcome, incident = run_collector("pcap", {"interface": "any", "duration_s": 5}, srcip=own)
    assert outcome.outcome == "skipped"
    assert why in outcome.reason and "not captured" in outcome.reason
    assert not list(evidence_path(incident, ".").glob("pcap/*/capture.pcap"))


def test_a_127_address_no_interface_holds_stays_usable(run_collector, rules_dir,  # noqa: F811
                                                       talker):
    """The control: the same kind of process, reached through a free 127/8 address."""
    loop_pid, free_pid, free_ip = talker
    outcome, incident = run_collector("memory", {"timeout_s": 60, "host_image": False},
                                      srcip=free_ip)
    assert outcome.summary["processes"]["pids"] == [free_pid]
    assert "suspects_status" not in outcome.summary
    assert evidence_path(incident, f"memory/01/processes/{free_pid}/core").exists()

    outcome, incident = run_collector("yara", {
        "timeout_s": 60, "use_cache": False, "scan_files": False, "scan_processes": True,
        "process_scope": "suspects", "rules_dirs": [str(rules_dir)]}, srcip=free_ip)
    matched = [json.loads(x) for x in
               evidence_path(incident, "yara/01/matches.jsonl").read_text().splitlines()]
    assert {m["pid"] for m in matched} == {free_pid}

    outcome, incident = run_collector("triage", {"open_files": False}, srcip=free_ip)
    assert free_pid in outcome.summary["suspects"] and loop_pid not in outcome.summary["suspects"]
    assert not outcome.reason or "address of this host" not in outcome.reason
