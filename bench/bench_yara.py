#!/usr/bin/env python3
"""Benchmark the yara collector's file scan against ``yara -r -p 2`` (Debian's CLI).

Generates a corpus (default 2,000 files, ~300 MB, mixed sizes, some files
carrying rule strings) and a set of ~100 generated rules (literals, hex with
jumps, nocase/wide, regexes, conditions), then scans the corpus alternately
with the CLI and with the real collector run through the runner (evidence
store, manifest, matches.jsonl), both at nice 15 with 2 threads. Reports
the throughput of each, their ratio, and whether the (rule, file) match sets
are identical.

    cd /work/main && .venv/bin/python bench/bench_yara.py [--files 2000] [--total-mb 300]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("the of and to in is for on that by with as from at this be are was or an it not "
         "server user password admin config error request response session token data file "
         "system process kernel module network socket client http https html script function "
         "return value string number object array index table column select insert update").split()


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_") for _ in range(n))


def make_rules(rng: random.Random, count: int) -> tuple[str, list[bytes]]:
    """Return (rules text, byte strings that make some rules match when planted)."""
    rules: list[str] = []
    plants: list[bytes] = []
    for i in range(count):
        kind = i % 10
        if kind in (0, 1, 2, 3):
            lits = [_word(rng, rng.randint(8, 16)) for _ in range(3)]
            plants.append(lits[0].encode())
            body = "\n".join(f'        $s{j} = "{s}"' for j, s in enumerate(lits))
            cond = "any of them"
        elif kind in (4, 5):
            hexs = " ".join(f"{rng.randrange(256):02X}" for _ in range(6))
            tail = " ".join(f"{rng.randrange(256):02X}" for _ in range(4))
            plants.append(bytes.fromhex(hexs.replace(" ", "")) + b"\x00\x11" +
                          bytes.fromhex(tail.replace(" ", "")))
            body = f"        $h = {{ {hexs} [1-4] {tail} }}"
            cond = "$h"
        elif kind in (6, 7):
            lit = _word(rng, 10)
            plants.append(lit.upper().encode("utf-16-le"))
            body = f'        $w = "{lit}" nocase wide ascii'
            cond = "$w"
        elif kind == 8:
            stem = _word(rng, 6)
            plants.append(f"http://{stem}.example.net/x123.php".encode())
            body = f"        $r = /https?:\\/\\/{stem}\\.[a-z0-9.]{{4,30}}\\/x[0-9]{{3}}\\.php/"
            cond = "$r"
        else:
            lit = _word(rng, 12)
            plants.append((lit + " ") * 4)  # type: ignore[arg-type]
            plants[-1] = plants[-1].encode()  # type: ignore[union-attr]
            body = f'        $c = "{lit}"'
            cond = "#c >= 3 and filesize < 50MB"
        rules.append(f"rule bench_{i:03d}\n{{\n    strings:\n{body}\n    condition:\n"
                     f"        {cond}\n}}\n")
    return "\n".join(rules), plants


def make_corpus(rng: random.Random, root: Path, files: int, total_mb: int,
                plants: list[bytes]) -> int:
    """Write the corpus (text and binary files, log-distributed sizes); return bytes."""
    # 75% small (1-64 KiB), 23% medium (64 KiB-1 MiB), 2% large: the rest of the budget.
    sizes = []
    for i in range(files):
        r = i % 100
        if r < 75:
            sizes.append(rng.randint(1 << 10, 64 << 10))
        elif r < 98:
            sizes.append(rng.randint(64 << 10, 1 << 20))
        else:
            sizes.append(0)
    large = [i for i, s in enumerate(sizes) if s == 0]
    left = max(total_mb * (1 << 20) - sum(sizes), len(large) << 20)
    for i in large:
        sizes[i] = left // len(large)
    text_block = " ".join(rng.choice(WORDS) for _ in range(200_000)).encode()
    total = 0
    for i, size in enumerate(sizes):
        directory = root / f"d{i % 40:02d}" / f"e{i % 7}"
        directory.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:
            data = bytearray(rng.randbytes(size))
        else:
            start = rng.randrange(len(text_block) - 1)
            data = bytearray((text_block[start:] + text_block) * (size // len(text_block) + 1))
            del data[size:]
        if i % 9 == 0 and size > 256:
            plant = plants[rng.randrange(len(plants))]
            at = rng.randrange(0, size - len(plant))
            data[at:at + len(plant)] = plant
        (directory / f"f{i:05d}.{'bin' if i % 3 == 0 else 'txt'}").write_bytes(bytes(data))
        total += size
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(yara_bin: str, rules: Path, corpus: Path, threads: int) -> tuple[float, float, set]:
    """Scan with the CLI; return (seconds, cpu seconds, {(rule, path)})."""
    cpu = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run([yara_bin, "-r", "-w", "-p", str(threads), str(rules), str(corpus)],
                          capture_output=True, text=True, check=True,
                          preexec_fn=lambda: os.nice(15))
    seconds = time.perf_counter() - start
    hits = {tuple(line.split(" ", 1)) for line in proc.stdout.splitlines() if line}
    return seconds, _children_cpu() - cpu, hits


def run_collector(work: Path, rules_dir: Path, corpus: Path,
                  threads: int) -> tuple[float, float, set, dict]:
    """Scan with the collector through the runner; return (seconds, cpu s, hits, summary)."""
    from ossec_dfir import config as config_mod, hostinfo
    from ossec_dfir.collectors.base import build_params, get_collector
    from ossec_dfir.config import Profile, Step
    from ossec_dfir.ar.request import Request
    from ossec_dfir.ar.runner import Runner
    from ossec_dfir.evidence.store import Store

    evidence = Path(tempfile.mkdtemp(dir=work, prefix="evidence-"))
    evidence.chmod(0o700)
    cfg_path = work / "bench.yml"
    cfg_path.write_text(f"evidence_root: {evidence}\nlog_file: {work}/ar.log\nreserve_bytes: 0\n")
    config = config_mod.load(str(cfg_path), str(work))
    store = Store(config.evidence_root, reserve_bytes=0)
    params = build_params(get_collector("yara"), {
        "rules_dirs": [str(rules_dir)], "roots": [str(corpus)], "scan_processes": False,
        "threads": threads, "max_file_bytes": 1 << 30, "max_matches": 1_000_000,
        "use_cache": False, "timeout_s": 3600.0})
    request = Request(protocol="cli", action="add", command="bench")
    incident, _ = store.incident_for(request.key, hostinfo.identity, request.to_record())
    runner = Runner(config, store, incident, request, "bench")
    cpu = _children_cpu()
    start = time.perf_counter()
    runner.run_profile(Profile("bench", "", (Step("yara", params),)))
    seconds = time.perf_counter() - start
    cpu = _children_cpu() - cpu
    outcome = runner.outcomes[-1]
    if outcome.outcome != "complete":
        raise SystemExit(f"collector {outcome.outcome}: {outcome.reason}")
    run_dir = outcome.files[0].rsplit("/", 1)[0]
    base = Path(incident.path) / run_dir
    hits = {(json.loads(line)["rule"], json.loads(line)["path"])
            for line in (base / "matches.jsonl").read_text().splitlines()}
    summary = json.loads((base / "summary.json").read_text())["files"]
    incident.close()
    store.close()
    shutil.rmtree(evidence)
    return seconds, cpu, hits, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--total-mb", type=int, default=300)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--keep", action="store_true", help="keep the corpus directory")
    args = parser.parse_args()
    yara_bin = shutil.which("yara", path="/usr/bin:/bin:/usr/local/bin")
    if not yara_bin:
        raise SystemExit("the yara CLI is needed (apt-get install yara)")
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-yara-"))
    try:
        rules_dir = work / "rules"
        rules_dir.mkdir(mode=0o700)
        text, plants = make_rules(rng, args.rules)
        rules = rules_dir / "bench.yar"
        rules.write_text(text)
        rules.chmod(0o600)
        corpus = work / "corpus"
        t0 = time.perf_counter()
        total = make_corpus(rng, corpus, args.files, args.total_mb, plants)
        print(f"corpus: {args.files} files, {total / (1 << 20):.0f} MiB "
              f"(generated in {time.perf_counter() - t0:.1f}s); rules: {args.rules}")
        cli_version = subprocess.run([yara_bin, "--version"], capture_output=True,
                                     text=True).stdout.strip()
        run_cli(yara_bin, rules, corpus, args.threads)  # warm the page cache
        cli_times, our_times, cli_cpu, our_cpu = [], [], [], []
        cli_hits: set = set()
        our_hits: set = set()
        summary: dict = {}
        for _ in range(args.rounds):
            seconds, cpu, cli_hits = run_cli(yara_bin, rules, corpus, args.threads)
            cli_times.append(seconds)
            cli_cpu.append(cpu)
            seconds, cpu, our_hits, summary = run_collector(work, rules_dir, corpus,
                                                            args.threads)
            our_times.append(seconds)
            our_cpu.append(cpu)
        cli_best, our_best = min(cli_times), min(our_times)
        mib = total / (1 << 20)
        print(f"yara CLI {cli_version} -r -p {args.threads}: best {cli_best:.2f}s "
              f"({mib / cli_best:.0f} MiB/s), runs {[round(t, 2) for t in cli_times]}, "
              f"CPU s {[round(t, 2) for t in cli_cpu]}")
        print(f"ossec-dfir yara collector, threads={args.threads}: best {our_best:.2f}s "
              f"({mib / our_best:.0f} MiB/s), runs {[round(t, 2) for t in our_times]}, "
              f"CPU s {[round(t, 2) for t in our_cpu]}")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")
        print(f"throughput ratio (CLI time / ours): {cli_best / our_best:.2f}x wall, "
              f"{min(cli_cpu) / min(our_cpu):.2f}x CPU")
        print(f"matches: CLI {len(cli_hits)}, ours {len(our_hits)}, identical: "
              f"{cli_hits == our_hits}")
        print(f"collector summary: scanned {summary.get('scanned')}, matched "
              f"{summary.get('matched')}, skipped {summary.get('skipped')}")
        if cli_hits != our_hits:
            print("only CLI:", sorted(cli_hits - our_hits)[:10])
            print("only ours:", sorted(our_hits - cli_hits)[:10])
            return 1
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
