#!/usr/bin/env python3
"""Benchmark the pcap collector on loopback: captured/sent per rate and backend, and CPU.

For each rate (matching packets per second) a generator process sends UDP
datagrams to 127.0.0.2 (matching) and, at --noise-ratio of that rate, to
127.0.0.3 (not matching) for --seconds; sinks bound on both addresses drop
them silently (no ICMP). Each rate is captured by bare tcpdump, by our
tcpdump backend and by our native backend (through the real runner and
evidence store); the matching datagrams found in the pcap are counted.
Finally the native backend captures while only non-matching traffic flows and
its capture CPU time is reported per million non-matching packets.

Run as root: ``.venv/bin/python bench/bench_pcap.py [--rates 10000,50000,100000]``.
Traffic goes only to 127.0.0.2 and 127.0.0.3.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GENERATOR = r"""
import socket, sys, time
rate, seconds, port, noise_ratio = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sinks = []
for host in ("127.0.0.2", "127.0.0.3"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((host, port))
    sinks.append(s)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"b" * 64
match, other = ("127.0.0.2", port), ("127.0.0.3", port)
total = int(rate * seconds)
sent = noise = errors = 0
noise_credit = 0.0
step = max(1, int(rate // 2000))
start = time.perf_counter()
while sent < total:
    due = (time.perf_counter() - start) * rate
    if sent >= due:
        time.sleep(0.0002)
        continue
    for _ in range(step):
        try:
            tx.sendto(payload, match)
            sent += 1
        except OSError:
            errors += 1
        noise_credit += noise_ratio
        while noise_credit >= 1:
            noise_credit -= 1
            try:
                tx.sendto(payload, other)
                noise += 1
            except OSError:
                errors += 1
elapsed = time.perf_counter() - start
print(f"{sent} {noise} {errors} {elapsed:.4f}")
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        return s.getsockname()[1]


def count_matching(pcap: bytes, port: int) -> int:
    """Count records of UDP datagrams to 127.0.0.2:port in an Ethernet (lo) pcap."""
    from ossec_dfir.collectors.pcap.stream import record_order, records
    order = record_order(pcap[:24])
    if order is None:
        return 0
    found, _ = records(pcap, 24, order)
    want_dst = socket.inet_aton("127.0.0.2")
    n = 0
    for start, _stop in found:
        frame = start + 16
        if pcap[frame + 12:frame + 14] == b"\x08\x00" and pcap[frame + 23] == 17 and \
                pcap[frame + 30:frame + 34] == want_dst and \
                struct.unpack_from("!H", pcap, frame + 14 + 20 + 2)[0] == port:
            n += 1
    return n


def generate(rate: float, seconds: float, port: int, noise_ratio: float) -> dict:
    out = subprocess.run([sys.executable, "-c", GENERATOR, str(rate), str(seconds), str(port),
                          str(noise_ratio)], capture_output=True, check=True, timeout=600)
    sent, noise, errors, elapsed = out.stdout.split()
    return {"sent": int(sent), "noise": int(noise), "errors": int(errors),
            "elapsed_s": float(elapsed)}


def wait_for_packets(path_of, deadline_s: float = 15.0) -> None:
    """Send probes to 127.0.0.2 until the capture file holds a record."""
    probe_port = free_port()
    end = time.monotonic() + deadline_s
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while time.monotonic() < end:
            s.sendto(b"probe", ("127.0.0.2", probe_port))
            path = path_of()
            if path is not None and path.exists() and path.stat().st_size > 24:
                return
            time.sleep(0.05)
    raise TimeoutError("capture never became ready")


def bare_tcpdump(rate: float, seconds: float, noise_ratio: float, workdir: Path) -> dict:
    pcap = workdir / f"bare-{int(rate)}.pcap"
    proc = subprocess.Popen(["/usr/bin/tcpdump", "-i", "lo", "-n", "-U", "-s", "0", "-B",
                             "32768", "-w", str(pcap), "host", "127.0.0.2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_packets(lambda: pcap)
        port = free_port()
        gen = generate(rate, seconds, port, noise_ratio)
        time.sleep(1.2)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    from ossec_dfir.collectors.pcap.tcpdump import parse_counters
    return {**gen, "captured": count_matching(pcap.read_bytes(), port),
            **{f"tcpdump_{k}": v for k, v in parse_counters(err).items()}}


def ours(backend: str, rate: float, seconds: float, noise_ratio: float, workdir: Path,
         only_noise: bool = False) -> dict:
    from ossec_dfir import config as config_mod, hostinfo
    from ossec_dfir.collectors.base import build_params, get_collector
    from ossec_dfir.config import Profile, Step
    from ossec_dfir.ar.request import Request, parse_ip
    from ossec_dfir.ar.runner import Runner, request_stop
    from ossec_dfir.evidence.store import Store

    root = Path(tempfile.mkdtemp(prefix=f"{backend}-{int(rate)}-", dir=workdir))
    os.chmod(root, 0o700)
    cfg_path = root / "cfg.yml"
    cfg_path.write_text(f"evidence_root: {root}/ev\nlog_file: {root}/ar.log\nreserve_bytes: 0\n")
    (root / "ev").mkdir(mode=0o700)
    cfg = config_mod.load(str(cfg_path), str(root))
    store = Store(cfg.evidence_root, reserve_bytes=0)
    req = Request(protocol="cli", action="add", command="bench", srcip=parse_ip("127.0.0.2"))
    incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    step = Step("pcap", build_params(get_collector("pcap"), {
        "backend": backend, "interface": "lo", "duration_s": 600, "timeout_s": 900,
        "summary": False}))
    runner = Runner(cfg, store, incident, req, "bench")
    thread = threading.Thread(target=runner.run_profile, args=(Profile("bench", "", (step,)),))
    thread.start()
    pcap_path = Path(incident.path) / "pcap" / "01" / "capture.pcap"
    try:
        wait_for_packets(lambda: pcap_path)
        port = free_port()
        if only_noise:
            gen = _noise_only(rate, seconds, port)
        else:
            gen = generate(rate, seconds, port, noise_ratio)
        time.sleep(0.3)
    finally:
        request_stop(store, "bench", req.key)
        thread.join(120)
    stats = json.loads((pcap_path.parent / "capture.json").read_text())
    outcome = runner.outcomes[-1]
    result = {**gen, "captured": count_matching(pcap_path.read_bytes(), port),
              "outcome": outcome.outcome, "reason": outcome.reason,
              "dropped_by_kernel": stats.get("dropped_by_kernel"),
              "capture_cpu_s": stats.get("capture_cpu_s"),
              "tcpdump_cpu_s": stats.get("tcpdump_cpu_s")}
    incident.close()
    store.close()
    return result


def _noise_only(rate: float, seconds: float, port: int) -> dict:
    """Send only non-matching datagrams (to 127.0.0.3) at rate for seconds."""
    script = GENERATOR.replace('match, other = ("127.0.0.2", port), ("127.0.0.3", port)',
                               'match, other = ("127.0.0.3", port), ("127.0.0.3", port)')
    out = subprocess.run([sys.executable, "-c", script, str(rate), str(seconds), str(port),
                          "0"], capture_output=True, check=True, timeout=600)
    sent, _noise, errors, elapsed = out.stdout.split()
    return {"sent": 0, "noise": int(sent), "errors": int(errors), "elapsed_s": float(elapsed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="10000,50000,100000",
                        help="matching packets per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--noise-ratio", type=float, default=0.2,
                        help="non-matching packets sent per matching packet")
    parser.add_argument("--noise-packets", type=int, default=300000,
                        help="non-matching packets for the native CPU measurement")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (packet capture)", file=sys.stderr)
        return 2
    rates = [float(r) for r in args.rates.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pcap-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o700)
        for rate in rates:
            for name, run in (("bare tcpdump", lambda r: bare_tcpdump(r, args.seconds,
                                                                      args.noise_ratio, workdir)),
                              ("tcpdump backend", lambda r: ours("tcpdump", r, args.seconds,
                                                                 args.noise_ratio, workdir)),
                              ("native backend", lambda r: ours("native", r, args.seconds,
                                                                args.noise_ratio, workdir))):
                res = run(rate)
                res.update(name=name, rate=rate,
                           achieved_pps=round(res["sent"] / res["elapsed_s"]),
                           captured_pct=round(100.0 * res["captured"] / max(res["sent"], 1), 2))
                rows.append(res)
                print(f"{name:16s} target {rate:>8.0f}/s achieved {res['achieved_pps']:>7d}/s "
                      f"sent {res['sent']:>7d} captured {res['captured']:>7d} "
                      f"({res['captured_pct']:6.2f}%) noise {res['noise']:>6d} "
                      f"cpu python {res.get('capture_cpu_s', '-')} tcpdump {res.get('tcpdump_cpu_s', '-')}",
                      flush=True)
        noise_rate = 100000.0
        res = ours("native", noise_rate, args.noise_packets / noise_rate, 0, workdir,
                   only_noise=True)
        per_million = res["capture_cpu_s"] / max(res["noise"], 1) * 1e6
        print(f"native backend, non-matching only: {res['noise']} packets at "
              f"{res['noise'] / res['elapsed_s']:.0f}/s, capture CPU {res['capture_cpu_s']:.3f} s "
              f"over {res['elapsed_s']:.1f} s = {per_million:.3f} CPU s per million "
              f"non-matching packets (captured {res['captured']})")
        rows.append({"name": "native non-matching only", **res,
                     "cpu_s_per_million_nonmatching": round(per_million, 4)})
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"rows": rows, "bench_self_cpu_s": usage.ru_utime + usage.ru_stime}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
