"""End to end: an OSSEC alert runs a profile, the shipper runs beside the collectors, the
outcome line says what was shipped, a later line says the backlog cleared, and the analyst's
``ossec-dfir fetch`` rebuilds and verifies the incident from the remote copy alone."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ossec_dfir.ar.simulate import run_ossec
from ossec_dfir.evidence.verify import verify

from ..ar.test_entry import Tree
from .conftest import BUCKET


def ship_config(server, creds: Path, extra: str = "") -> str:
    return ("ship:\n  - name: lab\n    url: s3://" + BUCKET + "/dfir\n"
            f"    endpoint: {server.endpoint}\n    credentials_file: {creds}\n{extra}")


def wait_line(tree: Tree, needle: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in tree.log_lines():
            if needle in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f"no line with {needle!r}: {tree.log_lines()}")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ossec_dfir", *args], capture_output=True,
                          text=True, timeout=120)


PROFILE = """profiles:
  dfir-shiptest:
    description: triage, then a capture in segments
    expect: srcip
    ar_timeout_s: 600
    steps:
      - collector: triage
      - collector: pcap
        params: {duration_s: 15, timeout_s: 60, interface: lo, backend: native,
                 segment_s: 3, summary: false}
"""


def test_triage_and_a_capture_ship_while_they_run_and_fetch_verifies(tmp_path, s3_server,
                                                                      s3_credentials):
    import socket
    import threading

    tree = Tree(tmp_path / "t", ship_config(s3_server, s3_credentials) + PROFILE)
    stop = threading.Event()

    def ping() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not stop.is_set():
                s.sendto(b"x" * 100, ("127.0.0.2", 9))
                stop.wait(0.1)
    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    try:
        argv = [tree.script("dfir-shiptest"), "add", "-", "127.0.0.2", "1795912782.2", "5710",
                "/var/log/auth.log", "-"]
        assert run_ossec(argv, env={"PATH": "/usr/bin:/bin"}).returncode == 0
        outcome = wait_line(tree, "ossec-dfir: outcome=", 300)
    finally:
        stop.set()
        pinger.join(timeout=5)
    assert "command=dfir-shiptest" in outcome and " shipped=" in outcome, outcome
    cleared = wait_line(tree, "outcome=shipped", 120)
    [incident] = tree.incidents()
    assert f"incident={incident}" in cleared
    done, total = cleared.split(" shipped=")[1].split()[0].split("/")
    assert done == total and int(total) > 3

    manifest = [json.loads(x) for x in
                (tree.evidence / incident / "manifest.jsonl").read_text().splitlines()]
    capture_end = next(e["seq"] for e in manifest if e.get("type") == "collector"
                       and e.get("collector") == "pcap")
    early = [e["path"] for e in manifest if e.get("type") == "receipt"
             and e["seq"] < capture_end]
    # Triage files and capture segments left the host while the capture still ran.
    assert any(p.startswith("triage/") for p in early), early
    assert sum(p.endswith(".pcap") for p in early) >= 2, early
    assert verify(str(tree.evidence / incident)).ok

    # The shipper is gone once its outbox stayed empty; the outbox is empty.
    status = cli("--config", str(tree.conf), "ship-status")
    assert status.returncode == 0 and "outbox empty" in status.stdout

    hid = [e for e in manifest if e.get("type") == "receipt"][0]["key"].split("/")[1]
    res = cli("--config", str(tree.conf), "fetch", "--target", "lab", f"{hid}/{incident}",
              str(tmp_path / "analyst"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("OK:")
    fetched = tmp_path / "analyst" / incident
    assert verify(str(fetched)).ok
    local = {p.relative_to(tree.evidence / incident) for p in (tree.evidence / incident).rglob("*")
             if p.is_file()}
    remote = {p.relative_to(fetched) for p in fetched.rglob("*") if p.is_file()}
    assert local == remote
