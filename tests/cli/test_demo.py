"""make demo's end to end run: a simulated alert, the incident verifies, a report is written."""
from __future__ import annotations

import os

from ossec_dfir.cli.demo import run_demo


def test_demo_end_to_end(tmp_path, capsys):
    directory = tmp_path / "demo"
    assert run_demo(str(directory), None, 180) == 0
    out = capsys.readouterr().out
    assert "-> exit 0 after" in out and ": OK (" in out
    log = (directory / "ossec" / "logs" / "active-responses.log").read_text()
    outcome = [x for x in log.splitlines() if x.startswith("ossec-dfir: outcome=")][0]
    for step in ("memory:", "triage:", "host:", "yara:", "files:", "pcap:"):
        assert step in outcome
    reports = [p for p in os.listdir(directory) if p.endswith(".report.html")]
    assert len(reports) == 1
    assert os.stat(directory / reports[0]).st_mode & 0o777 == 0o600
