"""A full disk: the evidence root on a small tmpfs, a capture and a file copy that
would overflow it. The reserve holds, outcomes are partial with the reason, and
verify passes for everything written. Needs root (mount, capture)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

import pytest

from ossec_dfir import config as config_mod
from ossec_dfir.evidence.verify import verify

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (CI runs as root)")

FS_BYTES = 24 << 20
RESERVE_BYTES = 10 << 20


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0700", "tmpfs",
                    str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def load(tmp_path, root):
    conf = tmp_path / "c.yml"
    conf.write_text(f"evidence_root: {root}\nlog_file: {tmp_path}/ar.log\n"
                    f"reserve_bytes: {RESERVE_BYTES}\n")
    return config_mod.load(str(conf), str(tmp_path))


def run_one(cfg, name, params, srcip="127.0.0.2"):
    from ossec_dfir import hostinfo
    from ossec_dfir.collectors.base import build_params, get_collector
    from ossec_dfir.config import Profile, Step
    from ossec_dfir.ar.runner import Runner
    from ossec_dfir.evidence.store import Store
    from tests.conftest import make_request
    store = Store(cfg.evidence_root, cfg.reserve_bytes, cfg.grouping_window_s)
    req = make_request(srcip)
    incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    runner = Runner(cfg, store, incident, req, "t")
    runner.run_profile(Profile("t", "", (Step(name, build_params(get_collector(name), params)),)))
    return runner.outcomes[-1], incident


def test_file_copy_stops_at_the_reserve(tmp_path, small_fs):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(40 << 20))
    cfg = load(tmp_path, small_fs / "evidence")
    outcome, incident = run_one(cfg, "files", {"roots": [str(src)], "action": "copy",
                                                "include_alert_file": False})
    assert outcome.outcome == "partial", outcome
    assert "reserve" in json.dumps([outcome.reason, outcome.summary])
    assert free_bytes(small_fs) >= RESERVE_BYTES - (256 << 10)
    report = verify(incident.path)
    assert report.ok, report.problems
    copies = [e for e in incident.manifest() if e["type"] == "file" and "copies/" in e["path"]]
    assert copies and copies[0]["outcome"] == "partial"


def test_capture_stops_at_the_reserve(tmp_path, small_fs):
    cfg = load(tmp_path, small_fs / "evidence")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.2", 0))
    port = sink.getsockname()[1]
    stop = threading.Event()

    def flood():
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        payload = os.urandom(1400)
        deadline = time.monotonic() + 25
        while not stop.is_set() and time.monotonic() < deadline:
            for _ in range(200):
                out.sendto(payload, ("127.0.0.2", port))
            time.sleep(0.002)
        out.close()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        outcome, incident = run_one(cfg, "pcap", {"duration_s": 30, "interface": "lo",
                                                  "summary": False})
    finally:
        stop.set()
        flooder.join()
        sink.close()
    assert outcome.outcome == "partial", outcome
    assert "reserve" in json.dumps([outcome.reason, outcome.summary])
    assert free_bytes(small_fs) >= RESERVE_BYTES - (256 << 10)
    report = verify(incident.path)
    assert report.ok, report.problems
