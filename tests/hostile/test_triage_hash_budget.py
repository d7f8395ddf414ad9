"""Issue 12 item 5: hashing costs can neither hide a process nor starve the implant's hash.

A local user (nobody) runs 300 processes from 300 unique sparse 128 MiB
executables (37 GiB to read if hashed whole), one more whose sparse 128 MiB
bash copy holds a connection to the alert's address (a suspect), and then,
last (highest pid), an implant run from a temp directory and deleted. The
triage hash budget is shrunk by parameter. Every process is listed; the
suspect is hashed first and the implant next, whatever their pids; the budget
that ran out is recorded in summary.json and every process not hashed is in
exe_hashes.jsonl with the reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time

from tests.conftest import evidence_path
from tests.hostile.unprivileged import drop_to_nobody, public_dir

DECOYS = 300
SPARSE = 128 << 20
LISTEN_IP = "127.0.0.63"  # routed to lo, held by no interface: the srcip policy allows it

PLANT = r"""
import os, sys
src, dest, n, size, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
data = open(src, "rb").read()
for i in range(n):
    path = os.path.join(dest, f"{prefix}-{i:04d}")
    with open(path, "wb") as fh:
        fh.write(data)
        fh.truncate(size)
        fh.seek(size - 8)
        fh.write(i.to_bytes(8, "little"))  # unique content, sparse in between
    os.chmod(path, 0o755)
"""


def _read_jsonl(incident, relpath: str) -> list[dict]:
    return [json.loads(line) for line in evidence_path(incident, relpath).read_text().splitlines()]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, preexec_fn=drop_to_nobody, cwd="/", stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_exec(proc: subprocess.Popen, exe: str) -> None:
    deadline = time.monotonic() + 10
    while not os.readlink(f"/proc/{proc.pid}/exe").startswith(exe):
        assert time.monotonic() < deadline and proc.poll() is None, f"{exe} did not start"
        time.sleep(0.005)


def test_implant_is_listed_and_hashed_first_behind_sparse_decoys(run_collector):
    listener = socket.socket()
    listener.bind((LISTEN_IP, 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    procs: list[subprocess.Popen] = []
    with public_dir() as decoy_dir, public_dir() as temp_dir:
        try:
            subprocess.run(["/usr/bin/python3", "-I", "-c", PLANT, "/bin/sleep", str(decoy_dir),
                            str(DECOYS), str(SPARSE), "decoy"], preexec_fn=drop_to_nobody, check=True,
                           timeout=60)
            for i in range(DECOYS):
                procs.append(_start([str(decoy_dir / f"decoy-{i:04d}"), "120"]))
            # The suspect: a sparse 128 MiB copy of bash holding a connection to srcip.
            bash = decoy_dir / "suspect-0000"
            subprocess.run(["/usr/bin/python3", "-I", "-c", PLANT, "/bin/bash", str(decoy_dir),
                            "1", str(SPARSE), "suspect"], preexec_fn=drop_to_nobody, check=True,
                           timeout=30)
            suspect = _start([str(bash), "-c",
                              f"exec 3<>/dev/tcp/{LISTEN_IP}/{port}; read -t 120 <&3"])
            procs.append(suspect)
            listener.settimeout(10)
            accepted, _ = listener.accept()
            # The implant, last: a small executable in a temp dir, deleted once running.
            implant = temp_dir / "implant"
            shutil.copy("/bin/sleep", implant)
            with open(implant, "ab") as fh:
                fh.write(b"implant")
            implant.chmod(0o755)
            implant_sha = hashlib.sha256(implant.read_bytes()).hexdigest()
            implant_proc = _start([str(implant), "120"])
            procs.append(implant_proc)
            _wait_exec(implant_proc, str(implant))
            implant.unlink()
            decoy_pids = {p.pid for p in procs[:DECOYS]}
            _wait_exec(procs[DECOYS - 1], str(decoy_dir))

            base = {"timeout_s": 60, "open_files": False, "temp_dirs": [str(temp_dir)]}
            by_bytes = run_collector("triage", {**base, "hash_budget_bytes": 512 << 20,
                                                "hash_budget_s": 60}, srcip=LISTEN_IP)
            by_time = run_collector("triage", {**base, "hash_budget_bytes": 1 << 40,
                                               "hash_budget_s": 0.5}, srcip=LISTEN_IP)
            accepted.close()
        finally:
            listener.close()
            for proc in procs:
                proc.kill()
            for proc in procs:
                proc.wait(timeout=10)

    for (outcome, incident), ran_out in ((by_bytes, "bytes"), (by_time, "time")):
        run = next(f for f in outcome.files if f.endswith("/summary.json")).rsplit("/", 1)[0]
        listed = {r["pid"] for r in _read_jsonl(incident, f"{run}/processes.jsonl")}
        assert decoy_pids | {suspect.pid, implant_proc.pid} <= listed  # every process listed
        hashes = _read_jsonl(incident, f"{run}/exe_hashes.jsonl")
        # The suspects first (the bash copy, and this test, which holds the accepted
        # end), then the implant (deleted, in a temp dir), whatever the pids.
        n = next(i for i, h in enumerate(hashes) if h["priority"] != "suspect")
        assert {h["pid"] for h in hashes[:n]} == {suspect.pid, os.getpid()}
        assert all(h["exe_sha256"] for h in hashes[:n])  # 128 MiB for bash: paid first
        # (The host may run flagged processes of its own, e.g. from a sealed memfd.)
        at = next(i for i, h in enumerate(hashes) if h["pid"] == implant_proc.pid)
        assert all(h["priority"] in ("deleted", "memfd", "temp") for h in hashes[n:at + 1])
        assert hashes[at]["priority"] == "deleted" and hashes[at]["exe_sha256"] == implant_sha
        by_pid = {h["pid"]: h for h in hashes}
        assert all(i > at for i, h in enumerate(hashes) if h["pid"] in decoy_pids)
        assert decoy_pids <= set(by_pid)  # every decoy has its record, hashed or not
        not_hashed = [by_pid[p] for p in decoy_pids if not by_pid[p]["exe_sha256"]]
        assert len(not_hashed) > DECOYS - 10
        assert all(f"hash_budget_{'bytes' if ran_out == 'bytes' else 's'}=" in h["reason"]
                   for h in not_hashed)
        summary = json.loads(evidence_path(incident, f"{run}/summary.json").read_text())
        budget = summary["hash_budget"]
        assert budget["ran_out"] == ran_out and budget["not_hashed"] >= len(not_hashed)
        assert {n["pid"] for n in budget["not_hashed_first"]} & decoy_pids
        if ran_out == "bytes":
            assert budget["bytes_read"] <= 512 << 20
        assert outcome.outcome == "partial"
        assert any(f"the hash budget ran out ({ran_out})" in p for p in summary["problems"])
