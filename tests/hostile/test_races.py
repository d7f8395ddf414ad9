"""Symlinks and races: links planted where evidence will be written, a
pre-created entry with the incident's name, unsafe roots. Nothing is written
outside the incident directory and the problems are reported."""
from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone

from ossec_dfir.cli.main import main
from ossec_dfir.ar.simulate import run_ossec
from ossec_dfir.evidence.verify import verify
from tests.ar.test_entry import Tree


def test_link_planted_at_the_next_run_directory(config_file, evidence_root, tmp_path, capsys):
    assert main(["--config", str(config_file), "collect", "host", "--srcip", "192.0.2.61"]) == 0
    [incident] = [p for p in evidence_root.iterdir() if not p.name.startswith(".")]
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, incident / "host" / "02")  # where the next run would write
    assert main(["--config", str(config_file), "collect", "host", "--srcip", "192.0.2.61"]) == 0
    assert list(outside.iterdir()) == []
    assert (incident / "host" / "03" / "host.json").is_file()
    report = verify(str(incident))
    assert [(p["kind"], p["path"]) for p in report.problems] == [("extra", "host/02")]
    capsys.readouterr()


def test_precreated_entries_with_the_incident_name(tmp_path):
    tree = Tree(tmp_path)
    tree.evidence.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.mkdir()
    now = datetime.now(timezone.utc)
    planted = []
    for second in range(0, 8):
        name = (now + timedelta(seconds=second)).strftime("%Y%m%dT%H%M%SZ") + "_192.0.2.62"
        os.symlink(target, tree.evidence / name)
        planted.append(name)
    assert run_ossec([tree.script(), "add", "-", "192.0.2.62", "-", "-"]).returncode == 0
    tree.wait_outcome()
    real = [p for p in tree.evidence.iterdir()
            if p.name.endswith("192.0.2.62-1") and p.is_dir() and not p.is_symlink()]
    assert len(real) == 1
    assert list(target.iterdir()) == []
    assert verify(str(real[0])).ok


def test_evidence_root_that_is_a_link_is_refused(tmp_path):
    tree = Tree(tmp_path)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.symlink(real, tree.evidence)
    res = run_ossec([tree.script(), "add", "-", "192.0.2.63", "-", "-"])
    assert res.returncode == 3
    assert list(real.iterdir()) == []
    assert "evidence store" in tree.log_lines()[0]


def test_state_queue_planted_as_link(tmp_path):
    tree = Tree(tmp_path)
    (tree.evidence / ".state").mkdir(parents=True, mode=0o700)
    os.chmod(tree.evidence, 0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tree.evidence / ".state" / "queue")
    res = run_ossec([tree.script(), "add", "-", "192.0.2.64", "-", "-"])
    assert res.returncode == 3
    assert list(elsewhere.iterdir()) == []


def test_log_file_planted_as_link_is_not_followed(tmp_path):
    tree = Tree(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    tree.log.parent.mkdir(parents=True, exist_ok=True)
    tree.log.unlink(missing_ok=True)  # the empty log install created, replaced
    os.symlink(victim, tree.log)
    res = run_ossec([tree.script(), "add", "-", "192.0.2.65", "-", "-"])
    assert res.returncode == 0
    time.sleep(2)
    assert victim.read_text() == "untouched\n"
