"""The hash phase: held executables outlive their process, one read per executable, reasons."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import time

from ossec_dfir.collectors.triage.hashes import HashQueue
from ossec_dfir.collectors.triage.procs import ProcessReader


def _listed(reader: ProcessReader, queue: HashQueue, pid: int) -> dict:
    rec, _ = reader.read(pid)
    queue.add(rec, rec.pop("exe_key", None))
    return rec


def _wait_exec(proc: subprocess.Popen, exe: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
                if fh.read().startswith(exe.encode()):
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the child did not exec"
        time.sleep(0.005)


def test_flagged_exe_is_hashed_after_its_process_exits_and_others_are_explained(tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    implant = temp / "implant"
    shutil.copy("/bin/sleep", implant)
    implant.chmod(0o755)
    sha = hashlib.sha256(implant.read_bytes()).hexdigest()
    other = tmp_path / "other-sleep"
    shutil.copy("/bin/sleep", other)
    other.chmod(0o755)
    big = tmp_path / "big-sleep"
    shutil.copy("/bin/sleep", big)
    with open(big, "ab") as fh:
        fh.truncate(4 << 20)
    big.chmod(0o755)
    procs = [subprocess.Popen([str(p), "60"]) for p in (implant, other, other, big)]
    try:
        for proc, exe in zip(procs, (implant, other, other, big)):
            _wait_exec(proc, str(exe))
        implant.unlink()
        reader = ProcessReader(max_fds_per_process=8, temp_dirs=(str(temp),), open_files=False)
        queue = HashQueue()
        for proc in procs:
            _listed(reader, queue, proc.pid)
        assert queue.held == 1  # the implant's executable, opened as it was listed
        for proc in procs[:2]:  # the implant and one "other" exit before the hash phase
            proc.kill()
            proc.wait()
        records: list[dict] = []
        budget = queue.run(set(), lambda r: records.append(r) or True, budget_s=30,
                           budget_bytes=1 << 30, max_file_bytes=1 << 20,
                           deadline=time.monotonic() + 30)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    by_pid = {r["pid"]: r for r in records}
    assert records[0]["pid"] == procs[0].pid and records[0]["priority"] == "deleted"
    assert by_pid[procs[0].pid]["exe_sha256"] == sha  # hashed from the held inode
    assert by_pid[procs[1].pid]["reason"] == "process exited before the hash phase"
    assert by_pid[procs[2].pid]["exe_sha256"] == hashlib.sha256(other.read_bytes()).hexdigest()
    assert "larger than exe_hash_max_bytes=1048576" in by_pid[procs[3].pid]["reason"]
    assert budget["ran_out"] is None and budget["hashed"] == 2 and budget["not_hashed"] == 2
    assert queue.held == 0


def test_one_read_per_executable_and_the_bytes_budget_passes_over_what_does_not_fit(tmp_path):
    small = tmp_path / "small-sleep"
    shutil.copy("/bin/sleep", small)
    small.chmod(0o755)
    big = tmp_path / "big-sleep"
    shutil.copy("/bin/sleep", big)
    with open(big, "ab") as fh:
        fh.truncate(8 << 20)
    big.chmod(0o755)
    procs = [subprocess.Popen([str(p), "60"]) for p in (big, small, small)]
    try:
        for proc, exe in zip(procs, (big, small, small)):
            _wait_exec(proc, str(exe))
        reader = ProcessReader(max_fds_per_process=8, temp_dirs=("/nonexistent",),
                               open_files=False)
        queue = HashQueue()
        for proc in procs:
            _listed(reader, queue, proc.pid)
        records: list[dict] = []
        budget = queue.run(set(), lambda r: records.append(r) or True, budget_s=30,
                           budget_bytes=4 << 20, max_file_bytes=64 << 20,
                           deadline=time.monotonic() + 30)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    # The shared executable first (two processes), read once; the big one does not fit.
    assert [r["pid"] for r in records] == [procs[1].pid, procs[2].pid, procs[0].pid]
    assert records[1].get("cached") is True and records[0]["exe_sha256"]
    assert budget["bytes_read"] == small.stat().st_size
    assert records[2]["exe_sha256"] is None and "hash_budget_bytes=4194304" in records[2]["reason"]
    assert budget["ran_out"] == "bytes"
