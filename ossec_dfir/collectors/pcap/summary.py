"""Summarise a capture with scapy: directions, flows, DNS, TLS SNI, HTTP requests.

Everything extracted is attacker-controlled text: it is bounded in length and
count, decoded with replacement, and only ever written as JSON values.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import IO, Any, Callable

from ...evidence.store import utc_iso

MAX_FLOWS = 10000
MAX_ITEMS = 1000
MAX_TEXT = 512
HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
                b"CONNECT ", b"TRACE ")
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp"}


def _text(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return raw[:MAX_TEXT]



def tls_sni(payload: bytes) -> str | None:
    """Return the server_name of a TLS ClientHello at the start of payload, or None."""
    try:
        if len(payload) < 43 or payload[0] != 0x16 or payload[1] != 0x03 or payload[5] != 0x01:
            return None
        pos = 9 + 2 + 32                      # record(5) + handshake(4), version, random
        pos += 1 + payload[pos]               # session id
        (n,) = struct.unpack_from("!H", payload, pos)
        pos += 2 + n                          # cipher suites
        pos += 1 + payload[pos]               # compression methods
        (ext_total,) = struct.unpack_from("!H", payload, pos)
        pos += 2
        end = min(len(payload), pos + ext_total)
        while pos + 4 <= end:
            ext_type, ext_len = struct.unpack_from("!HH", payload, pos)
            pos += 4
            if ext_type == 0:                 # server_name: list len, type, name len, name
                name_len = struct.unpack_from("!H", payload, pos + 3)[0]
                return _text(payload[pos + 5:pos + 5 + name_len])
            pos += ext_len
    except (IndexError, struct.error):
        return None
    return None


def http_request(payload: bytes) -> dict[str, str] | None:
    """Return the request line and Host header of an HTTP request in payload, or None."""
    if not payload.startswith(HTTP_METHODS):
        return None
    head = payload.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    found = {"request_line": _text(head[0])}
    for line in head[1:64]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            found["host"] = _text(value.strip())
            break
    return found


def _records(section: Any) -> list[Any]:
    """Return the records of a scapy DNS section (a list since scapy 2.6)."""
    if section is None:
        return []
    return list(section) if isinstance(section, list) else [section]


class _Summary:
    def __init__(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        self.ip = str(ip)
        self.directions = {d: {"packets": 0, "bytes": 0}
                           for d in ("from_srcip", "to_srcip", "other")}
        self.flows: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.flows_dropped = 0
        self.dns: list[dict[str, Any]] = []
        self.sni: list[dict[str, Any]] = []
        self.http: list[dict[str, Any]] = []
        self.errors = 0

    def add(self, pkt: Any, IP: Any, IPv6: Any, TCP: Any, UDP: Any, DNS: Any) -> None:
        ts = float(pkt.time)
        size = int(getattr(pkt, "wirelen", None) or len(pkt))
        net = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if net is None:
            self.directions["other"]["packets"] += 1
            self.directions["other"]["bytes"] += size
            return
        src, dst = str(net.src), str(net.dst)
        direction = "from_srcip" if src == self.ip else "to_srcip" if dst == self.ip else "other"
        self.directions[direction]["packets"] += 1
        self.directions[direction]["bytes"] += size
        proto = int(net.proto if net.version == 4 else net.nh)
        l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
        sport, dport = (int(l4.sport), int(l4.dport)) if l4 is not None else (0, 0)
        self._flow(ts, size, proto, src, sport, dst, dport)
        stamp = {"time": utc_iso(ts), "src": src, "sport": sport, "dst": dst, "dport": dport}
        if pkt.haslayer(DNS):
            self._dns(pkt[DNS], stamp)
        if l4 is not None and isinstance(l4, TCP):
            payload = bytes(l4.payload)
            if payload:
                name = tls_sni(payload)
                if name is not None and len(self.sni) < MAX_ITEMS:
                    self.sni.append({**stamp, "server_name": name})
                request = http_request(payload)
                if request is not None and len(self.http) < MAX_ITEMS:
                    self.http.append({**stamp, **request})

    def _flow(self, ts: float, size: int, proto: int, src: str, sport: int, dst: str,
              dport: int) -> None:
        key = (proto, src, sport, dst, dport)
        flow = self.flows.get(key) or self.flows.get((proto, dst, dport, src, sport))
        if flow is None:
            if len(self.flows) >= MAX_FLOWS:
                self.flows_dropped += 1
                return
            flow = self.flows[key] = {
                "proto": PROTO_NAMES.get(proto, str(proto)), "src": src, "sport": sport,
                "dst": dst, "dport": dport, "first_seen": ts, "last_seen": ts,
                "packets": 0, "bytes": 0}
        flow["last_seen"] = ts
        flow["packets"] += 1
        flow["bytes"] += size

    def _dns(self, dns: Any, stamp: dict[str, Any]) -> None:
        if len(self.dns) >= MAX_ITEMS:
            return
        entry: dict[str, Any] = {**stamp, "id": int(dns.id),
                                 "kind": "answer" if dns.qr else "query",
                                 "questions": [], "answers": []}
        for q in _records(dns.qd)[:16]:
            entry["questions"].append({"name": _text(q.qname), "type": int(q.qtype)})
        if dns.qr:
            entry["rcode"] = int(dns.rcode)
            for rr in _records(dns.an)[:32]:
                rdata = rr.rdata
                if isinstance(rdata, (list, tuple)):
                    rdata = b" ".join(r if isinstance(r, bytes) else str(r).encode()
                                      for r in rdata)
                entry["answers"].append({"name": _text(rr.rrname), "type": int(rr.type),
                                         "ttl": int(getattr(rr, "ttl", 0) or 0),
                                         "data": _text(rdata if isinstance(rdata, bytes)
                                                       else str(rdata))})
        self.dns.append(entry)

    def result(self) -> dict[str, Any]:
        flows = sorted(self.flows.values(), key=lambda f: f["first_seen"])
        for flow in flows:
            flow["first_seen"] = utc_iso(flow["first_seen"])
            flow["last_seen"] = utc_iso(flow["last_seen"])
        return {"srcip": self.ip, "directions": self.directions, "flows": flows,
                "flows_not_listed": self.flows_dropped, "dns": self.dns, "tls_sni": self.sni,
                "http_requests": self.http, "undecodable_packets": self.errors}


def summarize(pcap: IO[bytes], ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
              max_packets: int, keep_going: Callable[[], bool]) -> dict[str, Any]:
    """Read the pcap with scapy and return the summary (bounded by packets and time)."""
    from scapy.layers.dns import DNS
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapReader

    summary = _Summary(ip)
    read = 0
    truncated = None
    with PcapReader(pcap) as reader:
        for pkt in reader:
            if max_packets and read >= max_packets:
                truncated = f"summary_max_packets={max_packets} reached"
                break
            if read % 1000 == 0 and not keep_going():
                truncated = "no time left for the summary"
                break
            read += 1
            try:
                summary.add(pkt, IP, IPv6, TCP, UDP, DNS)
            except Exception:  # noqa: BLE001 - one malformed packet must not end the summary
                summary.errors += 1
    doc = summary.result()
    doc["packets_read"] = read
    doc["truncated"] = truncated
    return doc
