"""A triage and a 60 s capture in segments ship while they run, to a real S3 server and to a
real sftp server: triage files and segment objects are remote before the capture ends, at the
end every file is there exactly as in the manifest, and fetch rebuilds and verifies the
incident from the remote copy alone."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from ossec_dfir.ar import shipping
from ossec_dfir.ar.runner import Runner
from ossec_dfir.collectors.base import build_params, get_collector
from ossec_dfir.config import Profile, Step
from ossec_dfir.evidence.verify import verify
from ossec_dfir.ship import outbox, receipts as rc
from ossec_dfir.ship.fetch import fetch
from ossec_dfir.ship.shipper import incident_host_id

from ..conftest import make_request
from .conftest import BUCKET
from .test_s3 import s3_target
from .test_sftp import sftp_target

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="packet capture needs root")
SRCIP = "127.0.0.2"


@dataclasses.dataclass
class Remote:
    """A shipping target, the target an analyst fetches with, and the server's stored files."""

    target: object
    reader: object
    top: Path                      # where the server stores object keys

    def keys(self) -> set[str]:
        """Return every complete object key on the server (temporary files excluded)."""
        return {str(p.relative_to(self.top)) for p in self.top.rglob("*")
                if p.is_file() and ".part-" not in p.name and not p.name.startswith(".rclone")}

    def object(self, key: str) -> bytes:
        """Return one stored object's bytes."""
        return (self.top / key).read_bytes()


@pytest.fixture(params=["s3", "sftp"])
def remote(request) -> Remote:
    """Return a Remote on a real server: rclone serve s3, or OpenSSH sshd (chrooted sftp)."""
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        target = s3_target(server, request.getfixturevalue("s3_credentials"))
        return Remote(target, target, server.data / BUCKET)
    sshd = request.getfixturevalue("sshd")
    return Remote(sftp_target(sshd, sshd.shipper_key), sftp_target(sshd, sshd.analyst_key),
                  sshd.chroot)


def _pinger(stop: threading.Event) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while not stop.is_set():
            s.sendto(b"x" * 200, (SRCIP, 9))
            stop.wait(0.05)


def _step(name: str, params: dict) -> Step:
    return Step(name, build_params(get_collector(name), params))


def test_a_triage_and_a_60s_capture_leave_the_host_while_they_run(config, store, remote,
                                                                  tmp_path):
    from ossec_dfir import hostinfo

    target = remote.target
    shipping_config = dataclasses.replace(config, ship=(target,))
    req = make_request(SRCIP)
    incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    profile = Profile("test", "", (
        _step("triage", {}),
        _step("pcap", {"backend": "native", "duration_s": 60, "timeout_s": 100,
                       "interface": "lo", "segment_s": 5, "summary": True})))
    stop = threading.Event()
    pinger = threading.Thread(target=_pinger, args=(stop,), daemon=True)
    result: dict = {}

    def collect() -> None:
        runner = Runner(config, store, incident, req, "test-trigger")
        runner.run_profile(profile)
        result["outcomes"] = runner.outcomes
    runner = threading.Thread(target=collect, daemon=True)

    def serve() -> None:
        # The worker's shipper, in a thread here: passes every second until the outbox empties.
        while not stop.is_set() or outbox.ids(store):
            shipping.queue(shipping_config, store, incident.id, final=not runner.is_alive())
            shipping.run_once(shipping_config, store, {})
            time.sleep(shipping.POLL_S)
    shipper = threading.Thread(target=serve, daemon=True)

    hid = incident_host_id(incident)
    under = target.key(hid, incident.id, "")
    pinger.start()
    runner.start()
    shipper.start()
    seen_during: set[str] = set()
    deadline = time.monotonic() + 150
    try:
        while runner.is_alive() and time.monotonic() < deadline:
            seen_during |= {k for k in remote.keys() if k.startswith(under)}
            time.sleep(0.5)
        runner.join(timeout=60)
        assert not runner.is_alive()
    finally:
        stop.set()
        shipper.join(timeout=120)
        pinger.join(timeout=5)
    assert not shipper.is_alive()

    triage, pcap = result["outcomes"]
    # Triage may be partial on a busy host (a process's fields unreadable): it still wrote.
    assert triage.outcome in ("complete", "partial"), triage.reason
    assert pcap.outcome == "complete", pcap.reason
    manifest = incident.manifest()
    files = sorted(e["path"] for e in manifest if e["type"] == "file")
    segments = [p for p in files if p.endswith(".pcap")]
    assert len(segments) >= 10            # 60 s in 5 s segments
    assert segments[0] == "pcap/01/capture-00001.pcap"
    # Objects were on the server while the capture still ran: the triage's files and
    # several segments.
    during = {k[len(under):].lstrip("/") for k in seen_during}
    assert sum(p.endswith(".pcap") for p in during) >= 5, during
    triage_files = [p for p in files if p.startswith("triage/")]
    assert triage_files and set(triage_files) <= during, (triage_files, during)
    capture_end = next(e["seq"] for e in manifest if e["type"] == "collector"
                       and e["collector"] == "pcap")
    early = {e["path"] for e in manifest if e["type"] == "receipt" and e["seq"] < capture_end}
    assert set(triage_files) <= early and sum(p.endswith(".pcap") for p in early) >= 5

    # At the end every file is remote, byte for byte, and the manifest too.
    assert rc.shipped_everywhere(incident.path)
    for relpath in files + ["manifest.jsonl"]:
        with open(os.path.join(incident.path, relpath), "rb") as fh:
            assert remote.object(target.key(hid, incident.id, relpath)) == fh.read(), relpath
    for relpath in segments:
        assert remote.object(target.key(hid, incident.id, relpath))[:4] in \
            (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")

    # The analyst rebuilds and verifies the incident from the remote copy alone.
    report = fetch(remote.reader, f"{hid}/{incident.id}", str(tmp_path / "f"))
    assert report.ok, report.to_dict()
    fetched = tmp_path / "f" / incident.id
    assert verify(str(fetched)).ok
    local = {p.relative_to(incident.path) for p in Path(incident.path).rglob("*")
             if p.is_file()}
    assert {p.relative_to(fetched) for p in fetched.rglob("*") if p.is_file()} == local

    # The summary read every segment joined as one capture.
    summary = json.loads(open(os.path.join(incident.path, "pcap/01/summary.json")).read())
    capture = json.loads(open(os.path.join(incident.path, "pcap/01/capture.json")).read())
    assert len(capture["segments"]) == len(segments)
    assert sum(d["packets"] for d in summary["directions"].values()) == \
        capture["packets_written"] > 100
    incident.close()


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
