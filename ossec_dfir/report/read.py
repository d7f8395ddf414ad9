"""Read an incident directory for the report: no link followed, sizes and counts bounded."""
from __future__ import annotations

import json
import os
from typing import Any

from ..evidence import fs
from ..errors import StoreError

MAX_JSON_BYTES = 16 * 1024 * 1024      # a summary/capture/processes JSON document
MAX_LINE_BYTES = 1024 * 1024           # one JSONL record
MAX_RECORDS = 2000                     # records kept per JSONL file
MAX_FILE_BYTES = 256 * 1024 * 1024     # a JSONL file (the manifest included)


class Reader:
    """Read files below an incident directory: no link followed, sizes bounded."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        """Release the directory descriptor."""
        os.close(self.fd)

    def read(self, relpath: str, max_bytes: int) -> bytes | None:
        """Return at most max_bytes of relpath, or None (the reason is in problems)."""
        try:
            parts = fs.check_relpath(relpath)
            dfd = fs.open_dirs_at(self.fd, parts[:-1])
            try:
                fd = fs.open_read_at(dfd, parts[-1])
            finally:
                os.close(dfd)
        except (OSError, StoreError) as err:
            self.problems.append(f"{relpath}: not read ({_why(err)})")
            return None
        try:
            chunks, left = [], max_bytes + 1
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            self.problems.append(f"{relpath}: larger than {max_bytes} bytes, read in part")
            data = data[:max_bytes]
        return data

    def json(self, relpath: str) -> Any:
        """Return the parsed JSON document at relpath, or None."""
        data = self.read(relpath, MAX_JSON_BYTES)
        if data is None:
            return None
        try:
            return json.loads(data.decode("utf-8", "replace"))
        except (ValueError, RecursionError) as err:
            self.problems.append(f"{relpath}: not valid JSON ({type(err).__name__})")
            return None

    def jsonl(self, relpath: str, max_records: int = MAX_RECORDS,
              max_bytes: int = MAX_FILE_BYTES) -> dict[str, Any]:
        """Return {records, total, bad}: the first max_records dict records of relpath."""
        out: dict[str, Any] = {"records": [], "total": 0, "bad": 0}
        data = self.read(relpath, max_bytes)
        if data is None:
            out["missing"] = True
            return out
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            out["total"] += 1
            if len(out["records"]) >= max_records:
                continue
            if len(line) > MAX_LINE_BYTES:
                out["bad"] += 1
                continue
            try:
                rec = json.loads(line.decode("utf-8", "replace"))
            except (ValueError, RecursionError):
                rec = None
            if isinstance(rec, dict):
                out["records"].append(rec)
            else:
                out["bad"] += 1
        if out["bad"]:
            self.problems.append(f"{relpath}: {out['bad']} records not readable")
        return out


def _why(err: BaseException) -> str:
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    return str(err)


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_num(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
