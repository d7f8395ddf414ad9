"""Issue 12 item 3: alert fields the collection does not act on never refuse the invocation.

An attacker chooses the user (``ssh 'adm!n'@host``), and a local user the
name of the file FIM reports; neither may cost the incident. Only the action,
the srcip and (for a profile about the file, ``expect: filename``) an unusable
alert filename are refused; other profiles drop such a name with a note.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ossec_dfir.ar import entry
from tests.conftest import wait_collector_entry


@pytest.fixture
def ar_setup(tmp_path, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    conf = tmp_path / "c.yml"
    conf.write_text(
        f"evidence_root: {tmp_path}/ev\nlog_file: {tmp_path}/ar.log\nreserve_bytes: 0\n"
        "max_workers: 1\ncheck_keys: false\nprofiles:\n"
        "  t-host:\n    steps:\n      - collector: host\n"
        "  t-files:\n    steps:\n      - collector: files\n"
        f"        params: {{roots: [{www}], timeout_s: 30}}\n"
        "  t-files-file:\n    expect: filename\n    steps:\n      - collector: files\n"
        f"        params: {{roots: [{www}], timeout_s: 30}}\n")
    monkeypatch.setenv("OSSEC_DFIR_CONFIG", str(conf))
    return tmp_path


def wazuh(srcip: str, path: bytes | None = None, **data: str) -> bytes:
    alert = {"timestamp": "2026-11-29T01:00:00.000+0000", "rule": {"id": "5712"},
             "id": "1764376501.1", "agent": {"id": "000", "name": "web\x1b[2J1"},
             "location": "/var/log/a\x07uth.log", "data": {"srcip": srcip, **data}}
    if path is not None:
        alert["syscheck"] = {"path": "@PATH@"}
    line = json.dumps({"command": "add", "parameters": {"alert": alert}}).encode()
    if path is not None:
        line = line.replace(b"@PATH@", path)
    return line + b"\n"


def invoke(command: str, line: bytes) -> int:
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        os.write(w, line)
        return entry.main(command, [f"/x/active-response/bin/{command}"], stdin_fd=r,
                          stdout_fd=out_w)
    finally:
        for fd in (r, w, out_r, out_w):
            os.close(fd)


def triggers(evidence: Path, ip: str) -> list[dict]:
    (inc,) = evidence.glob(f"*_{ip}")
    return [json.loads(x) for x in (inc / "triggers.jsonl").read_text().splitlines()]


def test_unused_fields_are_kept_escaped_and_the_incident_collected(ar_setup):
    evidence = ar_setup / "ev"
    code = invoke("t-host", wazuh("203.0.113.31", path=b"/var/www/x\\u001b.php",
                                  srcuser="adm!n"))
    assert code == 0
    (trigger,) = triggers(evidence, "203.0.113.31")
    assert trigger["status"] == "accepted" and trigger["user"] == "adm!n"
    assert trigger["agent_name"] == "web\\x1b[2J1"
    assert trigger["location"] == "/var/log/a\\x07uth.log"
    # a control character is valid in a file name: the file is kept (and named exactly)
    assert trigger["filename"] == "/var/www/x\x1b.php" and trigger["filename_refused"] is None
    noted = {n.split(":")[0] for n in trigger["notes"]}
    assert {"user", "parameters.alert.agent.name", "parameters.alert.location"} <= noted
    step = wait_collector_entry(evidence, "203.0.113.31", "host")
    assert step["outcome"] == "complete"


def test_only_a_profile_about_the_file_refuses_an_unusable_name(ar_setup):
    evidence = ar_setup / "ev"
    code = invoke("t-files-file", wazuh("203.0.113.32", path=b"/var/www/../etc/x.php"))
    assert code == 2
    assert not list(evidence.glob("*_203.0.113.32"))
    log = (ar_setup / "ar.log").read_text()
    assert "refused: filename: must be an absolute, normalised path" in log
    # a profile keyed by the srcip goes on without the name, and says why
    assert invoke("t-files", wazuh("203.0.113.32", path=b"/var/www/../etc/x.php")) == 0
    (trigger,) = triggers(evidence, "203.0.113.32")
    assert trigger["filename"] is None and "normalised" in trigger["filename_refused"]
    assert any(n.startswith("parameters.alert.syscheck.path") for n in trigger["notes"])


def test_a_non_utf8_file_name_from_fim_is_collected(ar_setup):
    evidence = ar_setup / "ev"
    www = ar_setup / "www"
    raw = os.fsencode(www) + b"/sh\xffell.php"
    with open(raw, "wb") as fh:
        fh.write(b"<?php system($_GET['c']);")
    code = invoke("t-files", wazuh("203.0.113.33", path=raw, srcuser="adm!n"))
    assert code == 0
    (trigger,) = triggers(evidence, "203.0.113.33")
    assert trigger["filename"] == f"{www}/sh\\xffell.php"
    assert bytes.fromhex(trigger["filename_hex"]) == raw
    step = wait_collector_entry(evidence, "203.0.113.33", "files")
    assert step["outcome"] == "complete", step.get("reason")
    (inc,) = evidence.glob("*_203.0.113.33")
    (results,) = inc.glob("files/*/results.jsonl")
    records = [json.loads(x) for x in results.read_bytes().decode("utf-8").splitlines()]
    alert = [r for r in records if r["source"] == "alert"]
    assert alert and bytes.fromhex(alert[0]["path_hex"]) == raw and alert[0]["sha256"]
