"""End to end: an OSSEC alert runs a profile, the shipper runs beside the collectors, the
outcome line says what was shipped, a later line says the backlog cleared, and the analyst's
``ossec-dfir fetch`` rebuilds and verifies the incident from the remote copy alone."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ossec_dfir.ar.simulate import run_ossec
from ossec_dfir.evidence.verify import verify
from ossec_dfir.ship import outbox  # noqa: F401  (the outbox is what the shipper serves)

from ..ar.test_entry import Tree
from .conftest import BUCKET


def ship_config(server, creds: Path, extra: str = "") -> str:
    return ("ship:\n  - name: lab\n    url: s3://" + BUCKET + "/dfir\n"
            f"    endpoint: {server.endpoint}\n    credentials_file: {creds}\n{extra}")


def wait_line(tree: Tree, needle: str, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in tree.log_lines():
            if needle in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f"no line with {needle!r}: {tree.log_lines()}")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ossec_dfir", *args], capture_output=True,
                          text=True, timeout=120)


def test_triage_ships_while_it_runs_and_fetch_verifies(tmp_path, s3_server, s3_credentials):
    tree = Tree(tmp_path / "t", ship_config(s3_server, s3_credentials))
    argv = [tree.script("dfir-triage"), "add", "-", "203.0.113.9", "1795912782.2", "5710",
            "/var/log/auth.log", "-"]
    assert run_ossec(argv, env={"PATH": "/usr/bin:/bin"}).returncode == 0
    outcome = wait_line(tree, "ossec-dfir: outcome=", 300)
    assert "command=dfir-triage" in outcome and " shipped=" in outcome
    cleared = wait_line(tree, "outcome=shipped", 120)
    [incident] = tree.incidents()
    assert f"incident={incident}" in cleared
    done, total = cleared.split(" shipped=")[1].split()[0].split("/")
    assert done == total and int(total) > 3

    manifest = [__import__("json").loads(x) for x in
                (tree.evidence / incident / "manifest.jsonl").read_text().splitlines()]
    triage_end = next(e["seq"] for e in manifest if e.get("type") == "collector"
                      and e.get("collector") == "triage")
    shipped_early = [e for e in manifest if e.get("type") == "receipt"
                     and e["path"].startswith("triage/") and e["seq"] < triage_end]
    assert shipped_early, "nothing left the host while triage ran"
    assert verify(str(tree.evidence / incident)).ok

    # The shipper is gone once its outbox stayed empty; the outbox is empty.
    status = cli("--config", str(tree.conf), "ship-status")
    assert status.returncode == 0 and "outbox empty" in status.stdout

    hid = [e for e in manifest if e.get("type") == "receipt"][0]["key"].split("/")[1]
    res = cli("--config", str(tree.conf), "fetch", "--target", "lab", f"{hid}/{incident}",
              str(tmp_path / "analyst"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("OK:")
    fetched = tmp_path / "analyst" / incident
    assert verify(str(fetched)).ok
    local = {p.relative_to(tree.evidence / incident) for p in (tree.evidence / incident).rglob("*")
             if p.is_file()}
    remote = {p.relative_to(fetched) for p in fetched.rglob("*") if p.is_file()}
    assert local == remote
