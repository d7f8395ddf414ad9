"""An alert storm: hundreds of triggers for dozens of IPs within seconds."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ossec_dfir.evidence.store import Store
from ossec_dfir.evidence.verify import verify
from ossec_dfir.ar.worker import busy_slots
from tests.ar.test_entry import Tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="captures need root (CI runs as root)")

IPS = [f"127.0.1.{n}" for n in range(1, 25)]
TRIGGERS = 240
MAX_WORKERS = 2


def test_alert_storm(tmp_path):
    tree = Tree(tmp_path, f"max_workers: {MAX_WORKERS}\nmax_captures: 32\nprofiles:\n"
                          "  dfir-pcap:\n    steps:\n      - collector: pcap\n"
                          "        params: {duration_s: 8, interface: lo, summary: false}\n")
    peak = {"workers": 0}
    done = threading.Event()

    def sample():
        """Count the worker slot locks held right now (ossec-dfir status' count)."""
        store = None
        while not done.is_set():
            if store is None and tree.evidence.exists():
                store = Store(str(tree.evidence), create=False)
            if store is not None:
                peak["workers"] = max(peak["workers"], busy_slots(store, MAX_WORKERS + 2))
            time.sleep(0.01)
        if store is not None:
            store.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def fire(i):
        ip = IPS[i % len(IPS)]
        return subprocess.run([tree.script("dfir-pcap"), "add", "-", ip, f"1764376501.{i}",
                               "100100", "-"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd="/", timeout=120).returncode

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(fire, range(TRIGGERS)))
        assert codes == [0] * TRIGGERS
        tree.wait_outcome(TRIGGERS, timeout_s=240)
    finally:
        done.set()
        sampler.join()
    assert 1 <= peak["workers"] <= MAX_WORKERS
    incidents = tree.incidents()
    assert len(incidents) == len(IPS)  # one incident per IP
    total_triggers = 0
    for incident in incidents:
        path = tree.evidence / incident
        total_triggers += len((path / "triggers.jsonl").read_text().splitlines())
        entries = [json.loads(x) for x in (path / "manifest.jsonl").read_text().splitlines()]
        runs = sorted((e["started"], e["ended"]) for e in entries
                      if e["type"] == "collector" and e["collector"] == "pcap"
                      and e["outcome"] != "skipped")
        assert runs, incident
        for (_, end_a), (start_b, _) in zip(runs, runs[1:]):
            assert end_a <= start_b, f"two captures of one IP overlapped in {incident}"
        assert verify(str(path)).ok
    assert total_triggers == TRIGGERS  # every trigger recorded
    assert len(tree.invocation_lines()) == TRIGGERS
