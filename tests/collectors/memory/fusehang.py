"""A FUSE filesystem, served through /dev/fuse directly, whose reads never answer.

It holds one regular file ``f`` (1 MiB). LOOKUP, GETATTR, OPEN, FLUSH and
RELEASE are answered; READ is never answered, as a hostile FUSE server would
do to wedge whoever reads a page of a mapping of ``f``. ``close()`` stops the
server and closes the device, which aborts the connection: any reader still
waiting gets an error, so a test that fails does not hang.
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import stat
import struct
import threading

MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2
LOOKUP, GETATTR, OPEN, READ, RELEASE, FLUSH, INIT = 1, 3, 14, 15, 18, 25, 26
NO_REPLY = {2, 36, 38, 42}  # FORGET, INTERRUPT, DESTROY, BATCH_FORGET
IN_HEADER = struct.Struct("<IIQQIIIHH")
FILE_SIZE = 1 << 20


def available() -> str | None:
    """Return why a FUSE mount cannot be made here, or None."""
    if os.geteuid() != 0:
        return "mounting the test FUSE filesystem needs root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel or container)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as err:
        return f"/dev/fuse cannot be opened: {err.strerror}"
    return None


def _attr(ino: int, mode: int, size: int) -> bytes:
    return struct.pack("<QQQQQQIIIIIIIIII", ino, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0,
                       mode, 1, 0, 0, 0, 4096, 0)


class HangFS:
    """Mount at mnt (root), serve in a thread until close()."""

    def __init__(self, mnt: str) -> None:
        self.mnt = mnt
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        self.reads = 0
        self._stop = False
        libc = ctypes.CDLL(None, use_errno=True)
        opts = (f"fd={self.fd},rootmode=40000,user_id=0,group_id=0,allow_other").encode()
        if libc.mount(b"hangfs", mnt.encode(), b"fuse.hang", MS_NOSUID | MS_NODEV, opts):
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"mount fuse: {os.strerror(err)}")
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _reply(self, unique: int, error: int = 0, body: bytes = b"") -> None:
        try:
            os.write(self.fd, struct.pack("<IiQ", 16 + len(body), error, unique) + body)
        except OSError:
            pass

    def _serve(self) -> None:
        while not self._stop:
            if not select.select([self.fd], [], [], 0.1)[0]:
                continue
            try:
                req = os.read(self.fd, 1 << 20)
            except OSError as err:
                if err.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                return
            _len, opcode, unique, node = IN_HEADER.unpack_from(req)[:4]
            arg = req[IN_HEADER.size:]
            if opcode in NO_REPLY:
                continue
            if opcode == INIT:
                major, minor, readahead, flags = struct.unpack_from("<IIII", arg)
                self._reply(unique, 0, struct.pack("<IIIIHHIIHHII", 7, 31, readahead, 0, 16, 12,
                                                   65536, 1, 32, 0, 0, 0) + bytes(24))
            elif opcode == LOOKUP:
                if node == 1 and arg.split(b"\0", 1)[0] == b"f":
                    self._reply(unique, 0, struct.pack("<QQQQII", 2, 0, 60, 60, 0, 0) +
                                _attr(2, stat.S_IFREG | 0o644, FILE_SIZE))
                else:
                    self._reply(unique, -errno.ENOENT)
            elif opcode == GETATTR:
                attr = (_attr(1, stat.S_IFDIR | 0o755, 0) if node == 1 else
                        _attr(2, stat.S_IFREG | 0o644, FILE_SIZE))
                self._reply(unique, 0, struct.pack("<QII", 60, 0, 0) + attr)
            elif opcode == OPEN:
                self._reply(unique, 0, struct.pack("<QII", 1, 0, 0))
            elif opcode in (FLUSH, RELEASE):
                self._reply(unique)
            elif opcode == READ:
                self.reads += 1  # never answered
            else:
                self._reply(unique, -errno.ENOSYS)

    def detach(self) -> None:
        """Unmount lazily (the mapping stays; the mount leaves every mount table)."""
        ctypes.CDLL(None, use_errno=True).umount2(self.mnt.encode(), MNT_DETACH)

    def close(self) -> None:
        """Stop serving, abort the connection (waiting readers fail) and unmount."""
        self._stop = True
        self.thread.join(5)
        os.close(self.fd)
        self.detach()
