"""pcap: capture the attacker's traffic (to and from srcip), bounded and drop-counted.

The capture starts on the AR ``add`` in the detached worker and ends on the
first of: the AR ``delete`` (or ``ossec-dfir stop``), ``duration_s``,
``max_bytes``, ``max_packets``, the store's free-space reserve, ``timeout_s``
or SIGTERM. The filter is built only from the validated srcip object. Two
backends: tcpdump (when installed) writing pcap to a pipe the evidence writer
reads, or a native AF_PACKET socket with the filter compiled to classic BPF in
the kernel. Afterwards scapy summarises the capture (directions, flows, DNS,
TLS SNI, HTTP requests).

Evidence (``pcap/<NN>/``): ``capture.pcap``, ``capture.json`` (backend, filter,
counters, stop reason), ``summary.json`` (when ``summary`` is true).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from ..base import (BINARY_DIRS, DELETE_STOP, HAND_STOP, SHUTDOWN_STOP, Collector, Context,
    Params, Result, register)
from ...evidence.store import utc_now

BACKENDS = ("auto", "tcpdump", "native")
OWN_ADDRESS = ("skip", "capture")
INTERFACE_RE = re.compile(r"^(any|[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14})$")
SYSFS_NET = "/sys/class/net"
MAX_SNAPLEN = 262144
NORMAL_STOPS = (DELETE_STOP, HAND_STOP, SHUTDOWN_STOP)
# What timeout_s must leave after duration_s: the summary (scapy) or only the drain.
SUMMARY_RESERVE_S = 30.0
DRAIN_RESERVE_S = 5.0
# OSSEC's execd checks its timers every 90 s when idle: the delete comes up to this late.
EXECD_DELETE_LATE_S = 90.0


@dataclass(frozen=True)
class PcapParams(Params):
    """Parameters of the pcap collector."""

    timeout_s: float = 3900.0         # whole run: capture, then the summary
    duration_s: float = 3600.0        # safety cap: the AR delete normally ends the capture
    interface: str = "any"            # an interface name, or any
    backend: str = "auto"             # auto (tcpdump if installed), tcpdump or native
    max_bytes: int = 1 << 30          # capture file size (0: only the reserve)
    max_packets: int = 10_000_000     # packets written (0: no limit)
    snaplen_bytes: int = MAX_SNAPLEN  # bytes kept per packet
    buffer_bytes: int = 32 << 20      # kernel capture buffer (tcpdump -B / ring size)
    summary: bool = True              # write summary.json with scapy
    summary_max_packets: int = 200_000  # packets the summary reads at most (0: all)
    # An srcip held by an interface of this host (127.0.0.1, ::1, the host's own
    # address): "skip" (the srcip policy) or "capture" (knowingly record the
    # host's own traffic on that address, secrets on loopback included).
    own_address: str = "skip"
    # With every capture slot taken and another trigger waiting for one, a capture
    # that has written no packet this long yields its slot (0: never).
    yield_after_s: float = 60.0
    # Segments (segments.py): with either set, the capture is capture-00001.pcap, ...,
    # each closed (and so shipped off the host) when it holds segment_bytes or is
    # segment_s old. 0 and 0: one capture.pcap.
    segment_bytes: int = 0
    segment_s: float = 0.0

    def validate(self) -> list[str]:
        """Return the problems of these parameters."""
        problems = []
        if not INTERFACE_RE.match(self.interface):
            problems.append(f"interface: {self.interface!r} is not an interface name")
        if self.own_address not in OWN_ADDRESS:
            problems.append(f"own_address: must be one of {', '.join(OWN_ADDRESS)}")
        if self.backend not in BACKENDS:
            problems.append(f"backend: must be one of {', '.join(BACKENDS)}")
        after = SUMMARY_RESERVE_S if self.summary else DRAIN_RESERVE_S
        if not 0 < self.duration_s:
            problems.append("duration_s: must be above 0")
        elif self.timeout_s < self.duration_s + after:
            problems.append(f"timeout_s: must be at least duration_s + {after:g} s (the time "
                            f"{'for the summary' if self.summary else 'to drain the capture'} "
                            f"after the capture; timeout_s ends the whole run)")
        if not 64 <= self.snaplen_bytes <= MAX_SNAPLEN:
            problems.append(f"snaplen_bytes: must be between 64 and {MAX_SNAPLEN}")
        if not 1 << 20 <= self.buffer_bytes <= 1 << 30:
            problems.append("buffer_bytes: must be between 1 MiB and 1 GiB")
        if self.segment_bytes and not 1 << 20 <= self.segment_bytes <= 1 << 34:
            problems.append("segment_bytes: must be 0 (no size segments) or 1 MiB to 16 GiB")
        if self.segment_s and not 1 <= self.segment_s <= 86400:
            problems.append("segment_s: must be 0 (no time segments) or 1 to 86400")
        return problems

    def ar_timeout_problem(self, ar_timeout_s: int | None) -> str | None:
        """Return why duration_s would end the capture before an AR delete could, or None.

        With an AR ``<timeout>`` of T seconds the delete comes after T s, up to
        EXECD_DELETE_LATE_S later, and later still when repeated alerts reset the
        timer: duration_s is the safety cap beyond it, never the usual end.
        """
        if not ar_timeout_s or self.duration_s >= ar_timeout_s + EXECD_DELETE_LATE_S:
            return None
        return (f"duration_s={self.duration_s:g} ends the capture before the AR delete "
                f"(ar_timeout_s={ar_timeout_s} + up to {EXECD_DELETE_LATE_S:g} s late): make "
                f"it at least {ar_timeout_s + EXECD_DELETE_LATE_S:g}")


@register
class PcapCollector(Collector):
    """Capture packets to and from the alert's srcip until delete or a limit."""

    name = "pcap"
    description = ("Packet capture of the alert's srcip (tcpdump or native AF_PACKET+BPF), "
                   "bounded by duration, bytes, packets and the reserve, with a summary.")
    params_type = PcapParams
    requires_root = True
    stops_on_delete = True
    nice = 0

    def check(self, ctx: Context, params: Params) -> str | None:
        """Return why no capture can run: no srcip, no interface, no backend."""
        assert isinstance(params, PcapParams)
        if ctx.request.srcip is None:
            return "no srcip in the alert: the capture filter is built only from it"
        if params.own_address == "skip":
            from ..suspects import srcip_problem
            refused = srcip_problem(ctx.request.srcip, "capture")
            if refused:
                return refused
        if params.interface != "any" and not os.path.isdir(
                os.path.join(SYSFS_NET, params.interface)):
            return f"interface {params.interface} does not exist on this host"
        backend, reason = _choose_backend(ctx, params)
        return reason if backend is None else None

    def run(self, ctx: Context, params: Params) -> Result:
        """Capture into capture.pcap, record counters, then summarise."""
        assert isinstance(params, PcapParams)
        from . import native as _pcap_native, tcpdump as _pcap_tcpdump
        from .stream import PcapSink

        ip = ctx.request.srcip
        backend, why_not = _choose_backend(ctx, params)
        if backend is None:
            from ...errors import Skipped
            raise Skipped(why_not or "no capture backend")
        started_at = time.monotonic()
        slot = ctx.capture_slot
        live: dict[str, Any] = {"sink": None, "since": started_at, "segments": None}

        def stop() -> str | None:
            if live["segments"] is not None:
                live["segments"].rotate_if_due()
            reason = ctx.should_stop()
            now = time.monotonic()
            if reason is None and now - started_at >= params.duration_s:
                reason = f"duration_s={params.duration_s:g} reached"
            if reason is None and live["sink"] is not None and _idle_yield(
                    slot, live["sink"].packets, now - live["since"], params.yield_after_s):
                reason = (f"yielded its capture slot to a waiting trigger: no packet to or "
                          f"from {ip} in {now - live['since']:.0f} s "
                          f"(yield_after_s={params.yield_after_s:g})")
            return reason

        if slot is not None and not slot.held:
            why = slot.wait(stop)
            if why:
                from ...errors import Skipped
                raise Skipped(f"max_captures={ctx.config.max_captures}: every capture slot "
                              f"stayed busy for {slot.waited_s:.0f} s, until {why}")
            ctx.note(f"waited {slot.waited_s:.1f} s for a capture slot")
            live["since"] = time.monotonic()

        meta = {"filter": f"host {ip}", "backend": backend, "interface": params.interface}
        started = utc_now()
        if params.segment_bytes or params.segment_s:
            from .segments import SegmentWriter
            live["segments"] = SegmentWriter(lambda name, m: ctx.writer(name, meta=m), meta,
                                             params.segment_bytes, params.segment_s)
        with live["segments"] or ctx.writer("capture.pcap", meta=meta) as writer:
            sink = PcapSink(writer, params.max_bytes, params.max_packets)
            live["sink"] = sink
            if backend == "tcpdump":
                tcpdump = ctx.binary("tcpdump") or ""
                argv = _pcap_tcpdump.build_argv(tcpdump, ip, params.interface,
                                                params.snaplen_bytes, params.buffer_bytes)
                stats = _pcap_tcpdump.capture(argv, sink, stop, {"PATH": ":".join(BINARY_DIRS),
                                                                 "LC_ALL": "C"})
            else:
                stats = _pcap_native.capture(ip, params.interface, sink, params.snaplen_bytes,
                                             params.buffer_bytes, stop)
            if sink.limit:
                writer.mark_partial(sink.limit)
        stats.update({"filter": meta["filter"], "interface": params.interface,
                      "started": started, "ended": utc_now(),
                      "elapsed_s": round(time.monotonic() - started_at, 3),
                      "packets_written": sink.packets, "bytes_written": writer.size,
                      "sha256": writer.sha256})
        if live["segments"] is not None:
            stats["segments"] = live["segments"].closed
        result = _judge(stats)
        ctx.write_json("capture.json", stats)
        result.summary.update({k: stats.get(k) for k in (
            "backend", "filter", "interface", "packets_written", "bytes_written",
            "received_by_filter", "dropped_by_kernel", "captured", "stop_reason",
            "elapsed_s")})
        if params.summary:
            paths = [seg["path"] for seg in stats.get("segments", [])] or [writer.relpath]
            self._summarise(ctx, params, paths, result)
        return result

    def _summarise(self, ctx: Context, params: PcapParams, relpaths: list[str],
                   result: Result) -> None:
        """Write summary.json from the closed capture file (or its segments, joined)."""
        from .summary import summarize
        try:
            import scapy  # noqa: F401
        except ImportError:
            # The pcap is whole; the summary can be made later from it.
            result.summary["summary"] = ("skipped: scapy is not installed for this Python "
                                         "(Debian: apt install python3-scapy)")
            return

        def keep_going() -> bool:
            return not ctx.terminated and ctx.time_left() > 0

        from .segments import JoinedSegments
        files = []
        try:
            for relpath in relpaths:
                files.append(os.fdopen(os.open(relpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                               dir_fd=ctx.incident.dir_fd), "rb"))
        except OSError as err:
            for fh in files:
                fh.close()
            result.degrade(f"summary: cannot reopen the capture: {err.strerror}")
            return
        try:
            joined = JoinedSegments(files)
            try:
                doc = summarize(joined, ctx.request.srcip, params.summary_max_packets,
                                keep_going)
            finally:
                joined.close()
        except Exception as err:  # noqa: BLE001 - scapy on attacker bytes
            ctx.note(f"summary failed: {type(err).__name__}: {err}")
            result.degrade("summary failed")
            return
        ctx.write_json("summary.json", doc)
        result.summary["summary"] = "written"
        if doc.get("truncated"):
            ctx.note(f"summary truncated: {doc['truncated']}")
        result.summary["flows"] = len(doc["flows"])


def _idle_yield(slot: Any, packets: int, elapsed_s: float, yield_after_s: float) -> bool:
    """Return True (the slot released) when an idle capture yields to a waiting trigger."""
    if slot is None or not slot.held or packets or not yield_after_s or elapsed_s < yield_after_s:
        return False
    if slot.claim_waiter() is None:
        return False
    slot.release()
    return True


def _choose_backend(ctx: Context, params: PcapParams) -> tuple[str | None, str | None]:
    """Return (backend, None) or (None, why no backend can capture here)."""
    from . import native as _pcap_native
    tcpdump = ctx.binary("tcpdump")
    if params.backend in ("auto", "tcpdump") and tcpdump:
        return "tcpdump", None
    if params.backend == "tcpdump":
        return None, ("backend tcpdump: tcpdump not found (looked in " + ":".join(BINARY_DIRS)
                      + " and the config's binaries:)")
    why = _pcap_native.available()
    if why:
        return None, f"backend native: {why}"
    return "native", None


def _judge(stats: dict[str, Any]) -> Result:
    """Return the outcome of a capture from its stats."""
    result = Result()
    reason = stats.get("stop_reason") or ""
    if stats["backend"] == "tcpdump" and not stats.get("packets_written") and \
            reason.startswith("tcpdump exited"):
        last = (stats.get("stderr") or "").strip().splitlines()[-1:] or ["(no message)"]
        return Result("failed", f"{reason}: {last[0][:300]}")
    if stats.get("limit"):
        result.degrade(stats["limit"])
    elif not (reason in NORMAL_STOPS or reason.startswith("duration_s=")):
        result.degrade(f"capture stopped early: {reason}")
    dropped = int(stats.get("dropped_by_kernel") or 0)
    if dropped:
        result.degrade(f"{dropped} packets dropped by the kernel")
    if reason == SHUTDOWN_STOP:
        # Not a degradation, but the capture ended with OSSEC's stop/restart, not its
        # timeout: the outcome line says so.
        result.reason = reason + (f"; {result.reason}" if result.reason else "")
    return result
