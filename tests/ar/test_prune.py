"""The worker applies the retention block after its jobs (issue 12 item 19), through the real
AR executable and a detached worker."""
from __future__ import annotations

import time

from ossec_dfir.ar.simulate import ossec_argv, run_ossec
from ossec_dfir.evidence import retention
from ossec_dfir.evidence.store import Store
from tests.ar.test_entry import Tree
from tests.evidence.test_retention import make_incident


def old_exported_incident(tree: Tree, ip: str) -> str:
    store = Store(str(tree.evidence))
    try:
        incident_id = make_incident(store, ip)
        retention.record_export(store, incident_id, "/a.tar.gz", "0" * 64, 1,
                                retention.manifest_tip(store, incident_id))
    finally:
        store.close()
    return incident_id


def wait_prune_line(tree: Tree, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = [x for x in tree.invocation_lines() if " ossec-dfir prune -- " in x]
        if lines:
            return lines[0]
        time.sleep(0.1)
    raise AssertionError(f"no prune line in {timeout_s} s: {tree.log_lines()}")


def test_worker_prunes_after_its_job_when_enabled(tmp_path):
    # (off by default: tests/evidence/test_retention.py::test_worker_prunes_after_its_jobs_...)
    tree = Tree(tmp_path, "outcome_linger_s: 0\nretention: {enabled: true}\n")
    old = old_exported_incident(tree, "203.0.113.80")
    res = run_ossec(ossec_argv(tree.script("dfir-host"), "add", "203.0.113.81"),
                    env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0
    assert "outcome=complete" in tree.wait_outcome()[0]
    assert "deleted 1 incidents" in wait_prune_line(tree)
    assert [i for i in tree.incidents() if i.endswith("203.0.113.81")]
    assert old not in tree.incidents()
