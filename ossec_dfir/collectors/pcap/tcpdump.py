"""tcpdump capture backend: tcpdump writes pcap to a pipe, the evidence writer reads it.

tcpdump runs with an argv list (absolute path, no shell), ``-w -`` packet
buffered (``-U``), whole packets (``-s 0``), no name resolution, and the filter
``host <ip>`` built from the validated address. Records are split out of the
stream and handed whole to the sink, so the byte and packet limits cut at a
record boundary. tcpdump is stopped with SIGINT, so it prints its counters
(captured / received by filter / dropped by kernel), which are parsed. libpcap
hands packets over in ring blocks retired after up to one second, so SIGINT is
sent ``DRAIN_S`` after the stop reason: every packet seen before the stop is in
the file (immediate mode would avoid the wait but uses one ring frame per
packet of up to 256 KiB and drops bursts).
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import resource
import select
import signal
import subprocess
import time
from typing import Any, Callable

from .stream import GLOBAL_HEADER_BYTES, LimitHit, PcapSink, record_order, records

F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
READ_BYTES = 1 << 20
STDERR_MAX_BYTES = 64 * 1024
STOP_GRACE_S = 10.0
DRAIN_S = 1.2  # tcpdump's 1000 ms buffer timeout, plus a margin
_COUNTERS = {
    "captured": re.compile(rb"(\d+) packets? captured"),
    "received_by_filter": re.compile(rb"(\d+) packets? received by filter"),
    "dropped_by_kernel": re.compile(rb"(\d+) packets? dropped by kernel"),
    "dropped_by_interface": re.compile(rb"(\d+) packets? dropped by interface"),
}


def build_argv(tcpdump: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
               interface: str, snaplen: int, buffer_bytes: int) -> list[str]:
    """Return tcpdump's argv: capture to stdout, packet-buffered, filter from the IP object."""
    if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        raise TypeError("the capture filter needs an ipaddress object")
    return [tcpdump, "-i", interface, "-n", "-U", "-s", str(snaplen),
            "-B", str(max(buffer_bytes // 1024, 1)), "-w", "-", "host", str(ip)]


def parse_counters(stderr: bytes) -> dict[str, int]:
    """Return tcpdump's exit counters found in its stderr."""
    found = {}
    for name, pattern in _COUNTERS.items():
        match = pattern.search(stderr)
        if match:
            found[name] = int(match.group(1))
    return found


def capture(argv: list[str], sink: PcapSink, stop: Callable[[], str | None],
            env: dict[str, str]) -> dict[str, Any]:
    """Run tcpdump until stop() gives a reason, a limit hits or it exits; return its stats."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, close_fds=True, env=env)
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()  # type: ignore[union-attr]
    try:
        fcntl.fcntl(out_fd, F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass
    pending = bytearray()
    stderr = bytearray()
    order: str | None = None
    reason: str | None = None
    stop_at: float | None = None
    interrupted = killed = False
    open_fds = {out_fd, err_fd}
    try:
        while out_fd in open_fds:
            if reason is None:
                reason = stop()
            now = time.monotonic()
            if reason is not None and stop_at is None:
                # A limit cut: stop now. A stop request: let the last ring blocks arrive.
                stop_at = now if sink.limit is not None else now + DRAIN_S
            if stop_at is not None and now >= stop_at and not interrupted:
                interrupted = True
                _signal(proc, signal.SIGINT)
            if stop_at is not None and now - stop_at > STOP_GRACE_S and not killed:
                killed = True  # tcpdump ignores SIGINT; keep reading to EOF
                _signal(proc, signal.SIGKILL)
            ready, _, _ = select.select(list(open_fds), [], [], 0.2)
            for fd in ready:
                data = os.read(fd, READ_BYTES)
                if not data:
                    open_fds.discard(fd)
                elif fd == err_fd:
                    stderr += data[:STDERR_MAX_BYTES - len(stderr)]
                elif sink.limit is None:
                    pending += data
                    order = _consume(pending, order, sink)
                    sink.flush()
                    if sink.limit is not None and reason is None:
                        reason = sink.limit
        if err_fd in open_fds:  # tcpdump closed stdout: its counters follow on stderr
            stderr += _read_rest(err_fd, STDERR_MAX_BYTES - len(stderr))
    finally:
        try:
            sink.flush()
        finally:
            returncode = _reap(proc)
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    counters = parse_counters(bytes(stderr))
    stats: dict[str, Any] = {"backend": "tcpdump", "argv": argv, "returncode": returncode,
                             "stop_reason": reason, "limit": sink.limit,
                             "stderr": bytes(stderr).decode("utf-8", "replace")[-4000:],
                             "tcpdump_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime
                                                    - cpu0.ru_utime - cpu0.ru_stime, 3),
                             "capture_cpu_s": round(self1.ru_utime + self1.ru_stime
                                                    - self0.ru_utime - self0.ru_stime, 3),
                             **counters}
    if order is None and reason is None:
        stats["stop_reason"] = "tcpdump exited before writing a pcap header"
    elif reason is None:
        stats["stop_reason"] = f"tcpdump exited by itself (status {returncode})"
    stats["unfinished_bytes"] = len(pending)
    return stats


def _consume(pending: bytearray, order: str | None, sink: PcapSink) -> str | None:
    """Move whole records from pending into the sink; return the byte order."""
    if order is None:
        if len(pending) < GLOBAL_HEADER_BYTES:
            return None
        order = record_order(bytes(pending[:GLOBAL_HEADER_BYTES]))
        if order is None:
            raise ValueError("tcpdump did not write a pcap stream")
        sink.header(bytes(pending[:GLOBAL_HEADER_BYTES]))
        del pending[:GLOBAL_HEADER_BYTES]
    whole, end = records(pending, 0, order)
    for start, stop in whole:
        if not sink.room(stop - start):
            break
        try:
            sink.add(pending[start:stop])
        except LimitHit:
            break
    del pending[:end]
    if sink.limit is not None:
        pending.clear()
    return order


def _read_rest(fd: int, max_bytes: int) -> bytes:
    chunks = []
    deadline = time.monotonic() + STOP_GRACE_S
    while max_bytes > 0 and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data[:max_bytes])
        max_bytes -= len(data)
    return b"".join(chunks)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def _reap(proc: subprocess.Popen[bytes]) -> int:
    """Wait for tcpdump (INT, then KILL if it hangs) and return its exit status."""
    try:
        return proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
