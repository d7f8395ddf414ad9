"""The shipped decoder and outcome rules against the real ossec-logtest: single outcomes,
the dropped note, and the storm rules (aggregation of repeats of one command).

ossec-logtest keeps the rules' state between the lines of one run, as
analysisd does, so a sequence of lines on its stdin exercises the frequency
rules for real. The OSSEC tree is a root-owned local install of these tests
(build-ossec is idempotent: built once per machine).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ossec_dfir.ar import delivery, log as arlog
from ossec_dfir.ossec import manager
from tests.conftest import ROOT

BUILD = ROOT.parent / "shared" / "ossec" / "build-ossec"
TREE = Path("/opt/ossec-dfir-test-rules")
PRISTINE_RULES = TREE / ".ossec-dfir-pristine-local_rules.xml"


@pytest.fixture(scope="module")
def logtest() -> Path:
    """Build the tree once, install the packaged decoder and rules; return ossec-logtest."""
    if os.geteuid() != 0:
        pytest.skip("needs root: build-ossec installs OSSEC")
    if not BUILD.exists():
        pytest.skip(f"build-ossec not found at {BUILD} (the shared OSSEC test material)")
    proc = subprocess.run([str(BUILD), "--type", "local", "--dir", str(TREE)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if not PRISTINE_RULES.exists():
        shutil.copyfile(TREE / "rules" / "local_rules.xml", PRISTINE_RULES)
    (TREE / "etc" / "local_decoder.xml").write_text(manager.packaged_xml(manager.DECODER_XML))
    (TREE / "rules" / "local_rules.xml").write_text(
        PRISTINE_RULES.read_text() + manager.packaged_xml(manager.RULES_XML))
    return TREE / "bin" / "ossec-logtest"


def fired(logtest: Path, lines: list[str]) -> list[tuple[str, int, dict[str, str]]]:
    """Feed lines to one ossec-logtest run; return (rule id, level, decoded fields) per line."""
    proc = subprocess.run([str(logtest), "-q"], input="".join(x + "\n" for x in lines),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    # ossec-logtest prints its report on stderr
    blocks = proc.stdout.split("**Phase 1: Completed pre-decoding.")[1:]
    assert len(blocks) == len(lines), proc.stdout[-2000:]
    out = []
    for block in blocks:
        rule = re.search(r"Rule id: '(\d+)'\s+Level: '(\d+)'", block)
        fields = dict(re.findall(r"^\s+(\w+): '([^']*)'$", block.split("**Phase 3")[0], re.M))
        out.append((rule.group(1), int(rule.group(2)), fields) if rule else ("-", 0, fields))
    return out


def line(outcome: str, command: str = "dfir-pcap") -> str:
    return (f"ossec-dfir: outcome={outcome} command={command} srcip=203.0.113.5 "
            f"incident=20261129T012533Z_203.0.113.5 steps=pcap:{outcome} "
            f"manifest_sha256={'0' * 64} reason=\"x\"")


def test_each_outcome_fires_its_rule_and_decodes_command_into_id(logtest):
    results = fired(logtest, [line(o) for o in ("complete", "partial", "failed")] +
                    [delivery.dropped_note(7),
                     arlog.format_outcome(arlog.failed_fields("-", None, "worker cannot start"))])
    assert [(r, lvl) for r, lvl, _ in results] == [
        ("100901", 3), ("100902", 7), ("100903", 10), ("100904", 10), ("100903", 10)]
    fields = results[0][2]
    assert fields["id"] == "dfir-pcap" and fields["dfir_command"] == "dfir-pcap"
    assert fields["dfir_outcome"] == "complete" and "srcip" not in fields  # no AR loop
    assert fields["dfir_srcip"] == "203.0.113.5"
    for rule_id, (level, outcome) in manager.OUTCOME_RULES.items():
        assert fired(logtest, [line(outcome)])[0][:2] == (rule_id, level)


@pytest.mark.parametrize("storm_id", sorted(manager.STORM_RULES))
def test_ten_outcomes_of_one_command_raise_one_storm_alert(logtest, storm_id):
    level, single = manager.STORM_RULES[storm_id]
    outcome = manager.OUTCOME_RULES[single][1]
    single_level = manager.OUTCOME_RULES[single][0]
    results = [(r, lvl) for r, lvl, _ in fired(logtest, [line(outcome)] * 25)]
    # the 10th and the 20th become the storm alert, two levels above; the count restarts
    expected = [(single, single_level)] * 25
    expected[9] = expected[19] = (storm_id, level)
    assert results == expected
    assert level > single_level


def test_storm_counts_one_command_only(logtest):
    # 9 of each of two commands, interleaved: no storm; the 10th of dfir-pcap is one
    lines = [line("failed", c) for _ in range(9) for c in ("dfir-pcap", "dfir-triage")]
    results = [r for r, _, _ in fired(logtest, lines + [line("failed", "dfir-pcap")])]
    assert results == ["100903"] * 18 + ["100907"]


def test_failed_and_dropped_stay_high_in_a_storm(logtest):
    results = fired(logtest, [line("failed")] * 30 + [delivery.dropped_note(1)] * 12)
    assert all(lvl >= 10 for _, lvl, _ in results)
    assert [r for r, _, _ in results[30:]] == ["100904"] * 12  # a dropped note is never grouped
