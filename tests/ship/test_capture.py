"""A 60 s capture in segments ships while it runs: segment objects appear on the S3 server
before the capture ends, and at the end every segment is there exactly as in the manifest."""
from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time

import pytest

from ossec_dfir.ar import shipping
from ossec_dfir.ship import outbox, receipts as rc
from ossec_dfir.ship.fetch import fetch
from ossec_dfir.ship.shipper import incident_host_id

from .test_s3 import s3_target

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="packet capture needs root")
SRCIP = "127.0.0.2"


def _pinger(stop: threading.Event) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while not stop.is_set():
            s.sendto(b"x" * 200, (SRCIP, 9))
            stop.wait(0.05)


@pytest.mark.parametrize("backend", ["native"])
def test_a_60s_capture_leaves_the_host_while_it_runs(config, store, run_collector, s3_server,
                                                     s3_credentials, tmp_path, backend):
    target = s3_target(s3_server, s3_credentials)
    shipping_config = dataclasses.replace(config, ship=(target,))
    stop = threading.Event()
    pinger = threading.Thread(target=_pinger, args=(stop,), daemon=True)
    result: dict = {}

    def capture() -> None:
        result["outcome"], result["incident"] = run_collector(
            "pcap", {"backend": backend, "duration_s": 60, "timeout_s": 100, "interface": "lo",
                     "segment_s": 5, "summary": True}, srcip=SRCIP)
        result["ended"] = time.monotonic()
    runner = threading.Thread(target=capture, daemon=True)

    def serve() -> None:
        # The worker's shipper, in a thread here: passes every second until the outbox empties.
        while not stop.is_set() or outbox.ids(store):
            for iid in store.incident_ids():
                shipping.queue(shipping_config, store, iid, final=not runner.is_alive())
            shipping.run_once(shipping_config, store, {})
            time.sleep(shipping.POLL_S)
    shipper = threading.Thread(target=serve, daemon=True)

    pinger.start()
    runner.start()
    shipper.start()
    seen_during: set[str] = set()
    deadline = time.monotonic() + 120
    while runner.is_alive() and time.monotonic() < deadline:
        seen_during |= {k for k in s3_server.keys() if k.endswith(".pcap")}
        time.sleep(0.5)
    runner.join(timeout=60)
    assert not runner.is_alive()
    stop.set()
    shipper.join(timeout=120)
    pinger.join(timeout=5)
    assert not shipper.is_alive()

    outcome, incident = result["outcome"], result["incident"]
    assert outcome.outcome == "complete", outcome.reason
    segments = sorted(e["path"] for e in incident.manifest()
                      if e["type"] == "file" and e["path"].endswith(".pcap"))
    assert len(segments) >= 10            # 60 s in 5 s segments
    assert segments[0] == "pcap/01/capture-00001.pcap"
    # Objects were on the server while the capture still ran: several segments.
    assert len(seen_during) >= 5, seen_during
    assert rc.shipped_everywhere(incident.path)
    hid = incident_host_id(incident)
    for relpath in segments:
        key = f"dfir/{hid}/{incident.id}/{relpath}"
        with open(os.path.join(incident.path, relpath), "rb") as fh:
            assert s3_server.object(key) == fh.read()
        assert s3_server.object(key)[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    report = fetch(target, f"{hid}/{incident.id}", str(tmp_path / "f"))
    assert report.ok, report.to_dict()
    # The summary read every segment joined as one capture.
    import json
    summary = json.loads(open(os.path.join(incident.path, "pcap/01/summary.json")).read())
    capture = json.loads(open(os.path.join(incident.path, "pcap/01/capture.json")).read())
    assert len(capture["segments"]) == len(segments)
    assert sum(d["packets"] for d in summary["directions"].values()) == \
        capture["packets_written"] > 100


@pytest.mark.parametrize("params, needle", [
    ({"segment_bytes": 1000}, "segment_bytes"),
    ({"segment_s": 0.5}, "segment_s"),
    ({"segment_s": 90000}, "segment_s"),
])
def test_bad_segment_parameters_are_refused(params, needle):
    from ossec_dfir.collectors.base import build_params, get_collector
    from ossec_dfir.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        build_params(get_collector("pcap"), params)
