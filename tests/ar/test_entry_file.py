"""End to end: alerts about a file (OSSEC expect filename) and about the host."""
from __future__ import annotations

import hashlib
import json
import os

from ossec_dfir.ar.simulate import ossec_argv, run_ossec, run_wazuh, wazuh_message
from ossec_dfir.evidence.verify import verify
from tests.ar.test_entry import Tree
from tests.ar.test_ossec_filename import analysisd_message, execd_argv

FILE_PROFILES = """
profiles:
  dfir-files-file:
    expect: filename
    stateful: false
    steps:
      - collector: host
      - collector: files
        params: {roots: [], include_alert_file: true, action: hash}
  dfir-host-any:
    expect: none
    stateful: false
    steps:
      - collector: host
"""


def _results(tree: Tree, incident: str) -> list[dict]:
    [path] = (tree.evidence / incident).glob("files/*/results.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_syscheck_file_with_space_and_command_substitution_is_searched(tmp_path):
    tree = Tree(tmp_path, FILE_PROFILES)
    target = tmp_path / "www"
    target.mkdir()
    name = target / "x$(id) it's a\tb  c.php"
    name.write_bytes(b"<?php system($_GET['c']); ?>")
    argv = [tree.script("dfir-files-file")] + execd_argv(analysisd_message(
        "dfir-files-file0", os.fsencode(name), location="(web1) 10.0.0.5->syscheck",
        forwarded=True))
    res = run_ossec(argv, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0
    outcome = tree.wait_outcome()[0]
    assert "outcome=complete" in outcome, outcome
    [incident] = tree.incidents()
    key = "file-" + hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    assert incident.endswith("_" + key)
    trig = json.loads((tree.evidence / incident / "triggers.jsonl").read_text())
    assert trig["filename"] == str(name) and trig["location"] == "(web1) 10.0.0.5->syscheck"
    found = _results(tree, incident)
    assert found[0]["path"] == str(name)
    assert found[0]["sha256"] == hashlib.sha256(name.read_bytes()).hexdigest()
    assert verify(str(tree.evidence / incident)).ok


def test_simulated_execd_escapes_like_ossec(tmp_path):
    tree = Tree(tmp_path, FILE_PROFILES)
    name = tmp_path / "a b;c.sh"
    name.write_text("x")
    argv = ossec_argv(tree.script("dfir-files-file"), "add", None, alert_id="1795912782.3",
                      rule_id="554", location="syscheck", filename=str(name))
    assert "\\ " in " ".join(argv) and argv[-1].endswith("b\\;c.sh")
    assert run_ossec(argv).returncode == 0
    tree.wait_outcome()
    [incident] = tree.incidents()
    assert _results(tree, incident)[0]["path"] == str(name)


def test_filename_profile_refuses_an_unusable_filename(tmp_path):
    tree = Tree(tmp_path, FILE_PROFILES)
    for slots in (["syscheck", "/tmp/x$(id)"], ["syscheck", "-"], ["syscheck", "/a\\b"],
                  ["syscheck", "/var/www/" + "a" * 1015]):
        res = run_ossec([tree.script("dfir-files-file"), "add", "-", "-", "1795912782.2",
                         "554"] + slots)
        assert res.returncode == 2
    assert tree.incidents() == []
    lines = tree.log_lines()
    assert len(lines) == 4 and all("refused: filename:" in line for line in lines)
    assert "unescaped '$'" in lines[0] and "no filename" in lines[1]
    assert "does not escape" in lines[2] and "cut" in lines[3]


def test_other_profiles_go_on_without_the_unusable_filename(tmp_path):
    tree = Tree(tmp_path, FILE_PROFILES)
    res = run_ossec([tree.script("dfir-host"), "add", "-", "203.0.113.20", "1795912782.4",
                     "5710", "/var/log/auth.log", "/tmp/x$(id)"])
    assert res.returncode == 0
    tree.wait_outcome()
    [line] = tree.invocation_lines()
    assert "accepted" in line and "alert filename dropped: not as OSSEC escapes it" in line
    [incident] = tree.incidents()
    assert incident.endswith("_203.0.113.20")
    trig = json.loads((tree.evidence / incident / "triggers.jsonl").read_text())
    assert trig["filename"] is None and "unescaped" in trig["filename_refused"]


def test_host_alert_without_ip_or_file_is_keyed_by_host(tmp_path):
    tree = Tree(tmp_path, FILE_PROFILES)
    # A sudo alert on a local install: no srcip, no filename.
    argv = [tree.script("dfir-host-any")] + execd_argv(analysisd_message(
        "dfir-host-any0", None, location="/var/log/auth.log", user="root", rule="5402"))
    assert run_ossec(argv).returncode == 0
    tree.wait_outcome()
    [incident] = tree.incidents()
    assert incident.endswith("_host")


def test_wazuh_check_keys_sends_the_file_key(tmp_path):
    tree = Tree(tmp_path, FILE_PROFILES.replace("stateful: false", "stateful: true"))
    msg = wazuh_message("add", None, "554", "1764376501.9", "dfir-files-file")
    msg["parameters"]["alert"]["syscheck"] = {"path": "/var/www/a b$(id).php"}
    res = run_wazuh(tree.script("dfir-files-file"), msg, "abort")
    key = "file-" + hashlib.sha256(b"/var/www/a b$(id).php").hexdigest()[:16]
    assert res.returncode == 0 and res.check_keys["parameters"]["keys"] == [key]
    assert tree.incidents() == []
