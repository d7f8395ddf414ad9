"""Decoy triggers cannot hold every capture slot (issue 12 item 4: capture slots).

Real captures on loopback through the installed AR executables: two decoy
triggers (IPs that send nothing) take both capture slots (``max_captures:
2``); a third trigger for an address that does send traffic waits for a slot
instead of being skipped, one decoy yields its slot after ``yield_after_s``
without a packet (recorded in its outcome), the real trigger's traffic is
captured, and the other decoy, nobody waiting any more, keeps its slot.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

import pytest

from ossec_dfir.collectors.suspects import host_interface_of
from tests.ar.test_entry import Tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="captures need root")

DECOYS = ["203.0.113.61", "203.0.113.62"]
PROFILE = ("max_workers: 2\nmax_captures: 2\nprofiles:\n  dfir-pcap:\n    steps:\n"
           "      - collector: pcap\n        params: {duration_s: 120, timeout_s: 150, "
           "interface: lo, backend: native, summary: false, yield_after_s: 1}\n")


def _fire(tree: Tree, action: str, ip: str, n: int) -> None:
    code = subprocess.run([tree.script("dfir-pcap"), action, "-", ip, f"1764376501.{n}",
                           "100100", "-"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, cwd="/", timeout=60).returncode
    assert code == 0


def _running_captures(tree: Tree) -> list[dict]:
    out = []
    for path in (tree.evidence / ".state" / "running").glob("*.json"):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if info.get("collector") == "pcap":
            out.append(info)
    return out


def _wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _pcap_entry(tree: Tree, ip: str) -> dict:
    [manifest] = tree.evidence.glob(f"*_{ip}/manifest.jsonl")
    return [json.loads(x) for x in manifest.read_text().splitlines()
            if json.loads(x).get("type") == "collector"][-1]


def test_idle_decoys_yield_a_capture_slot_to_a_waiting_trigger(tmp_path):
    tree = Tree(tmp_path, PROFILE)
    real = "127.{}.{}.{}".format(*(1 + b % 254 for b in os.urandom(3)))
    assert host_interface_of(real) is None
    for n, ip in enumerate(DECOYS):
        _fire(tree, "add", ip, n)
    _wait(lambda: len(_running_captures(tree)) == 2, 60, "both decoy captures to run")

    stop_sending = threading.Event()

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop_sending.is_set():
                s.sendto(b"attacker traffic", (real, 9))
                time.sleep(0.05)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        _fire(tree, "add", real, 10)

        def real_packets() -> bool:
            found = list(tree.evidence.glob(f"*_{real}/pcap/01/capture.pcap"))
            return bool(found) and socket.inet_aton(real) in found[0].read_bytes()
        _wait(real_packets, 60, "the real trigger's capture to hold its packets")
    finally:
        stop_sending.set()
        sender.join(timeout=10)
    for n, ip in enumerate([real, *DECOYS], start=20):
        _fire(tree, "delete", ip, n)
    tree.wait_outcome(3, timeout_s=90)

    entry = _pcap_entry(tree, real)
    assert entry["outcome"] == "complete", entry["reason"]
    assert entry["summary"]["packets_written"] > 0
    assert any(n.startswith("waited ") and "for a capture slot" in n
               for n in entry["summary"]["notes"])
    decoys = {ip: _pcap_entry(tree, ip) for ip in DECOYS}
    yielded = [ip for ip, e in decoys.items() if e["outcome"] == "partial"]
    assert len(yielded) == 1, decoys  # one waiter, one slot yielded
    assert decoys[yielded[0]]["reason"] == (
        "capture stopped early: yielded its capture slot to a waiting trigger: no packet to "
        f"or from {yielded[0]} in " + decoys[yielded[0]]["reason"].split(" in ")[-1])
    assert "(yield_after_s=1)" in decoys[yielded[0]]["reason"]
    [kept] = set(DECOYS) - set(yielded)
    assert decoys[kept]["outcome"] == "complete"
    assert decoys[kept]["summary"]["stop_reason"] == "delete received"
    assert not list((tree.evidence / ".state" / "capture-waiting").iterdir())


def test_a_capture_with_traffic_never_yields(tmp_path):
    """The waiting trigger keeps waiting; its delete ends it skipped, saying why."""
    tree = Tree(tmp_path, PROFILE.replace("max_captures: 2", "max_captures: 1"))
    busy = "127.{}.{}.{}".format(*(1 + b % 254 for b in os.urandom(3)))
    stop_sending = threading.Event()

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop_sending.is_set():
                s.sendto(b"attacker traffic", (busy, 9))
                time.sleep(0.05)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    waiting_dir = tree.evidence / ".state" / "capture-waiting"
    try:
        _fire(tree, "add", busy, 1)
        _wait(lambda: len(_running_captures(tree)) == 1, 60, "the first capture to run")
        _fire(tree, "add", DECOYS[0], 2)
        _wait(lambda: waiting_dir.exists() and list(waiting_dir.iterdir()), 60,
              "the second trigger to wait for a slot")
        time.sleep(3)  # three yield_after_s periods: the busy capture is asked, and says no
        _fire(tree, "delete", DECOYS[0], 3)
        _fire(tree, "delete", busy, 4)
        tree.wait_outcome(2, timeout_s=90)
    finally:
        stop_sending.set()
        sender.join(timeout=10)
    entry = _pcap_entry(tree, busy)
    assert entry["outcome"] == "complete" and entry["summary"]["stop_reason"] == \
        "delete received"
    waiting = _pcap_entry(tree, DECOYS[0])
    assert waiting["outcome"] == "skipped"
    assert waiting["reason"].startswith("max_captures=1: every capture slot stayed busy for ")
    assert waiting["reason"].endswith("until delete received")
    assert not list(waiting_dir.iterdir())
