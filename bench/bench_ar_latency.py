"""Time from exec to exit of an installed AR executable while a 60 s capture runs.

Builds a private OSSEC tree in a temporary directory, installs the
executables, starts `dfir-pcap` for 127.0.0.2 with a 60 s capture on `lo`
(detached, as execd would), then runs the executable 50 times each as OSSEC's
execd (argv) and as Wazuh's execd (JSON on stdin + check_keys), for new IPs
(a new incident each) and for one repeated IP, and prints p50/p95/max.

    .venv/bin/python bench/bench_ar_latency.py [--runs 50]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ossec_dfir import config as config_mod  # noqa: E402
from ossec_dfir.ossec import install  # noqa: E402
from ossec_dfir.ar.simulate import run_ossec, run_wazuh, wazuh_message  # noqa: E402


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
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
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        capture = run_ossec([os.path.join(bindir, "dfir-pcap"), "add", "-", "127.0.0.2",
                             "1764376501.1", "100100", "-"], env)
        print(f"background capture started (exit {capture.returncode} after "
              f"{capture.exit_s * 1000:.1f} ms); running {args.runs} runs per case")
        time.sleep(2)
        script = os.path.join(bindir, "dfir-host")
        cases: dict[str, list[float]] = {}
        for case in ("ossec argv, new IP", "ossec argv, same IP", "wazuh json+check_keys, new IP"):
            times = []
            for i in range(args.runs):
                ip = f"192.0.2.{i + 1}" if "new" in case else "198.51.100.1"
                if case.startswith("wazuh"):
                    ip = f"198.51.100.{i + 10}"
                    res = run_wazuh(script, wazuh_message("add", ip, "5712", None, "dfir-host"),
                                    "continue", env)
                else:
                    res = run_ossec([script, "add", "-", ip, f"1764376501.{i}", "5712",
                                     "/var/log/auth.log", "-"], env)
                if res.returncode != 0:
                    print(f"run failed: exit {res.returncode}")
                    return 1
                times.append(res.exit_s * 1000)
            cases[case] = times
        print(f"\n{'case':34s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}")
        for case, times in cases.items():
            print(f"{case:34s} {statistics.median(times):8.1f} {percentile(times, 95):8.1f} "
                  f"{max(times):8.1f}")
        run_ossec([os.path.join(bindir, "dfir-pcap"), "delete", "-", "127.0.0.2",
                   "1764376501.1", "100100", "-"], env)
        time.sleep(3)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
