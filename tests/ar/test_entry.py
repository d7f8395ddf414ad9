"""End to end: the real AR executables run with execd's argv and Wazuh's stdin."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ossec_dfir import config as config_mod
from ossec_dfir.ossec import install
from ossec_dfir.ar.simulate import ossec_argv, run_ossec, run_wazuh, wazuh_message
from ossec_dfir.evidence.verify import verify
from tests.conftest import AR_DIR


class Tree:
    """A private OSSEC tree with ossec-dfir installed and its own evidence root."""

    def __init__(self, base: Path, extra_config: str = "") -> None:
        self.ossec = base / "ossec"
        self.evidence = base / "evidence"
        self.conf = self.ossec / "etc" / "ossec-dfir.yml"
        self.conf.parent.mkdir(parents=True)
        self.conf.write_text(f"evidence_root: {self.evidence}\nreserve_bytes: 0\n"
                             f"check_keys_timeout_s: 2\n{extra_config}")
        self.log = self.ossec / "logs" / "active-responses.log"
        cfg = config_mod.load(str(self.conf), str(self.ossec))
        install.install(cfg, str(self.ossec), False, "ossec")

    def script(self, name: str = "dfir-host") -> str:
        return str(self.ossec / "active-response" / "bin" / name)

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def invocation_lines(self) -> list[str]:
        return [line for line in self.log_lines() if not line.startswith("ossec-dfir: ")]

    def incidents(self) -> list[str]:
        if not self.evidence.exists():
            return []
        return sorted(p.name for p in self.evidence.iterdir() if not p.name.startswith("."))

    def wait_outcome(self, count: int = 1, timeout_s: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            lines = [x for x in self.log_lines() if x.startswith("ossec-dfir: outcome=")]
            if len(lines) >= count:
                return lines
            time.sleep(0.1)
        raise AssertionError(f"no outcome line in {timeout_s} s: {self.log_lines()}")


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path)


def test_ossec_alert_argv_end_to_end(tree):
    argv = [tree.script(), "add", "-", "203.0.113.5", "1795912782.2", "5710",
            "/var/log/auth.log", "-"]
    res = run_ossec(argv, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0
    outcome = tree.wait_outcome()[0]
    assert "outcome=complete" in outcome and "command=dfir-host" in outcome
    [line] = tree.invocation_lines()
    assert "add - 203.0.113.5 1795912782.2 5710 /var/log/auth.log -" in line
    assert "-- accepted: incident=" in line
    [incident] = tree.incidents()
    assert incident.endswith("_203.0.113.5")
    path = tree.evidence / incident
    report = verify(str(path))
    assert report.ok, report.problems
    assert outcome.split("manifest_sha256=")[1].split()[0] == report.tip_sha256
    trig = json.loads((path / "triggers.jsonl").read_text().splitlines()[0])
    assert trig["rule_id"] == "5710" and trig["alert_id"] == "1795912782.2"
    assert trig["location"] == "/var/log/auth.log" and trig["protocol"] == "ossec"
    assert (path / "host/01/host.json").exists()
    assert os.stat(path).st_mode & 0o777 == 0o700


def test_manual_agent_control_form(tree):
    res = run_ossec(ossec_argv(tree.script(), "add", "198.51.100.4", manual=True))
    assert res.returncode == 0
    tree.wait_outcome()
    [incident] = tree.incidents()
    trig = json.loads((tree.evidence / incident / "triggers.jsonl").read_text())
    assert trig["manual"] is True and trig["rule_id"] is None


def test_location_with_spaces(tree):
    argv = [tree.script(), "add", "root", "198.51.100.5", "1764376501.123456", "5712",
            "(web1)", "1.2.3.4->/var/log/secure", "-"]
    assert run_ossec(argv).returncode == 0
    tree.wait_outcome()
    [incident] = tree.incidents()
    trig = json.loads((tree.evidence / incident / "triggers.jsonl").read_text())
    assert trig["location"] == "(web1) 1.2.3.4->/var/log/secure" and trig["user"] == "root"


def test_wazuh_check_keys_continue(tree):
    msg = wazuh_message("add", "2001:db8::7", "5712", "1764376501.5", "dfir-host")
    res = run_wazuh(tree.script(), msg, "continue")
    assert res.returncode == 0
    assert res.check_keys == {"version": 1, "origin": {"name": "dfir-host",
                                                       "module": "active-response"},
                              "command": "check_keys", "parameters": {"keys": ["2001_db8__7"]}}
    assert "outcome=complete" in tree.wait_outcome()[0]
    assert tree.incidents()[0].endswith("_2001_db8__7")


def test_wazuh_check_keys_abort_does_nothing(tree):
    msg = wazuh_message("add", "203.0.113.8", "5712", "1764376501.6", "dfir-host")
    res = run_wazuh(tree.script(), msg, "abort")
    assert res.returncode == 0 and res.check_keys["command"] == "check_keys"
    assert tree.incidents() == []
    [line] = tree.invocation_lines()
    assert "abort" in line


def test_wazuh_without_handshake(tmp_path):
    tree = Tree(tmp_path, "check_keys: false\n")
    msg = wazuh_message("add", "203.0.113.9", "5712", None, "dfir-host")
    res = run_wazuh(tree.script(), msg, None)
    assert res.returncode == 0 and res.check_keys is None
    tree.wait_outcome()
    assert len(tree.incidents()) == 1


def test_wazuh_no_answer_to_check_keys_still_collects(tree):
    msg = wazuh_message("add", "203.0.113.10", "5712", None, "dfir-host")
    res = run_wazuh(tree.script(), msg, None)  # execd never answers
    assert res.returncode == 0
    tree.wait_outcome()


def test_checkout_executable_with_env_config(tmp_path, config_file):
    res = run_ossec([str(AR_DIR / "dfir-host"), "add", "-", "192.0.2.77", "-", "-"],
                    env={"OSSEC_DFIR_CONFIG": str(config_file), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0
    log = (tmp_path / "ar.log").read_text()
    assert "accepted" in log


def test_checkout_executable_without_config_refuses(tmp_path):
    res = run_ossec([sys.executable, str(AR_DIR / "dfir-host"), "add", "-", "192.0.2.78", "-"],
                    env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 2


HOSTILE_ARGV = [
    ["add", "-", "1.2.3.4;id", "-", "-"], ["add", "-", "$(touch${IFS}/tmp/pwn)", "-", "-"],
    ["add", "-", "../../etc/passwd", "-", "-"], ["add", "-", "--help", "-", "-"],
    ["add", "-", "-x", "-", "-"], ["add", "-", "evil.example.com", "-", "-"],
    ["add", "-", "A" * 65536, "-", "-"],
    ["add", "-", "1.2.3.4\x01", "-", "-"], ["rm", "-", "1.2.3.4", "-", "-"],
]
# Fields the collection does not act on (issue 12 item 3): kept escaped, noted, never refused.
KEPT_ARGV = [
    (["add", "--help", "203.0.113.41", "-", "-"], "user", "--help"),
    (["add", "-x", "203.0.113.42", "-", "-"], "user", "-x"),
    (["add", "`id`", "203.0.113.43", "-", "-"], "user", "`id`"),
    (["add", "-", "203.0.113.44", "$(id)", "5712"], "alert_id", None),
    (["add", "-", "203.0.113.45", "-", "-", "B" * 65536], "location", "B" * 4096),
]


@pytest.mark.parametrize("args", HOSTILE_ARGV, ids=lambda a: repr(a)[:40])
def test_hostile_argv_exit_2_no_evidence_one_log_line(tree, args):
    res = run_ossec([tree.script()] + args)
    assert res.returncode == 2
    assert tree.incidents() == []
    lines = tree.log_lines()
    assert len(lines) == 1 and "refused" in lines[0]
    assert all(ord(c) < 128 for c in lines[0]) and len(lines[0]) <= 4096


@pytest.mark.parametrize("args,field,value", KEPT_ARGV, ids=lambda a: repr(a)[:40])
def test_unused_argv_fields_never_refuse(tree, args, field, value):
    res = run_ossec([tree.script()] + args)
    assert res.returncode == 0
    (incident,) = tree.incidents()
    lines = tree.log_lines()
    assert "accepted" in lines[0]
    assert all(ord(c) < 128 for c in lines[0]) and len(lines[0]) <= 4096
    trigger = json.loads(
        (tree.evidence / incident / "triggers.jsonl").read_text().splitlines()[0])
    assert trigger[field] == value and trigger["notes"]


def test_non_utf8_argv_refused(tree):
    proc = subprocess.run([os.fsencode(tree.script()), b"add", b"-", b"1.2.3.4\xff\xfe", b"-"],
                          stdin=subprocess.DEVNULL, capture_output=True)
    assert proc.returncode == 2 and tree.incidents() == []
    assert len(tree.log_lines()) == 1


HOSTILE_STDIN = [
    b"", b"\n", b'{"version":1,"command":"add","parameters":{"alert":{"data":{"srcip":"1.2',
    b"\xff\xfe\xfd\n", b'{"command":"add","parameters":{"alert":{"data":{"srcip":"--help"}}}}\n',
    b'{"command":"add","parameters":{"alert":{"data":{"srcip":"a.b.c"}}}}\n',
    b'{"command":"add","parameters":{"alert":{"data":{"srcip":"1.2.3.4\\u0000"}}}}\n',
    b'{"command":"add","parameters":{"alert":{"data":{"srcip":"' + b"9" * 70000 + b'"}}}}\n',
    b"null\n", b'{"command":";reboot","parameters":{}}\n',
]


@pytest.mark.parametrize("line", HOSTILE_STDIN, ids=lambda x: repr(x)[:30])
def test_hostile_wazuh_stdin_exit_2(tree, line):
    res = run_wazuh(tree.script(), line, None, answer_timeout_s=0.5)
    assert res.returncode == 2 and res.check_keys is None
    assert tree.incidents() == []
    assert len(tree.log_lines()) == 1 and "refused" in tree.log_lines()[0]


def test_no_stdin_at_all(tree):
    res = run_ossec([tree.script()])  # no argv, stdin /dev/null
    assert res.returncode == 2 and tree.incidents() == []
    assert len(tree.log_lines()) == 1


def test_bad_config_exit_2_and_logged(tree):
    tree.conf.write_text(tree.conf.read_text() + "max_workers: lots\nprofiles: {x: {}}\n")
    res = run_ossec([tree.script(), "add", "-", "192.0.2.1", "-", "-"])
    assert res.returncode == 2
    [line] = tree.invocation_lines()
    assert "max_workers" in line and "profiles.x" in line
    [outcome] = [x for x in tree.log_lines() if x.startswith("ossec-dfir: ")]
    assert outcome.startswith("ossec-dfir: outcome=failed command=dfir-host srcip=- incident=-")


def test_unsafe_evidence_root_exit_3(tree):
    tree.evidence.mkdir(mode=0o700)
    os.chmod(tree.evidence, 0o777)
    res = run_ossec([tree.script(), "add", "-", "192.0.2.1", "-", "-"])
    assert res.returncode == 3
    [line] = tree.invocation_lines()
    assert "evidence store" in line and "writable by group or others" in line
    [outcome] = [x for x in tree.log_lines() if x.startswith("ossec-dfir: ")]
    assert outcome.startswith("ossec-dfir: outcome=failed command=dfir-host srcip=192.0.2.1 ")


def test_repeated_alerts_join_one_incident(tree):
    for n in range(3):
        assert run_ossec([tree.script(), "add", "-", "192.0.2.50", f"17643765{n}.1",
                          "5712"]).returncode == 0
    tree.wait_outcome(3)
    [incident] = tree.incidents()
    triggers = (tree.evidence / incident / "triggers.jsonl").read_text().splitlines()
    assert len(triggers) == 3
    assert verify(str(tree.evidence / incident)).ok


def test_an_internal_error_leaves_its_line_a_failed_outcome_and_no_traceback(
        tmp_path, config_file, monkeypatch):
    from ossec_dfir.ar import entry

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")
    monkeypatch.setenv("OSSEC_DFIR_CONFIG", str(config_file))
    monkeypatch.setattr(entry, "accept", broken)
    code = entry.main("dfir-host", ["/x/active-response/bin/dfir-host", "add", "-",
                                    "192.0.2.90", "-", "-"])
    assert code == 4
    line, outcome = (tmp_path / "ar.log").read_text().splitlines()
    assert "internal error RuntimeError: simulated bug" in line
    assert outcome.startswith("ossec-dfir: outcome=failed command=dfir-host ")
    assert "internal error RuntimeError: simulated bug" in outcome
