"""Ship an incident to a real S3 server (rclone serve s3) and fetch it back from there alone."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ossec_dfir.config import load
from ossec_dfir.errors import ConfigError, ShipError
from ossec_dfir.evidence.store import Store
from ossec_dfir.evidence.verify import verify
from ossec_dfir.ship import receipts as rc
from ossec_dfir.ship.fetch import fetch
from ossec_dfir.ship.shipper import incident_host_id, ship_pass
from ossec_dfir.ship.targets import parse_targets

from .conftest import BUCKET


def make_incident(store: Store, files: dict[str, bytes], key: str = "203.0.113.7"):
    """Create an incident holding files (relpath -> bytes) written through the store."""
    incident, _ = store.incident_for(key, lambda: {"hostname": "web-01",
                                                   "machine_id": "ab" * 16}, {"t": 1})
    incident.append_trigger({"trigger_id": "t1", "action": "add", "command": "test",
                             "status": "queued"})
    for relpath, data in files.items():
        with incident.writer("test", relpath) as w:
            w.write(data)
    return incident


def s3_target(server, creds: Path, **extra) -> object:
    raw = {"name": "lab", "url": f"s3://{BUCKET}/dfir", "endpoint": server.endpoint,
           "credentials_file": str(creds), **extra}
    targets, problems = parse_targets([raw])
    assert problems == []
    return targets[0]


def test_closed_files_and_the_manifest_ship_with_receipts(store, s3_server, s3_credentials,
                                                           tmp_path):
    files = {"test/01/a.txt": b"alpha\n", "test/01/sub/b.bin": os.urandom(70_000)}
    incident = make_incident(store, files)
    target = s3_target(s3_server, s3_credentials)
    hid = incident_host_id(incident)
    assert hid == "web-01-" + "ab" * 6

    result = ship_pass(store, incident.id, [target])
    assert result.ok, result.errors
    assert result.pending == 0
    prefix = f"dfir/{hid}/{incident.id}/"
    for relpath, data in files.items():
        assert s3_server.object(prefix + relpath) == data
    # incident.json is evidence too; the store files follow as they are.
    assert s3_server.object(prefix + "incident.json") == \
        (Path(incident.path) / "incident.json").read_bytes()
    assert s3_server.object(prefix + "triggers.jsonl") == \
        (Path(incident.path) / "triggers.jsonl").read_bytes()
    assert s3_server.object(prefix + "SHA256SUMS") == \
        (Path(incident.path) / "SHA256SUMS").read_bytes()
    assert s3_server.object(prefix + "manifest.jsonl") == \
        (Path(incident.path) / "manifest.jsonl").read_bytes()

    entries = incident.manifest()
    got = {(e["path"], e["key"], e["object_sha256"]) for e in entries if e["type"] == "receipt"}
    for relpath, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        assert (relpath, prefix + relpath, digest) in got
    assert verify(incident.path).ok            # receipts keep the chain valid
    assert rc.shipped_everywhere(incident.path)

    # Idempotent: a second pass writes nothing new and the keys stay the same.
    before = s3_server.keys()
    again = ship_pass(store, incident.id, [target])
    assert again.ok and again.shipped == 0
    assert s3_server.keys() == before
    assert len([e for e in incident.manifest() if e["type"] == "receipt"]) == \
        len([e for e in entries if e["type"] == "receipt"])

    # A new file makes the incident unshipped until the next pass.
    with incident.writer("test", "test/01/c.txt") as w:
        w.write(b"late\n")
    assert not rc.shipped_everywhere(incident.path)
    assert ship_pass(store, incident.id, [target]).shipped == 1
    assert rc.shipped_everywhere(incident.path)

    # The analyst's side: rebuilt and verified from the remote copy alone.
    report = fetch(target, f"{hid}/{incident.id}", str(tmp_path / "fetched"))
    assert report.ok, report.to_dict()
    fetched = tmp_path / "fetched" / incident.id
    for relpath, data in {**files, "test/01/c.txt": b"late\n"}.items():
        assert (fetched / relpath).read_bytes() == data
    incident.close()


def test_fetch_finds_a_tampered_remote_object(store, s3_server, s3_credentials, tmp_path):
    incident = make_incident(store, {"test/01/a.txt": b"alpha\n"})
    target = s3_target(s3_server, s3_credentials)
    assert ship_pass(store, incident.id, [target]).ok
    hid = incident_host_id(incident)
    from ossec_dfir.ship.s3 import S3Client
    client = S3Client(target)   # someone with write access to the bucket
    client.put_object(f"dfir/{hid}/{incident.id}/test/01/a.txt", b"alphA\n")
    client.close()
    report = fetch(target, f"{hid}/{incident.id}", str(tmp_path / "f"))
    assert not report.ok
    kinds = {(p["kind"], p["path"]) for p in report.to_dict()["problems"]}
    assert ("modified", "test/01/a.txt") in kinds
    incident.close()


def test_multipart_upload_of_a_large_file(store, s3_server, s3_credentials, tmp_path):
    data = os.urandom(12 * 1024 * 1024 + 123)
    incident = make_incident(store, {"test/01/big.bin": data})
    target = s3_target(s3_server, s3_credentials, part_bytes=5 * 1024 * 1024)
    assert ship_pass(store, incident.id, [target]).ok
    hid = incident_host_id(incident)
    assert s3_server.object(f"dfir/{hid}/{incident.id}/test/01/big.bin") == data
    report = fetch(target, f"{hid}/{incident.id}", str(tmp_path / "f"))
    assert report.ok, report.to_dict()
    incident.close()


def test_wrong_secret_ships_nothing_and_collection_is_untouched(store, s3_server, tmp_path):
    creds = tmp_path / "bad-creds"
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"[default]\naws_access_key_id = AKIATESTSHIPPING0001\n"
                 b"aws_secret_access_key = wrongwrongwrongwrongwrongwrong\n")
    os.close(fd)
    incident = make_incident(store, {"test/01/a.txt": b"alpha\n"})
    result = ship_pass(store, incident.id, [s3_target(s3_server, creds)])
    assert not result.ok and "403" in result.errors["lab"]
    assert result.pending == 2
    assert not [e for e in incident.manifest() if e["type"] == "receipt"]
    assert s3_server.keys() == set()
    assert verify(incident.path).ok
    incident.close()


def test_a_group_readable_credentials_file_is_refused(tmp_path, s3_credentials, evidence_root):
    os.chmod(s3_credentials, 0o640)
    cfg = tmp_path / "ossec-dfir.yml"
    cfg.write_text(f"evidence_root: {evidence_root}\nlog_file: {tmp_path}/ar.log\n"
                   "ship:\n  - name: lab\n    url: s3://evidence/dfir\n"
                   f"    endpoint: http://127.0.0.1:9\n    credentials_file: {s3_credentials}\n")
    with pytest.raises(ConfigError) as err:
        load(str(cfg), str(tmp_path))
    assert "ship[0].credentials_file" in str(err.value)
    assert "group or others" in str(err.value)
    os.chmod(s3_credentials, 0o600)
    assert load(str(cfg), str(tmp_path)).ship[0].name == "lab"


def test_the_shipper_refuses_credentials_that_became_readable(store, s3_server, s3_credentials):
    target = s3_target(s3_server, s3_credentials)
    os.chmod(s3_credentials, 0o604)
    incident = make_incident(store, {"test/01/a.txt": b"alpha\n"})
    result = ship_pass(store, incident.id, [target])
    assert "credentials file refused" in result.errors["lab"]
    assert s3_server.keys() == set()
    incident.close()


@pytest.mark.parametrize("raw, needle", [
    ({"name": "x", "url": "ftp://h/p", "credentials_file": "/etc/passwd"}, "s3:// or sftp://"),
    ({"name": "x", "url": "s3://B/p", "credentials_file": "/nonexistent"}, "bucket"),
    ({"name": "x", "url": "s3://bkt/../etc", "credentials_file": "/nonexistent"}, "segment"),
    ({"name": "x", "url": "sftp://u@h:22/p", "credentials_file": "/nonexistent"}, "host_key"),
    ({"name": "x", "url": "s3://bkt/p", "credentials_file": "rel"}, "absolute"),
    ({"name": "x", "url": "s3://bkt/p", "credentials_file": "/nonexistent",
      "encrypt_to": ["not-a-key"]}, "age recipients"),
    ({"name": "bad name", "url": "s3://bkt/p", "credentials_file": "/nonexistent"}, "name"),
    ({"name": "x", "url": "s3://bkt/p", "credentials_file": "/nonexistent", "extra": 1},
     "unknown keys"),
])
def test_bad_targets_are_refused(raw, needle):
    targets, problems = parse_targets([raw])
    assert targets == []
    assert any(needle in p for p in problems), problems


def test_fetch_refuses_a_malformed_remote_id(s3_server, s3_credentials, tmp_path):
    target = s3_target(s3_server, s3_credentials)
    for bad in ("../x/20260101T000000Z_a", "host", "h/../../etc"):
        with pytest.raises(ShipError):
            fetch(target, bad, str(tmp_path / "f"))


def test_receipt_entries_are_json_lines_of_the_chain(store, s3_server, s3_credentials):
    incident = make_incident(store, {"test/01/a.txt": b"alpha\n"})
    assert ship_pass(store, incident.id, [s3_target(s3_server, s3_credentials)]).ok
    lines = (Path(incident.path) / "manifest.jsonl").read_bytes().splitlines()
    prev = "0" * 64
    for line in lines:
        assert json.loads(line)["prev"] == prev
        prev = hashlib.sha256(line + b"\n").hexdigest()
    incident.close()


def test_a_hostile_remote_manifest_writes_nothing_outside_dest(store, s3_server, s3_credentials,
                                                              tmp_path):
    incident = make_incident(store, {"test/01/a.txt": b"alpha\n"})
    target = s3_target(s3_server, s3_credentials)
    assert ship_pass(store, incident.id, [target]).ok
    hid = incident_host_id(incident)
    remote = s3_server.data / BUCKET / "dfir" / hid / incident.id
    # Someone with write access to the bucket names a path outside the incident.
    evil = {"type": "file", "path": "../../escaped.txt", "sha256": "0" * 64, "size": 1}
    from ossec_dfir.ship.s3 import S3Client
    client = S3Client(target)
    client.put_object(f"dfir/{hid}/{incident.id}/manifest.jsonl",
                      (remote / "manifest.jsonl").read_bytes() + json.dumps(evil).encode() + b"\n")
    client.put_object(f"dfir/{hid}/escaped.txt", b"x")
    client.close()
    report = fetch(target, f"{hid}/{incident.id}", str(tmp_path / "dest" / "f"))
    assert not report.ok
    assert not (tmp_path / "dest" / "escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()
    kinds = {p["kind"] for p in report.to_dict()["problems"]}
    assert "chain" in kinds and "missing" in kinds
    incident.close()
