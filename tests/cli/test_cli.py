"""The ossec-dfir command: install, collect, incidents, show, export, status, stop."""
from __future__ import annotations

import grp
import hashlib
import json
import os
import subprocess
import sys
import tarfile

import pytest

from ossec_dfir.cli.main import main


def run_cli(config_file, *args):
    proc = subprocess.run([sys.executable, "-m", "ossec_dfir.cli.main", "--config", str(config_file),
                           *args], capture_output=True, text=True, timeout=120)
    return proc


def test_collect_then_list_show_export(config_file, tmp_path, capsys):
    assert main(["--config", str(config_file), "collect", "host", "--srcip", "192.0.2.33"]) == 0
    out = capsys.readouterr().out
    assert "host" in out and "outcome: complete" in out
    assert main(["--config", str(config_file), "incidents", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["id"].endswith("_192.0.2.33") and row["outcomes"] == ["complete"]
    assert main(["--config", str(config_file), "show", row["id"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [c["collector"] for c in shown["collectors"]] == ["host"]
    assert {f["path"] for f in shown["files"]} == {"incident.json", "host/01/host.json"}
    archive = tmp_path / "out.tar.gz"
    assert main(["--config", str(config_file), "export", row["id"], "-o", str(archive)]) == 0
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (tmp_path / "out.tar.gz.sha256").read_text() == f"{digest}  out.tar.gz\n"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert f"{row['id']}/manifest.jsonl" in names and f"{row['id']}/host/01/host.json" in names
    # never overwritten
    assert main(["--config", str(config_file), "export", row["id"], "-o", str(archive)]) == 2


def test_collect_bad_param_and_bad_ip_exit_2(config_file):
    assert run_cli(config_file, "collect", "host", "--param", "nope=1").returncode == 2
    assert run_cli(config_file, "collect", "host", "--srcip", "1.2.3.4;id").returncode == 2
    assert run_cli(config_file, "collect", "no-such-thing").returncode == 2


def test_status_and_stop(config_file):
    proc = run_cli(config_file, "status", "--json")
    assert proc.returncode == 0
    status = json.loads(proc.stdout)
    assert status["running"] == [] and status["queued"] == 0 and status["busy_workers"] == 0
    assert run_cli(config_file, "stop", "192.0.2.9").returncode == 0
    assert run_cli(config_file, "stop", "::1").returncode == 0
    assert run_cli(config_file, "stop", "host").returncode == 0
    assert run_cli(config_file, "stop", "not-an-ip").returncode == 2


def test_install_into_an_ossec_tree(tmp_path, capsys):
    ossec = tmp_path / "ossec"
    (ossec / "etc").mkdir(parents=True)
    (ossec / "etc" / "ossec.conf").write_text("<ossec_config>\n</ossec_config>\n")
    assert main(["install", "--ossec-dir", str(ossec), "--flavor", "ossec",
                 "--edit-ossec-conf", "--allow-unsafe-paths"]) == 0
    out = capsys.readouterr().out
    assert "Add to " not in out  # it edited the file itself
    script = ossec / "active-response" / "bin" / "dfir-host"
    st = os.stat(script)
    assert st.st_mode & 0o777 == 0o750
    if os.geteuid() == 0:
        assert st.st_uid == 0
        try:
            assert st.st_gid in (0, grp.getgrnam("ossec").gr_gid)
        except KeyError:
            pass
    first = script.read_text().splitlines()[0]
    assert first == f"#!{sys.executable} -IS"
    conf = (ossec / "etc" / "ossec.conf").read_text()
    assert "<executable>dfir-host</executable>" in conf and "<expect>srcip</expect>" in conf
    backups = [p for p in (ossec / "etc").iterdir() if p.name.startswith("ossec.conf.bak-")]
    assert len(backups) == 1
    assert (ossec / "etc" / "ossec-dfir.yml").exists()
    # a second install edits nothing more
    assert main(["install", "--ossec-dir", str(ossec), "--edit-ossec-conf",
                 "--allow-unsafe-paths"]) == 0
    assert (ossec / "etc" / "ossec.conf").read_text() == conf


def test_check_config(config_file, capsys):
    rules = config_file.parent / "rules"
    rules.mkdir(mode=0o700)
    (rules / "ok.yar").write_text('rule ok { strings: $a = "x" condition: $a }\n')
    config_file.write_text(config_file.read_text() + f"collectors:\n  yara:\n"
                                                     f"    rules_dirs: [{rules}]\n")
    assert main(["--config", str(config_file), "check-config"]) == 0
    assert "dfir-host" in capsys.readouterr().out
    (rules / "broken.yar").write_text('rule ok2 {\n strings: $a = "x"\n condition: $b\n}\n')
    assert main(["--config", str(config_file), "check-config"]) == 2
    out = capsys.readouterr().out
    assert "broken.yar: line " in out and "undefined string" in out


@pytest.mark.parametrize("args", [["verify", "20990101T000000Z_nothing"], ["show", "x"]])
def test_missing_incident(config_file, args):
    assert run_cli(config_file, *args).returncode != 0


def test_install_refuses_code_others_can_change(tmp_path, monkeypatch, capsys):
    from ossec_dfir.ossec import install
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(install, "unsafe_code_paths",
                        lambda: ["/home/user/venv: owned by uid 1000, not root"])
    ossec = tmp_path / "ossec"
    assert main(["install", "--ossec-dir", str(ossec)]) == 2
    assert "refusing to install" in capsys.readouterr().out
    assert not (ossec / "active-response").exists()


def test_unsafe_interpreter_paths_are_found(tmp_path):
    from ossec_dfir.trust import path_problems as writable_by_others
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    target = shared / "venv" / "bin" / "python3"
    target.parent.mkdir(parents=True)
    target.write_text("")
    problems = writable_by_others(str(target))
    assert any(str(shared) in p and "writable by group or others" in p for p in problems)
    if os.geteuid() == 0:
        os.chown(target, 65534, 65534)
        assert any("owned by uid 65534" in p for p in writable_by_others(str(target)))
