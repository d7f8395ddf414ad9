"""Native capture backend: AF_PACKET, in-kernel BPF host filter, TPACKET_V3 ring.

The socket is created with protocol 0 (it receives nothing), gets the
compiled host filter (SO_ATTACH_FILTER), a forced receive buffer and an
mmap'ed TPACKET_V3 ring, and only then is bound to ETH_P_ALL: no unfiltered
packet ever reaches it, and non-matching traffic costs no Python work at all.
A named Ethernet or loopback interface is captured with its Ethernet framing
(LINKTYPE_ETHERNET, VLAN tags stripped by the NIC put back); ``any`` and
other link types are captured cooked (LINKTYPE_LINUX_SLL).
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import mmap
import os
import resource
import select
import socket
import struct
import time
from typing import Any, Callable

from . import bpf
from .stream import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LimitHit, PcapSink, global_header

SYSFS_NET = "/sys/class/net"
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
BLOCK_BYTES = 1 << 20
FRAME_BYTES = 2048
BLOCK_TIMEOUT_MS = 100
POLL_MS = 50
DRAIN_S = BLOCK_TIMEOUT_MS / 1000 + 0.1
SOCKADDR_LL_OFFSET = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
_PKT_HDR = struct.Struct("=IIIIIIHHII")  # next, sec, nsec, snaplen, len, status, mac, net, hash, tci
_REC_HDR = struct.Struct("=IIII")
_SLL_HDR = struct.Struct("!HHH8sH")


def link_type(interface: str) -> int | None:
    """Return the ARPHRD type of an interface from sysfs (None for any or unknown)."""
    if interface == "any":
        return None
    try:
        with open(os.path.join(SYSFS_NET, interface, "type"), encoding="ascii") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def framing_for(interface: str) -> str:
    """Return "ethernet" for Ethernet and loopback interfaces, "cooked" otherwise."""
    return "ethernet" if link_type(interface) in (ARPHRD_ETHER, ARPHRD_LOOPBACK) else "cooked"


def _loopback_ifindex() -> int:
    """Return the ifindex of lo (0 if there is none)."""
    try:
        return socket.if_nametoindex("lo")
    except OSError:
        return 0


class _SockaddrLL(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("protocol", ctypes.c_ushort),
                ("ifindex", ctypes.c_int), ("hatype", ctypes.c_ushort),
                ("pkttype", ctypes.c_ubyte), ("halen", ctypes.c_ubyte),
                ("addr", ctypes.c_ubyte * 8)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def attach_filter(sock: socket.socket, program: list[bpf.Insn]) -> None:
    """Attach a classic BPF program to sock (SO_ATTACH_FILTER)."""
    code = ctypes.create_string_buffer(bpf.pack_program(program))
    fprog = _SockFprog(len(program), ctypes.cast(code, ctypes.c_void_p))
    if _libc().setsockopt(sock.fileno(), socket.SOL_SOCKET, SO_ATTACH_FILTER,
                          ctypes.byref(fprog), ctypes.sizeof(fprog)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"SO_ATTACH_FILTER: {os.strerror(err)}")


def bind_all(sock: socket.socket, ifindex: int) -> None:
    """Bind sock to ETH_P_ALL on ifindex (0: every interface, which Python cannot express)."""
    addr = _SockaddrLL(socket.AF_PACKET, socket.htons(ETH_P_ALL), ifindex)
    if _libc().bind(sock.fileno(), ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind: {os.strerror(err)}")


def kernel_stats(sock: socket.socket) -> tuple[int, int]:
    """Return (received, dropped) since the last call (PACKET_STATISTICS resets them)."""
    packets, drops, _freeze = struct.unpack(
        "=III", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12))
    return packets, drops


def open_socket(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, interface: str,
                snaplen: int, buffer_bytes: int) -> tuple[socket.socket, mmap.mmap, int, str]:
    """Return (socket, ring, block count, framing), filtered and bound."""
    framing = framing_for(interface)
    ifindex = 0 if interface == "any" else socket.if_nametoindex(interface)
    kind = socket.SOCK_RAW if framing == "ethernet" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_PACKET, kind, 0)  # protocol 0: receives nothing yet
    try:
        attach_filter(sock, bpf.compile_host_filter(ip, framing, snaplen, _loopback_ifindex()))
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        blocks = max(2, buffer_bytes // BLOCK_BYTES)
        req = struct.pack("=7I", BLOCK_BYTES, blocks, FRAME_BYTES,
                          BLOCK_BYTES // FRAME_BYTES * blocks, BLOCK_TIMEOUT_MS, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        ring = mmap.mmap(sock.fileno(), BLOCK_BYTES * blocks, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)
        bind_all(sock, ifindex)
        kernel_stats(sock)  # start the counters at the bind
    except BaseException:
        sock.close()
        raise
    return sock, ring, blocks, framing


def capture(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, interface: str,
            sink: PcapSink, snaplen: int, buffer_bytes: int,
            stop: Callable[[], str | None]) -> dict[str, Any]:
    """Capture packets to or from ip into sink until stop() gives a reason or a limit hits."""
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    sock, ring, blocks, framing = open_socket(ip, interface, snaplen, buffer_bytes)
    linktype = LINKTYPE_ETHERNET if framing == "ethernet" else LINKTYPE_LINUX_SLL
    received = dropped = 0
    reason: str | None = None
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLERR)
    try:
        sink.header(global_header(snaplen, linktype))
        block = 0
        drain_until: float | None = None
        after_drain = 0
        while True:
            if reason is None:
                reason = stop()
                if reason is not None:
                    # Blocks are handed over when full or after BLOCK_TIMEOUT_MS:
                    # keep reading that long so nothing seen before the stop is lost.
                    drain_until = time.monotonic() + DRAIN_S
            if sink.limit:
                break
            offset = block * BLOCK_BYTES
            ready = struct.unpack_from("=I", ring, offset + 8)[0] & TP_STATUS_USER
            if drain_until is not None and time.monotonic() >= drain_until:
                # Take what the kernel already handed over (one ring's worth), then end.
                if not ready or after_drain >= blocks:
                    break
                after_drain += 1
            if not ready:
                try:
                    poller.poll(POLL_MS)
                except InterruptedError:
                    pass
                continue
            try:
                _drain_block(ring, offset, framing, sink)
                sink.flush()
            except LimitHit:
                pass
            reason = reason or sink.limit
            struct.pack_into("=I", ring, offset + 8, TP_STATUS_KERNEL)
            block = (block + 1) % blocks
        sink.flush()
        got, lost = kernel_stats(sock)
        received += got
        dropped += lost
    finally:
        poller.unregister(sock.fileno())
        ring.close()
        sock.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"backend": "native", "framing": framing, "linktype": linktype,
            "stop_reason": reason, "limit": sink.limit,
            "received_by_filter": received, "dropped_by_kernel": dropped,
            "capture_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime
                                   - cpu0.ru_utime - cpu0.ru_stime, 3)}


def _drain_block(ring: mmap.mmap, offset: int, framing: str, sink: PcapSink) -> None:
    """Move every packet of one ring block into the sink (the hot loop)."""
    num_pkts, first = struct.unpack_from("=II", ring, offset + 12)
    pos = offset + first
    unpack = _PKT_HDR.unpack_from
    pack_rec = _REC_HDR.pack
    add = sink.add
    view = memoryview(ring)
    try:
        for _ in range(num_pkts):
            nxt, sec, nsec, caplen, wirelen, status, mac, net, _hash, tci = unpack(ring, pos)
            if framing == "ethernet":
                data = view[pos + mac:pos + mac + caplen]
                if status & TP_STATUS_VLAN_VALID and caplen >= 12:
                    tpid = struct.unpack_from("=H", ring, pos + 36)[0] \
                        if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                    tag = struct.pack("!HH", tpid or 0x8100, tci & 0xFFFF)
                    data = bytes(data[:12]) + tag + bytes(data[12:])
                    caplen += 4
                    wirelen += 4
                add(pack_rec(sec, nsec, caplen, wirelen) + data)
            else:
                sll = pos + SOCKADDR_LL_OFFSET
                proto = struct.unpack_from("!H", ring, sll + 2)[0]
                hatype, pkttype, halen = struct.unpack_from("=HBB", ring, sll + 8)
                addr = ring[sll + 12:sll + 20]
                head = _SLL_HDR.pack(pkttype, hatype, halen, addr, proto)
                length = caplen - (net - mac) if net > mac else caplen
                add(pack_rec(sec, nsec, length + 16, wirelen - (net - mac) + 16) + head
                    + view[pos + net:pos + net + length])
            pos += nxt
    finally:
        view.release()


def available() -> str | None:
    """Return why AF_PACKET capture is impossible here (None when it works)."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except OSError as err:
        if err.errno in (errno.EPERM, errno.EACCES):
            return "AF_PACKET sockets need CAP_NET_RAW"
        return f"AF_PACKET sockets unavailable: {err.strerror}"
    return None
