"""The evidence store: exclusive, link-proof, hashed, chained, reserve-bounded."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest

from ossec_dfir.errors import ReserveReached, StoreError
from ossec_dfir.evidence.store import Store
from ossec_dfir.evidence.verify import verify


def ident():
    return {"hostname": "test"}


@pytest.fixture
def incident(store):
    inc, created = store.incident_for("192.0.2.1", ident, {"trigger_id": "t1"})
    assert created
    yield inc
    inc.close()


def test_writer_hashes_and_records(incident):
    with incident.writer("test", "test/01/data.bin", {"p": 1}, {"m": "x"}) as w:
        w.write(b"hello ")
        w.write(b"world")
    path = os.path.join(incident.path, "test/01/data.bin")
    assert open(path, "rb").read() == b"hello world"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    entry = [e for e in incident.manifest() if e["type"] == "file" and
             e["path"] == "test/01/data.bin"][0]
    assert entry["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert entry["size"] == 11 and entry["outcome"] == "complete"
    assert entry["params"] == {"p": 1} and entry["meta"] == {"m": "x"}
    assert entry["custody"]["uid"] == os.geteuid()
    # sha256sum -c accepts SHA256SUMS
    out = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=incident.path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert verify(incident.path).ok


def test_manifest_is_hash_chained(incident):
    incident.append_trigger({"trigger_id": "t2", "action": "add"})
    lines = open(os.path.join(incident.path, "manifest.jsonl"), "rb").read().splitlines(True)
    prev = "0" * 64
    for number, line in enumerate(lines, 1):
        entry = json.loads(line)
        assert entry["prev"] == prev and entry["seq"] == number
        prev = hashlib.sha256(line).hexdigest()


def test_existing_evidence_is_never_overwritten(incident):
    incident.writer("test", "test/01/a.txt").close()
    with pytest.raises(StoreError, match="never overwritten"):
        incident.writer("test", "test/01/a.txt")


def test_symlink_planted_at_file_is_refused(incident, tmp_path):
    target = tmp_path / "outside"
    os.makedirs(os.path.join(incident.path, "test/01"), exist_ok=True)
    os.symlink(target, os.path.join(incident.path, "test/01/a.txt"))
    with pytest.raises(StoreError):
        incident.writer("test", "test/01/a.txt")
    assert not target.exists()


def test_symlink_planted_at_directory_is_refused(incident, tmp_path):
    outside = tmp_path / "outside_dir"
    outside.mkdir()
    os.symlink(outside, os.path.join(incident.path, "linked"))
    with pytest.raises(StoreError, match="link"):
        incident.writer("test", "linked/a.txt")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("relpath", ["../x", "/etc/passwd", "a/../../b", "a//b", ".hidden",
                                     "a/b\n", "a/b;id", "manifest.jsonl", "", "a/" + "b" * 300])
def test_unsafe_relpaths_refused(incident, relpath):
    with pytest.raises(StoreError):
        incident.writer("test", relpath)


def test_world_writable_root_refused(tmp_path):
    root = tmp_path / "ww"
    root.mkdir()
    os.chmod(root, 0o777)
    with pytest.raises(StoreError, match="writable by group or others"):
        Store(str(root))


def test_root_owned_by_another_user_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown (CI runs as root)")
    root = tmp_path / "other"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with pytest.raises(StoreError, match="owned by uid 65534"):
        Store(str(root))


def test_reserve_stops_the_writer_partial(evidence_root):
    st = Store(str(evidence_root), reserve_bytes=0)
    inc, _ = st.incident_for("host", ident, {})
    w = inc.writer("test", "test/01/big.bin")
    w.write(b"a" * 1000)
    st.reserve_bytes = st.free_bytes() + (1 << 30)  # pretend the disk is now nearly full
    w._allowance = 0
    with pytest.raises(ReserveReached):
        w.write(b"b" * 1000)
    w.close()
    entry = [e for e in inc.manifest() if e["type"] == "file" and e["path"] == "test/01/big.bin"][0]
    assert entry["outcome"] == "partial" and "reserve" in entry["reason"]
    assert entry["size"] == 1000
    assert verify(inc.path).ok  # what was written is intact
    inc.close()
    st.close()


def test_writer_refused_when_already_below_reserve(evidence_root):
    st = Store(str(evidence_root), reserve_bytes=0)
    inc, _ = st.incident_for("host", ident, {})
    st.reserve_bytes = st.free_bytes() + (1 << 30)
    with pytest.raises(ReserveReached):
        inc.writer("test", "test/01/x.bin")
    inc.close()
    st.close()


def test_grouping_window(evidence_root):
    st = Store(str(evidence_root), grouping_window_s=3600)
    a, created_a = st.incident_for("198.51.100.1", ident, {})
    b, created_b = st.incident_for("198.51.100.1", ident, {})
    c, created_c = st.incident_for("198.51.100.2", ident, {})
    assert created_a and not created_b and created_c
    assert a.id == b.id != c.id
    st.grouping_window_s = 0
    old = time.time() - 10
    os.utime(os.path.join(a.path, "manifest.jsonl"), (old, old))
    d, created_d = st.incident_for("198.51.100.1", ident, {})
    assert created_d and d.id != a.id
    for inc in (a, b, c, d):
        inc.close()
    st.close()


def test_triggers_are_chained_into_the_manifest(incident):
    incident.append_trigger({"trigger_id": "x1", "action": "add", "srcip": "192.0.2.1"})
    incident.append_trigger({"trigger_id": "x2", "action": "delete", "srcip": "192.0.2.1"})
    assert [t["trigger_id"] for t in incident.triggers()] == ["x1", "x2"]
    assert verify(incident.path).ok


def test_busy_slots_counts_without_taking_a_slot(store):
    from ossec_dfir.ar.worker import busy_slots
    held = store.try_slot("slots", 2)
    try:
        assert busy_slots(store, 2) == 1
        other = store.try_slot("slots", 2)  # counting left the free slot free
        assert other is not None
        assert busy_slots(store, 2) == 2
        os.close(other)
    finally:
        os.close(held)
    assert busy_slots(store, 2) == 0
