"""The pcap file a capture writes: bounded by bytes and packets, through the store.

Both backends hand whole pcap records to ``PcapSink``; it buffers them, writes
them through the evidence writer and refuses the record that would cross
``max_bytes`` or ``max_packets`` so the file always ends on a record boundary
(a valid pcap even when a limit cut the capture).
"""
from __future__ import annotations

import struct
from typing import Any

from ...errors import ReserveReached

PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_MAGIC_US = 0xA1B2C3D4
GLOBAL_HEADER_BYTES = 24
RECORD_HEADER_BYTES = 16
LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113
FLUSH_BYTES = 1 << 20


def global_header(snaplen: int, linktype: int) -> bytes:
    """Return a nanosecond-resolution pcap global header (native byte order)."""
    return struct.pack("=IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, linktype)


def record_order(header: bytes) -> str | None:
    """Return the struct byte-order prefix of a pcap global header, or None if not pcap."""
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", header[:4])
        if magic in (PCAP_MAGIC_NS, PCAP_MAGIC_US):
            return order
    return None


class LimitHit(Exception):
    """A capture limit was reached: the record was not written."""


class PcapSink:
    """Write a pcap through an evidence writer, enforcing max_bytes and max_packets."""

    def __init__(self, writer: Any, max_bytes: int, max_packets: int) -> None:
        self.writer = writer
        self.max_bytes = max_bytes
        self.max_packets = max_packets
        self.buffer = bytearray()
        self.size = 0          # bytes accepted into the file (header included)
        self.packets = 0       # records accepted
        self.buffered_packets = 0
        self.limit: str | None = None

    def header(self, data: bytes) -> None:
        """Accept the 24-byte global header."""
        self.buffer += data
        self.size += len(data)
        self.flush()

    def room(self, record_bytes: int) -> bool:
        """Return True when one more record of that size fits; set .limit otherwise."""
        if self.limit is not None:
            return False
        if self.max_packets and self.packets >= self.max_packets:
            self.limit = f"max_packets={self.max_packets} reached"
            return False
        if self.max_bytes and self.size + record_bytes > self.max_bytes:
            self.limit = f"max_bytes={self.max_bytes} reached"
            return False
        return True

    def add(self, record: bytes | bytearray | memoryview) -> None:
        """Accept one whole record (header and data); raise LimitHit when it does not fit."""
        n = len(record)
        if not self.room(n):
            raise LimitHit(self.limit)
        self.buffer += record
        self.size += n
        self.packets += 1
        self.buffered_packets += 1
        if len(self.buffer) >= FLUSH_BYTES:
            self.flush()
            if self.limit is not None:
                raise LimitHit(self.limit)

    def flush(self) -> None:
        """Write the buffered records through the evidence writer (never raises on reserve)."""
        if not self.buffer:
            return
        data = bytes(self.buffer)
        self.buffer.clear()
        try:
            self.writer.write(data)
            self.buffered_packets = 0
        except ReserveReached as err:
            # The writer recorded itself partial; what was buffered is lost, and said so.
            self.packets -= self.buffered_packets
            self.size -= len(data)
            self.limit = f"free-space reserve reached: {err}"


def records(data: bytes | bytearray, start: int, order: str) -> tuple[list[tuple[int, int]], int]:
    """Find whole pcap records in data from start; return their (start, stop) and the end."""
    out = []
    pos = start
    fmt = order + "IIII"
    end = len(data)
    while pos + RECORD_HEADER_BYTES <= end:
        caplen = struct.unpack_from(fmt, data, pos)[2]
        stop = pos + RECORD_HEADER_BYTES + caplen
        if stop > end:
            break
        out.append((pos, stop))
        pos = stop
    return out, pos


def count_records(data: bytes) -> tuple[int, int]:
    """Return (packets, linktype) of a whole pcap file held in memory."""
    order = record_order(data[:GLOBAL_HEADER_BYTES])
    if order is None:
        raise ValueError("not a pcap file")
    linktype = struct.unpack_from(order + "I", data, 20)[0]
    found, _ = records(data, GLOBAL_HEADER_BYTES, order)
    return len(found), linktype
