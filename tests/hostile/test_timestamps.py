"""Issue 12 item 18: ISO timestamps are truncated to the microsecond, never rounded."""
from __future__ import annotations

import json
import os
from decimal import Decimal

import pytest

from ossec_dfir.evidence.store import utc_iso, utc_iso_ns, utc_now
from tests.conftest import evidence_path
from tests.hostile.unprivileged import as_nobody, public_dir

EDGE_NS = 1764376554_999999999  # 2025-11-29T00:35:54.999999999Z
EDGE_ISO = "2025-11-29T00:35:54.999999Z"


def test_formatters_truncate():
    assert utc_iso_ns(EDGE_NS) == EDGE_ISO
    assert utc_iso(Decimal(EDGE_NS) / 10**9) == EDGE_ISO
    assert utc_iso(1764376554.9999998) == EDGE_ISO     # fromtimestamp() rounds this to :55
    assert utc_iso(1764376554.5) == "2025-11-29T00:35:54.500000Z"
    assert utc_iso(0) == "1970-01-01T00:00:00.000000Z"
    assert utc_iso_ns(-1) == "1969-12-31T23:59:59.999999Z"
    assert utc_iso(None) is None and utc_iso_ns(None) is None
    assert utc_now().endswith("Z") and len(utc_now()) == len(EDGE_ISO)


@pytest.mark.parametrize("collector", ["files", "yara"])
def test_file_times_in_evidence_stay_in_their_second(run_collector, tmp_path, collector):
    if collector == "yara":
        pytest.importorskip("yara")
    rules = tmp_path / "rules"
    rules.mkdir(mode=0o700)
    (rules / "t.yar").write_text('rule t { strings: $a = "edge" condition: $a }\n')
    (rules / "t.yar").chmod(0o600)
    with public_dir() as pub:
        def plant() -> None:
            (pub / "edge.txt").write_text("edge")
            os.utime(pub / "edge.txt", ns=(EDGE_NS, EDGE_NS))
        as_nobody(plant)
        params = {"roots": [str(pub)]}
        if collector == "yara":
            params.update(rules_dirs=[str(rules)], scan_processes=False, use_cache=False)
        outcome, incident = run_collector(collector, params)
    assert outcome.outcome == "complete", outcome.reason
    run_dir = outcome.files[0].rsplit("/", 1)[0]
    name = "results.jsonl" if collector == "files" else "matches.jsonl"
    (rec,) = [json.loads(x) for x in
              evidence_path(incident, f"{run_dir}/{name}").read_text().splitlines()]
    assert rec["mtime"] == EDGE_ISO and rec["mtime_ns"] == EDGE_NS
    if collector == "files":
        assert rec["atime"] == EDGE_ISO and rec["atime_ns"] == EDGE_NS
