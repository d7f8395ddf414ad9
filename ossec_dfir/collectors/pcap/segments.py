"""A capture written in segments (by size and time) so it can leave the host while it runs.

With ``segment_bytes`` or ``segment_s`` set, the capture is a series of
``capture-00001.pcap``, ``capture-00002.pcap``... each a whole pcap file (the
global header repeated, records never split), closed through the store, and so
recorded in the manifest and shipped, as soon as it is full or old enough.
``SegmentWriter`` stands in for the one evidence writer the sink writes to.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, BinaryIO, Callable

from .stream import GLOBAL_HEADER_BYTES


def segment_name(number: int) -> str:
    """Return the file name of segment number (1-based)."""
    return f"capture-{number:05d}.pcap"


class SegmentWriter:
    """Write whole-record chunks into rotating pcap segment files."""

    def __init__(self, open_writer: Callable[[str, dict[str, Any]], Any], meta: dict[str, Any],
                 segment_bytes: int, segment_s: float) -> None:
        self.open_writer = open_writer
        self.meta = meta
        self.segment_bytes = segment_bytes
        self.segment_s = segment_s
        self.header = b""
        self.current: Any = None
        self.opened_at = 0.0
        self.closed: list[dict[str, Any]] = []
        self.size = 0               # bytes written over every segment
        self.partial: str | None = None
        self._hash = hashlib.sha256()   # of the capture as one stream (segments joined)

    @property
    def relpath(self) -> str:
        """Return the path of the first segment (where the capture starts)."""
        return self.closed[0]["path"] if self.closed else (
            self.current.relpath if self.current is not None else "")

    @property
    def sha256(self) -> str:
        """Return the SHA-256 of the records as one capture (first header only)."""
        return self._hash.hexdigest()

    def _open(self) -> None:
        number = len(self.closed) + 1
        self.current = self.open_writer(segment_name(number), {**self.meta, "segment": number})
        self.opened_at = time.monotonic()
        if self.header:
            self.current.write(self.header)

    def _close(self, outcome: str | None = None, reason: str | None = None) -> None:
        if self.current is None:
            return
        w, self.current = self.current, None
        entry = w.close(outcome, reason)
        self.closed.append({"path": w.relpath, "size": w.size, "sha256": w.sha256,
                            "outcome": entry.get("outcome")})

    def write(self, data: bytes) -> int:
        """Write whole records (the first call starts with the global header)."""
        if not self.header:
            self.header = bytes(data[:GLOBAL_HEADER_BYTES])
            self._hash.update(data)
            self.size += len(data)
            if self.current is None:
                self.current = self.open_writer(segment_name(1), {**self.meta, "segment": 1})
                self.opened_at = time.monotonic()
            return self.current.write(data)
        if self.current is not None and self.segment_bytes and \
                self.current.size + len(data) > self.segment_bytes and \
                self.current.size > len(self.header):
            self._close()
        if self.current is None:
            self._open()
        n = self.current.write(data)
        self._hash.update(data)
        self.size += len(data)
        return n

    def rotate_if_due(self) -> None:
        """Close the current segment when it is older than segment_s and holds records."""
        if self.current is not None and self.segment_s and \
                time.monotonic() - self.opened_at >= self.segment_s and \
                self.current.size > len(self.header):
            self._close()

    def mark_partial(self, reason: str) -> None:
        """Record that the capture is incomplete (the last segment carries it)."""
        self.partial = self.partial or reason
        if self.current is not None:
            self.current.mark_partial(reason)

    def close(self) -> None:
        """Close the last segment (an empty capture still leaves one, with its header)."""
        if self.current is None and not self.closed:
            self._open()
        self._close("partial" if self.partial else None, self.partial)

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self.current is not None:
            self.current.mark_partial(f"{type(exc).__name__}: {exc}")
        self.close()


class JoinedSegments:
    """Read segments as one pcap stream (the summary reads the whole capture)."""

    def __init__(self, files: list[BinaryIO]) -> None:
        self.files = files
        self.index = 0
        for fh in files[1:]:
            fh.read(GLOBAL_HEADER_BYTES)

    def read(self, n: int = -1) -> bytes:
        """Return up to n bytes, moving on to the next segment at the end of one."""
        while self.index < len(self.files):
            data = self.files[self.index].read(n)
            if data:
                return data
            self.index += 1
        return b""

    def close(self) -> None:
        """Close every segment file."""
        for fh in self.files:
            fh.close()
