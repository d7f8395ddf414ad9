"""VLAN-tagged traffic on a veth pair between two private network namespaces.

The capture runs through the AR executable inside one namespace (on the veth
end); 802.1Q-tagged frames are injected on the other end with a raw socket
(no 8021q module needed). Nothing touches the host's own interfaces.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import AR_DIR, ar_env

IP = shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin")
HAVE_TCPDUMP = shutil.which("tcpdump", path="/usr/sbin:/usr/bin:/sbin:/bin") is not None
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or IP is None,
                                reason="needs root and iproute2 (network namespaces)")
ATTACKER, VICTIM, NOISE_SRC, NOISE_DST = "192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"
N_MATCH = 20

SENDER = r"""
import os, socket, struct, sys, time
go, n, dev, dst_mac = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
raw.bind((dev, 0))
def checksum(header):
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
def send(src, dst, payload):
    udp = struct.pack("!HHHH", 7000, 7777, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes(6) + b"\x81\x00" + \
        struct.pack("!H", 100) + b"\x08\x00"
    raw.send(eth + ip + udp)
end = time.monotonic() + 20
while not os.path.exists(go) and time.monotonic() < end:
    send("%s", "%s", b"probe")
    time.sleep(0.05)
for i in range(n):
    send("%s", "%s", b"vlan-match-%%d" %% i)
    send("%s", "%s", b"vlan-noise-%%d" %% i)
""" % (ATTACKER, VICTIM, ATTACKER, VICTIM, NOISE_SRC, NOISE_DST)


def _ip(*args: str) -> str:
    return subprocess.run([IP, *args], check=True, capture_output=True, text=True,
                          timeout=20).stdout


@pytest.fixture
def namespaces():
    """Create ns_cap (veth end vpa) and ns_gen (vpb, vpb.100 with the addresses)."""
    tag = f"{os.getpid() % 100000}"
    ns_cap, ns_gen = f"pcapcap{tag}", f"pcapgen{tag}"
    _ip("netns", "add", ns_cap)
    _ip("netns", "add", ns_gen)
    try:
        _ip("link", "add", "vpa", "netns", ns_cap, "type", "veth", "peer", "name", "vpb",
            "netns", ns_gen)
        for ns, dev in ((ns_cap, "vpa"), (ns_cap, "lo"), (ns_gen, "vpb"), (ns_gen, "lo")):
            _ip("-n", ns, "link", "set", dev, "up")
        mac = json.loads(_ip("-j", "-n", ns_cap, "link", "show", "vpa"))[0]["address"]
        yield ns_cap, ns_gen, mac
    finally:
        for ns in (ns_cap, ns_gen):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=20)


@pytest.mark.parametrize("backend", ["native", pytest.param("tcpdump", marks=pytest.mark.skipif(
    not HAVE_TCPDUMP, reason="tcpdump not installed"))])
def test_vlan_tagged_traffic_is_captured_with_its_tag(tmp_path, evidence_root, namespaces,
                                                      backend):
    from scapy.layers.inet import IP as IPv4, UDP
    from scapy.layers.l2 import Dot1Q
    from scapy.utils import rdpcap
    ns_cap, ns_gen, mac = namespaces
    config = tmp_path / "pcap.yml"
    config.write_text(
        f"evidence_root: {evidence_root}\nlog_file: {tmp_path}/ar.log\nreserve_bytes: 0\n"
        f"collectors:\n  pcap:\n    interface: vpa\n    backend: {backend}\n"
        "    duration_s: 60\n    timeout_s: 90\n"
        "profiles:\n  dfir-pcap:\n    steps:\n      - collector: pcap\n")
    exe, env = str(AR_DIR / "dfir-pcap"), ar_env(config)
    go = tmp_path / "go"
    sender = subprocess.Popen([IP, "netns", "exec", ns_gen, sys.executable, "-c", SENDER,
                               str(go), str(N_MATCH), "vpb", mac])
    try:
        add = subprocess.run([IP, "netns", "exec", ns_cap, exe, "add", "-", ATTACKER],
                             env=env, capture_output=True, timeout=30)
        assert add.returncode == 0, add.stderr
        deadline = time.monotonic() + 20
        pcap = None
        while time.monotonic() < deadline:
            found = sorted(Path(evidence_root).glob("*/pcap/*/capture.pcap"))
            if found and found[0].stat().st_size > 24:
                pcap = found[0]
                break
            time.sleep(0.05)
        assert pcap is not None, "the capture never saw a probe"
        go.touch()
        assert sender.wait(timeout=30) == 0
        time.sleep(0.3)
    finally:
        subprocess.run([IP, "netns", "exec", ns_cap, exe, "delete", "-", ATTACKER], env=env,
                       capture_output=True, timeout=30)
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    manifest_path = pcap.parents[2] / "manifest.jsonl"
    deadline = time.monotonic() + 30
    steps = []
    while time.monotonic() < deadline and not steps:
        steps = [e for e in map(json.loads, manifest_path.read_text().splitlines())
                 if e["type"] == "collector" and e["collector"] == "pcap"]
        time.sleep(0.2)
    assert steps and steps[0]["outcome"] == "complete", steps
    payloads = []
    for pkt in rdpcap(str(pcap)):
        assert pkt.haslayer(Dot1Q) and pkt[Dot1Q].vlan == 100, pkt.summary()
        assert ATTACKER in (pkt[IPv4].src, pkt[IPv4].dst), f"noise captured: {pkt.summary()}"
        load = bytes(pkt[UDP].payload)
        if load != b"probe":
            payloads.append(load)
    assert sorted(payloads) == sorted(b"vlan-match-%d" % i for i in range(N_MATCH))
