#!/usr/bin/env python3
"""Benchmark the files collector against find(1) + sha256sum(1) on a generated corpus.

Two searches on the same corpus, page cache warm (each command runs once
untimed first), best of --repeat runs:

* hash: every file hashed (``action: hash``) vs ``find ROOT -type f -exec sha256sum {} +``
* select: name and mtime conditions, list only, vs ``find ROOT -type f -name '*.php'
  -newermt @EPOCH``

"net" subtracts the fixed cost of one collector run (fork, priority, fsynced
manifest entries), measured on an empty root.

Both must find the same set of files (and, for hash, the same digests). The
collector runs through the real runner and evidence store (results.jsonl,
manifest), as in production.

    .venv/bin/python bench/bench_files.py --files 2000 --total-mb 200
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ossec_dfir import config as config_mod, hostinfo  # noqa: E402
from ossec_dfir.collectors.base import build_params, get_collector  # noqa: E402
from ossec_dfir.config import Profile, Step  # noqa: E402
from ossec_dfir.ar.request import Request, parse_ip  # noqa: E402
from ossec_dfir.ar.runner import Runner  # noqa: E402
from ossec_dfir.evidence.store import Store  # noqa: E402

EXTENSIONS = (".txt", ".log", ".php", ".sh", ".bin", ".so", ".conf", ".py")


def make_corpus(root: str, files: int, total_bytes: int, seed: int, now: float) -> None:
    """Write files of mixed sizes (many small, a few large) in nested directories."""
    rng = random.Random(seed)
    weights = [rng.lognormvariate(0, 2.0) for _ in range(files)]
    scale = total_bytes / sum(weights)
    block = os.urandom(1 << 20)
    for i, weight in enumerate(weights):
        size = max(1, int(weight * scale))
        depth = rng.randint(0, 4)
        parts = [f"d{rng.randint(0, 9)}" for _ in range(depth)]
        directory = os.path.join(root, *parts)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"f{i:05d}{rng.choice(EXTENSIONS)}")
        with open(path, "wb") as fh:
            left = size
            offset = i % 4096
            while left:
                chunk = block[offset:offset + min(left, len(block) - offset)]
                fh.write(chunk)
                left -= len(chunk)
                offset = 0
        age = rng.choice((3600.0, 86400.0 * 30))
        os.utime(path, (now - age, now - age))


def run_ours(cfg: config_mod.Config, params: dict, now: float) -> tuple[float, list[dict]]:
    """Run the files collector through the runner; return (seconds, result records)."""
    store = Store(cfg.evidence_root, reserve_bytes=0)
    try:
        request = Request(protocol="cli", action="add", command="bench",
                          srcip=parse_ip("127.0.0.3"),
                          alert_timestamp=time.strftime("%Y-%m-%dT%H:%M:%S.000+0000",
                                                        time.gmtime(now)))
        incident, _ = store.incident_for(f"bench{time.monotonic_ns()}", hostinfo.identity,
                                         request.to_record())
        step = Step("files", build_params(get_collector("files"), params))
        runner = Runner(cfg, store, incident, request, "bench")
        started = time.perf_counter()
        runner.run_profile(Profile("bench", "", (step,)))
        elapsed = time.perf_counter() - started
        outcome = runner.outcomes[-1]
        assert outcome.outcome == "complete", (outcome.outcome, outcome.reason)
        rel = next(f for f in outcome.files if f.endswith("results.jsonl"))
        with open(os.path.join(incident.path, rel), encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh]
        incident.close()
        return elapsed, records
    finally:
        store.close()


def run_tool(argv: list[str]) -> tuple[float, bytes]:
    """Run a command; return (seconds, stdout)."""
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, check=True)
    return time.perf_counter() - started, proc.stdout


def best(fn, repeat: int):
    """Run fn once to warm up, then repeat times; return the fastest (seconds, value)."""
    fn()
    runs = [fn() for _ in range(repeat)]
    return min(runs, key=lambda r: r[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--total-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--workdir", default="/var/tmp")
    args = parser.parse_args()
    find, sha256sum = shutil.which("find"), shutil.which("sha256sum")
    work = tempfile.mkdtemp(prefix="bench-files-", dir=args.workdir)
    now = time.time()
    try:
        corpus = os.path.join(work, "corpus")
        make_corpus(corpus, args.files, args.total_mb << 20, args.seed, now)
        evidence = os.path.join(work, "evidence")
        os.mkdir(evidence, 0o700)
        cfg_path = os.path.join(work, "ossec-dfir.yml")
        with open(cfg_path, "w", encoding="utf-8") as fh:
            fh.write(f"evidence_root: {evidence}\nlog_file: {work}/ar.log\nreserve_bytes: 0\n")
        cfg = config_mod.load(cfg_path, work)
        total = sum(os.path.getsize(os.path.join(d, f))
                    for d, _, names in os.walk(corpus) for f in names)
        print(f"corpus: {args.files} files, {total / 1e6:.0f} MB in {corpus}")
        rows = []

        base = {"roots": [corpus], "include_alert_file": False, "max_file_bytes": 1 << 30,
                "max_walk_files": 10 ** 7, "max_files": 10 ** 7}
        empty = os.path.join(work, "empty")
        os.mkdir(empty)
        # Fixed cost of one run: fork, priority, store entries (fsynced), results file.
        overhead_s, _ = best(lambda: run_ours(cfg, {**base, "roots": [empty]}, now),
                             args.repeat)
        ours_s, records = best(lambda: run_ours(cfg, {**base, "action": "hash"}, now),
                               args.repeat)
        tool_s, out = best(lambda: run_tool([find, corpus, "-type", "f", "-exec", sha256sum,
                                             "{}", "+"]), args.repeat)
        ours_set = {(r["path"], r["sha256"]) for r in records}
        tool_set = {(line[66:], line[:64]) for line in out.decode().splitlines()}
        rows.append(("hash all", ours_s, tool_s, ours_set == tool_set, len(ours_set)))

        window = 86400.0
        ours_s, records = best(lambda: run_ours(
            cfg, {**base, "action": "list", "name_regex": r"\.php$", "mtime_within_s": window},
            now), args.repeat)
        tool_s, out = best(lambda: run_tool([find, corpus, "-type", "f", "-name", "*.php",
                                             "-newermt", f"@{now - window:.0f}"]), args.repeat)
        ours_set = {r["path"] for r in records}
        tool_set = set(out.decode().splitlines())
        rows.append(("select .php, mtime 1 day", ours_s, tool_s, ours_set == tool_set,
                     len(ours_set)))

        print(f"fixed cost of one collector run (empty root): {overhead_s:.3f} s")
        print(f"{'search':26} {'ours s':>7} {'net s':>7} {'find s':>7} {'ratio':>6} "
              f"{'net':>6}  same  files")
        for name, ours_s, tool_s, same, count in rows:
            net_s = max(ours_s - overhead_s, 1e-6)
            print(f"{name:26} {ours_s:7.3f} {net_s:7.3f} {tool_s:7.3f} {tool_s / ours_s:5.2f}x "
                  f"{tool_s / net_s:5.2f}x  {'yes' if same else 'NO':4}  {count}")
        print(f"hash throughput: {total / 1e6 / rows[0][1]:.0f} MB/s end to end")
        return 0 if all(row[3] for row in rows) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
