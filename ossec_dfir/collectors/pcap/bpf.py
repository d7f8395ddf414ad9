"""Compile a capture's host filter to classic BPF for SO_ATTACH_FILTER.

The filter is built only from a validated ``ipaddress`` object: it accepts IPv4
or IPv6 packets whose source or destination is that address, untagged or
behind one or two VLAN tags (802.1Q, 802.1ad, 0x9100), and drops everything
else in the kernel. Two framings are supported: ``ethernet`` (the packet
starts with a 14-byte Ethernet header: Ethernet and loopback interfaces on a
SOCK_RAW socket) and ``cooked`` (the packet starts at the network header and
the EtherType comes from the kernel's ``skb->protocol``: a SOCK_DGRAM socket).
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# Instruction classes and modes (linux/filter.h).
BPF_LD_W_ABS = 0x20
BPF_LD_H_ABS = 0x28
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
# Ancillary loads (SKF_AD_OFF + n): skb->protocol (host order), pkt_type, ifindex.
SKF_AD_PROTOCOL = (-0x1000) & 0xFFFFFFFF
SKF_AD_PKTTYPE = SKF_AD_PROTOCOL + 4
SKF_AD_IFINDEX = SKF_AD_PROTOCOL + 8
PACKET_OUTGOING = 4

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
FRAMINGS = ("ethernet", "cooked")
MAX_VLAN_TAGS = 2


@dataclass(frozen=True)
class Insn:
    """One classic BPF instruction (struct sock_filter)."""

    code: int
    jt: int
    jf: int
    k: int


class _Assembler:
    """Collect instructions with symbolic jump targets and resolve them."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str | None, str | None, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.items)

    def emit(self, code: int, k: int, jt: str | None = None, jf: str | None = None) -> None:
        self.items.append((code, jt, jf, k & 0xFFFFFFFF))

    def assemble(self) -> list[Insn]:
        program = []
        for index, (code, jt, jf, k) in enumerate(self.items):
            offsets = []
            for target in (jt, jf):
                if target is None:
                    offsets.append(0)
                    continue
                delta = self.labels[target] - index - 1
                if not 0 <= delta <= 255:
                    raise ValueError(f"BPF jump to {target} out of range ({delta})")
                offsets.append(delta)
            program.append(Insn(code, offsets[0], offsets[1], k))
        return program


def compile_host_filter(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, framing: str,
                        snaplen: int = 262144, loopback_ifindex: int = 0) -> list[Insn]:
    """Return a program accepting (up to snaplen bytes of) packets to or from ip.

    With loopback_ifindex, the outgoing copy of packets on that interface is
    dropped: the loopback device shows every packet twice (as libpcap does).
    """
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}")
    if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        raise TypeError("the capture filter needs an ipaddress object")
    asm = _Assembler()
    if loopback_ifindex:
        asm.emit(BPF_LD_W_ABS, SKF_AD_PKTTYPE)
        asm.emit(BPF_JEQ_K, PACKET_OUTGOING, jf="type0")
        asm.emit(BPF_LD_W_ABS, SKF_AD_IFINDEX)
        asm.emit(BPF_JEQ_K, loopback_ifindex, jt="drop", jf="type0")
    # Offset of the network header and of the EtherType for 0, 1, 2 VLAN tags.
    link = 14 if framing == "ethernet" else 0
    for tags in range(MAX_VLAN_TAGS + 1):
        asm.label(f"type{tags}")
        if tags == 0:
            asm.emit(BPF_LD_H_ABS, 12 if framing == "ethernet" else SKF_AD_PROTOCOL)
        else:
            # The next EtherType is the last two bytes of the tag just passed.
            asm.emit(BPF_LD_H_ABS, link + 4 * tags - 2)
        base = link + 4 * tags
        family_jeq = ETH_P_IP if ip.version == 4 else ETH_P_IPV6
        asm.emit(BPF_JEQ_K, family_jeq, jt=f"ip{tags}")
        if tags < MAX_VLAN_TAGS:
            for tpid in VLAN_TPIDS:
                asm.emit(BPF_JEQ_K, tpid, jt=f"type{tags + 1}")
        asm.emit(BPF_RET_K, 0)
        asm.label(f"ip{tags}")
        if ip.version == 4:
            word = int(ip)
            asm.emit(BPF_LD_W_ABS, base + 12)
            asm.emit(BPF_JEQ_K, word, jt="accept")
            asm.emit(BPF_LD_W_ABS, base + 16)
            asm.emit(BPF_JEQ_K, word, jt="accept", jf="drop")
        else:
            words = struct.unpack("!4I", ip.packed)
            for side, start in (("src", base + 8), ("dst", base + 24)):
                miss = f"{side}miss{tags}"
                for i, word in enumerate(words):
                    asm.emit(BPF_LD_W_ABS, start + 4 * i)
                    last = i == len(words) - 1
                    asm.emit(BPF_JEQ_K, word, jt="accept" if last else None, jf=miss)
                asm.label(miss)
            asm.emit(BPF_RET_K, 0)
    asm.label("drop")
    asm.emit(BPF_RET_K, 0)
    asm.label("accept")
    asm.emit(BPF_RET_K, snaplen)
    return asm.assemble()


def drop_all() -> list[Insn]:
    """Return a program that accepts nothing."""
    return [Insn(BPF_RET_K, 0, 0, 0)]


def pack_program(program: list[Insn]) -> bytes:
    """Return the program as an array of struct sock_filter (native order)."""
    return b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in program)


def run_program(program: list[Insn], packet: bytes, protocol: int = 0, pkttype: int = 0,
                ifindex: int = 0) -> int:
    """Interpret the program on packet as the kernel would; return the accepted length.

    Only the instructions this module emits are supported. ``protocol`` is
    what the ancillary load of skb->protocol returns (cooked framing);
    ``pkttype`` and ``ifindex`` what the other ancillary loads return.
    """
    pc = 0
    acc = 0
    while True:
        insn = program[pc]
        if insn.code == BPF_RET_K:
            return min(insn.k, len(packet))
        if insn.code in (BPF_LD_H_ABS, BPF_LD_W_ABS):
            ancillary = {SKF_AD_PROTOCOL: protocol, SKF_AD_PKTTYPE: pkttype,
                         SKF_AD_IFINDEX: ifindex}
            if insn.k in ancillary:
                acc = ancillary[insn.k]
            else:
                size = 2 if insn.code == BPF_LD_H_ABS else 4
                if insn.k + size > len(packet):
                    return 0  # the kernel ends the program on an out-of-bounds load
                acc = int.from_bytes(packet[insn.k:insn.k + size], "big")
            pc += 1
        elif insn.code == BPF_JEQ_K:
            pc += 1 + (insn.jt if acc == insn.k else insn.jf)
        else:
            raise ValueError(f"unsupported BPF opcode {insn.code:#x}")
