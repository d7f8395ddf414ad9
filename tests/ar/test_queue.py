"""Decoy incidents cannot push a real job past queue_max_age_s (issue 12 item 4: queue).

A flood of decoy alerts through one rule (a local user forging sshd log lines
naming IPs that send nothing) is queued while every worker is busy; the real
trigger of another rule comes last. Workers take the oldest job of the rule
with the fewest queued jobs, so the real job runs first; a job that waited
past queue_max_age_s is recorded as skipped with the reason and a failed
outcome line.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

from ossec_dfir.ar import worker
from ossec_dfir.evidence.store import Store
from tests.ar.test_entry import Tree
from tests.conftest import make_request

DECOY_RULE = "5716"
REAL_RULE = "31151"


def _job(ip: str, rule: str | None, queued: float | None = None) -> dict:
    req = make_request(ip).to_record()
    req["rule_id"] = rule
    return {"incident": f"x_{ip}", "trigger": f"t-{ip}", "request": req,
            "queued": queued or time.time()}


def test_fair_order_puts_a_flooded_rule_behind_quieter_ones(tmp_path):
    store = Store(str(tmp_path / "evidence"))
    try:
        decoys = [worker.enqueue(store, _job(f"203.0.113.{n}", DECOY_RULE)) for n in range(30)]
        noisy = [worker.enqueue(store, _job(f"198.51.100.{n}", "5710")) for n in range(3)]
        manual = worker.enqueue(store, _job("198.51.100.200", None))
        real = worker.enqueue(store, _job("192.0.2.7", REAL_RULE))
        assert worker.job_group(real) == REAL_RULE and worker.job_group(manual) == "-"
        assert worker.job_group("00000001-2-abcd.json") == "-"  # a name without a group
        taken = []
        while (claimed := worker.claim_job(store)) is not None:
            name, job = claimed
            taken.append(name.split(".", 1)[1])
            worker.done_job(store, name)
        # singletons first (oldest first), then the small group, then the flood
        assert taken == [manual, real, *noisy, *decoys]
    finally:
        store.close()


def test_the_real_trigger_runs_before_a_queued_flood(tmp_path):
    """Through the AR executables: every worker slot busy while 12 decoys and 1 real queue."""
    tree = Tree(tmp_path, "max_workers: 1\n")
    store = Store(str(tree.evidence))
    held = worker.try_slot(store, 1)  # the one worker slot: everything queues
    assert held is not None

    def fire(ip: str, rule: str, n: int) -> None:
        assert subprocess.run([tree.script("dfir-host"), "add", "-", ip, f"1764376501.{n}",
                               rule, "/var/log/auth.log", "-"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                              timeout=60).returncode == 0
    try:
        for n in range(12):
            fire(f"203.0.113.{100 + n}", DECOY_RULE, n)
        fire("198.51.100.77", REAL_RULE, 99)
        assert len(worker.queued_jobs(store)) == 13
        assert all("queued (all worker slots busy)" in x for x in tree.invocation_lines())
    finally:
        os.close(held)
    # the next trigger finds the slot free and starts the worker that drains the queue
    fire("203.0.113.200", DECOY_RULE, 200)
    lines = tree.wait_outcome(14, timeout_s=180)
    store.close()
    order = [line.split(" srcip=")[1].split()[0] for line in lines]
    assert order[0] == "198.51.100.77", order  # queued 13th, taken first
    assert order[1:] == [f"203.0.113.{100 + n}" for n in range(12)] + ["203.0.113.200"]
    assert all("outcome=complete" in line for line in lines)


def test_a_job_older_than_queue_max_age_is_skipped_and_alerted(tmp_path):
    tree = Tree(tmp_path, "queue_max_age_s: 60\n")
    from ossec_dfir import config as config_mod, hostinfo
    cfg = config_mod.load(str(tree.conf), str(tree.ossec))
    store = worker.open_store(cfg)
    try:
        req = make_request("203.0.113.9", command="dfir-host")
        incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
        incident.close()
        job = {"incident": incident.id, "trigger": "t-old", "request": req.to_record(),
               "queued": time.time() - 3600}
        assert worker.run_job(cfg, store, job) == "failed"
        entries = [json.loads(x) for x in
                   (tree.evidence / incident.id / "manifest.jsonl").read_text().splitlines()]
        skipped = [e for e in entries if e["type"] == "collector"]
        assert [(e["outcome"], e["reason"]) for e in skipped] == [
            ("skipped", "waited longer than queue_max_age_s=60 in the queue")]
        assert not (tree.evidence / incident.id / "host").exists()  # nothing collected
        [line] = tree.wait_outcome(1, timeout_s=10)
        assert "outcome=failed" in line and "queue_max_age_s=60" in line
    finally:
        store.close()
