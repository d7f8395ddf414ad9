"""Issue 12 item 19: verify and show escape untrusted names, export stays out of the
incident, and Markdown reports pass no ticket-system mentions or references through."""
from __future__ import annotations

import os

from ossec_dfir.report.build import build_report, render_markdown
from ossec_dfir.report.md import md
from tests.cli.test_cli import run_cli
from tests.conftest import make_request

# A name that, printed raw, moves up a line, erases it and prints a fake verdict.
FAKE = "x\x1b[1A\x1b[2K\r\u202eOK\x9b2J"


def hostile_incident(run_collector, evidence_root):
    """An incident with hostile trigger fields (as a CLI request: no parser in the way)."""
    req = make_request("192.0.2.71", rule_id=FAKE, alert_id=FAKE, user="@admin #1 " + FAKE,
                       location="!2 ~bug @channel")
    outcome, incident = run_collector("host", {}, request=req)
    assert outcome.outcome == "complete"
    incident.append_trigger({"trigger_id": "t-1", "status": "accepted", **req.to_record()})
    planted = os.path.join(incident.path, "host", "01", FAKE)
    with open(planted, "w") as fh:  # an extra file with the hostile name
        fh.write("planted")
    return incident


def no_terminal_controls(text: str) -> None:
    assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) <= 0x9f for c in text), text
    assert "\u202e" not in text


def test_verify_and_show_escape_names_and_keep_the_verdict(run_collector, config_file,
                                                          evidence_root):
    incident = hostile_incident(run_collector, evidence_root)
    proc = run_cli(config_file, "verify", incident.id)
    assert proc.returncode == 1
    no_terminal_controls(proc.stdout)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("EXTRA") and "x\\x1b[1A\\x1b[2K\\x0d\\u202eOK\\x9b2J" in lines[0]
    assert lines[-1].startswith(f"{incident.id}: PROBLEMS")
    proc = run_cli(config_file, "show", incident.id)
    assert proc.returncode == 0
    no_terminal_controls(proc.stdout)
    assert "rule=x\\x1b[1A" in proc.stdout


def test_export_into_the_incident_is_refused(run_collector, config_file, evidence_root):
    req = make_request("192.0.2.72")
    _, incident = run_collector("host", {}, request=req)
    for target in (os.path.join(incident.path, "x.tar.gz"),
                   os.path.join(incident.path, "host", "01", "x.tar.gz")):
        proc = run_cli(config_file, "export", incident.id, "-o", target)
        assert proc.returncode == 2 and "inside the incident directory" in proc.stderr
        assert not os.path.exists(target) and not os.path.exists(target + ".sha256")
    assert run_cli(config_file, "verify", incident.id).returncode == 0


def test_markdown_passes_no_mentions_or_references(run_collector, config_file, evidence_root):
    incident = hostile_incident(run_collector, evidence_root)
    doc = render_markdown(build_report(incident.path))
    no_terminal_controls(doc)
    for trigger in ("@admin", "@channel", "#1", "!2", "~bug"):
        assert trigger not in doc.replace("\\", "")
    assert "@&#8203;admin" in doc
    assert md("mail root@example.org, see #12 and GH-3") == \
        "mail root@&#8203;example.org, see \\#&#8203;12 and GH&#8203;-3"
