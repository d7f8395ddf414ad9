"""The pcap collector's pieces without capturing: BPF compiler, summary, sink."""
from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from ossec_dfir.collectors.pcap import bpf
from ossec_dfir.collectors.pcap.summary import http_request, tls_sni

# -- the BPF compiler, checked frame by frame -------------------------------
ETH = b"\x00" * 12


def _ip4(src: str, dst: str) -> bytes:
    return bytes([0x45, 0, 0, 28]) + b"\0" * 8 + socket.inet_aton(src) + socket.inet_aton(dst)


def _ip6(src: str, dst: str) -> bytes:
    return b"\x60" + b"\0" * 7 + ipaddress.ip_address(src).packed + \
        ipaddress.ip_address(dst).packed


@pytest.mark.parametrize("framing", ["ethernet", "cooked"])
def test_bpf_filter_matches_host_in_every_framing(framing):
    v4 = bpf.compile_host_filter(ipaddress.ip_address("203.0.113.5"), framing, 1000)
    v6 = bpf.compile_host_filter(ipaddress.ip_address("2001:db8::5"), framing, 1000)

    def frame(ethertype: int, payload: bytes, tags: tuple[int, ...] = ()) -> tuple[bytes, int]:
        chain = b""
        types = list(tags) + [ethertype]
        for i, _tpid in enumerate(tags):
            chain += struct.pack("!HH", 7, types[i + 1])
        if framing == "ethernet":
            return ETH + struct.pack("!H", types[0]) + chain + payload, 0
        return chain + payload, types[0]

    cases = [
        (v4, 0x0800, _ip4("203.0.113.5", "10.0.0.1"), (), True),
        (v4, 0x0800, _ip4("10.0.0.1", "203.0.113.5"), (), True),
        (v4, 0x0800, _ip4("203.0.113.6", "10.0.0.1"), (), False),
        (v4, 0x0800, _ip4("10.0.0.1", "203.0.113.5"), (0x8100,), True),
        (v4, 0x0800, _ip4("10.0.0.1", "203.0.113.5"), (0x88A8, 0x8100), True),
        (v4, 0x0800, _ip4("10.0.0.1", "10.0.0.2"), (0x8100,), False),
        (v4, 0x0806, _ip4("203.0.113.5", "203.0.113.5"), (), False),
        (v6, 0x86DD, _ip6("2001:db8::5", "::1"), (), True),
        (v6, 0x86DD, _ip6("::1", "2001:db8::5"), (0x8100,), True),
        (v6, 0x86DD, _ip6("2001:db8::6", "::1"), (), False),
        (v6, 0x86DD, _ip6("2001:db8:1::5", "2001:db8::4"), (), False),
        (v6, 0x0800, _ip4("203.0.113.5", "10.0.0.1"), (), False),
    ]
    for program, ethertype, payload, tags, expected in cases:
        packet, proto = frame(ethertype, payload, tags)
        accepted = bpf.run_program(program, packet, proto)
        assert (accepted > 0) is expected, (ethertype, tags, payload.hex())


def test_summary_parsers_extract_sni_and_http():
    name = b"evil.example"
    ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    body = b"\x03\x03" + b"r" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + \
        struct.pack("!H", len(ext)) + ext
    hello = b"\x01" + len(body).to_bytes(3, "big") + body
    record = b"\x16\x03\x01" + struct.pack("!H", len(hello)) + hello
    assert tls_sni(record) == "evil.example"
    assert tls_sni(record[:50]) is None
    req = http_request(b"GET /x.sh HTTP/1.1\r\nHost: bad.example\r\nUser-Agent: c\r\n\r\n")
    assert req == {"request_line": "GET /x.sh HTTP/1.1", "host": "bad.example"}
    assert http_request(b"\x16\x03\x01") is None


def test_bpf_filter_drops_the_outgoing_copy_on_loopback_only():
    program = bpf.compile_host_filter(ipaddress.ip_address("127.0.0.2"), "ethernet", 100,
                                      loopback_ifindex=1)
    packet = ETH + b"\x08\x00" + _ip4("127.0.0.1", "127.0.0.2")
    assert bpf.run_program(program, packet, pkttype=bpf.PACKET_OUTGOING, ifindex=1) == 0
    assert bpf.run_program(program, packet, pkttype=0, ifindex=1) > 0
    assert bpf.run_program(program, packet, pkttype=bpf.PACKET_OUTGOING, ifindex=2) > 0


def test_summary_lists_directions_flows_dns_sni_and_http(tmp_path):
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap
    from ossec_dfir.collectors.pcap.summary import summarize
    attacker, host = "203.0.113.5", "10.0.0.1"
    name = b"evil.example"
    ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    body = b"\x03\x03" + b"r" * 32 + b"\x00\x00\x02\x13\x01\x01\x00" + \
        struct.pack("!H", len(ext)) + ext
    hello = b"\x01" + len(body).to_bytes(3, "big") + body
    packets = [
        Ether() / IP(src=host, dst=attacker) / UDP(sport=5353, dport=53) /
        DNS(id=7, rd=1, qd=DNSQR(qname="c2.example")),
        Ether() / IP(src=attacker, dst=host) / UDP(sport=53, dport=5353) /
        DNS(id=7, qr=1, qd=DNSQR(qname="c2.example"),
            an=DNSRR(rrname="c2.example", rdata="198.51.100.9", ttl=60)),
        Ether() / IP(src=host, dst=attacker) / TCP(sport=40000, dport=443, flags="PA") /
        (b"\x16\x03\x01" + struct.pack("!H", len(hello)) + hello),
        Ether() / IP(src=attacker, dst=host) / TCP(sport=41000, dport=80, flags="PA") /
        b"GET /shell.php?c=id HTTP/1.1\r\nHost: victim.example\r\n\r\n",
    ]
    path = tmp_path / "t.pcap"
    wrpcap(str(path), packets)
    with open(path, "rb") as fh:
        doc = summarize(fh, ipaddress.ip_address(attacker), 0, lambda: True)
    assert doc["directions"]["from_srcip"]["packets"] == 2
    assert doc["directions"]["to_srcip"]["packets"] == 2
    assert len(doc["flows"]) == 3
    dns = [d for d in doc["dns"] if d["kind"] == "answer"][0]
    assert dns["questions"][0]["name"] == "c2.example."
    assert dns["answers"][0]["data"] == "198.51.100.9"
    assert doc["tls_sni"][0]["server_name"] == "evil.example"
    assert doc["http_requests"][0]["host"] == "victim.example"
    assert doc["http_requests"][0]["request_line"] == "GET /shell.php?c=id HTTP/1.1"


def test_sink_stops_cleanly_when_the_reserve_is_reached():
    from ossec_dfir.collectors.pcap.stream import FLUSH_BYTES, LimitHit, PcapSink, global_header
    from ossec_dfir.errors import ReserveReached

    class FullDisk:
        written = 0

        def write(self, data):
            if self.written + len(data) > 100:
                raise ReserveReached(1000, 900, "/evidence")
            self.written += len(data)

    sink = PcapSink(FullDisk(), 0, 0)
    sink.header(global_header(65535, 1))
    record = struct.pack("=IIII", 0, 0, 1000, 1000) + b"p" * 1000
    with pytest.raises(LimitHit):
        for _ in range(FLUSH_BYTES // len(record) + 2):
            sink.add(record)
    assert sink.limit.startswith("free-space reserve reached")
    assert (sink.packets, sink.size) == (0, 24)
    assert not sink.room(10)
