"""Export an incident as ``<id>.tar.gz`` plus a ``.sha256`` file beside it."""
from __future__ import annotations

import os
import tarfile

from .fs import sha256_path
from ..errors import BadRequest


def export_incident(path: str, out: str) -> tuple[str, str]:
    """Write the incident at path to the archive out (created new) and its checksum file.

    Refuses (BadRequest) an archive inside the incident directory.

    Returns the paths of the archive and of the checksum file.
    """
    name = os.path.basename(path)
    real_incident = os.path.realpath(path)
    real_dir = os.path.realpath(os.path.dirname(os.path.abspath(out)))
    if os.path.commonpath([real_dir, real_incident]) == real_incident:
        # verify would count the archive (and its .sha256) as extra files
        raise BadRequest("the archive must not be written inside the incident directory", out)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        tar.add(path, arcname=name, recursive=True)
    digest, _ = sha256_path(out)
    sums = out + ".sha256"
    sfd = os.open(sums, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(sfd, "w") as fh:
        fh.write(f"{digest}  {os.path.basename(out)}\n")
    return out, sums
