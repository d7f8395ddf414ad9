"""With encrypt_to, every object is age-encrypted: it decrypts with the identity, not without."""
from __future__ import annotations

import os
from pathlib import Path

import pyrage
import pytest
from pyrage import x25519

from ossec_dfir.errors import ShipError
from ossec_dfir.ship.fetch import fetch
from ossec_dfir.ship.shipper import incident_host_id, ship_pass

from .test_s3 import make_incident, s3_target


def write_identity(path: Path, identity) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# analyst\n{identity}\n")
    return path


def test_every_object_is_encrypted_to_the_recipients(store, s3_server, s3_credentials,
                                                     tmp_path):
    analyst, other = x25519.Identity.generate(), x25519.Identity.generate()
    files = {"test/01/a.txt": b"secret evidence\n", "test/01/big.bin": os.urandom(6 << 20)}
    incident = make_incident(store, files)
    target = s3_target(s3_server, s3_credentials, encrypt_to=[str(analyst.to_public())],
                       part_bytes=5 << 20)
    result = ship_pass(store, incident.id, [target])
    assert result.ok, result.errors
    hid = incident_host_id(incident)
    keys = s3_server.keys()
    assert keys and all(k.endswith(".age") for k in keys)
    assert f"dfir/{hid}/{incident.id}/manifest.jsonl.age" in keys
    for relpath, data in files.items():
        blob = s3_server.object(f"dfir/{hid}/{incident.id}/{relpath}.age")
        assert blob.startswith(b"age-encryption.org/v1")
        assert data not in blob
        assert pyrage.decrypt(blob, [analyst]) == data
        with pytest.raises(pyrage.DecryptError):
            pyrage.decrypt(blob, [other])
    receipts = [e for e in incident.manifest() if e["type"] == "receipt"]
    assert receipts and all(e["encrypted"] and e["key"].endswith(".age") for e in receipts)
    # The plaintext hash stays in the receipt; the object hash is the ciphertext's.
    a = next(e for e in receipts if e["path"] == "test/01/a.txt")
    assert a["object_sha256"] != a["sha256"]

    good = write_identity(tmp_path / "analyst.key", analyst)
    report = fetch(target, f"{hid}/{incident.id}", str(tmp_path / "f1"), str(good))
    assert report.ok, report.to_dict()
    assert (tmp_path / "f1" / incident.id / "test/01/big.bin").read_bytes() == files[
        "test/01/big.bin"]

    wrong = write_identity(tmp_path / "other.key", other)
    with pytest.raises(ShipError, match="decryption failed"):
        fetch(target, f"{hid}/{incident.id}", str(tmp_path / "f2"), str(wrong))
    with pytest.raises(ShipError, match="--identity"):
        fetch(target, f"{hid}/{incident.id}", str(tmp_path / "f3"))
    incident.close()
