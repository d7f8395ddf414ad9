#!/usr/bin/env python3
"""Compare the triage snapshot with ``lsof -n -P`` plus ``ps -eo ...`` on this host.

Starts N extra idle processes (``sleep``), then times, best and median of R
rounds each:

- ``triage``: the whole collector through the real runner (every section,
  evidence written, hashed and fsynced into a private temporary store);
- ``triage core``: processes + open files + connections only (the sections
  lsof and ps cover; executables are hashed in a later section, not here);
- ``lsof+ps``: ``lsof -n -P`` and ``ps -eo <the same fields>`` run one after
  the other, output read through a pipe.

Usage (as root, from the checkout)::

    .venv/bin/python bench/bench_triage.py --procs 500 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PS_FIELDS = "pid,ppid,user,ruid,euid,rgid,egid,lstart,stat,nlwp,rss,vsz,tty,ni,cgroup,comm,args"


def start_idle(n: int) -> list[subprocess.Popen]:
    """Start n idle sleep processes."""
    return [subprocess.Popen(["/bin/sleep", "3600"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(n)]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_tools(lsof: str, ps: str) -> tuple[float, float]:
    """Run lsof -n -P then ps -eo ...; return (wall seconds, CPU seconds) of both."""
    t0, c0 = time.perf_counter(), _children_cpu()
    for argv in ([lsof, "-n", "-P"], [ps, "-eo", PS_FIELDS]):
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0, _children_cpu() - c0


def time_core() -> tuple[float, float, dict[str, int]]:
    """Run the processes + open files + connections sections into a scratch store."""
    from ossec_dfir.collectors.triage import collector as triage
    ctx, cleanup = _context()
    try:
        snap = triage.Snapshot(ctx, triage.TriageParams())
        # CPU includes the forked helper that reads half of the processes.
        t0, c0 = time.perf_counter(), time.process_time() + _children_cpu()
        for section in (triage._sockets, triage._processes, triage._connections):
            section(snap)
        snap.hash_queue.close()  # executables are hashed in the full run only
        return (time.perf_counter() - t0, time.process_time() + _children_cpu() - c0,
                snap.counts)
    finally:
        cleanup()


def time_full() -> tuple[float, float, dict]:
    """Run the whole triage collector through the real runner into a scratch store."""
    from ossec_dfir import hostinfo
    from ossec_dfir.collectors.base import build_params, get_collector
    from ossec_dfir.config import Profile, Step
    from ossec_dfir.ar.runner import Runner
    cfg, store, req, cleanup = _store()
    try:
        incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
        step = Step("triage", build_params(get_collector("triage"), {}))
        t0, c0 = time.perf_counter(), time.process_time() + _children_cpu()
        runner = Runner(cfg, store, incident, req, "bench")
        runner.run_profile(Profile("bench", "", (step,)))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() + _children_cpu() - c0
        incident.close()
        return elapsed, cpu, runner.outcomes[-1].summary
    finally:
        cleanup()


def _store():
    from ossec_dfir import config as config_mod
    from ossec_dfir.ar.request import Request, parse_ip
    from ossec_dfir.evidence.store import Store
    scratch = tempfile.mkdtemp(prefix="bench-triage-")
    os.mkdir(os.path.join(scratch, "ev"), 0o700)
    conf = os.path.join(scratch, "c.yml")
    with open(conf, "w") as fh:
        fh.write(f"evidence_root: {scratch}/ev\nlog_file: {scratch}/ar.log\nreserve_bytes: 0\n")
    cfg = config_mod.load(conf, scratch)
    store = Store(cfg.evidence_root, 0)
    req = Request(protocol="cli", action="add", command="bench", srcip=parse_ip("127.0.0.9"))

    def cleanup() -> None:
        store.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return cfg, store, req, cleanup


def _context():
    import dataclasses
    from ossec_dfir import hostinfo
    from ossec_dfir.collectors.base import Context
    from ossec_dfir.collectors.triage.collector import TriageParams
    cfg, store, req, cleanup_store = _store()
    incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    params = TriageParams()
    ctx = Context(config=cfg, request=req, incident=incident, collector="triage",
                  run_dir=incident.new_run_dir("triage"), params=params,
                  deadline=time.monotonic() + params.timeout_s)
    assert dataclasses.is_dataclass(params)

    def cleanup() -> None:
        incident.close()
        cleanup_store()
    return ctx, cleanup


def main() -> int:
    """Run the comparison and print a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=500, help="extra idle processes")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per tool")
    args = parser.parse_args()
    from ossec_dfir.collectors.base import find_binary
    lsof, ps = find_binary("lsof"), find_binary("ps")
    if not lsof or not ps:
        print("needs lsof and ps (apt-get install lsof procps)", file=sys.stderr)
        return 2
    idle = start_idle(args.procs)
    try:
        time.sleep(0.5)
        wall: dict[str, list[float]] = {"triage": [], "triage_core": [], "lsof+ps": []}
        cpu: dict[str, list[float]] = {k: [] for k in wall}
        counts: dict = {}
        for _ in range(args.rounds):
            for name, run in (("lsof+ps", lambda: time_tools(lsof, ps)),
                              ("triage_core", time_core), ("triage", time_full)):
                elapsed, used, *rest = run()
                wall[name].append(elapsed)
                cpu[name].append(used)
                if name == "triage_core":
                    counts = rest[0]
        report: dict = {
            "host_processes": sum(1 for n in os.listdir("/proc") if n.isdigit()),
            "extra_idle_processes": args.procs, "rounds": args.rounds,
            "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "counts_core": counts}
        for name in wall:
            report[name] = {"wall_best_s": round(min(wall[name]), 3),
                            "wall_median_s": round(statistics.median(wall[name]), 3),
                            "cpu_median_s": round(statistics.median(cpu[name]), 3)}
        for name in ("triage_core", "triage"):
            report[f"ratio_{name}_vs_lsof_ps"] = {
                "wall_median": round(statistics.median(wall[name])
                                     / statistics.median(wall["lsof+ps"]), 3),
                "wall_best": round(min(wall[name]) / min(wall["lsof+ps"]), 3),
                "cpu_median": round(statistics.median(cpu[name])
                                    / statistics.median(cpu["lsof+ps"]), 3)}
        print(json.dumps(report, indent=2))
    finally:
        for proc in idle:
            proc.kill()
        for proc in idle:
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
