"""Read memory sources (kcore, /dev/mem, /proc/PID/mem) in chunks, zero-filling holes.

Shared by the LiME image and the process cores. Reads go into one reused
buffer (no allocation per chunk); a chunk that fails is retried page by page
and each unreadable page is zero-filled and recorded as a hole (start, end)
in the address space of the source (physical or virtual).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

PAGE = 4096
CHUNK_BYTES = 1 << 20


def add_hole(holes: list[list[int]], start: int, end: int) -> None:
    """Append [start, end) to holes, merging with the last one when adjacent."""
    if holes and holes[-1][1] == start:
        holes[-1][1] = end
    else:
        holes.append([start, end])


class ChunkReader:
    """Read ranges of one descriptor through a reused buffer."""

    def __init__(self, fd: int, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.fd = fd
        self.buf = bytearray(max(chunk_bytes, PAGE))
        self.view = memoryview(self.buf)
        self.zero = bytes(len(self.buf))

    def _read(self, n: int, offset: int) -> int:
        try:
            return os.preadv(self.fd, [self.view[:n]], offset)
        except OSError:
            return 0

    def zeros(self, length: int) -> Iterator[memoryview | bytes]:
        """Yield length zero bytes in chunks."""
        while length > 0:
            n = min(length, len(self.zero))
            yield self.zero if n == len(self.zero) else memoryview(self.zero)[:n]
            length -= n

    def read(self, offset: int, length: int, addr: int,
             holes: list[list[int]]) -> Iterator[memoryview]:
        """Yield the bytes of [offset, offset+length) of the fd; addr is offset's address.

        Each yielded view is valid until the next one is requested.
        """
        done = 0
        chunk = len(self.buf)
        while done < length:
            want = min(chunk, length - done)
            got = self._read(want, offset + done)
            if got > 0:
                yield self.view[:got]
                done += got
                continue
            end = done + want
            while done < end:  # page by page through the failing chunk
                n = min(PAGE - (addr + done) % PAGE, end - done)
                got = self._read(n, offset + done)
                if got < n:
                    self.view[got:n] = self.zero[:n - got]
                    add_hole(holes, addr + done + got, addr + done + n)
                yield self.view[:n]
                done += n
