"""One shipping pass over an incident: every closed file without a receipt goes to every
target, then the growing store files, the manifest last.

Each object is read from the store without following links, hashed while it
streams (the plaintext must match the manifest, or the object is not
completed), optionally encrypted with age, and written under its stable key;
then a ``receipt`` entry is appended to the manifest. Shipping twice writes
the same keys (at-least-once, idempotent).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import DfirError, EvidenceChanged, ShipError
from ..evidence import fs
from ..evidence.store import INCIDENT_JSON, MANIFEST, SUMS, TRIGGERS, Incident, Store
from . import receipts as rc
from .crypt import HashingReader, encrypt_stream
from .targets import Target, credentials_problems, host_id

GROWING = (TRIGGERS, SUMS)


def open_client(target: Target) -> Any:
    """Return a connected client of the target's kind (its upload(key) opens an object)."""
    problems = credentials_problems(target.credentials_file)
    if problems:
        raise ShipError("credentials file refused: " + "; ".join(problems), target.name)
    if target.scheme == "s3":
        from .s3 import S3Client
        return S3Client(target)
    from .sftp import SftpClient
    return SftpClient(target)


@dataclass
class PassResult:
    """What one pass over one incident did."""

    shipped: int = 0
    errors: dict[str, str] = field(default_factory=dict)   # target name -> last error
    pending: int = 0

    @property
    def ok(self) -> bool:
        """Return True when no target failed."""
        return not self.errors


def _open_rel(incident: Incident, relpath: str) -> int:
    parts = fs.check_relpath(relpath)
    dfd = fs.open_dirs_at(incident.dir_fd, parts[:-1])
    try:
        return fs.open_read_at(dfd, parts[-1])
    finally:
        os.close(dfd)


def upload_file(client: Any, target: Target, incident: Incident, relpath: str, key: str,
                expect: dict[str, Any] | None) -> dict[str, Any]:
    """Ship one file of the incident under key; return its receipt fields.

    With expect (its manifest entry), the plaintext must hash to the recorded
    SHA-256 and size, or the object is never completed. Without it (a growing
    store file), the file is shipped as it is at this moment.
    """
    try:
        fd = _open_rel(incident, relpath)
    except (OSError, DfirError) as err:
        raise EvidenceChanged(f"cannot open the local copy ({err})", relpath) from err
    with os.fdopen(fd, "rb", buffering=0) as fh:
        size = os.fstat(fd).st_size if expect is None else int(expect.get("size") or 0)
        src = HashingReader(fh, size)
        upload = client.upload(key)
        if target.encrypt_to:
            encrypt_stream(src, upload, target.encrypt_to)
        else:
            while True:
                data = src.read(1 << 20)
                if not data:
                    break
                upload.write(data)
        plain = src.sha.hexdigest()
        if expect is not None and (plain != expect.get("sha256") or src.size != size):
            raise EvidenceChanged(f"the local copy no longer matches the manifest (sha256 {plain}, "
                            f"size {src.size}); not shipped", relpath)
        if src.size != size:
            raise ShipError("the file shrank while being shipped", relpath)
        upload.finish()
    return {"type": "receipt", "target": target.name, "path": relpath, "key": key,
            "sha256": plain, "size": src.size, "object_sha256": upload.sha.hexdigest(),
            "object_size": upload.size, "encrypted": bool(target.encrypt_to)}


def incident_host_id(incident: Incident) -> str:
    """Return the host id of the object keys, from the incident's incident.json."""
    try:
        fd = fs.open_read_at(incident.dir_fd, INCIDENT_JSON)
        with os.fdopen(fd, "rb") as fh:
            doc = json.loads(fh.read(1 << 20))
    except (OSError, ValueError):
        doc = {}
    return host_id(doc if isinstance(doc, dict) else {})


def ship_pass(store: Store, incident_id: str, targets: list[Target],
              clients: dict[str, Any] | None = None) -> PassResult:
    """Ship what the incident's targets lack; record receipts; return what happened.

    A failing target stops its own pass (the next one resumes from the
    receipts); the other targets go on. Never raises for a target's failure.
    """
    result = PassResult()
    clients = clients if clients is not None else {}
    incident = store.open_incident(incident_id)
    sdfd = store.state_dir_fd(rc.STATE_SUBDIR)
    try:
        hid = incident_host_id(incident)
        entries = incident.manifest()
        planned = rc.planned_targets(entries)
        wanted = sorted(t.name for t in targets)
        if not set(wanted) <= planned:
            incident.record({"type": "ship", "targets": wanted})
        state = rc.read_state(incident.path)
        for target in targets:
            try:
                client = clients.get(target.name)
                if client is None:
                    client = clients[target.name] = open_client(target)
                for entry in rc.pending(incident.manifest(), target.name):
                    try:
                        receipt = upload_file(client, target, incident, entry["path"],
                                              target.key(hid, incident.id, entry["path"]), entry)
                    except EvidenceChanged as err:
                        # One file removed or altered on the host must not hold back the
                        # rest: it stays pending (never shipped), the others go on.
                        result.errors[target.name] = str(err)
                        continue
                    incident.record(receipt)
                    result.shipped += 1
                shipped = state.setdefault("store_files", {}).setdefault(target.name, {})
                for name in GROWING:
                    try:
                        size = os.stat(name, dir_fd=incident.dir_fd, follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
                    if shipped.get(name) == size:
                        continue
                    receipt = upload_file(client, target, incident, name,
                                          target.key(hid, incident.id, name), None)
                    incident.record(receipt)
                    shipped[name] = receipt["size"]
                    rc.write_state(sdfd, incident.id, state)
                digest, size = rc.manifest_digest(incident.path)
                mstate = state.setdefault("manifest", {})
                if (mstate.get(target.name) or {}).get("sha256") != digest:
                    receipt = upload_file(client, target, incident, MANIFEST,
                                          target.key(hid, incident.id, MANIFEST), None)
                    mstate[target.name] = {"sha256": receipt["sha256"], "size": receipt["size"],
                                           "key": receipt["key"],
                                           "object_sha256": receipt["object_sha256"]}
                    rc.write_state(sdfd, incident.id, state)
            except Exception as err:  # noqa: BLE001 - any client failure: back off, never fail
                result.errors[target.name] = str(err) or type(err).__name__
                bad = clients.pop(target.name, None)
                if bad is not None:
                    bad.close()
        final = incident.manifest()
        result.pending = sum(len(rc.pending(final, t.name)) for t in targets)
        return result
    finally:
        os.close(sdfd)
        incident.close()
