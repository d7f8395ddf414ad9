"""The triage collector snapshots real processes, sockets and the suspects of a srcip."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from ossec_dfir import procfs
from ossec_dfir.collectors import suspects
from ossec_dfir.collectors.base import build_params, get_collector
from ossec_dfir.errors import ConfigError
from tests.conftest import wait_collector_entry, evidence_path

LISTEN_IP = "127.0.0.5"
EXPECTED_FILES = {"connections.jsonl", "unix_sockets.jsonl", "processes.jsonl",
                  "open_files.jsonl", "suspects.jsonl", "interfaces.jsonl", "routes.jsonl",
                  "neighbours.jsonl", "users.jsonl", "auth_log.jsonl", "modules.jsonl",
                  "mounts.jsonl", "exe_hashes.jsonl", "system.json", "summary.json"}


def read_jsonl(incident, relpath: str) -> list[dict]:
    text = evidence_path(incident, relpath).read_text()
    return [json.loads(line) for line in text.splitlines()]


def wait_for_line(proc: subprocess.Popen, timeout_s: float = 10.0) -> str:
    """Read the child's first stdout line (its 'ready' signal)."""
    line = proc.stdout.readline()
    assert line, f"child {proc.args} exited early: {proc.poll()}"
    return line.strip()


@pytest.fixture
def scene(tmp_path: Path):
    """Start a child with a marker cmdline, a child connected to LISTEN_IP, a deleted exe."""
    procs: list[subprocess.Popen] = []
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LISTEN_IP, 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    marker = f"triage-marker-{uuid.uuid4().hex[:12]}"
    try:
        dropped = tmp_path / "dropped.bin"
        marked = subprocess.Popen(
            [sys.executable, "-c", "import sys,time; f=open(sys.argv[1],'w'); f.write('x'*10); "
             "f.flush(); print('ready', flush=True); time.sleep(120)", str(dropped), marker],
            stdout=subprocess.PIPE, text=True)
        procs.append(marked)
        connected = subprocess.Popen(
            [sys.executable, "-c", "import socket,sys,time; "
             f"s=socket.create_connection(({LISTEN_IP!r},{port})); "
             "print(s.getsockname()[1], flush=True); time.sleep(120)"],
            stdout=subprocess.PIPE, text=True)
        procs.append(connected)
        exe = tmp_path / "evil-sleep"
        shutil.copy("/bin/sleep", exe)
        exe.chmod(0o755)
        exe_sha256 = hashlib.sha256(exe.read_bytes()).hexdigest()
        deleted = subprocess.Popen([str(exe), "120"])
        procs.append(deleted)
        wait_for_line(marked)
        client_port = int(wait_for_line(connected))
        accepted, _ = listener.accept()
        deadline = time.monotonic() + 5
        while not os.readlink(f"/proc/{deleted.pid}/exe").startswith(str(exe)):
            assert time.monotonic() < deadline, "the deleted-exe child did not exec"
            time.sleep(0.01)
        exe.unlink()
        dropped.unlink()
        yield {"dropped": str(dropped), "marked": marked, "marker": marker, "connected": connected,
               "client_port": client_port, "port": port, "deleted": deleted,
               "exe": str(exe), "exe_sha256": exe_sha256}
        accepted.close()
    finally:
        listener.close()
        for proc in procs:
            proc.kill()
            proc.wait()


def test_snapshot_finds_children_suspects_and_deleted_exe(run_collector, scene):
    outcome, incident = run_collector("triage", {"timeout_s": 60}, srcip=LISTEN_IP)
    # pid 1 of a sandbox may refuse even root: partial is then the honest outcome.
    assert outcome.outcome in ("complete", "partial"), outcome.reason
    run = "triage/01"
    assert {Path(f).name for f in outcome.files} == EXPECTED_FILES
    procs = {r["pid"]: r for r in read_jsonl(incident, f"{run}/processes.jsonl")}

    marked = procs[scene["marked"].pid]
    assert marked["cmdline"][-1] == scene["marker"]
    assert marked["ppid"] == os.getpid()
    assert marked["username"] == "root"
    assert marked["uids"] == {"real": 0, "effective": 0, "saved": 0}
    assert marked["exe"] == os.path.realpath(sys.executable)
    hashes = {r["pid"]: r for r in read_jsonl(incident, f"{run}/exe_hashes.jsonl")}
    assert hashes[scene["marked"].pid]["exe_sha256"] == hashlib.sha256(
        Path(os.path.realpath(sys.executable)).read_bytes()).hexdigest()
    assert "exe_sha256" not in marked  # listed first; hashed in the hash phase
    assert marked["exe_deleted"] is False and marked["exe_in_temp"] is False
    assert marked["create_time"].endswith("Z") and marked["status"] in ("sleeping", "running")
    assert marked["rss"] > 0 and marked["vms"] > 0 and marked["num_threads"] >= 1
    assert marked["namespaces"]["net"] == os.stat("/proc/self/ns/net").st_ino
    assert marked["root"] == "/" and marked["cwd"] == os.getcwd()
    assert marked["denied"] == []

    gone = procs[scene["deleted"].pid]
    assert gone["exe_deleted"] is True
    assert gone["exe_in_temp"] is True
    assert gone["exe_link"] == scene["exe"] + " (deleted)"
    assert hashes[gone["pid"]]["exe_sha256"] == scene["exe_sha256"]
    assert hashes[gone["pid"]]["priority"] == "deleted"
    assert set(hashes) == {p for p, r in procs.items() if not (
        r.get("kernel_thread") or r.get("vanished") or r.get("zombie"))}
    assert gone["exe_replaced"] is False

    conns = read_jsonl(incident, f"{run}/connections.jsonl")
    client = [c for c in conns if c["pid"] == scene["connected"].pid]
    assert client and client[0]["remote_ip"] == LISTEN_IP
    assert client[0]["remote_port"] == scene["port"] and client[0]["status"] == "ESTABLISHED"
    # The listener is shared after fork (the collector's child holds it too):
    # every holder is listed, and the lowest pid, this test's, names it.
    listener = [c for c in conns if c["listening"] and c["local_port"] == scene["port"]]
    assert listener and listener[0]["pid"] == os.getpid()
    assert listener[0]["owners"] == sorted(listener[0]["owners"],
                                           key=lambda o: (o["pid"], o["fd"]))

    files = read_jsonl(incident, f"{run}/open_files.jsonl")
    held = [f for f in files if f["pid"] == scene["marked"].pid and f.get("kind") == "deleted"
            and f["path"] == scene["dropped"]]
    assert held and held[0]["target"] == scene["dropped"] + " (deleted)"
    assert held[0]["mode"] == "w" and held[0]["position"] == 10
    sock = [f for f in files if f["pid"] == scene["connected"].pid and f.get("socket")]
    assert sock and sock[0]["socket"]["remote_port"] == scene["port"]

    found = {r["pid"]: r for r in read_jsonl(incident, f"{run}/suspects.jsonl")}
    assert scene["connected"].pid in found
    assert scene["marked"].pid not in found and scene["deleted"].pid not in found
    suspect = found[scene["connected"].pid]
    assert [p["pid"] for p in suspect["parents"]][0] == os.getpid()
    assert suspect["parents"][-1]["pid"] == 1 or suspect["parents"][-1].get("missing")
    # The test process holds the listener: it is a suspect too, with the children below it.
    assert scene["marked"].pid in {c["pid"] for c in found[os.getpid()]["children"]}

    summary = json.loads(evidence_path(incident, f"{run}/summary.json").read_text())
    assert scene["connected"].pid in summary["suspects"]
    assert scene["connected"].pid in outcome.summary["suspects"]
    assert summary["counts"]["processes"] == len(procs)
    entries = {e["path"]: e for e in incident.manifest() if e["type"] == "file"}
    path = f"{run}/processes.jsonl"
    assert entries[path]["sha256"] == hashlib.sha256(
        evidence_path(incident, path).read_bytes()).hexdigest()


def test_no_srcip_and_own_srcip_are_said_not_guessed(run_collector):
    outcome, incident = run_collector("triage", {"open_files": False}, srcip=None)
    assert outcome.summary["suspects"] == []
    assert "no srcip" in outcome.summary["suspects_status"]
    assert evidence_path(incident, "triage/01/suspects.jsonl").read_text() == ""
    outcome, incident = run_collector("triage", {"open_files": False}, srcip="127.0.0.1")
    assert "address of this host (interface lo)" in outcome.summary["suspects_status"]


def test_record_cap_makes_the_snapshot_partial(run_collector):
    outcome, incident = run_collector("triage", {"max_records": 3, "open_files": False})
    assert outcome.outcome == "partial"
    assert len(read_jsonl(incident, "triage/01/processes.jsonl")) == 3
    entry = [e for e in incident.manifest() if e.get("path") == "triage/01/processes.jsonl"
             and e["type"] == "file"][0]
    assert entry["outcome"] == "partial" and "max_records=3" in entry["reason"]


def test_time_budget_ends_the_snapshot_partial(run_collector):
    outcome, incident = run_collector("triage", {"timeout_s": 0.001})
    assert outcome.outcome == "partial"
    assert "timeout_s=0.001" in outcome.reason
    summary = json.loads(evidence_path(incident, "triage/01/summary.json").read_text())
    assert summary["stopped"]


def test_params_are_validated():
    cls = get_collector("triage")
    with pytest.raises(ConfigError) as err:
        build_params(cls, {"temp_dirs": ["tmp"], "max_records": 0})
    assert "temp_dirs" in str(err.value) and "max_records" in str(err.value)
    assert build_params(cls, {"temp_dirs": ["/run/user"]}).temp_dirs == ("/run/user",)


def test_vanished_pid_is_recorded_not_fatal():
    from ossec_dfir.collectors.triage.procs import ProcessReader
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    reader = ProcessReader(max_fds_per_process=10,
                           temp_dirs=("/tmp",), open_files=True)
    rec, fds = reader.read(proc.pid)
    assert rec == {"pid": proc.pid, "vanished": True} and fds == []


def test_exe_hash_limit_is_reported(run_collector):
    outcome, incident = run_collector("triage", {"open_files": False,
                                                 "exe_hash_max_bytes": 10})
    mine = [r for r in read_jsonl(incident, "triage/01/exe_hashes.jsonl")
            if r["pid"] == os.getpid()][0]
    assert mine["exe_sha256"] is None and "exe_hash_max_bytes=10" in mine["reason"]


def test_non_root_run_is_partial_with_denied_fields_marked(config, scene):
    """Run the collector in a forked child that dropped to nobody, own evidence root."""
    import pwd
    from ossec_dfir import hostinfo
    from ossec_dfir.config import Profile, Step
    from ossec_dfir.ar.runner import Runner
    from ossec_dfir.evidence.store import Store
    from tests.conftest import make_request

    nobody = pwd.getpwnam("nobody")
    root = tempfile.mkdtemp(prefix="triage-nobody-")
    os.chmod(root, 0o755)
    evidence = os.path.join(root, "evidence")
    os.mkdir(evidence, 0o700)
    os.chown(evidence, nobody.pw_uid, nobody.pw_gid)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            store = Store(evidence, reserve_bytes=0)
            req = make_request(LISTEN_IP)
            incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
            step = Step("triage", build_params(get_collector("triage"), {"timeout_s": 60}))
            runner = Runner(config, store, incident, req, "nobody")
            runner.run_profile(Profile("t", "", (step,)))
            out = runner.outcomes[-1]
            os.write(write_fd, json.dumps({"outcome": out.outcome, "reason": out.reason,
                                           "path": incident.path}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0 and data, "the unprivileged child failed"
        result = json.loads(data)
        assert result["outcome"] == "partial", result
        assert "not readable" in result["reason"] or "not root" in result["reason"]
        run = Path(result["path"]) / "triage" / "01"
        procs = {r["pid"]: r for r in map(json.loads,
                                          (run / "processes.jsonl").read_text().splitlines())}
        marked = procs[scene["marked"].pid]  # root's child, seen by nobody
        assert marked["cmdline"][-1] == scene["marker"]
        assert {"exe", "cwd", "root"} <= set(marked["denied"])
        assert marked["exe"] is None
        hashes = {r["pid"]: r for r in map(
            json.loads, (run / "exe_hashes.jsonl").read_text().splitlines())}
        assert hashes[marked["pid"]]["reason"] == "executable not readable (exe: access denied)"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["uid"] == nobody.pw_uid
        assert summary["counts"]["processes_with_denied_fields"] > 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_suspect_pids_still_works_for_the_memory_collector(scene):
    assert scene["connected"].pid in suspects.suspect_pids(LISTEN_IP)
    assert scene["marked"].pid not in suspects.suspect_pids(LISTEN_IP)


def test_active_response_executable_runs_the_triage_profile(config_file, evidence_root, scene):
    from tests.conftest import AR_DIR, ar_env
    config_file.write_text(config_file.read_text() + """
profiles:
  dfir-triage:
    description: test triage
    steps:
      - collector: triage
        params:
          timeout_s: 60
""")
    # The interpreter that has psutil (execd runs the script's shebang python3; without
    # psutil the step is recorded "skipped: needs the Python package psutil").
    argv = [sys.executable, str(AR_DIR / "dfir-triage"), "add", "-", LISTEN_IP,
            "1700000000.1", "5710", "ossec", "/var/log/auth.log"]
    proc = subprocess.run(argv, env=ar_env(config_file), capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    entry = wait_collector_entry(evidence_root, LISTEN_IP, "triage")
    assert entry["outcome"] in ("complete", "partial"), entry["reason"]
    assert scene["connected"].pid in entry["summary"]["suspects"]
    assert scene["marked"].pid not in entry["summary"]["suspects"]
    assert os.access(AR_DIR / "dfir-triage", os.X_OK)


def test_zombie_is_recorded_as_such():
    from ossec_dfir.collectors.triage.procs import ProcessReader
    proc = subprocess.Popen(["/bin/true"])
    deadline = time.monotonic() + 5
    while procfs.read_bytes(f"/proc/{proc.pid}/stat").split(b") ")[1][:1] != b"Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        reader = ProcessReader(max_fds_per_process=10,
                               temp_dirs=("/tmp",), open_files=True)
        rec, fds = reader.read(proc.pid)
        assert rec["status"] == "zombie" and rec["ppid"] == os.getpid()
        assert not rec.get("vanished") and rec["cmdline"] == [] and fds == []
        assert rec["zombie"] is True and rec["denied"] == [] and "errors" not in rec
    finally:
        proc.wait()


def test_a_broken_section_is_recorded_and_the_others_still_run(run_collector, monkeypatch):
    from ossec_dfir.collectors.triage import system as _triage_system

    def broken():
        raise ValueError("unparsable /proc/modules line")
    monkeypatch.setattr(_triage_system, "modules", broken)
    outcome, incident = run_collector("triage", {"open_files": False})
    assert outcome.outcome == "partial"
    summary = json.loads(evidence_path(incident, "triage/01/summary.json").read_text())
    assert any("system: section failed: ValueError" in p for p in summary["problems"])
    assert summary["counts"]["processes"] > 0 and "mounts" not in summary["counts"]


@pytest.fixture
def netns_listener():
    """Start a listener inside a private network namespace; yield (pid, port, netns inode)."""
    ip = shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if ip is None:
        pytest.skip("iproute2 `ip` not installed (apt-get install iproute2)")
    name = f"triage-{uuid.uuid4().hex[:8]}"
    if subprocess.run([ip, "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    proc = None
    try:
        subprocess.run([ip, "-n", name, "link", "set", "lo", "up"], check=True)
        proc = subprocess.Popen(
            [ip, "netns", "exec", name, sys.executable, "-c",
             "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); "
             "print(s.getsockname()[1], flush=True); time.sleep(120)"],
            stdout=subprocess.PIPE, text=True)
        port = int(wait_for_line(proc))
        yield proc.pid, port, os.stat(f"/proc/{proc.pid}/ns/net").st_ino
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run([ip, "netns", "del", name], capture_output=True)


def test_sockets_of_other_network_namespaces_are_read(run_collector, netns_listener):
    pid, port, netns = netns_listener
    assert netns != os.stat("/proc/self/ns/net").st_ino
    outcome, incident = run_collector("triage", {"open_files": False})
    conns = read_jsonl(incident, "triage/01/connections.jsonl")
    mine = [c for c in conns if c["netns"] == netns and c["local_port"] == port]
    assert mine and mine[0]["listening"] and [o["pid"] for o in mine[0]["owners"]] == [pid]
    assert outcome.summary["counts"]["net_namespaces"] >= 2


def test_auth_log_tail_is_bounded_by_lines_and_bytes(run_collector, tmp_path):
    log = tmp_path / "auth.log"
    log.write_bytes(b"".join(b"Nov 29 sshd[%d]: Failed password for root from 203.0.113.5\n" % i
                             for i in range(1000)))
    outcome, incident = run_collector("triage", {
        "open_files": False, "auth_logs": [str(tmp_path / "absent.log"), str(log)],
        "auth_log_lines": 5, "auth_log_max_bytes": 4096})
    lines = read_jsonl(incident, "triage/01/auth_log.jsonl")
    assert [x["line"] for x in lines] == [
        f"Nov 29 sshd[{i}]: Failed password for root from 203.0.113.5" for i in range(995, 1000)]
    system_doc = json.loads(evidence_path(incident, "triage/01/system.json").read_text())
    assert system_doc["auth_log"]["path"] == str(log)
    assert system_doc["auth_log"]["read_from_offset"] == log.stat().st_size - 4096


def test_proc_tables_are_parsed_from_a_fake_procfs(tmp_path, monkeypatch):
    from ossec_dfir.collectors.triage import net as _triage_net, system as _triage_system
    net_dir = tmp_path / "self" / "net"
    net_dir.mkdir(parents=True)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (net_dir / "tcp").write_text(header + "   0: 0500007F:1F90 0900007F:D431 01 00000000:00000000 "
                                 "00:00000000 00000000  1000        0 4242 1 0 20 4 30 10 -1\n")
    (net_dir / "udp6").write_text(header + "  0: 00000000000000000000000001000000:0035 "
                                  "00000000000000000000000000000000:0000 07 00000000:00000000 "
                                  "00:00000000 00000000     0        0 77 2 0 0\n")
    (net_dir / "unix").write_text("Num       RefCount Protocol Flags    Type St Inode Path\n"
                                  "0000000000000000: 00000002 00000000 00010000 0001 01 99 "
                                  "/run/a b.sock\n")
    (tmp_path / "modules").write_text("rootkit 16384 0 - Live 0xffffffffc0000000 (OE)\n")
    sys_kernel = tmp_path / "sys" / "kernel"
    sys_kernel.mkdir(parents=True)
    (sys_kernel / "tainted").write_text("12288\n")
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    monkeypatch.setattr(_triage_system, "SYS", str(tmp_path / "nosys"))
    inet, unix, problems = _triage_net.socket_tables()
    assert problems == []
    expected = {"proto": "tcp", "local_ip": "127.0.0.5", "local_port": 8080,
                "remote_ip": "127.0.0.9", "remote_port": 54321, "status": "ESTABLISHED",
                "uid": 1000, "inode": 4242}
    assert {k: inet[0][k] for k in expected} == expected
    assert inet[1]["local_ip"] == "::1" and inet[1]["local_port"] == 53
    assert inet[1]["listening"] and inet[1]["remote_ip"] is None
    assert unix == [{"inode": 99, "path": "/run/a b.sock", "type": "stream",
                     "state": "UNCONNECTED", "listening": True, "netns": None}]
    mods, problems = _triage_system.modules()
    assert mods[0]["name"] == "rootkit" and mods[0]["taint"] == "OE" and mods[0]["size"] == 16384
    taint, _ = _triage_system.kernel_taint()
    assert taint["flags"] == ["O out-of-tree module", "E unsigned module"]
