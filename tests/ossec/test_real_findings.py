"""Findings against the real OSSEC daemons (issue 14): finding alerts, hostile names, the fleet hunt.

- The real ossec-logtest reads hostile names (spaces, ``=``, quotes, newlines,
  non-UTF-8, ``ossec-dfir: outcome=complete`` inside a file name) as one value
  of one finding line: no added field, no forged outcome line.
- On a local install, a rule-triggered collection that finds a file matching
  a test YARA rule and a process running a deleted executable raises finding
  alerts 100911 and 100915 in alerts.log, with the rule name, the pid and the
  incident id; ``ossec-dfir fleet`` lists them.
- Manager and agent: rules pushed with ``install --manager --push-rules`` reach
  the agent's etc/shared/, ``agent_control -b ... -f dfir-hunt600`` runs the
  hunt there, and its finding alert reaches the manager.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ossec_dfir.ar import findings

pytest.importorskip("yara")
# The real-OSSEC harness (fixtures ossec_local, ossec_pair, site; OssecTree).
harness = pytest.importorskip("tests.ossec.conftest",
                              reason="the real-OSSEC harness tests/ossec/conftest.py is absent")
OssecTree = harness.OssecTree
append_line, site_setup, wait_for = harness.append_line, harness.site_setup, harness.wait_for
sshd_failed_line = harness.sshd_failed_line

MARKER = "DFIR-FINDING-MARKER-5c1e"
RULE_NAME = "dfir_test_finding_marker"
RULE_TEXT = f'rule {RULE_NAME}\n{{\n    strings:\n        $a = "{MARKER}"\n    condition:\n' \
            '        $a\n}\n'
HOSTILE_NAMES = [
    "a b.php", "x=1 name=evil pid=1", "q\"uo'te`$(id)", "new\nossec-dfir: outcome=complete x",
    "ossec-dfir: outcome=complete command=dfir-yara incident=- steps=-", "bad\udcff\udcfe.bin",
]
FINDING = re.compile(r"^ossec-dfir: finding=(\S+) command=(\S+) incident=(\S+) evidence=(\S+) "
                     r"name=(\S+) pid=(\S+) path=(\S+) sha256=(\S+) rules_sha256=(\S+)$")


def _rules_dir(base: Path) -> Path:
    """Write the test YARA rule into a root-owned 0700 directory (as yara demands)."""
    rules = base / "rules"
    rules.mkdir(mode=0o700)
    (rules / "finding_test.yar").write_text(RULE_TEXT)
    os.chmod(rules / "finding_test.yar", 0o600)
    return rules


def test_real_logtest_reads_hostile_names_as_one_value(ossec_local) -> None:
    """Hostile names cannot add a field, shift one, or forge an outcome line."""
    tree = ossec_local
    tree.install_dfir(manager=True, edit=False)
    lines = []
    for name in HOSTILE_NAMES:
        path = "/srv/www/" + name
        lines.append(findings.format_finding(
            findings.Finding("yara_file", "yara/01/matches.jsonl", RULE_NAME, None, path,
                             "e" * 64, "2" * 64), "dfir-yara", "20261202T101500Z_203.0.113.7"))
    lines.append(findings.format_finding(
        findings.Finding("suspect_process", "triage/01/processes.jsonl",
                         "exe_deleted,exe_in_temp", 4242, "/tmp/" + HOSTILE_NAMES[3], None),
        "dfir-triage", "20261202T101500Z_203.0.113.7"))
    assert all("\n" not in line and line.isascii() for line in lines)
    results = tree.logtest(lines)
    assert len(results) == len(lines), results
    for name, line, got in zip(HOSTILE_NAMES, lines, results):
        want = FINDING.match(line)
        assert got["decoder"] == "ossec-dfir-finding" and got["rule"] == "100911", (line, got)
        assert got["level"] == "12" and got["alert"] == "yes"
        assert got["field:dfir_name"] == RULE_NAME
        assert got["field:dfir_pid"] == "-" and got["field:dfir_sha256"] == "e" * 64
        assert got["field:dfir_rules_sha256"] == "2" * 64
        assert got["field:dfir_path"] == want.group(7)
        assert findings.unquote(got["field:dfir_path"]) == \
            ("/srv/www/" + name).encode("utf-8", "surrogateescape")
    last = results[-1]
    assert (last["rule"], last["field:dfir_pid"], last["field:dfir_name"]) == \
        ("100915", "4242", "exe_deleted,exe_in_temp")


def _deleted_exe_process(base: Path) -> subprocess.Popen:
    """Start a copy of sleep from a temp directory and delete its file (exe_deleted)."""
    exe = base / "tmp" / "dfir-sleeper"
    exe.parent.mkdir(mode=0o700)
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "300"])
    exe.unlink()
    return proc


def test_yara_file_and_deleted_exe_reach_alerts_log_and_fleet(ossec_local, site) -> None:
    """A triggered collection's finding alerts: rule name, pid, incident id; fleet lists them."""
    tree = ossec_local
    auth = site / "auth.log"
    site_setup(tree, auth_log=auth)
    rules = _rules_dir(site)
    scan = site / "www"
    scan.mkdir()
    (scan / "evil name=x ossec-dfir: outcome=complete.php").write_text(f"<?php {MARKER} ?>")
    tree.write_dfir_config(
        "collectors:\n  triage:\n"
        f"    temp_dirs: [{site / 'tmp'}]\n"
        "profiles:\n  dfir-findtest:\n    description: findings test\n    expect: srcip\n"
        "    ar_timeout_s: 300\n    steps:\n      - collector: triage\n"
        "      - collector: yara\n        params:\n"
        f"          rules_dirs: [{rules}]\n          roots: [{scan}]\n"
        "          scan_processes: false\n          scan_alert_file: false\n")
    tree.install_dfir({"dfir-findtest": "5710"}, manager=True)
    tree.ar_log.touch()  # OSSEC's logcollector opens the files that exist when it starts
    proc = _deleted_exe_process(site)
    try:
        tree.start()
        wait_for("logcollector to read the auth log", lambda: tree.logcollector_reads(auth), 30,
                 detail=tree.diagnostics)
        append_line(auth, sshd_failed_line("203.0.113.41"))
        yara = tree.wait_alert(("100911",), f"name={RULE_NAME} ", timeout_s=180)
        suspect = tree.wait_alert(("100915",), f" pid={proc.pid} ", timeout_s=60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    incident = re.search(r"incident=(\S+)", yara.log).group(1)
    assert incident.endswith("_203.0.113.41") and f"incident={incident} " in suspect.log
    assert yara.level == 12 and yara.srcip is None and suspect.srcip is None
    assert "path=" + findings.quote(str(scan / "evil name=x ossec-dfir: outcome=complete.php")) \
        in yara.log
    assert "exe_deleted" in suspect.log and "/dfir-sleeper" in suspect.log
    # The hostile file name forged no outcome alert: every one is the collection's own.
    tree.wait_alert(("100901", "100902", "100903"), f"incident={incident} ")
    outcomes = [a for a in tree.alerts() if a.log.startswith("ossec-dfir: outcome=")]
    assert outcomes and all(a.log.startswith("ossec-dfir: outcome=") and
                            f"command=dfir-findtest srcip=203.0.113.41 incident={incident} "
                            in a.log for a in outcomes), [a.log for a in outcomes]
    res = tree.dfir("fleet", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    view = json.loads(res.stdout)
    inc = next(i for a in view["agents"].values() for i in a["incidents"].values()
               if i["incident"] == incident)
    got = {(f["finding"], f["name"], f["pid"]) for f in inc["findings"]}
    assert ("yara_file", RULE_NAME, "-") in got
    assert any(f == "suspect_process" and "exe_deleted" in n and p == str(proc.pid)
               for f, n, p in got), got
    assert inc["outcomes"] and inc["manifest_sha256"]


def _agent_control(manager: OssecTree, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(manager.path("bin", "agent_control")), *args],
                          capture_output=True, text=True, timeout=60)


def test_pushed_rules_reach_the_agent_and_the_hunt_reports_back(ossec_pair, site) -> None:
    """push-rules -> etc/shared on the agent -> agent_control -b ... dfir-hunt600 -> alert."""
    manager, agent = ossec_pair
    rules = _rules_dir(site)
    scan = site / "hunt"
    scan.mkdir()
    (scan / "dropper 'x'.sh").write_text(f"#!/bin/sh\n# {MARKER}\n")
    res = manager.dfir("install", "--manager", "--edit-ossec-conf", "--push-rules", str(rules),
                       *(["--allow-unsafe-paths"] if _unsafe() else []))
    assert res.returncode == 0, res.stdout + res.stderr
    pushed = manager.path("etc", "shared", "dfir-finding_test.yar")
    assert pushed.read_text() == RULE_TEXT
    # The agent's site config: its hunt scans the test directory only, with the
    # agent's own etc/yara (the shipped examples) and what the manager pushed.
    agent.write_dfir_config(
        "profiles:\n  dfir-hunt:\n    description: hunt\n    expect: srcip\n"
        "    ar_timeout_s: 600\n    steps:\n      - collector: yara\n        params:\n"
        f"          pushed_rules: true\n          roots: [{scan}]\n"
        "          scan_processes: false\n")
    agent.install_dfir(edit=True)
    agent.ar_log.touch()  # OSSEC's logcollector opens the files that exist when it starts
    manager.start()
    agent.start()

    def diagnostics() -> str:
        return (f"=== manager\n{manager.diagnostics()}\n=== agent\n{agent.diagnostics()}\n"
                f"=== agent_control -l\n{_agent_control(manager, '-l').stdout}")
    shared = agent.path("etc", "shared", "dfir-finding_test.yar")
    wait_for("the pushed rules on the agent", lambda: shared.exists() and
             shared.read_text() == RULE_TEXT, 120, interval_s=1, detail=diagnostics)
    ar_conf = agent.path("etc", "shared", "ar.conf")
    wait_for("ar.conf with dfir-hunt on the agent", lambda: ar_conf.exists() and
             "dfir-hunt" in ar_conf.read_text(), 60, interval_s=1, detail=diagnostics)
    wait_for("the agent's logcollector to read its active-responses.log",
             lambda: agent.logcollector_reads(agent.ar_log), 60, detail=diagnostics)
    assert "dfir-hunt600" in _agent_control(manager, "-L").stdout
    res = _agent_control(manager, "-b", "203.0.113.77", "-f", "dfir-hunt600", "-u", "001")
    assert res.returncode == 0, res.stdout + res.stderr
    alert = manager.wait_alert(("100911",), f"name={RULE_NAME} ", timeout_s=120)
    assert alert.location.startswith("(dfir-agent) 127.0.0.1->"), alert.location
    assert "command=dfir-hunt " in alert.log and "_203.0.113.77 " in alert.log
    import hashlib
    assert f"rules_sha256={hashlib.sha256(RULE_TEXT.encode()).hexdigest()}" in alert.log
    view = json.loads(manager.dfir("fleet", "--json").stdout)
    assert RULE_NAME in json.dumps(view["agents"]["dfir-agent"])


def _unsafe() -> bool:
    from ossec_dfir.ossec.install import unsafe_code_paths
    return bool(unsafe_code_paths())



def test_real_logtest_aggregates_a_storm_of_hits(ossec_local) -> None:
    """Many YARA hits from one place: the single alerts, and one composite (100920) on the 10th."""
    tree = ossec_local
    tree.install_dfir(manager=True, edit=False)
    lines = [findings.format_finding(
        findings.Finding("yara_file", "yara/01/matches.jsonl", f"rule_{i}", None, f"/tmp/f{i}",
                         "e" * 64, "2" * 64), "dfir-yara", "20261202T101500Z_203.0.113.7")
        for i in range(10)]
    results = tree.logtest(lines)
    assert [r["rule"] for r in results] == ["100911"] * 9 + ["100920"], results
    assert results[-1]["level"] == "13"
