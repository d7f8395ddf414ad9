"""Time from exec to exit of an installed AR executable, as a ratio to a bare interpreter start.

Builds a private OSSEC tree in a temporary directory, installs the
executables, starts `dfir-pcap` for 127.0.0.2 with a 60 s capture on `lo`
(detached, as execd would), then measures, always against the same
interpreter started bare (``python -I -c pass``, the executables' shebang)
in the same run:

* alone: the executable run one at a time as OSSEC's execd (argv) and as
  Wazuh's execd (JSON on stdin + check_keys), for new IPs (a new incident
  each) and for one repeated IP, each run followed by a bare start
  (interleaved); p50 and p95 of both and their ratios;
* storm: ``--storm`` invocations of `dfir-pcap add` for 20 distinct IPs
  started at once (OSSEC argv, as OSSEC's execd does), against as many bare
  interpreters started at once the same way: p95 exec-to-exit of each and
  the ratio; the captures they start run detached meanwhile;
* storm through Wazuh: the same invocations one after another with JSON
  and check_keys (Wazuh's execd waits for each), against as many bare starts
  fed the same JSON line: total time of each and the ratio.

Each storm is measured ``--rounds`` times, bare and AR alternating, each
started on an idle machine (at least 90% of the CPU idle over half a
second: the previous round's detached workers have settled, so they load
neither measurement). The storm also reports the CPU time (user + system)
each invocation used, from wait4. The load average is printed before and
after: the ratios hold only for the conditions they were measured in.

    .venv/bin/python bench/bench_ar_latency.py [--runs 50] [--storm 50] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ossec_dfir import config as config_mod  # noqa: E402
from ossec_dfir.ossec import install  # noqa: E402
from ossec_dfir.ar import worker  # noqa: E402
from ossec_dfir.ar.simulate import run_ossec, run_wazuh, wazuh_message  # noqa: E402

BARE = [sys.executable, "-I", "-c", "pass"]
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
STORM_IPS = [f"203.0.113.{i + 1}" for i in range(20)]


def percentile(values: list[float], pct: float) -> float:
    """Return the pct percentile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def load_text() -> str:
    """Return the 1/5/15-minute load averages as text."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def bare_wazuh(line: bytes) -> float:
    """Start the bare interpreter with a JSON line on its stdin, as Wazuh's execd would; return s."""
    start = time.monotonic()
    proc = subprocess.Popen(BARE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd="/", env=ENV, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(line)
    except BrokenPipeError:
        pass  # it exited before reading: as a script that ignores stdin would
    proc.wait()
    elapsed = time.monotonic() - start
    proc.stdin.close()
    proc.stdout.close()
    return elapsed


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return values[3] + values[4], sum(values)  # idle + iowait, total


def wait_idle(min_idle: float = 0.9, timeout_s: float = 120) -> float:
    """Wait until at least min_idle of the CPU was idle over 0.5 s; return the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        idle0, total0 = _cpu_times()
        time.sleep(0.5)
        idle1, total1 = _cpu_times()
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= min_idle:
            break
    return time.monotonic() - start


def started_at_once(argvs: list[list[str]]) -> tuple[list[float], list[int], list[float]]:
    """Start every argv at once (OSSEC's execd does not wait); return exec-to-exit s, exit
    codes and CPU s (user + system) of each."""
    starts: dict[int, float] = {}
    procs = []
    for argv in argvs:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd="/", env=ENV)
        starts[proc.pid] = start
        procs.append(proc)
    times, codes, cpu = [], [], []
    pending = {p.pid: p for p in procs}
    while pending:  # reap in exit order, each at its exit
        pid, status, usage = os.wait4(-1, 0)
        end = time.monotonic()
        proc = pending.pop(pid, None)
        if proc is None:
            continue
        proc.returncode = os.waitstatus_to_exitcode(status)
        times.append(end - starts[pid])
        codes.append(proc.returncode)
        cpu.append(usage.ru_utime + usage.ru_stime)
    return times, codes, cpu


def alone(bindir: str, runs: int) -> dict[str, tuple[list[float], list[float]]]:
    """Run each case runs times, each run followed by a bare start; return (ar, bare) ms."""
    script = os.path.join(bindir, "dfir-host")
    cases: dict[str, tuple[list[float], list[float]]] = {}
    for case in ("ossec argv, new IP", "ossec argv, same IP", "wazuh json+check_keys, new IP"):
        ar_ms, bare_ms = [], []
        for i in range(runs):
            if case.startswith("wazuh"):
                message = wazuh_message("add", f"198.51.100.{i + 10}", "5712", None, "dfir-host")
                res = run_wazuh(script, message, "continue", ENV)
                bare_s = bare_wazuh((json.dumps(message) + "\n").encode())
            else:
                ip = f"192.0.2.{i + 1}" if "new" in case else "198.51.100.1"
                res = run_ossec([script, "add", "-", ip, f"1764376501.{i}", "5712",
                                 "/var/log/auth.log", "-"], ENV)
                bare_s = run_ossec(BARE, ENV).exit_s
            if res.returncode != 0:
                raise SystemExit(f"{case}: run failed: exit {res.returncode}")
            ar_ms.append(res.exit_s * 1000)
            bare_ms.append(bare_s * 1000)
        cases[case] = (ar_ms, bare_ms)
    return cases


def storm_argvs(bindir: str, count: int, round_no: int) -> list[list[str]]:
    """Return count `dfir-pcap add` argvs for 20 distinct IPs (OSSEC's form)."""
    script = os.path.join(bindir, "dfir-pcap")
    return [[script, "add", "-", STORM_IPS[i % len(STORM_IPS)],
             f"17643766{round_no:02d}.{i}", "100200", "-"] for i in range(count)]


def storm(bindir: str, count: int, rounds: int) -> list[tuple[float, float, float, float]]:
    """Return per round (AR p95 s, bare p95 s, AR mean CPU s, bare mean CPU s) of count
    runs started at once."""
    out = []
    for r in range(rounds):
        wait_idle()
        bare, codes, bare_cpu = started_at_once([BARE] * count)
        wait_idle()
        ar, codes, ar_cpu = started_at_once(storm_argvs(bindir, count, r))
        if any(codes):
            raise SystemExit(f"storm: exit codes {sorted(set(codes))}")
        out.append((percentile(ar, 95), percentile(bare, 95), statistics.mean(ar_cpu),
                    statistics.mean(bare_cpu)))
    return out


def wazuh_storm(bindir: str, count: int, rounds: int) -> list[tuple[float, float]]:
    """Return per round (AR total s, bare total s) of count Wazuh runs one after another,
    each followed by a bare start fed the same line (interleaved)."""
    script = os.path.join(bindir, "dfir-pcap")
    out = []
    for _ in range(rounds):
        wait_idle()
        total = bare = 0.0
        for i in range(count):
            message = wazuh_message("add", STORM_IPS[i % len(STORM_IPS)], "100200", None,
                                    "dfir-pcap")
            res = run_wazuh(script, message, "continue", ENV)
            if res.returncode != 0:
                raise SystemExit(f"wazuh storm: exit {res.returncode}")
            total += res.exit_s
            bare += bare_wazuh((json.dumps(message) + "\n").encode())
        out.append((total, bare))
    return out


def settle(cfg: config_mod.Config, bindir: str, timeout_s: float = 120) -> None:
    """Send the deletes (captures end) and wait until no worker holds a slot."""
    for ip in STORM_IPS + ["127.0.0.2"]:
        run_ossec([os.path.join(bindir, "dfir-pcap"), "delete", "-", ip, "1764376501.1",
                   "100100", "-"], ENV)
    store = worker.open_store(cfg)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (worker.busy_slots(store, cfg.max_workers) or
                                               worker.queued_jobs(store)):
            time.sleep(0.5)
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--storm", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="ossec-dfir-bench-")
    try:
        ossec = os.path.join(base, "ossec")
        conf = os.path.join(ossec, "etc", "ossec-dfir.yml")
        os.makedirs(os.path.dirname(conf))
        with open(conf, "w") as fh:
            fh.write(f"evidence_root: {base}/evidence\nreserve_bytes: 0\nmax_workers: 4\n"
                     "profiles:\n  dfir-pcap:\n    steps:\n      - collector: pcap\n"
                     "        params: {duration_s: 60, interface: lo, summary: false}\n")
        cfg = config_mod.load(conf, ossec)
        install.install(cfg, ossec, False, "ossec")
        bindir = os.path.join(ossec, "active-response", "bin")
        print(f"{os.cpu_count()} CPUs, {sys.executable}; before: {load_text()}")
        capture = run_ossec([os.path.join(bindir, "dfir-pcap"), "add", "-", "127.0.0.2",
                             "1764376501.1", "100100", "-"], ENV)
        print(f"background capture started (exit {capture.returncode} after "
              f"{capture.exit_s * 1000:.1f} ms, the first run: a full config load)")
        wait_idle()  # the first run's worker has started the capture
        cases = alone(bindir, args.runs)
        print(f"\nalone, {args.runs} runs per case, each followed by a bare start")
        print(f"{'case':32s} {'p50 ms':>7s} {'bare':>6s} {'ratio':>6s} "
              f"{'p95 ms':>7s} {'bare':>6s} {'ratio':>6s} {'max ms':>7s}")
        for case, (ar, bare) in cases.items():
            p50, b50, p95, b95 = (statistics.median(ar), statistics.median(bare),
                                  percentile(ar, 95), percentile(bare, 95))
            print(f"{case:32s} {p50:7.1f} {b50:6.1f} {p50 / b50:5.2f}x "
                  f"{p95:7.1f} {b95:6.1f} {p95 / b95:5.2f}x {max(ar):7.1f}")
        print(f"\nstorm: {args.storm} x dfir-pcap add ({len(STORM_IPS)} IPs) started at once "
              f"vs {args.storm} bare starts at once")
        for i, (ar95, bare95, ar_cpu, bare_cpu) in enumerate(
                storm(bindir, args.storm, args.rounds)):
            print(f"  round {i + 1}: p95 {ar95 * 1000:7.1f} ms vs bare {bare95 * 1000:7.1f} ms: "
                  f"{ar95 / bare95:5.2f}x; CPU per invocation {ar_cpu * 1000:5.1f} ms vs "
                  f"{bare_cpu * 1000:5.1f} ms")
        print(f"\nwazuh: the same {args.storm} one after another (JSON + check_keys), "
              f"each followed by a bare start fed the JSON line")
        for i, (total, bare) in enumerate(wazuh_storm(bindir, args.storm, args.rounds)):
            print(f"  round {i + 1}: total {total * 1000:7.1f} ms vs bare {bare * 1000:7.1f} ms: "
                  f"{total / bare:5.2f}x")
        print(f"\nafter: {load_text()}")
        settle(cfg, bindir)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
