"""Parse and check the shipping targets of ``ship:``, and name the remote objects.

A target is where evidence goes: an S3-compatible bucket prefix or an SFTP
directory. Every object of an incident is named
``<prefix>/<host id>/<incident id>/<relative path>`` (``.age`` appended when
encrypted): stable, so shipping twice writes the same keys.

This module imports nothing heavy: the config validation and the worker use it.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from .. import trust

TARGET_KEYS = {"name", "url", "endpoint", "region", "credentials_file", "host_key",
               "encrypt_to", "max_age_s", "part_bytes"}
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9._=+@-]{1,128}$")
HOST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
AGE_RECIPIENT_RE = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
DEFAULT_MAX_AGE_S = 7 * 86400
DEFAULT_PART_BYTES = 8 << 20
MIN_PART_BYTES = 5 << 20
AWS_ENDPOINT = "https://s3.{region}.amazonaws.com"


@dataclass(frozen=True)
class Target:
    """One validated shipping target."""

    name: str
    scheme: str                 # "s3" or "sftp"
    prefix: str                 # the key prefix (S3) or remote directory (SFTP), no slashes around
    credentials_file: str
    bucket: str = ""
    endpoint: str = ""
    region: str = "us-east-1"
    user: str = ""
    host: str = ""
    port: int = 22
    host_key: str = ""
    encrypt_to: tuple[str, ...] = ()
    max_age_s: float = DEFAULT_MAX_AGE_S
    part_bytes: int = DEFAULT_PART_BYTES

    def key(self, host_id: str, incident_id: str, relpath: str) -> str:
        """Return the object key of one incident file on this target."""
        parts = [p for p in (self.prefix, host_id, incident_id, relpath) if p]
        return "/".join(parts) + (".age" if self.encrypt_to else "")


def credentials_problems(path: str) -> list[str]:
    """Return why a credentials file is refused: it must be a regular file readable by
    its owner only, and (as root) owned by root in a tree only root can change."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as err:
        return [f"{path}: {err.strerror}"]
    if not stat.S_ISREG(st.st_mode):
        return [f"{path}: not a regular file"]
    problems = []
    if st.st_mode & 0o077:
        problems.append(f"{path}: readable or writable by group or others "
                        f"(mode {st.st_mode & 0o7777:04o}; chmod 600)")
    if st.st_uid != os.geteuid():
        problems.append(f"{path}: owned by uid {st.st_uid}, not by us ({os.geteuid()})")
    if os.geteuid() == 0:
        problems += trust.path_problems(path)
    return problems


def _parse_url(url: str, problems: list[str], where: str) -> dict[str, Any]:
    parts = urlsplit(url)
    out: dict[str, Any] = {"scheme": parts.scheme}
    segments = [unquote(s) for s in parts.path.split("/") if s]
    for seg in segments:
        if not SEGMENT_RE.fullmatch(seg) or seg in (".", ".."):
            problems.append(f"{where}.url: path segment {seg!r} is not allowed")
    out["prefix"] = "/".join(segments)
    if parts.scheme == "s3":
        if not BUCKET_RE.fullmatch(parts.netloc or ""):
            problems.append(f"{where}.url: s3://BUCKET/PREFIX needs a valid bucket name")
        out["bucket"] = parts.netloc
    elif parts.scheme == "sftp":
        try:
            port = parts.port or 22
        except ValueError:
            port = 0
        if not parts.username or not parts.hostname or not 1 <= port <= 65535:
            problems.append(f"{where}.url: sftp://USER@HOST:PORT/PATH needs a user, a host "
                            "and a valid port")
        out.update(user=parts.username or "", host=parts.hostname or "", port=port)
        if parts.password:
            problems.append(f"{where}.url: no password in the URL (use credentials_file)")
    else:
        problems.append(f"{where}.url: must start with s3:// or sftp://")
    return out


def parse_target(raw: Any, where: str, problems: list[str]) -> Target | None:
    """Validate one ``ship:`` entry; append problems and return the Target (None on error)."""
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    before = len(problems)
    unknown = set(raw) - TARGET_KEYS
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        problems.append(f"{where}.name: needs 1-32 letters, digits, '_' or '-'")
    url = raw.get("url")
    parsed = _parse_url(url, problems, where) if isinstance(url, str) else {}
    if not isinstance(url, str):
        problems.append(f"{where}.url: required (s3://BUCKET/PREFIX or sftp://USER@HOST:PORT/PATH)")
    creds = raw.get("credentials_file")
    if not isinstance(creds, str) or not os.path.isabs(creds):
        problems.append(f"{where}.credentials_file: required, an absolute path")
    else:
        problems += [f"{where}.credentials_file: {p}" for p in credentials_problems(creds)]
    scheme = parsed.get("scheme")
    endpoint = raw.get("endpoint")
    region = raw.get("region", "us-east-1")
    if not isinstance(region, str) or not re.fullmatch(r"[a-z0-9-]{1,32}", region):
        problems.append(f"{where}.region: not a region name")
    if endpoint is not None:
        ep = urlsplit(endpoint) if isinstance(endpoint, str) else None
        if scheme != "s3":
            problems.append(f"{where}.endpoint: only for s3:// targets")
        elif ep is None or ep.scheme not in ("http", "https") or not ep.hostname \
                or ep.path not in ("", "/") or ep.query:
            problems.append(f"{where}.endpoint: must be http(s)://HOST[:PORT]")
    host_key = raw.get("host_key")
    if scheme == "sftp":
        if not isinstance(host_key, str) or len(host_key.split()) < 2:
            problems.append(f"{where}.host_key: required for sftp (the server's public key, "
                            "'TYPE BASE64' as in known_hosts; no trust on first use)")
    elif host_key is not None:
        problems.append(f"{where}.host_key: only for sftp:// targets")
    recipients = raw.get("encrypt_to", [])
    if not isinstance(recipients, list) or not all(
            isinstance(r, str) and AGE_RECIPIENT_RE.fullmatch(r) for r in recipients):
        problems.append(f"{where}.encrypt_to: must be a list of age recipients (age1...)")
        recipients = []
    max_age = raw.get("max_age_s", DEFAULT_MAX_AGE_S)
    if not isinstance(max_age, (int, float)) or isinstance(max_age, bool) or max_age <= 0:
        problems.append(f"{where}.max_age_s: must be a positive number")
    part = raw.get("part_bytes", DEFAULT_PART_BYTES)
    if not isinstance(part, int) or isinstance(part, bool) or not \
            MIN_PART_BYTES <= part <= 1 << 30:
        problems.append(f"{where}.part_bytes: must be an integer from {MIN_PART_BYTES} to 2^30")
    if len(problems) > before:
        return None
    if scheme == "s3" and endpoint is None:
        endpoint = AWS_ENDPOINT.format(region=region)
    return Target(name=name, scheme=scheme, prefix=parsed["prefix"], credentials_file=creds,
                  bucket=parsed.get("bucket", ""), endpoint=(endpoint or "").rstrip("/"),
                  region=region, user=parsed.get("user", ""), host=parsed.get("host", ""),
                  port=parsed.get("port", 22), host_key=host_key or "",
                  encrypt_to=tuple(recipients), max_age_s=float(max_age), part_bytes=part)


def parse_targets(raw: Any, where: str = "ship") -> tuple[list[Target], list[str]]:
    """Validate the ``ship:`` list; return the targets and every problem found."""
    problems: list[str] = []
    if raw is None:
        return [], problems
    if not isinstance(raw, list):
        return [], [f"{where}: must be a list of targets"]
    targets = []
    for i, item in enumerate(raw):
        target = parse_target(item, f"{where}[{i}]", problems)
        if target is not None:
            targets.append(target)
    names = [t.name for t in targets]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{where}: target name {name!r} is used twice")
    return targets, problems


def host_id(incident_doc: dict[str, Any]) -> str:
    """Return the host part of the object keys from an incident.json document:
    ``<hostname>-<machine id prefix>`` reduced to safe characters."""
    host = incident_doc.get("host") if isinstance(incident_doc.get("host"), dict) else {}
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(host.get("hostname") or "host"))[:63]
    name = name.lstrip(".") or "host"
    machine = str(host.get("machine_id") or "")
    if re.fullmatch(r"[0-9a-f]{32}", machine):
        name = f"{name}-{machine[:12]}"
    return name
