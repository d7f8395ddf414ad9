"""Rebuild an incident from a target's copy alone, decrypt it, and verify it (analyst side).

``fetch`` reads the manifest object, then every object it names (the closed
evidence files, ``triggers.jsonl`` and ``SHA256SUMS``), checks each object
against the latest receipt the manifest holds for it, decrypts it with the
analyst's age identity when the target encrypts, and runs the same ``verify``
as on the host: the manifest chain and every file hash.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any

from ..errors import ShipError, StoreError
from ..evidence import fs
from ..evidence.store import INCIDENT_ID_RE, MANIFEST, SUMS, TRIGGERS
from ..evidence.verify import Report, verify
from . import receipts as rc
from .crypt import decrypt_stream, load_identities
from .targets import HOST_ID_RE, Target

MAX_MANIFEST_BYTES = 256 << 20


def split_id(remote_id: str) -> tuple[str, str]:
    """Split ``HOST_ID/INCIDENT_ID`` (as ``ship-status`` prints it) into its parts."""
    hid, sep, iid = remote_id.partition("/")
    if not sep or not HOST_ID_RE.fullmatch(hid) or hid.startswith(".") \
            or not INCIDENT_ID_RE.fullmatch(iid):
        raise ShipError("expected HOST_ID/INCIDENT_ID (see ossec-dfir ship-status)", remote_id)
    return hid, iid


def _download(client: Any, key: str, dest_dir: str, relpath: str,
              identities: list[Any] | None, limit: int | None = None) -> str:
    """Fetch one object into dest_dir/relpath (decrypted); return the object's SHA-256."""
    parts = fs.check_relpath(relpath)
    top_fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dfd = fs.open_dirs_at(top_fd, parts[:-1], create=True)
    finally:
        os.close(top_fd)
    sha = hashlib.sha256()
    try:
        with tempfile.TemporaryFile(dir=dest_dir) as raw:
            seen = [0]

            def sink(chunk: bytes) -> None:
                seen[0] += len(chunk)
                if limit is not None and seen[0] > limit:
                    raise ShipError("object larger than allowed", key)
                sha.update(chunk)
                raw.write(chunk)
            client.get(key, sink)
            raw.seek(0)
            fd = fs.create_file_at(dfd, parts[-1])
            with os.fdopen(fd, "wb") as out:
                if identities is not None:
                    decrypt_stream(raw, out, identities)
                else:
                    while True:
                        data = raw.read(1 << 20)
                        if not data:
                            break
                        out.write(data)
    finally:
        os.close(dfd)
    return sha.hexdigest()


def fetch(target: Target, remote_id: str, dest: str, identity_file: str | None = None,
          client: Any = None) -> Report:
    """Download, decrypt and verify one incident from target into dest/<incident id>/."""
    from .shipper import open_client

    hid, iid = split_id(remote_id)
    identities = None
    if target.encrypt_to:
        if not identity_file:
            raise ShipError("this target encrypts: --identity FILE (an age identity) is needed",
                            target.name)
        identities = load_identities(identity_file)
    os.makedirs(dest, mode=0o700, exist_ok=True)
    top = os.path.join(dest, iid)
    os.mkdir(top, 0o700)   # never into an existing copy
    client = client or open_client(target)
    try:
        _download(client, target.key(hid, iid, MANIFEST), top, MANIFEST, identities,
                  MAX_MANIFEST_BYTES)
        entries = rc.read_manifest(top)
        latest: dict[str, dict[str, Any]] = {}
        for e in entries:
            if e.get("type") == "receipt" and e.get("target") == target.name:
                latest[str(e.get("path"))] = e
        report_extra: list[tuple[str, str, str]] = []
        names = list(rc.closed_files(entries)) + [TRIGGERS, SUMS]
        for relpath in names:
            if relpath in (TRIGGERS, SUMS) and relpath not in latest:
                continue
            try:
                got = _download(client, target.key(hid, iid, relpath), top, relpath, identities)
            except (ShipError, StoreError) as err:  # absent, or a path the manifest may not name
                report_extra.append(("missing", relpath, f"not fetched from {target.name}: {err}"))
                continue
            receipt = latest.get(relpath)
            if receipt is None:
                report_extra.append(("unshipped", relpath, "no receipt from this target"))
            elif receipt.get("object_sha256") != got and relpath not in (TRIGGERS, SUMS):
                report_extra.append(("modified", relpath, f"object sha256 {got} differs from "
                                     f"the receipt's {receipt.get('object_sha256')}"))
    finally:
        client.close()
    report = verify(top)
    for kind, path, detail in report_extra:
        report.add(kind, path, detail)
    return report
