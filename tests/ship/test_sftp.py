"""Ship to a real OpenSSH sftp server: pinned host key, write-only chrooted account."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ossec_dfir.errors import ShipError
from ossec_dfir.ship.fetch import fetch
from ossec_dfir.ship.shipper import incident_host_id, ship_pass
from ossec_dfir.ship.targets import parse_targets

from .test_s3 import make_incident


def sftp_target(sshd, key: Path, host_key: str | None = None, **extra):
    raw = {"name": "vault", "url": f"sftp://root@127.0.0.1:{sshd.port}/upload/dfir",
           "credentials_file": str(key), "host_key": host_key or sshd.host_key, **extra}
    targets, problems = parse_targets([raw])
    assert problems == []
    return targets[0]


def test_ship_to_sftp_then_fetch_with_a_reading_account(store, sshd, tmp_path):
    files = {"test/01/a.txt": b"alpha\n", "test/01/big.bin": os.urandom(3 << 20)}
    incident = make_incident(store, files)
    target = sftp_target(sshd, sshd.shipper_key)
    result = ship_pass(store, incident.id, [target])
    assert result.ok, result.errors
    hid = incident_host_id(incident)
    top = sshd.chroot / "upload" / "dfir" / hid / incident.id
    for relpath, data in files.items():
        assert (top / relpath).read_bytes() == data
    assert (top / "manifest.jsonl").read_bytes() == \
        (Path(incident.path) / "manifest.jsonl").read_bytes()
    assert not [p for p in top.rglob("*.part-*")]
    # Idempotent: a second pass ships nothing and leaves the same files.
    assert ship_pass(store, incident.id, [target]).shipped == 0

    # The shipper's account is write-only: fetching with it is refused by the server.
    with pytest.raises(ShipError, match="Permission denied"):
        fetch(target, f"{hid}/{incident.id}", str(tmp_path / "denied"))
    reader = sftp_target(sshd, sshd.analyst_key)
    report = fetch(reader, f"{hid}/{incident.id}", str(tmp_path / "f"))
    assert report.ok, report.to_dict()
    incident.close()


def test_a_wrong_host_key_is_refused_before_authenticating(store, sshd, tmp_path):
    from .sshd import keygen

    other = keygen(tmp_path / "other_host")
    incident = make_incident(store, {"test/01/a.txt": b"alpha\n"})
    target = sftp_target(sshd, sshd.shipper_key, host_key=" ".join(other.split()[:2]))
    result = ship_pass(store, incident.id, [target])
    assert "host key mismatch" in result.errors["vault"]
    assert not (sshd.chroot / "upload" / "dfir").exists()
    assert not [e for e in incident.manifest() if e["type"] == "receipt"]
    log = (sshd.work / "sshd.log").read_text(errors="replace")
    assert "Accepted publickey" not in log
    incident.close()


def test_sftp_with_encryption(store, sshd, tmp_path):
    from pyrage import x25519

    analyst = x25519.Identity.generate()
    incident = make_incident(store, {"test/01/a.txt": b"alpha\n"})
    target = sftp_target(sshd, sshd.shipper_key, encrypt_to=[str(analyst.to_public())])
    assert ship_pass(store, incident.id, [target]).ok
    hid = incident_host_id(incident)
    blob = (sshd.chroot / "upload/dfir" / hid / incident.id / "test/01/a.txt.age").read_bytes()
    assert blob.startswith(b"age-encryption.org/v1") and b"alpha" not in blob
    ident = tmp_path / "id"
    ident.write_text(f"{analyst}\n")
    reader = sftp_target(sshd, sshd.analyst_key, encrypt_to=[str(analyst.to_public())])
    report = fetch(reader, f"{hid}/{incident.id}", str(tmp_path / "f"), str(ident))
    assert report.ok, report.to_dict()
    incident.close()


def test_sshd_killed_mid_upload_then_restarted(store, sshd, tmp_path, monkeypatch):
    from ossec_dfir.ship import receipts as rc
    from ossec_dfir.ship.sftp import SftpUpload

    big = os.urandom(8 << 20)
    files = {"test/01/a.txt": b"alpha\n", "test/01/big.bin": big}
    incident = make_incident(store, files)
    target = sftp_target(sshd, sshd.shipper_key)
    real_write = SftpUpload.write
    writes: list[int] = []

    def write_then_kill(self, data):
        n = real_write(self, data)
        if self.final.endswith("big.bin"):
            writes.append(n)
            if len(writes) == 3:
                sshd.kill()      # sshd (and its session) dies in the middle of big.bin
        return n
    monkeypatch.setattr(SftpUpload, "write", write_then_kill)

    result = ship_pass(store, incident.id, [target])
    assert not result.ok
    assert "test/01/big.bin" not in {e["path"] for e in incident.manifest()
                                     if e["type"] == "receipt"}
    hid = incident_host_id(incident)
    top = sshd.chroot / "upload" / "dfir" / hid / incident.id
    assert not (top / "test/01/big.bin").exists()   # only a .part- file, never the name
    sshd.start()
    writes.append(-1)                                # no second kill
    result = ship_pass(store, incident.id, [target])
    assert result.ok, result.errors
    assert rc.shipped_everywhere(incident.path)
    for relpath, data in files.items():
        assert (top / relpath).read_bytes() == data
    report = fetch(sftp_target(sshd, sshd.analyst_key), f"{hid}/{incident.id}",
                   str(tmp_path / "f"))
    assert report.ok, report.to_dict()
    incident.close()
