"""Against a real OSSEC local install: alerts without an IP run the file- and host-keyed commands.

Issue 11 tests 3 (syscheck: a changed file whose name holds a space and
``$(...)`` reaches dfir-yara-file exactly, and is scanned first) and 4 (a
sudo alert runs dfir-triage-host, keyed by the host). Both commands are
installed with ``ossec-dfir install --edit-ossec-conf --manager --bind``.
"""
from __future__ import annotations

import hashlib
import json
import re

from tests.ossec.conftest import (OUTCOME_RULES, SYSLOG_HEAD, OssecTree, append_line,
                                  assert_triage_complete, dfir_blocks, root_denied_pids,
                                  site_setup, wait_for)

WEBSHELL = b"<?php eval($_POST['c']); ?>\n"


def _outcome_of(tree: OssecTree, key: str, alert_id: str):
    """Return (incident, trigger, outcome alert) of the run the alert alert_id started, or None."""
    for row in tree.incidents():
        if not row["id"].endswith("_" + key):
            continue
        doc = tree.show(row["id"])
        trig = next((t for t in doc["triggers"]
                     if t["action"] == "add" and t["alert_id"] == alert_id), None)
        if trig is None:
            continue
        for line in (tree.evidence / row["id"] / "manifest.jsonl").read_text().splitlines():
            entry = json.loads(line)
            if entry.get("type") == "outcome" and entry.get("trigger") == trig["trigger_id"]:
                digest = hashlib.sha256((line + "\n").encode()).hexdigest()
                found = tree.alerts(OUTCOME_RULES, f"manifest_sha256={digest} ")
                if found:
                    return row["id"], trig, found[0]
    return None


def test_syscheck_change_runs_yara_on_that_exact_file_first(ossec_local: OssecTree,
                                                           site) -> None:
    """Issue 11 test 3: the escaped, space-split filename is rebuilt and scanned first."""
    tree = ossec_local
    watch = site / "www"
    watch.mkdir()
    target = watch / "x $(id).php"
    target.write_bytes(b"<?php echo 'hello'; ?>\n")
    other = watch / "other.php"
    other.write_bytes(WEBSHELL)
    site_setup(tree, watch_dir=watch)
    # The site keeps the scan short: only the watched directory, no process memory.
    tree.write_dfir_config("collectors:\n  yara:\n"
                           f"    roots: [{json.dumps(str(watch))}]\n"
                           "    scan_processes: false\n")
    tree.install_dfir({"dfir-yara-file": "550,554"}, manager=True)
    [block] = dfir_blocks(tree.ossec_conf.read_text())
    assert "<timeout>" not in block, "a file-keyed response must not be stateful"
    assert re.search(r"<name>dfir-yara-file</name>\s*<executable>dfir-yara-file</executable>"
                     r"\s*<expect>filename</expect>", tree.ossec_conf.read_text())
    tree.start()
    wait_for("syscheck's database to be built (realtime monitoring on)", lambda: (
        "Real time file monitoring started" in tree.log_since("ossec")
        and "Finished creating syscheck database" in tree.log_since("ossec")), 90,
        interval_s=1, detail=tree.diagnostics)
    wait_for("logcollector to read logs/active-responses.log",
             lambda: tree.logcollector_reads(tree.ar_log), 30, detail=tree.diagnostics)

    target.write_bytes(WEBSHELL)
    alert = tree.wait_alert(("550", "554"), str(target), timeout_s=60)
    # The incident is keyed by that file. OSSEC may also report the files of
    # its first scan as added (554), so other runs, even one for this file's
    # first content, can exist: the outcome alert is tied to this alert's
    # trigger through the manifest entry its manifest_sha256 names.
    key = "file-" + hashlib.sha256(str(target).encode()).hexdigest()[:16]
    incident, trig, outcome = wait_for(
        "the outcome alert of the run this alert started",
        lambda: _outcome_of(tree, key, alert.alert_id), 120, interval_s=1,
        detail=tree.diagnostics)
    assert "command=dfir-yara-file " in outcome.log, outcome.text
    assert outcome.rule_id == "100901", outcome.text
    assert trig["filename"] == str(target)
    assert trig["rule_id"] == alert.rule_id and trig["srcip"] is None

    tree.stop()
    tree.end_dfir_processes()
    doc = tree.show(incident)
    [yara] = [c for c in doc["collectors"]
              if c["collector"] == "yara" and c["trigger"] == trig["trigger_id"]]
    runs = sorted((tree.evidence / incident / "yara").iterdir())
    matches = None
    for run in runs:  # the run of this trigger: the one that scanned the alert's file
        lines = [json.loads(x) for x in (run / "matches.jsonl").read_text().splitlines()]
        if any(m["origin"] == "alert" for m in lines):
            assert matches is None, "two runs scanned an alert file"
            matches = lines
    assert yara["outcome"] == "complete" and matches, (yara, runs)
    assert (matches[0]["origin"], matches[0]["path"]) == ("alert", str(target))
    assert [m["path"] for m in matches if m["path"] == str(target)] == [str(target)], \
        "the alert's file was scanned again by the walk"
    assert any(m["origin"] == "walk" and m["path"] == str(other) for m in matches)
    res = tree.verify(incident)
    assert res.returncode == 0, res.stdout + res.stderr


def test_sudo_alert_runs_the_host_keyed_triage(ossec_local: OssecTree, site) -> None:
    """Issue 11 test 4: an alert without srcip (sudo) runs dfir-triage-host, keyed by the host."""
    tree = ossec_local
    auth = site / "auth.log"
    site_setup(tree, auth_log=auth)
    tree.install_dfir({"dfir-triage-host": "5402,5403"}, manager=True)
    [block] = dfir_blocks(tree.ossec_conf.read_text())
    assert "<timeout>" not in block, "a host-keyed response must not be stateful"
    tree.start()
    for path in (auth, tree.ar_log):
        wait_for(f"logcollector to read {path}", lambda p=path: tree.logcollector_reads(p), 30,
                 detail=tree.diagnostics)

    host_denied = root_denied_pids()
    append_line(auth, f"{SYSLOG_HEAD} sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; "
                      "USER=root ; COMMAND=/usr/bin/id")
    alert = tree.wait_alert(("5402", "5403"), "sudo", timeout_s=30)
    assert alert.srcip is None
    outcome = tree.wait_alert(OUTCOME_RULES, "command=dfir-triage-host ", timeout_s=120)
    incident = re.search(r"incident=(\S+)", outcome.log).group(1)
    assert incident.endswith("_host"), incident
    assert_triage_complete(tree, incident, outcome, host_denied)

    tree.stop()
    tree.end_dfir_processes()
    doc = tree.show(incident)
    [trig] = [t for t in doc["triggers"] if t["action"] == "add"]
    assert trig["command"] == "dfir-triage-host" and trig["srcip"] is None
    assert trig["rule_id"] == alert.rule_id and trig["alert_id"] == alert.alert_id
    assert {c["collector"] for c in doc["collectors"]} == {"host", "triage"}
    assert [c["outcome"] for c in doc["collectors"] if c["collector"] == "host"] == ["complete"]
    res = tree.verify(incident)
    assert res.returncode == 0, res.stdout + res.stderr
