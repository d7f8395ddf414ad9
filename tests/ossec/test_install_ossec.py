"""install/uninstall against a real OSSEC local install: its own -t test modes and ossec-logtest.

No daemon is started here (helper tests in test_real_*.py do that). The
OSSEC tree is built once per machine with build-ossec (about a minute, then
kept: build-ossec is idempotent) in a root-owned directory of these tests.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ossec_dfir.cli.main import main
from ossec_dfir.ossec import checks, conftext, manager
from tests.conftest import ROOT

BUILD = ROOT.parent / "shared" / "ossec" / "build-ossec"
TREE = Path("/opt/ossec-dfir-test-install")
PRISTINE = TREE / ".ossec-dfir-test-pristine"
KEPT = ("etc/ossec.conf", "rules/local_rules.xml")
BINDS = ["--bind", "dfir-pcap=5710,5712", "--bind", "dfir-triage=5710",
         "--bind", "dfir-yara-file=550,554", "--bind", "dfir-triage-host=5402"]


@pytest.fixture(scope="session")
def built() -> Path:
    """Build (once) the OSSEC local install and keep copies of its pristine files."""
    if os.geteuid() != 0:
        pytest.skip("needs root: build-ossec installs OSSEC, and its -t modes drop privileges")
    if not BUILD.exists():
        pytest.skip(f"build-ossec not found at {BUILD} (the shared OSSEC test material)")
    if not PRISTINE.is_dir():  # unknown state: rebuild from scratch
        (TREE / ".build-ossec").unlink(missing_ok=True)
    proc = subprocess.run([str(BUILD), "--type", "local", "--dir", str(TREE)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if not PRISTINE.is_dir():
        PRISTINE.mkdir(mode=0o700)
        for rel in KEPT:
            shutil.copy2(TREE / rel, PRISTINE / rel.replace("/", "_"))
    return TREE


@pytest.fixture
def ossec(built: Path) -> Path:
    """Return the tree reset to its pristine state (no ossec-dfir anywhere)."""
    for rel in KEPT:
        shutil.copyfile(PRISTINE / rel.replace("/", "_"), built / rel)
    for path in [built / "etc" / "local_decoder.xml", built / "etc" / "ossec-dfir.yml",
                 *(built / "active-response" / "bin").glob("dfir-*"),
                 *(built / "etc").glob("*.bak-*"), *(built / "rules").glob("*.bak-*")]:
        path.unlink(missing_ok=True)
    shutil.rmtree(built / "etc" / "yara", ignore_errors=True)
    return built


def run_t(tree: Path, daemon: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tree / "bin" / f"ossec-{daemon}"), "-t"], capture_output=True,
                          text=True, timeout=120)


def logtest(tree: Path, line: str, unit: str) -> int:
    return subprocess.run([str(tree / "bin" / "ossec-logtest"), "-U", unit], input=line + "\n",
                          capture_output=True, text=True, timeout=120).returncode


def digest(tree: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((tree / rel).read_bytes()).hexdigest()
            for rel in (*KEPT, "etc/local_decoder.xml") if (tree / rel).exists()}


def install(tree: Path, *args: str) -> int:
    return main(["install", "--ossec-dir", str(tree), "--allow-unsafe-paths", *args])


def test_install_is_accepted_by_ossec_and_fires_the_outcome_rules(ossec, capsys):
    assert install(ossec, "--edit-ossec-conf", "--manager", *BINDS) == 0
    out = capsys.readouterr().out
    assert "check ossec-analysisd -t: ok" in out and "check ossec-execd -t: ok" in out
    assert "check ossec-logtest fires 100901: ok" in out and "Add to " not in out
    conf = (ossec / "etc" / "ossec.conf").read_text()
    assert "<disabled>" not in conftext.marked(conf, "ossec.conf")
    assert checks.response_switch(conf).ok
    for daemon in ("analysisd", "execd", "logcollector"):
        proc = run_t(ossec, daemon)
        assert proc.returncode == 0, proc.stderr
    # analysisd -t wrote the responses it accepted into ar.conf: name+timeout, script, timeout
    ar = (ossec / "etc" / "shared" / "ar.conf").read_text().splitlines()
    for entry in ("dfir-pcap600 - dfir-pcap - 600", "dfir-triage300 - dfir-triage - 300",
                  "dfir-yara-file0 - dfir-yara-file - 0", "dfir-triage-host0 - dfir-triage-host - 0"):
        assert entry in ar
    assert not [line for line in ar if line.startswith(("dfir-memory", "dfir-collect"))]
    for rule_id, (level, outcome) in manager.OUTCOME_RULES.items():
        assert logtest(ossec, manager.sample_line(outcome), f"{rule_id}:{level}:ossec-dfir") == 0
    assert logtest(ossec, manager.sample_line("partial"), "100901:3:ossec-dfir") != 0
    assert os.access(ossec / "active-response" / "bin" / "dfir-yara-file", os.X_OK)

    # a second run changes nothing; a run with other bindings updates only our block
    before = digest(ossec)
    backups = sorted(p.name for p in (ossec / "etc").glob("*.bak-*"))
    assert install(ossec, "--edit-ossec-conf", "--manager", *BINDS) == 0
    assert digest(ossec) == before
    assert sorted(p.name for p in (ossec / "etc").glob("*.bak-*")) == backups
    assert install(ossec, "--edit-ossec-conf", "--bind", "dfir-pcap=5712") == 0
    assert run_t(ossec, "analysisd").returncode == 0
    ar = (ossec / "etc" / "shared" / "ar.conf").read_text()
    assert "dfir-pcap600 - dfir-pcap - 600" in ar and "dfir-triage300" not in ar
    new_conf = (ossec / "etc" / "ossec.conf").read_text()
    assert "<rules_id>5712</rules_id>" in new_conf and new_conf.count("<localfile>") == \
        conf.count("<localfile>")


def test_a_failing_check_puts_the_previous_ossec_conf_back(ossec, capsys):
    conf = ossec / "etc" / "ossec.conf"
    with conf.open("a") as fh:  # the admin's mistake, which -t reports
        fh.write("<ossec_config>\n  <rules>\n    <include>ossec-dfir-test-missing_rules.xml"
                 "</include>\n  </rules>\n</ossec_config>\n")
    before = conf.read_bytes()
    assert install(ossec, "--edit-ossec-conf", "--bind", "dfir-pcap=5712") == 4
    err = capsys.readouterr().err
    assert "ossec-analysisd -t: FAILED" in err and "ossec-dfir-test-missing_rules.xml" in err
    assert "previous file is back in place" in err and "fails the same check" in err
    assert conf.read_bytes() == before


def test_a_failing_rules_check_puts_the_previous_rules_back(ossec, capsys):
    rules = ossec / "rules" / "local_rules.xml"
    with rules.open("a") as fh:  # an unclosed element in the admin's rules
        fh.write('<group name="mine,">\n  <rule id="100050" level="3">\n</group>\n')
    before = rules.read_bytes()
    assert install(ossec, "--manager") == 4
    assert "ossec-analysisd -t: FAILED" in capsys.readouterr().err
    assert rules.read_bytes() == before
    assert not (ossec / "etc" / "local_decoder.xml").exists()


def test_uninstall_leaves_the_pristine_files(ossec, capsys):
    pristine = digest(ossec)
    assert install(ossec, "--edit-ossec-conf", "--manager", *BINDS) == 0
    assert main(["uninstall", "--ossec-dir", str(ossec), "--edit-ossec-conf", "--manager"]) == 0
    out = capsys.readouterr().out
    assert digest(ossec) == pristine
    assert not list((ossec / "active-response" / "bin").glob("dfir-*"))
    assert (ossec / "etc" / "ossec-dfir.yml").exists()
    assert "check ossec-analysisd -t: ok" in out
    for daemon in ("analysisd", "execd"):
        assert run_t(ossec, daemon).returncode == 0
