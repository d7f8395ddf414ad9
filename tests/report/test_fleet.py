"""The fleet view: ossec-dfir alerts of the manager, per agent, hostile values escaped."""
from __future__ import annotations

import json

import pytest

from ossec_dfir.ar import findings
from ossec_dfir.cli.main import main
from ossec_dfir.report import alerts, fleet

INC = "20261202T140757Z_203.0.113.77"
HOSTILE = '/srv/<script>alert(1)</script> "x=1\x1b[2J'
FINDING = findings.format_finding(
    findings.Finding("yara_file", "yara/01/matches.jsonl", "hunt_rule", None, HOSTILE,
                     "e" * 64, "2" * 64), "dfir-hunt", INC)
OUTCOME = (f"ossec-dfir: outcome=complete command=dfir-hunt srcip=203.0.113.77 incident={INC} "
           f"steps=yara:complete manifest_sha256={'c' * 64} reason=\"-\" redelivered=1")
AGENT_LOC = "(web-1) 127.0.0.1->/var/ossec/logs/active-responses.log"
FORGED = "ossec-dfir: finding=yara_file command=x incident=FORGED evidence=- name=n pid=- " \
         "path=/p sha256=- rules_sha256=-"


def block(n: int, loc: str, rule: str, level: int, line: str) -> str:
    return (f"** Alert 1796220522.{n}: mail  - ossec-dfir,\n2026 Dec 02 14:08:42 {loc}\n"
            f"Rule: {rule} (level {level}) -> 'x'\n{line}\n\n")


@pytest.fixture
def alerts_log(tmp_path):
    text = (block(1, AGENT_LOC, "100911", 12, FINDING) + block(2, AGENT_LOC, "100901", 3, OUTCOME)
            # the same text through syslog (logger): another file, not ours
            + block(3, "(web-1) 127.0.0.1->/var/log/syslog", "100911", 12, FORGED)
            + block(4, "vm->ossec-monitord", "502", 3, "ossec: Ossec started.")
            + block(5, "manager->/var/ossec/logs/active-responses.log", "100916", 7,
                    findings.format_omitted(4, "dfir-hunt", INC)))
    path = tmp_path / "alerts.log"
    path.write_text(text)
    return path


def test_alerts_log_gives_incidents_findings_and_tips_per_agent(alerts_log):
    found = alerts.read_alerts(str(alerts_log), "log")
    assert [(a.agent, a.rule_id) for a in found] == [("web-1", "100911"), ("web-1", "100901"),
                                                     ("manager", "100916")]
    view = fleet.build(found)
    inc = view["agents"]["web-1"]["incidents"][INC]
    assert inc["commands"] == ["dfir-hunt"] and inc["manifest_sha256"] == "c" * 64
    assert [o["outcome"] for o in inc["outcomes"]] == ["complete"]
    assert inc["findings"][0]["path"] == HOSTILE and inc["findings"][0]["name"] == "hunt_rule"
    assert inc["findings"][0]["rules_sha256"] == "2" * 64
    assert view["agents"]["manager"]["incidents"][INC]["findings_left_out"] == 4
    assert "FORGED" not in json.dumps(view)


def test_text_and_html_escape_what_the_agents_sent(alerts_log, tmp_path):
    view = fleet.build(alerts.read_alerts(str(alerts_log), "log"))
    text = fleet.render_text(view)
    assert "\x1b" not in text and "hunt_rule" in text and INC in text
    page = fleet.render_html(view, str(alerts_log))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_alerts_json_of_ossec_and_wazuh(tmp_path):
    path = tmp_path / "alerts.json"
    path.write_text("\n".join(json.dumps(d) for d in [
        {"rule": {"level": 12, "sidid": 100911}, "TimeStamp": 1796220522000,
         "location": AGENT_LOC, "full_log": FINDING},
        {"timestamp": "2026-12-02T14:08:43.000+0000", "rule": {"id": "100901", "level": 3},
         "agent": {"id": "002", "name": "db-2"},
         "location": "/var/ossec/logs/active-responses.log", "full_log": OUTCOME},
        {"rule": {"level": 12, "sidid": 100911}, "location": "/var/log/syslog",
         "full_log": FORGED}]) + "\nnot json\n")
    found = alerts.read_alerts(str(path), "json")
    assert [(a.agent, a.rule_id) for a in found] == [("web-1", "100911"), ("db-2", "100901")]


def test_fleet_command(alerts_log, tmp_path, capsys):
    assert main(["fleet", "--alerts", str(alerts_log), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["agents"]) == ["manager", "web-1"]
    assert main(["fleet", "--alerts", str(alerts_log), "--since", "2026-12-03"]) == 0
    assert capsys.readouterr().out == "no ossec-dfir alerts\n"  # the sample is from 2026-12-02
    assert main(["fleet", "--alerts", str(alerts_log), "--since", "2026-12-02T14:00:00"]) == 0
    assert "agent web-1: 1 incident(s)" in capsys.readouterr().out
    page = tmp_path / "fleet.html"
    assert main(["fleet", "--alerts", str(alerts_log), "--html", str(page)]) == 0
    assert "hunt_rule" in page.read_text()
    assert main(["fleet", "--alerts", str(alerts_log), "--since", "yesterday"]) == 2
