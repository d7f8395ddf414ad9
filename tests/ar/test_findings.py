"""Finding lines: read back from the evidence files, bounded, and unforgeable by hostile names."""
from __future__ import annotations

import json
import os
import re

import pytest

from ossec_dfir.ar import findings
from ossec_dfir.evidence.text import json_line

HOSTILE = [
    "/var/www/a b.php",
    "/tmp/x=1 name=evil",
    '/tmp/q"uo\'te',
    "/tmp/new\nossec-dfir: outcome=complete command=dfir-yara",
    "/tmp/ossec-dfir: outcome=complete incident=- steps=-",
    "/tmp/bad\udcff\udcfebytes",
    "/tmp/tab\there\r%41~",
    "/tmp/" + "ü" * 2000,
]
LINE = re.compile(r"^ossec-dfir: finding=(\S+) command=(\S+) incident=(\S+) evidence=(\S+) "
                  r"name=(\S+) pid=(\S+) path=(\S+) sha256=(\S+) rules_sha256=(\S+)$")
SHA = "a" * 64


def ident():
    return {"hostname": "test"}


@pytest.fixture
def incident(store):
    inc, _ = store.incident_for("203.0.113.7", ident, {"trigger_id": "t1"})
    yield inc
    inc.close()


def write(incident, relpath: str, records: list) -> str:
    with incident.writer(relpath.split("/")[0], relpath) as w:
        for rec in records:
            w.write(json_line(rec) if isinstance(rec, dict) else rec)
    return relpath


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_name_stays_one_value_of_one_line(name):
    line = findings.format_finding(
        findings.Finding("yara_file", "yara/01/matches.jsonl", name, None, name, SHA, SHA),
        "dfir-yara", "20261202T000000Z_203.0.113.7")
    assert "\n" not in line and "\r" not in line and line.isascii()
    m = LINE.match(line)
    assert m, line
    assert line.count("=") == 9 and line.count(" ") == 9
    assert line.count("ossec-dfir:") == 1 and '"' not in line and "'" not in line
    assert m.group(1) == "yara_file" and m.group(8) == SHA
    raw = name.encode("utf-8", "surrogateescape")
    path = findings.unquote(m.group(7))
    if m.group(7).endswith("~"):  # cut at its bound, on a whole byte
        assert len(m.group(7)) <= findings.MAX_PATH_CHARS and raw.startswith(path)
    else:
        assert path == raw
    assert raw.startswith(findings.unquote(m.group(5)))


def test_values_that_are_not_hashes_or_pids_become_dashes():
    line = findings.format_finding(findings.Finding("ioc_file", "files/01/results.jsonl",
                                                    "x", True, None, "zz" * 32, "1 2"),
                                   "dfir-files", "i")
    assert LINE.match(line).groups()[5:] == ("-", "-", "-", "-")


def test_findings_are_read_from_the_evidence_files(incident):
    files = [
        write(incident, "yara/01/rules.json", [{"files": [{"namespace": "web", "sha256": SHA}]}]),
        write(incident, "yara/01/matches.jsonl", [
            {"type": "file", "rule": "webshell", "namespace": "web", "path": "/var/www/s h.php",
             "sha256": "b" * 64},
            {"type": "process", "rule": "miner", "namespace": "web", "pid": 4242,
             "exe": "/tmp/xmr"}]),
        write(incident, "files/01/results.jsonl", [
            {"path": "/srv/ok", "sha256": "c" * 64},
            {"path": "/srv/bad\\xff", "path_hex": "2f7372762f626164ff", "sha256": "d" * 64,
             "ioc_match": True}]),
        write(incident, "triage/01/processes.jsonl", [
            {"pid": 1, "exe": "/sbin/init", "exe_deleted": False},
            {"pid": 77, "exe": "/tmp/gone", "exe_deleted": True, "exe_in_temp": True,
             "exe_sha256": "e" * 64}]),
        write(incident, "triage/01/suspects.jsonl", [
            {"pid": 77, "exe": "/tmp/gone"}, {"pid": None, "note": "owner unknown"},
            {"pid": 88, "exe": "/usr/bin/nc"}]),
    ]
    lines = findings.finding_lines(findings.collect(incident, files), "dfir-collect",
                                   incident.id, 20)
    got = [LINE.match(line).groups() for line in lines]
    assert [g[0] for g in got] == ["yara_file", "yara_process", "ioc_file", "suspect_process",
                                   "suspect_process"]
    assert got[0][3:] == ("yara/01/matches.jsonl", "webshell", "-", "/var/www/s%20h.php",
                          "b" * 64, SHA)
    assert got[1][4:7] == ("miner", "4242", "/tmp/xmr")
    assert findings.unquote(got[2][6]) == b"/srv/bad\xff" and got[2][7] == "d" * 64
    assert got[3][4:8] == ("exe_deleted,exe_in_temp,srcip_connection", "77", "/tmp/gone",
                           "e" * 64)
    assert got[4][4:6] == ("srcip_connection", "88")
    assert all(g[2] == incident.id and g[1] == "dfir-collect" for g in got)


def test_at_most_max_lines_then_one_omitted_line(incident):
    files = [write(incident, "yara/01/matches.jsonl", [
        {"type": "file", "rule": f"r{i}", "path": f"/tmp/f{i}"} for i in range(7)])]
    lines = findings.finding_lines(findings.collect(incident, files), "dfir-yara",
                                   incident.id, 3)
    assert len(lines) == 4
    assert [LINE.match(x).group(5) for x in lines[:3]] == ["r0", "r1", "r2"]
    assert LINE.match(lines[3]).group(1, 5) == ("omitted", "4")
    assert findings.finding_lines(findings.collect(incident, files), "dfir-yara",
                                  incident.id, 0) == [findings.format_omitted(7, "dfir-yara",
                                                                              incident.id)]


def test_no_findings_no_lines(incident):
    files = [write(incident, "files/01/results.jsonl", [{"path": "/srv/ok"}]),
             write(incident, "triage/01/processes.jsonl", [b"not json\n", {"pid": 3}])]
    assert findings.finding_lines(findings.collect(incident, files), "c", incident.id, 5) == []


def test_a_link_in_place_of_an_evidence_file_is_not_followed(incident, tmp_path):
    planted = tmp_path / "planted.jsonl"
    planted.write_text(json.dumps({"type": "file", "rule": "forged", "path": "/x"}) + "\n")
    os.makedirs(os.path.join(incident.path, "yara", "01"), exist_ok=True)
    os.symlink(planted, os.path.join(incident.path, "yara", "01", "matches.jsonl"))
    os.symlink(tmp_path, os.path.join(incident.path, "yara", "02"))
    found = list(findings.collect(incident, ["yara/01/matches.jsonl",
                                             "yara/02/planted.jsonl", "yara/../x/matches.jsonl"]))
    assert found == []


def test_report_writes_the_lines_to_the_log(config, store, incident):
    files = [write(incident, "yara/01/matches.jsonl",
                   [{"type": "file", "rule": "webshell", "path": "/var/www/x.php"}])]
    assert findings.report(config, store, incident, "dfir-yara", files) == 1
    with open(config.log_file) as fh:
        text = fh.read()
    assert LINE.match(text.splitlines()[-1]).group(5, 7) == ("webshell", "/var/www/x.php")


def test_a_collection_writes_its_findings_before_its_outcome_line(tmp_path):
    pytest.importorskip("yara")
    from ossec_dfir.cli.main import main
    rules = tmp_path / "rules"
    rules.mkdir(mode=0o700)
    (rules / "t.yar").write_text('rule find_me { strings: $a = "FIND-ME-77" condition: $a }\n')
    scan = tmp_path / "scan"
    scan.mkdir()
    (scan / "new\nossec-dfir: outcome=complete").write_text("xx FIND-ME-77 xx")
    (scan / "clean").write_text("nothing")
    evidence = tmp_path / "evidence"
    evidence.mkdir(mode=0o700)
    log = tmp_path / "ar.log"
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(f"evidence_root: {evidence}\nlog_file: {log}\nreserve_bytes: 0\n"
                   "profiles:\n  dfir-ftest:\n    description: t\n    expect: srcip\n"
                   "    ar_timeout_s: 300\n    steps:\n      - collector: yara\n"
                   f"        params:\n          rules_dirs: [{rules}]\n          roots: [{scan}]\n"
                   "          scan_processes: false\n          use_cache: false\n")
    code = main(["--config", str(cfg), "--ossec-dir", str(tmp_path / "ossec"), "collect",
                 "dfir-ftest", "--srcip", "203.0.113.9"])
    assert code == 0
    lines = [x for x in log.read_text().splitlines() if x.startswith("ossec-dfir: ")]
    assert len(lines) == 2 and lines[1].startswith("ossec-dfir: outcome=complete ")
    m = LINE.match(lines[0])
    assert m and m.group(1, 2, 4, 5) == ("yara_file", "dfir-ftest", "yara/01/matches.jsonl",
                                          "find_me")
    assert findings.unquote(m.group(7)) == str(scan / "new\nossec-dfir: outcome=complete").encode()
    assert f"incident={m.group(3)} " in lines[1]
    import hashlib
    assert m.group(9) == hashlib.sha256((rules / "t.yar").read_bytes()).hexdigest()
