#!/usr/bin/env python3
"""Benchmark the memory collector's writers against dd on the same disk.

1. LiME image of a synthetic 2 GiB kcore (a sparse ELF core, System RAM split
   across two PT_LOADs) through the evidence store (SHA-256 while writing,
   fsync on close), against ``dd bs=1M conv=fsync`` of the same file.
2. ELF core of a child process with 1 GiB resident (procdump).

Usage: .venv/bin/python bench/bench_memory.py [--size-mib 2048] [--rss-mib 1024]
       [--rounds 2] [--dir /var/tmp]
Everything is created in a temporary directory (same disk as --dir) and removed.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ossec_dfir import config as config_mod, hostinfo  # noqa: E402
from ossec_dfir.collectors.memory import procdump  # noqa: E402
from ossec_dfir.collectors.base import Context  # noqa: E402
from ossec_dfir.collectors.memory import lime as _lime  # noqa: E402
from ossec_dfir.collectors.memory.collector import MemoryParams  # noqa: E402
from ossec_dfir.ar.request import Request, parse_ip  # noqa: E402
from ossec_dfir.evidence.store import Store  # noqa: E402

MIB = 1 << 20
RAM_START = 0x100000


def make_kernel(root: str, size: int) -> None:
    """Write proc/iomem and a sparse proc/kcore whose two PT_LOADs cover size bytes of RAM."""
    os.makedirs(os.path.join(root, "proc"))
    os.makedirs(os.path.join(root, "dev"))
    os.makedirs(os.path.join(root, "sys"))
    end = RAM_START + size - 1
    with open(os.path.join(root, "proc", "iomem"), "w") as fh:
        fh.write(f"00000000-000fffff : Reserved\n{RAM_START:08x}-{end:08x} : System RAM\n")
    half = size // 2
    data_off = 0x10000
    loads = [(RAM_START, data_off, half), (RAM_START + half, data_off + half, size - half)]
    phdrs = b"".join(struct.pack("<IIQQQQQQ", 1, 7, off, 0xffff888000000000 + pa, pa, n, n,
                                 4096) for pa, off, n in loads)
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,
                       4, 62, 1, 0, 64, 0, 0, 64, 56, len(loads), 64, 0, 0)
    with open(os.path.join(root, "proc", "kcore"), "wb") as fh:
        fh.write(ehdr + phdrs)
        for pos in range(0, size, 256 * MIB):  # a little real data, the rest sparse
            fh.seek(data_off + pos)
            fh.write(os.urandom(MIB))
        fh.truncate(data_off + size)


def context(store: Store, incident, name: str) -> Context:
    config = config_mod.Config(evidence_root=store.root, log_file="/dev/null", ossec_dir="/")
    req = Request(protocol="cli", action="add", command="bench", srcip=parse_ip("127.0.0.2"))
    return Context(config=config, request=req, incident=incident, collector="memory",
                   run_dir=incident.new_run_dir("memory"), params=MemoryParams(),
                   deadline=time.monotonic() + 3600)


def cpu_seconds() -> float:
    """Return user+system CPU seconds of this process and its waited children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_lime(work: str, store: Store, incident) -> tuple[float, int]:
    """Return (seconds, bytes) of one LiME write through the store."""
    plan, reasons = _lime.choose(("kcore",))
    assert plan is not None, reasons
    ctx = context(store, incident, "lime")
    start = time.monotonic()
    with ctx.writer("host.lime") as w:
        _lime.write_lime(w, plan, ctx.should_stop)
    seconds = time.monotonic() - start
    os.unlink(os.path.join(incident.path, w.relpath))
    return seconds, w.size


def bench_dd(work: str) -> tuple[float, int]:
    """Return (seconds, bytes) of dd bs=1M conv=fsync of the kcore file."""
    src, dst = os.path.join(work, "kernel", "proc", "kcore"), os.path.join(work, "dd.out")
    start = time.monotonic()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fsync", "status=none"],
                   check=True)
    seconds = time.monotonic() - start
    size = os.path.getsize(dst)
    os.unlink(dst)
    return seconds, size


CHILD = r"""
import sys
buf = bytearray(b"\x5a") * ({rss})
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.read()
"""


def bench_procdump(store: Store, incident, rss: int) -> tuple[float, int]:
    """Return (seconds, core bytes) of dumping a child with rss bytes resident."""
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(rss=rss)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        ctx = context(store, incident, "proc")
        start = time.monotonic()
        rec = procdump.dump_process_core(ctx, child.pid, "core", 0)
        seconds = time.monotonic() - start
        os.unlink(os.path.join(incident.path, rec["file"]))
    finally:
        child.stdin.close()
        child.wait()
    return seconds, rec["size"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--rss-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    size = args.size_mib * MIB
    free = shutil.disk_usage(args.dir).free
    if free < 3 * size + (4 << 30):
        print(f"not enough space in {args.dir}: {free} bytes free", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="bench-memory-", dir=args.dir)
    try:
        make_kernel(os.path.join(work, "kernel"), size)
        _lime.PROC = os.path.join(work, "kernel", "proc")
        _lime.DEV = os.path.join(work, "kernel", "dev")
        _lime.SYS = os.path.join(work, "kernel", "sys")
        os.mkdir(os.path.join(work, "evidence"), 0o700)
        store = Store(os.path.join(work, "evidence"), reserve_bytes=0)
        req = Request(protocol="cli", action="add", command="bench")
        incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
        ours, theirs, cpu = [], [], {"dd": [], "lime": []}
        steps = [("dd", lambda: bench_dd(work), theirs),
                 ("lime", lambda: bench_lime(work, store, incident), ours)]
        for round_no in range(args.rounds):
            for name, fn, out in (steps if round_no % 2 == 0 else steps[::-1]):
                cpu_before = cpu_seconds()
                seconds, nbytes = fn()
                cpu[name].append((cpu_seconds() - cpu_before) / (nbytes / (1 << 30)))
                out.append(nbytes / MIB / seconds)
                print(f"{name:5s} {nbytes / MIB:8.0f} MiB in {seconds:6.2f} s = "
                      f"{out[-1]:7.1f} MiB/s, {cpu[name][-1]:.2f} CPU s/GiB", flush=True)
        lime_rate, dd_rate = statistics.median(ours), statistics.median(theirs)
        print(f"LiME writer (sha256 + fsync) median {lime_rate:.1f} MiB/s, dd bs=1M "
              f"conv=fsync median {dd_rate:.1f} MiB/s, ratio {lime_rate / dd_rate:.2f}x; "
              f"CPU s/GiB: lime {statistics.median(cpu['lime']):.2f}, "
              f"dd {statistics.median(cpu['dd']):.2f}")
        seconds, nbytes = bench_procdump(store, incident, args.rss_mib * MIB)
        print(f"procdump {args.rss_mib} MiB RSS child: core {nbytes / MIB:.0f} MiB in "
              f"{seconds:.2f} s = {nbytes / MIB / seconds:.1f} MiB/s")
        incident.close()
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
