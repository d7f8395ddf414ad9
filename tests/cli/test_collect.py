"""ossec-dfir collect: the AR's outcome line, --detach through the AR's worker path,
and a capture in the foreground that says what it does and ends on stop or Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ossec_dfir.ar.simulate import run_ossec
from ossec_dfir.cli.main import main
from ossec_dfir.evidence.verify import verify
from tests.ar.test_entry import Tree
from tests.conftest import wait_for

needs_root = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                                reason="captures need root (CI runs as root)")
CAPTURE = ("profiles:\n  dfir-pcap:\n    steps:\n      - collector: pcap\n"
           "        params: {duration_s: 120, timeout_s: 180, interface: lo, summary: false}\n")


def outcome_fields(line: str) -> dict[str, str]:
    assert line.startswith("ossec-dfir: outcome="), line
    head, _, reason = line.partition(' reason="')
    fields = dict(part.split("=", 1) for part in head[len("ossec-dfir: "):].split())
    fields["reason"] = reason.rstrip('"')
    return fields


def cli(tree: Tree, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ossec_dfir.cli.main", "--config",
                           str(tree.conf), *args], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 120), stdin=subprocess.DEVNULL, **kw)



def test_collect_writes_the_same_outcome_line_as_the_ar(tmp_path):
    tree = Tree(tmp_path)
    assert run_ossec([tree.script("dfir-host"), "add", "-", "192.0.2.40", "1795912782.2",
                      "5710", "/var/log/auth.log", "-"]).returncode == 0
    ar_line = tree.wait_outcome()[0]
    proc = cli(tree, "collect", "dfir-host", "--srcip", "192.0.2.41")
    assert proc.returncode == 0, proc.stderr
    assert "outcome: complete" in proc.stdout
    [ar, mine] = [outcome_fields(x) for x in tree.wait_outcome(2)]
    assert ar == outcome_fields(ar_line)
    assert list(mine) == list(ar)  # same fields, same order: the shipped decoder matches
    assert mine["outcome"] == "complete" and mine["command"] == "dfir-host"
    assert mine["srcip"] == "192.0.2.41" and mine["steps"] == "host:complete"
    incident = tree.evidence / mine["incident"]
    report = verify(str(incident))
    assert report.ok and mine["manifest_sha256"] == report.tip_sha256


def test_collect_of_a_file_is_keyed_by_the_file(tmp_path):
    tree = Tree(tmp_path)
    proc = cli(tree, "collect", "host", "--filename", "/tmp/a b$(id).php")
    assert proc.returncode == 0, proc.stderr
    [line] = tree.wait_outcome()
    assert "_file-" in outcome_fields(line)["incident"]
    assert cli(tree, "collect", "host", "--filename", "relative/x").returncode == 2
    assert cli(tree, "collect", "host", "--detach").returncode == 2  # not a profile
    assert cli(tree, "collect", "dfir-host", "--detach", "--param", "x=1").returncode == 2


@needs_root
def test_detach_queues_through_the_worker_and_returns_at_once(tmp_path):
    tree = Tree(tmp_path, CAPTURE)
    proc = cli(tree, "collect", "dfir-pcap", "--srcip", "127.0.0.6", "--detach", timeout=30)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("incident ") and first.endswith("_127.0.0.6")
    assert "queued: trigger" in proc.stdout and "worker" in proc.stdout
    assert [x for x in tree.log_lines() if x.startswith("ossec-dfir: ")] == []  # still running

    def capturing() -> bool:
        status = json.loads(cli(tree, "status", "--json").stdout)
        return any(r["collector"] == "pcap" for r in status["running"])
    assert wait_for(capturing), "the detached capture never ran"
    assert cli(tree, "stop", "127.0.0.6").returncode == 0
    fields = outcome_fields(tree.wait_outcome(1, timeout_s=45)[0])
    assert fields["outcome"] == "complete" and fields["command"] == "dfir-pcap"
    assert first.split()[1] == fields["incident"]


@needs_root
def test_foreground_capture_says_what_it_does_and_ctrl_c_stops_it(tmp_path):
    tree = Tree(tmp_path, CAPTURE)
    proc = subprocess.Popen([sys.executable, "-m", "ossec_dfir.cli.main", "--config",
                             str(tree.conf), "collect", "dfir-pcap", "--srcip", "127.0.0.7"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().startswith("incident ")
        notice = proc.stdout.readline()
        assert "pcap: runs until `ossec-dfir stop 127.0.0.7`, Ctrl-C, or duration_s=120 s" \
            in notice and "--detach" in notice

        def capturing() -> bool:
            status = json.loads(cli(tree, "status", "--json").stdout)
            return any(r["collector"] == "pcap" for r in status["running"])
        assert wait_for(capturing), "the capture never started"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopping the capture" in out and "outcome: complete" in out
    fields = outcome_fields(tree.wait_outcome(1)[0])
    assert fields["outcome"] == "complete" and fields["steps"] == "pcap:complete"


def test_stop_accepts_a_file_key(config_file, capsys):
    assert main(["--config", str(config_file), "stop", "file-0123456789abcdef"]) == 0
    assert "file-0123456789abcdef" in capsys.readouterr().out
    assert main(["--config", str(config_file), "stop", "file-../x"]) == 2
