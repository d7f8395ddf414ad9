"""First come is not first served (issue 12 item 4): decoys cannot use up a walk's budgets.

An unprivileged user plants more empty files in the first root than the whole
file budget; a webshell sits in a later root. The walk gives every root its
share first, so the webshell is scanned (yara) and found (files), and the
alert's directory is walked before any root.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ossec_dfir.collectors.walk import Walk
from tests.collectors.files.test_files import alert_request, results
from tests.collectors.yara.test_yara import MARK, matches_of, rules_dir, summary_of  # noqa: F401
from tests.conftest import make_request

NOBODY = 65534
# The venv may sit where nobody cannot reach it; the planting script needs no library.
PLANTER = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
DECOYS = 3000
BUDGET = 1000  # fewer than the decoys: a first-come walk never leaves the first root

PLANT = ("import os, sys\n"
         "d, n, suffix = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n"
         "for i in range(n):\n"
         "    os.close(os.open(os.path.join(d, f'decoy{i:06d}{suffix}'), "
         "os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))\n")


@pytest.fixture
def planted():
    """Yield (drop, www): drop holds DECOYS empty files a non-root user made; www a webshell."""
    if os.geteuid() != 0:
        pytest.skip("planting as another user needs root")
    base = Path(tempfile.mkdtemp(prefix="dfir-budgets-", dir="/tmp"))
    try:
        base.chmod(0o755)
        drop = base / "drop"
        drop.mkdir()
        drop.chmod(0o1777)  # like /tmp
        www = base / "www" / "html" / "uploads"
        www.mkdir(parents=True)

        def plant(suffix: str) -> None:
            subprocess.run([PLANTER, "-I", "-c", PLANT, str(drop), str(DECOYS), suffix],
                           user=NOBODY, group=NOBODY, check=True, timeout=120, cwd="/")
        yield drop, www, plant
    finally:
        shutil.rmtree(base)


def test_yara_scans_the_webshell_behind_more_decoys_than_max_files(run_collector, rules_dir,  # noqa: F811
                                                                   planted):
    drop, www, plant = planted
    plant("")
    assert len(os.listdir(drop)) == DECOYS > BUDGET
    assert {os.stat(drop / n).st_uid for n in os.listdir(drop)} == {NOBODY}
    shell = www / "shell.php"
    shell.write_bytes(b"<?php /* " + MARK.encode() + b" */ ?>\n")
    outcome, incident = run_collector("yara", {
        "timeout_s": 120, "use_cache": False, "scan_processes": False,
        "rules_dirs": [str(rules_dir)], "roots": [str(drop), str(www.parent.parent)],
        "max_files": BUDGET}, request=make_request("127.0.0.2"))
    assert {(m["path"], m["rule"]) for m in matches_of(incident, outcome)} == {
        (str(shell), "test_marker"), (str(shell), "test_php_extension")}
    files = summary_of(incident, outcome)["files"]
    first, second = files["sources"]
    assert first["root"] == str(drop) and first["share"] == BUDGET // 2
    assert first["turn"].startswith(f"share of max_files={BUDGET} used")
    assert first["resumed"] is True and second["turn"] == "walked to the end"
    assert files["scanned"] == BUDGET  # the rest of the budget went back to the decoys
    assert outcome.outcome == "partial" and "max_files" in outcome.reason


def test_files_finds_the_webshell_behind_decoys_matching_the_conditions(run_collector,
                                                                       planted):
    """Decoys that match (*.php) cannot use up max_files (matches) nor max_walk_files."""
    drop, www, plant = planted
    plant(".php")
    shell = www / "shell.php"
    shell.write_bytes(b"<?php system($_GET['c']); ?>\n")
    outcome, incident = run_collector("files", {
        "roots": [str(drop), str(www.parent.parent)], "name_regex": r"\.php$",
        "action": "hash", "max_walk_files": BUDGET, "max_files": 100, "timeout_s": 120},
        request=alert_request())
    found = [r["path"] for r in results(incident, outcome)]
    assert str(shell) in found
    first = outcome.summary["walk"]["sources"][0]
    assert first["turn"] == "share of max_files=100 matches used (50)"
    assert len(found) == 100  # round two gave the rest back to the first root
    assert outcome.outcome == "partial"


def test_the_alerts_directory_comes_before_every_root(run_collector, rules_dir, planted):  # noqa: F811
    """A FIM alert names one upload; its sibling (same directory) is scanned first."""
    drop, www, plant = planted
    plant("")
    alert_file = www / "a.txt"
    alert_file.write_bytes(b"harmless\n")
    sibling = www / "b.php"
    sibling.write_bytes(b"<?php /* " + MARK.encode() + b" */ ?>\n")
    # the roots hold only decoys: the sibling is reached through the alert's directory
    outcome, incident = run_collector("yara", {
        "timeout_s": 120, "use_cache": False, "scan_processes": False,
        "rules_dirs": [str(rules_dir)], "roots": [str(drop)], "max_files": BUDGET},
        request=make_request("127.0.0.2", filename=str(alert_file)))
    assert {(m["path"], m["origin"]) for m in matches_of(incident, outcome)} == \
        {(str(sibling), "walk")}
    sources = summary_of(incident, outcome)["files"]["sources"]
    assert sources[0] == {"root": str(www), "alone": True, "files": 2, "share": BUDGET // 2,
                          "turn": "walked to the end"}


def _tree(tmp_path: Path, layout: dict[str, int]) -> list[str]:
    roots = []
    for name, count in layout.items():
        root = tmp_path / name
        (root / "sub").mkdir(parents=True)
        for i in range(count):
            (root / ("sub" if i % 2 else ".") / f"f{i:04d}").write_bytes(b"")
        roots.append(str(root))
    return roots


def test_time_shares_end_a_slow_roots_turn(tmp_path):
    """Each root also has a share of the time budget (a fake clock: one second per file)."""
    roots = _tree(tmp_path, {"slow": 50, "later": 3})
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]
    walk = Walk(roots, time_budget_s=lambda: 20.0, clock=clock)
    seen = [os.path.basename(os.path.dirname(os.path.dirname(p)))
            if p.count("/sub/") else os.path.basename(os.path.dirname(p)) for p, _ in walk]
    assert "later" in seen[:20]  # the later root's turn came before the slow root finished
    assert len(seen) == 53  # and nothing was lost: the slow root resumed afterwards
    slow = walk.summary()["sources"][0]
    assert slow["turn"].startswith("share of the time budget used (10.0 s)")
    assert slow["resumed"] is True


def test_shares_end_turn_and_the_alert_dir_once(tmp_path):
    roots = _tree(tmp_path, {"a": 10, "b": 10})
    first = str(Path(roots[1]) / "sub")  # an alert's directory inside the last root
    walk = Walk(roots, max_files=12, first_dirs=[first])
    paths = []
    for path, _ in walk:
        paths.append(path)
        if walk.current == 1 and len([p for p in paths if "/a/" in p]) == 2:
            walk.end_turn("the consumer's own share")
    assert len(paths) == len(set(paths)) == 12  # the alert's directory is not walked twice
    sources = walk.summary()["sources"]
    assert [s["share"] for s in sources] == [4, 4, 4]
    assert sources[0]["root"] == first and sources[0]["alone"] is True
    assert sources[1]["turn"] == "the consumer's own share"
    assert paths[:4] == [f"{first}/f{i:04d}" for i in (1, 3, 5, 7)]  # its share: 4 of 5
    assert walk.stopped == "max_files=12 reached"
    assert json.dumps(walk.summary())  # JSON-safe
