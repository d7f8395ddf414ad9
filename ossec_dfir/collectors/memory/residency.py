"""Find the pages of a process mapping that exist: in RAM or in swap.

A core holds only these pages: a mapping that was reserved but never touched
(a 2 GiB ``mmap`` with 10 MB written) costs 10 MB, not 2 GiB. Pages that only
map the kernel's shared zero page (read but never written, e.g. by an earlier
scan of /proc/PID/mem) do not count: they read as zeros and are not captured.

Three ways, the first that works:

1. ``PAGEMAP_SCAN`` (an ioctl of /proc/PID/pagemap, Linux 6.7+): the kernel
   returns the ranges of present or swapped pages that are not the zero page,
   skipping unpopulated page tables, so a huge sparse mapping costs nothing.
2. Reading /proc/PID/pagemap (8 bytes a page; bit 63 present, bit 62 swapped;
   a present page whose frame is the zero page's is left out).
3. Without pagemap: a file mapping's data extents (``SEEK_DATA``/``SEEK_HOLE``
   on /proc/PID/map_files/START-END), and an anonymous mapping whole.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
from collections.abc import Callable

PROC = "/proc"
PAGE = os.sysconf("SC_PAGE_SIZE")

# <linux/fs.h>: struct pm_scan_arg (12 u64), struct page_region (3 u64).
PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_PFNZERO = 1 << 3, 1 << 4, 1 << 5
_SCAN_ARG = struct.Struct("<12Q")
PAGEMAP_SCAN = (3 << 30) | (_SCAN_ARG.size << 16) | (ord("f") << 8) | 16
_REGION = 24
SCAN_REGIONS = 4096
PAGEMAP_CHUNK_PAGES = 1 << 16
PM_PRESENT, PM_SWAPPED, PM_PFN_MASK = 1 << 63, 1 << 62, (1 << 55) - 1

Runs = list[tuple[int, int]]

_ZERO_PFN: int | None = None


class ResidencyError(Exception):
    """Raised when one way cannot tell (the next way is tried)."""


def _merge(runs: Runs, start: int, end: int) -> None:
    if runs and runs[-1][1] == start:
        runs[-1] = (runs[-1][0], end)
    else:
        runs.append((start, end))


def scan_ioctl(fd: int, start: int, end: int) -> Runs:
    """Return the [start, end) runs of present or swapped non-zero pages (PAGEMAP_SCAN)."""
    buf = ctypes.create_string_buffer(_REGION * SCAN_REGIONS)
    runs: Runs = []
    pos = start
    while pos < end:
        arg = bytearray(_SCAN_ARG.pack(
            _SCAN_ARG.size, 0, pos, end, 0, ctypes.addressof(buf), SCAN_REGIONS, 0,
            PAGE_IS_PFNZERO, PAGE_IS_PFNZERO, PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            PAGE_IS_PRESENT | PAGE_IS_SWAPPED))
        try:
            count = fcntl.ioctl(fd, PAGEMAP_SCAN, arg, True)
        except OSError as err:
            raise ResidencyError(f"PAGEMAP_SCAN: {err.strerror}") from err
        for i in range(count):
            r_start, r_end, _cat = struct.unpack_from("<QQQ", buf, i * _REGION)
            _merge(runs, r_start, r_end)
        walk_end = _SCAN_ARG.unpack(arg)[4]
        if walk_end <= pos:
            raise ResidencyError("PAGEMAP_SCAN made no progress")
        pos = walk_end
    return runs


def zero_pfn(pagemap_self: str = "/proc/self/pagemap") -> int | None:
    """Return the frame number of the kernel's zero page (None when hidden: not root)."""
    global _ZERO_PFN
    if _ZERO_PFN is None:
        area = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            area[0]  # a read fault maps the zero page
            addr = ctypes.addressof(ctypes.c_char.from_buffer(area))
            with open(pagemap_self, "rb") as fh:
                fh.seek(addr // PAGE * 8)
                entry, = struct.unpack("<Q", fh.read(8))
        except (OSError, struct.error, TypeError):
            return None
        finally:
            try:
                area.close()
            except BufferError:
                pass
        _ZERO_PFN = entry & PM_PFN_MASK if entry & PM_PRESENT else 0
    return _ZERO_PFN or None


def scan_pagemap(fd: int, start: int, end: int,
                 should_stop: Callable[[], str | None] = lambda: None) -> Runs:
    """Return the runs of present or swapped pages by reading pagemap entries."""
    zero = zero_pfn()
    runs: Runs = []
    page = start // PAGE
    last = end // PAGE
    while page < last:
        if should_stop():
            raise ResidencyError("stopped while reading pagemap")
        count = min(PAGEMAP_CHUNK_PAGES, last - page)
        try:
            data = os.pread(fd, count * 8, page * 8)
        except OSError as err:
            raise ResidencyError(f"pagemap: {err.strerror}") from err
        if len(data) < 8:
            raise ResidencyError("pagemap: short read")
        for i, (entry,) in enumerate(struct.iter_unpack("<Q", data[:len(data) // 8 * 8])):
            if entry & PM_SWAPPED or (entry & PM_PRESENT and not (
                    zero is not None and entry & PM_PFN_MASK == zero)):
                addr = (page + i) * PAGE
                _merge(runs, addr, addr + PAGE)
        page += len(data) // 8
    return runs


def scan_file_extents(pid: int, start: int, end: int, offset: int) -> Runs:
    """Return the runs of a file mapping backed by file data (SEEK_DATA/SEEK_HOLE)."""
    path = f"{PROC}/{pid}/map_files/{start:x}-{end:x}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise ResidencyError(f"{path}: {err.strerror}") from err
    runs: Runs = []
    try:
        pos, limit = offset, offset + end - start
        while pos < limit:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
                hole = os.lseek(fd, data, os.SEEK_HOLE)
            except OSError as err:
                if err.errno == errno.ENXIO:
                    break  # no data after pos
                raise ResidencyError(f"SEEK_DATA: {err.strerror}") from err
            if data >= limit:
                break
            lo = start + (data - offset) // PAGE * PAGE
            hi = start + min(limit, -(-hole // PAGE) * PAGE) - offset
            _merge(runs, lo, min(hi, end))
            pos = hole
    finally:
        os.close(fd)
    return runs


class Residency:
    """Tell, mapping by mapping, which pages of one process exist."""

    def __init__(self, pid: int, should_stop: Callable[[], str | None] = lambda: None) -> None:
        self.pid = pid
        self.should_stop = should_stop
        self.methods: set[str] = set()
        self.errors: list[str] = []
        try:
            self.fd: int | None = os.open(f"{PROC}/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            self.fd = None
            self.errors.append(f"pagemap: {err.strerror}")
        self._ioctl_ok = self.fd is not None

    def close(self) -> None:
        """Close the pagemap descriptor."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def runs(self, start: int, end: int, offset: int, file_backed: bool) -> Runs:
        """Return the [start, end) runs of the mapping that hold data to capture."""
        if self.fd is not None and self._ioctl_ok:
            try:
                runs = scan_ioctl(self.fd, start, end)
                self.methods.add("PAGEMAP_SCAN")
                return runs
            except ResidencyError as err:
                self._ioctl_ok = False
                self.errors.append(str(err))
        if self.fd is not None:
            try:
                runs = scan_pagemap(self.fd, start, end, self.should_stop)
                self.methods.add("pagemap")
                return runs
            except ResidencyError as err:
                self.errors.append(str(err))
        if file_backed:
            try:
                runs = scan_file_extents(self.pid, start, end, offset)
                self.methods.add("SEEK_DATA")
                return runs
            except ResidencyError as err:
                self.errors.append(str(err))
        self.methods.add("whole mapping")
        return [(start, end)]
