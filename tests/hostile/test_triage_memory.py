"""Issue 12 item 7: triage's memory does not grow with the descriptors an attacker holds.

A local user (nobody) runs 100 processes that each hold 1,000 descriptors on a
file whose path is about 3.7 KB long (100,000 descriptors, ~400 MB of
``open_files.jsonl`` records if written whole). Triage runs alone in a freshly
exec'd child (its VmHWM is its own) with the forked reader helper in use; the
test asserts the peak resident memory of the collector and of its helper, that
``open_files.jsonl`` obeys ``max_file_bytes`` and says so, and that every
planted process is still listed.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from tests.hostile.unprivileged import drop_to_nobody, public_dir

HERE = Path(__file__).resolve().parent
PROCS = 100
FDS = 1000
MAX_FILE_BYTES = 16 << 20
# Peak resident memory allowed to the collector process and to its reader helper.
# Measured: collector 46 MB, helper 42 MB, open_files.jsonl 16 MiB; the code before
# streaming on the same scene: collector 1,051 MB and a 760 MB open_files.jsonl.
MAX_HWM_KB = 120 * 1024

HOLDER = r"""
import ctypes, os, signal, sys, time
base, procs, fds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
path = base
for i in range(14):  # about 3.7 KB with the file name
    path = os.path.join(path, chr(ord("a") + i) * 250)
    os.mkdir(path)
target = os.path.join(path, "held-" + "f" * 200)
open(target, "w").close()
held = [os.open(target, os.O_RDONLY) for _ in range(fds)]
kids = []
for _ in range(procs - 1):
    pid = os.fork()
    if pid == 0:  # dies with the holder (PR_SET_PDEATHSIG), killed by pid anyway
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
        time.sleep(120)
        os._exit(0)
    kids.append(pid)
print(len(target), *kids, flush=True)
time.sleep(120)
"""


def _holder_preexec() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FDS + 64, FDS + 64))
    drop_to_nobody()


def test_many_descriptors_on_long_paths_keep_triage_memory_bounded(tmp_path):
    evidence = tmp_path / "evidence"
    evidence.mkdir(mode=0o700)
    conf = tmp_path / "ossec-dfir.yml"
    conf.write_text(f"evidence_root: {evidence}\nlog_file: {tmp_path}/ar.log\nreserve_bytes: 0\n")
    with public_dir() as base:
        holder = subprocess.Popen(["/usr/bin/python3", "-I", "-c", HOLDER, str(base), str(PROCS),
                                   str(FDS)], stdout=subprocess.PIPE, text=True,
                                  preexec_fn=_holder_preexec, cwd="/")
        pids: set[int] = set()
        try:
            line = holder.stdout.readline().split()
            assert line, "the holder failed"
            path_len, pids = int(line[0]), {holder.pid, *map(int, line[1:])}
            assert path_len > 3700 and len(pids) == PROCS
            params = {"timeout_s": 50, "max_file_bytes": MAX_FILE_BYTES,
                      "max_fds_per_process": 4096}
            child = subprocess.run(
                [sys.executable, str(HERE / "triage_child.py"), str(conf), json.dumps(params)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=55, check=False)
        finally:
            for pid in pids - {holder.pid}:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            holder.kill()
            holder.wait(timeout=10)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    result = json.loads(child.stdout)
    run = Path(result["incident"]) / result["run_dir"]
    summary = json.loads((run / "summary.json").read_text())

    # Every planted process is listed, each with its 1,000 descriptors counted.
    listed = {}
    with open(run / "processes.jsonl", "rb") as fh:
        for raw in fh:
            rec = json.loads(raw)
            listed[rec["pid"]] = rec
    assert pids <= set(listed)
    assert all(listed[p]["num_fds"] >= FDS for p in pids)

    # open_files.jsonl stops at max_file_bytes, and the manifest and outcome say so.
    size = (run / "open_files.jsonl").stat().st_size
    assert 0.9 * MAX_FILE_BYTES < size <= MAX_FILE_BYTES
    entry = [e for e in _manifest(Path(result["incident"]))
             if e.get("type") == "file" and e["path"].endswith("/open_files.jsonl")][0]
    assert entry["outcome"] == "partial" and f"max_file_bytes={MAX_FILE_BYTES}" in entry["reason"]
    assert result["outcome"] == "partial" and "open_files.jsonl: max_file_bytes" in result["reason"]

    # Peak memory of the collector and of its reader helper, whatever the host holds.
    helper = summary["memory"].get("helper_vm_hwm_kb")
    assert helper is not None, "the reader helper was not used"
    assert result["vm_hwm_kb"] < MAX_HWM_KB, result["vm_hwm_kb"]
    assert helper < MAX_HWM_KB, helper
    print(f"collector VmHWM {result['vm_hwm_kb']} kB, helper VmHWM {helper} kB, "
          f"open_files.jsonl {size} bytes")


def _manifest(incident: Path) -> list[dict]:
    return [json.loads(line) for line in (incident / "manifest.jsonl").read_text().splitlines()]
