"""Issue 12 item 1: names that are not UTF-8 cost at most their own item, recorded escaped.

A local user (nobody) plants files, a directory and a running process whose
names hold undecodable bytes and a terminal escape; every collector that meets
them still collects the rest, and every evidence file stays strict UTF-8 JSON
with the name as ``\\xNN`` plus the exact bytes in ``<field>_hex``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ossec_dfir.evidence import text as _text
from ossec_dfir.evidence.verify import verify
from tests.conftest import evidence_path
from tests.hostile.unprivileged import as_nobody, drop_to_nobody, public_dir

MARK = "DFIR" + "-NAMES-" + "MARK-" + "41c0de"
RULES = f"""
rule names_marker {{ strings: $m = "{MARK}" condition: $m }}
rule names_php {{ condition: extension == ".php" and filesize > 0 }}
"""
BAD_DIR = b"dir\xc3("
BAD_FILE = b"\xff\xfe-evil\x1b[2J.php"


def strict_lines(path: Path) -> list[dict]:
    """Read JSON lines that must be strict UTF-8 and hold no lone surrogate escapes."""
    data = path.read_bytes()
    data.decode("utf-8", "strict")
    assert b"\\ud" not in data
    return [json.loads(line) for line in data.splitlines()]


def plant(pub: Path) -> None:
    """As nobody: a webshell beside a non-UTF-8 file in a non-UTF-8 directory."""
    def files() -> None:
        base = os.fsencode(pub)
        os.mkdir(base + b"/" + BAD_DIR)
        with open(base + b"/" + BAD_DIR + b"/" + BAD_FILE, "wb") as fh:
            fh.write(b"<?php " + MARK.encode())
        with open(base + b"/\x80.txt", "wb") as fh:
            fh.write(b"plain")
        with open(base + b"/webshell.php", "wb") as fh:
            fh.write(b"<?php system($_GET['c']); // " + MARK.encode())
    as_nobody(files)


def escaped_bad(pub: Path) -> str:
    return f"{pub}/dir\\xc3(/\\xff\\xfe-evil\x1b[2J.php"


def raw_bad(pub: Path) -> bytes:
    return os.fsencode(pub) + b"/" + BAD_DIR + b"/" + BAD_FILE


def test_text_scheme_is_exact_and_documented():
    name = os.fsdecode(b"/tmp/a\xff\xc3(b\\x")
    assert _text.escape(name) == "/tmp/a\\xff\\xc3(b\\x"
    assert _text.escape("caf\u00e9") == "caf\u00e9"  # valid UTF-8 unchanged
    assert _text.escape_bytes(b"a\xff") == "a\\xff"
    rec = _text.clean({"path": name, "nested": [name], "ok": "x"})
    assert rec["path"] == "/tmp/a\\xff\\xc3(b\\x" and rec["nested"] == [rec["path"]]
    assert bytes.fromhex(rec["path_hex"]) == b"/tmp/a\xff\xc3(b\\x"
    assert "ok_hex" not in rec
    line = _text.json_line({"path": name})
    line.decode("ascii")
    assert b"\\ud" not in line
    assert _text.display("a\x1b[2Jb\u202e\r") == "a\\x1b[2Jb\\u202e\\x0d"


def test_yara_and_files_collect_around_non_utf8_names(run_collector, tmp_path):
    pytest.importorskip("yara")
    rules = tmp_path / "rules"
    rules.mkdir(mode=0o700)
    (rules / "names.yar").write_text(RULES)
    (rules / "names.yar").chmod(0o600)
    with public_dir() as pub:
        plant(pub)
        outcome, incident = run_collector("yara", {
            "timeout_s": 60.0, "scan_processes": False, "use_cache": False,
            "rules_dirs": [str(rules)], "roots": [str(pub)]})
        assert outcome.outcome == "complete", outcome.reason
        run_dir = outcome.files[0].rsplit("/", 1)[0]
        matches = strict_lines(evidence_path(incident, f"{run_dir}/matches.jsonl"))
        hits = {(m["path"], m["rule"]) for m in matches}
        assert (f"{pub}/webshell.php", "names_marker") in hits  # the step was not lost
        assert (escaped_bad(pub), "names_marker") in hits       # nor the hostile file
        assert (escaped_bad(pub), "names_php") in hits          # externals got the name
        bad = next(m for m in matches if m["path"] == escaped_bad(pub))
        assert bytes.fromhex(bad["path_hex"]) == raw_bad(pub)
        summary = json.loads(evidence_path(incident, f"{run_dir}/summary.json").read_bytes())
        assert summary["files"]["scanned"] == 3 and summary["files"]["skipped"] == {}

        outcome, incident = run_collector("files", {"roots": [str(pub)], "action": "hash"})
        assert outcome.outcome == "complete", outcome.reason
        run_dir = outcome.files[0].rsplit("/", 1)[0]
        found = {r["path"]: r for r in
                 strict_lines(evidence_path(incident, f"{run_dir}/results.jsonl"))}
        assert {f"{pub}/webshell.php", escaped_bad(pub), f"{pub}/\\x80.txt"} <= set(found)
        assert bytes.fromhex(found[escaped_bad(pub)]["path_hex"]) == raw_bad(pub)
        assert found[escaped_bad(pub)]["sha256"]
        # the manifest, verify and the report all take the incident as it is
        assert verify(incident.path).ok
        from ossec_dfir.report.build import build_report, render_html, render_markdown
        report = build_report(incident.path)
        for doc in (render_markdown(report), render_html(report)):
            doc.encode("utf-8", "strict")
            assert "\x1b" not in doc


def test_triage_lists_a_process_with_a_non_utf8_name(run_collector):
    with public_dir() as pub:
        exe = os.fsencode(pub) + b"/sl\xffp\x1b[2J"
        shutil.copyfile("/bin/sleep", exe)
        os.chmod(exe, 0o755)
        proc = subprocess.Popen([exe, "60"], preexec_fn=drop_to_nobody,
                                env={"X": os.fsdecode(b"\xfe\n")})
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(f"/proc/{proc.pid}/exe") or \
                    os.readlink(f"/proc/{proc.pid}/exe").startswith("/proc"):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            outcome, incident = run_collector("triage", {"timeout_s": 60}, srcip=None)
        finally:
            proc.kill()
            proc.wait(timeout=10)
    assert outcome.outcome in ("complete", "partial"), outcome.reason
    procs = {r["pid"]: r for r in
             strict_lines(evidence_path(incident, "triage/01/processes.jsonl"))}
    assert len(procs) > 2
    rec = procs[proc.pid]
    assert rec["name"] == "sl\\xffp\x1b[2J"
    assert rec["cmdline"][0] == f"{pub}/sl\\xffp\x1b[2J"
    assert rec["exe"] == f"{pub}/sl\\xffp\x1b[2J"
    assert bytes.fromhex(rec["exe_hex"]) == exe
    strict_lines(evidence_path(incident, "triage/01/open_files.jsonl"))
    assert verify(incident.path).ok
