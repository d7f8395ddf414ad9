"""Issue 12 item 19: a file built to make content_regex backtrack costs that file only."""
from __future__ import annotations

import json

from ossec_dfir.collectors.files.regex import BoundedRegex
from ossec_dfir.errors import RegexTimeout
from tests.conftest import evidence_path
from tests.hostile.unprivileged import as_nobody, public_dir

PATTERN = r"(a+)+$|eval\("


def test_bounded_regex_gives_up_and_recovers():
    with BoundedRegex(PATTERN.encode(), 0.5) as rx:
        assert rx.search(b"x eval(1)").start() == 2
        try:
            rx.search(b"a" * 40 + b"!")
        except RegexTimeout:
            pass
        else:
            raise AssertionError("the backtracking search was not bounded")
        assert rx.timeouts == 1
        found = rx.search(b"zz eval(2)")  # a fresh helper answers the next file
        assert found.start() == 3 and found.group(0) == b"eval("
        assert rx.search(b"nothing") is None


def test_backtracking_file_is_skipped_and_the_search_completes(run_collector):
    with public_dir() as pub:
        def plant() -> None:
            (pub / "a-bomb.txt").write_bytes(b"a" * 40 + b"!")
            (pub / "b-shell.php").write_bytes(b"<?php eval($_POST['x']);")
            (pub / "c-clean.txt").write_bytes(b"nothing here")
        as_nobody(plant)
        outcome, incident = run_collector("files", {
            "roots": [str(pub)], "content_regex": PATTERN, "content_regex_timeout_s": 1.0,
            "timeout_s": 120})
    assert outcome.outcome == "partial"
    assert "content_regex: 1 file(s) skipped" in outcome.reason
    run_dir = outcome.files[0].rsplit("/", 1)[0]
    records = [json.loads(x) for x in
               evidence_path(incident, f"{run_dir}/results.jsonl").read_text().splitlines()]
    assert [r["path"].rsplit("/", 1)[1] for r in records] == ["b-shell.php"]
    assert records[0]["regex_match"] == {"offset": 6, "text": "eval("}
    walk = outcome.summary["walk"]
    assert walk["skipped"] == {"content_regex_timeout": 1}
    assert walk["skipped_examples"]["content_regex_timeout"][0].endswith("a-bomb.txt")
    assert outcome.summary["rejected_by"] == {"content_regex": 1}
    (entry,) = [e for e in incident.manifest()
                if e["type"] == "file" and e["path"].endswith("results.jsonl")]
    assert entry["outcome"] == "complete"  # written whole, not cut by a kill
