"""A content regex bounded in time per file: matched in a forked helper that is killed when late.

Python's ``re`` backtracks: a pattern like ``(a+)+$`` over a file an intruder
wrote can take longer than the collector's whole time budget, and the runner
would then kill the collector mid-write. The helper process holds the compiled
pattern and answers one search at a time over pipes; a search that outlasts
``timeout_s`` kills the helper (SIGKILL, waited for), raises RegexTimeout for
that file only, and the next search starts a fresh helper.
"""
from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import struct
import time

from ...errors import RegexTimeout

_HEADER = struct.Struct("<Q")
_ANSWER = struct.Struct("<qH")  # offset (-1: no match), length of the match text sent
MATCH_TEXT_BYTES = 64


class Found:
    """A match as the collector uses it: where it starts and its first bytes."""

    def __init__(self, offset: int, text: bytes) -> None:
        self.offset = offset
        self.text = text

    def start(self) -> int:
        """Return the offset of the match."""
        return self.offset

    def group(self, _: int = 0) -> bytes:
        """Return the first bytes of the match."""
        return self.text


class BoundedRegex:
    """A bytes regex whose search() gives up on one input after timeout_s seconds."""

    def __init__(self, pattern: bytes, timeout_s: float) -> None:
        self.pattern = pattern
        self.timeout_s = timeout_s
        self.compiled = re.compile(pattern)  # errors surface here, in the collector
        self._pid: int | None = None
        self._to_child = self._from_child = -1
        self.timeouts = 0

    # -- the helper -------------------------------------------------------------
    def _start(self) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the helper
            code = 0
            try:
                os.close(to_w)
                os.close(from_r)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _serve(self.compiled, to_r, from_w)
            except BaseException:  # noqa: BLE001 - the parent sees EOF and says why
                code = 1
            finally:
                os._exit(code)
        os.close(to_r)
        os.close(from_w)
        self._pid, self._to_child, self._from_child = pid, to_w, from_r

    def _stop(self, kill: bool) -> None:
        if self._pid is None:
            return
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        # Without kill the helper ends on EOF at once; it is killed if it does not.
        deadline = time.monotonic() + 2.0
        while True:
            done, _ = os.waitpid(self._pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGKILL)
                os.waitpid(self._pid, 0)
                break
            time.sleep(0.005)
        self._pid = None

    def close(self) -> None:
        """End the helper."""
        self._stop(kill=False)

    # -- searching ---------------------------------------------------------------
    def search(self, data: bytes | bytearray) -> Found | None:
        """Return the first match in data, None, or raise RegexTimeout (the helper is killed)."""
        if self._pid is None:
            self._start()
        deadline = time.monotonic() + self.timeout_s
        try:
            _write_all(self._to_child, _HEADER.pack(len(data)) + bytes(data))
            answer = _read_exact(self._from_child, _ANSWER.size, deadline)
            offset, length = _ANSWER.unpack(answer)
            text = _read_exact(self._from_child, length, deadline) if length else b""
        except RegexTimeout:
            self.timeouts += 1
            self._stop(kill=True)
            raise
        except OSError as err:  # the helper died: the next search starts another
            self._stop(kill=True)
            raise RegexTimeout(f"content regex helper failed ({err})") from err
        return None if offset < 0 else Found(offset, text)

    def __enter__(self) -> BoundedRegex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(compiled: re.Pattern[bytes], rfd: int, wfd: int) -> None:  # pragma: no cover
    """Answer searches until the parent closes the pipe (runs in the helper)."""
    while True:
        header = _read_exact(rfd, _HEADER.size, None)
        if not header:
            return
        (size,) = _HEADER.unpack(header)
        data = _read_exact(rfd, size, None) if size else b""
        found = compiled.search(data)
        if found is None:
            _write_all(wfd, _ANSWER.pack(-1, 0))
        else:
            text = found.group(0)[:MATCH_TEXT_BYTES]
            _write_all(wfd, _ANSWER.pack(found.start(), len(text)) + text)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    """Read n bytes (b"" on EOF before the first byte in the helper); bounded by deadline."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise RegexTimeout("content_regex did not finish in time")
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            if deadline is None and not buf:
                return b""
            raise OSError("helper closed the pipe")
        buf += chunk
    return bytes(buf)
