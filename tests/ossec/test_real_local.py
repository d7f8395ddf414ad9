"""Against a real OSSEC local install: an sshd alert runs the srcip responses (issue 11, tests 1, 2, 6).

The tree is built by build-ossec, set up as a site would have it (an auth log
monitored by logcollector) and ossec-dfir is installed with the documented
command only: ``ossec-dfir install --edit-ossec-conf --manager --bind ...``.
The attack is one sshd line appended to the monitored log; everything after
that is done by the real analysisd, execd and logcollector.
"""
from __future__ import annotations

import re
import time

from tests.ossec.conftest import (OUTCOME_RULES, OssecTree, append_line,
                                  assert_triage_complete, dfir_blocks, root_denied_pids,
                                  site_setup, sshd_failed_line, wait_for)


def _start_watching(tree: OssecTree, auth) -> None:
    """Start the daemons; wait until logcollector reads the auth log and active-responses.log."""
    tree.start()
    _wait_watching(tree, auth)


def _wait_watching(tree: OssecTree, auth) -> None:
    """Wait until logcollector reads the auth log and active-responses.log."""
    wait_for("logcollector to read the auth log", lambda: tree.logcollector_reads(auth), 30,
             detail=tree.diagnostics)
    wait_for("logcollector to read logs/active-responses.log (the <localfile> install adds)",
             lambda: tree.logcollector_reads(tree.ar_log), 30, detail=tree.diagnostics)


def _pcap_profile(timeout_s: int) -> str:
    return ("profiles:\n  dfir-pcap:\n"
            "    description: Capture the srcip's traffic until the AR delete.\n"
            f"    ar_timeout_s: {timeout_s}\n"
            "    steps:\n      - collector: pcap\n")


def test_sshd_alert_runs_triage_and_pcap(ossec_local: OssecTree, site) -> None:
    """Issue 11 test 1: documented install, real alert, triage complete, outcome alert, verify."""
    tree = ossec_local
    auth = site / "auth.log"
    site_setup(tree, auth_log=auth)
    tree.install_dfir({"dfir-triage": "5710", "dfir-pcap": "5710"}, manager=True)
    blocks = dfir_blocks(tree.ossec_conf.read_text())
    assert blocks, "install --edit-ossec-conf wrote no <active-response> for dfir-*"
    assert not any("<disabled>" in b for b in blocks), blocks
    _start_watching(tree, auth)

    ip = "203.0.113.5"
    host_denied = root_denied_pids()
    append_line(auth, sshd_failed_line(ip))
    alert = tree.wait_alert(("5710",), ip, timeout_s=30)
    outcome = tree.wait_alert(OUTCOME_RULES, "command=dfir-triage ", timeout_s=120)
    assert f"srcip={ip} " in outcome.log
    incident = re.search(r"incident=(\S+)", outcome.log).group(1)
    assert incident.endswith(f"_{ip}")
    assert_triage_complete(tree, incident, outcome, host_denied)
    # execd is still there: nothing in the config switched active responses off.
    assert tree.daemon_pid("ossec-execd"), tree.diagnostics()
    assert "Active response disabled" not in tree.log_since("ossec")

    doc = tree.show(incident)
    adds = [t for t in doc["triggers"] if t["action"] == "add"]
    assert {t["command"] for t in adds} == {"dfir-triage", "dfir-pcap"}
    for trig in adds:
        assert trig["protocol"] == "ossec" and trig["rule_id"] == "5710"
        assert trig["srcip"] == ip and trig["alert_id"] == alert.alert_id
    wait_for("the capture to run", lambda: any(
        r["command"] == "dfir-pcap" and r["incident"] == incident
        for r in tree.dfir_status()["running"]), 30, detail=tree.diagnostics)

    # The administrator ends the capture by hand (as the delete would); its outcome alerts too.
    res = tree.dfir("stop", ip)
    assert res.returncode == 0, res.stdout + res.stderr
    pcap = tree.wait_alert(OUTCOME_RULES, f"command=dfir-pcap srcip={ip} ", timeout_s=60)
    assert pcap.rule_id == "100901" and f"incident={incident} " in pcap.log, pcap.text
    assert tree.end_dfir_processes() == [], "a worker was still running"
    res = tree.verify(incident)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{incident}: OK" in res.stdout


def test_timed_delete_ends_the_capture_and_keeps_the_evidence(ossec_local: OssecTree,
                                                              site) -> None:
    """Issue 11 test 2: the <timeout> of the response sends delete; the capture stops on it."""
    tree = ossec_local
    auth = site / "auth.log"
    site_setup(tree, auth_log=auth)
    tree.write_dfir_config(_pcap_profile(5))
    tree.install_dfir({"dfir-pcap": "5710"}, manager=True)
    [block] = [b for b in dfir_blocks(tree.ossec_conf.read_text()) if "dfir-pcap" in b]
    assert "<timeout>5</timeout>" in block, block
    _start_watching(tree, auth)

    ip = "203.0.113.7"
    append_line(auth, sshd_failed_line(ip))
    tree.wait_alert(("5710",), ip, timeout_s=30)
    running = wait_for("the capture to run", lambda: [
        r for r in tree.dfir_status()["running"] if r["srcip"] == ip], 30,
        detail=tree.diagnostics)
    incident = running[0]["incident"]
    added = time.monotonic()

    def deleted() -> bool:
        # execd looks at its timers when a message arrives, else every 90 s:
        # once the timeout is over, any datagram to its queue wakes it up.
        if time.monotonic() - added > 6:
            tree.send_execq("dfir-test-wakeup")
        return any(" delete - " + ip in line for line in tree.log_since("ar").splitlines())
    wait_for("execd's timed delete", deleted, 120, interval_s=2, detail=tree.diagnostics)
    outcome = tree.wait_alert(OUTCOME_RULES, f"command=dfir-pcap srcip={ip} ", timeout_s=60)
    assert outcome.rule_id == "100901", outcome.text
    assert f"incident={incident} " in outcome.log

    tree.stop()
    tree.end_dfir_processes()
    doc = tree.show(incident)
    [pcap] = [c for c in doc["collectors"] if c["collector"] == "pcap"]
    assert pcap["outcome"] == "complete"
    assert pcap["summary"]["stop_reason"] == "delete received", pcap
    assert [t["action"] for t in doc["triggers"]] == ["add", "delete"]
    files = {f["path"]: f for f in doc["files"]}
    assert files["pcap/01/capture.pcap"]["size"] >= 24  # the pcap header at least
    res = tree.verify(incident)
    assert res.returncode == 0, res.stdout + res.stderr


def test_restart_during_a_capture_still_delivers_the_outcome(ossec_local: OssecTree,
                                                             site) -> None:
    """Issue 11 test 6: ossec-control restart ends the capture; its outcome still alerts."""
    tree = ossec_local
    auth = site / "auth.log"
    site_setup(tree, auth_log=auth)
    tree.install_dfir({"dfir-pcap": "5710"}, manager=True)
    _start_watching(tree, auth)

    ip = "203.0.113.8"
    append_line(auth, sshd_failed_line(ip))
    running = wait_for("the capture to run", lambda: [
        r for r in tree.dfir_status()["running"] if r["srcip"] == ip], 30,
        detail=tree.diagnostics)
    incident = running[0]["incident"]
    res = tree.restart()
    assert res.returncode == 0, res.stdout + res.stderr
    _wait_watching(tree, auth)
    outcome = tree.wait_alert(OUTCOME_RULES, f"incident={incident} ", timeout_s=60)
    assert "command=dfir-pcap " in outcome.log
    assert "stopped by execd shutdown" in outcome.log, outcome.text
    # Delivered exactly once: the worker has nothing left to deliver and exited.
    assert tree.end_dfir_processes(grace_s=60) == [], "a worker was still running"
    time.sleep(3)  # logcollector reads new lines every loop_timeout (2 s)
    assert len(tree.alerts(OUTCOME_RULES, f"incident={incident} ")) == 1, tree.diagnostics()
