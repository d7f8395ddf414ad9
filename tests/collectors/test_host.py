"""The host collector writes the host identity, hashed and in the manifest."""
from __future__ import annotations

import hashlib
import json
import socket

from tests.conftest import evidence_path


def test_host_identity_is_written_and_recorded(run_collector):
    outcome, incident = run_collector("host")
    assert outcome.outcome in ("complete", "partial")
    assert outcome.files == ["host/01/host.json"]
    path = evidence_path(incident, "host/01/host.json")
    doc = json.loads(path.read_text())
    assert doc["hostname"] == socket.gethostname()
    assert doc["kernel"]["release"]
    entries = [e for e in incident.manifest() if e.get("path") == "host/01/host.json"
               and e["type"] == "file"]
    assert len(entries) == 1
    assert entries[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entries[0]["size"] == path.stat().st_size
    assert path.stat().st_mode & 0o777 == 0o600
