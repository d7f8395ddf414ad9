"""A crash: the worker and its collector killed with SIGKILL in the middle of a
capture. verify names exactly the unfinished file; the next trigger still works."""
from __future__ import annotations

import os
import signal
import socket

import pytest

from ossec_dfir.evidence.verify import verify
from tests.ar.test_entry import Tree
from tests.ar.test_lifecycle import LONG_CAPTURE, argv, run, running, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="captures need root (CI runs as root)")


def test_sigkill_mid_write_then_next_trigger(tmp_path):
    tree = Tree(tmp_path, LONG_CAPTURE)
    assert run(argv(tree, "add")) == 0
    assert wait_for(lambda: any(i["collector"] == "pcap" for i in running(tree)))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def written():
        sender.sendto(b"x" * 200, ("127.0.0.2", 9))  # keep traffic flowing
        return any(i["bytes"] > 0 for i in running(tree))
    assert wait_for(written, 20), running(tree)
    sender.close()
    [info] = [i for i in running(tree) if i["collector"] == "pcap"]
    child = info["pid"]
    with open(f"/proc/{child}/stat") as fh:
        worker = int(fh.read().rsplit(")", 1)[1].split()[1])
    os.killpg(child, signal.SIGKILL)  # the collector and its tcpdump
    os.kill(worker, signal.SIGKILL)
    assert wait_for(lambda: not os.path.exists(f"/proc/{child}") or
                    open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", 10)
    [incident] = tree.incidents()
    report = verify(str(tree.evidence / incident))
    assert [(p["kind"], p["path"]) for p in report.problems] == \
        [("unfinished", "pcap/01/capture.pcap")]
    # the next trigger for the same IP still works (locks died with the processes)
    assert run(argv(tree, "add")) == 0
    assert wait_for(lambda: any(i["collector"] == "pcap" for i in running(tree)))
    assert run(argv(tree, "delete")) == 0
    outcomes = tree.wait_outcome(2, timeout_s=45)
    # the next worker reported the dead one's collection as failed (an alert)
    assert "outcome=failed" in outcomes[0] and "died" in outcomes[0]
    assert "steps=pcap:complete" in outcomes[1]
    report = verify(str(tree.evidence / incident))
    assert [(p["kind"], p["path"]) for p in report.problems] == \
        [("unfinished", "pcap/01/capture.pcap")]
