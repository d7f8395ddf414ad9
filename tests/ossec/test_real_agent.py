"""Against a real OSSEC manager and agent on this host (issue 11, test 5).

The manager gets the commands, the binding, the decoder and the rules
(``install --edit-ossec-conf --manager --bind dfir-pcap=5710``); the agent
gets the executables and the ``<localfile>`` for its active-responses.log
(``install --edit-ossec-conf``). ``agent_control -b`` on the manager runs the
capture on the agent, and the capture's outcome line travels back through
the agent's logcollector to the manager's alerts.log.
"""
from __future__ import annotations

import re
import subprocess

from tests.ossec.conftest import OUTCOME_RULES, OssecTree, wait_for


def _agent_control(manager: OssecTree, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(manager.path("bin", "agent_control")), *args],
                          capture_output=True, text=True, timeout=60)


def test_agent_control_runs_the_capture_on_the_agent(ossec_pair) -> None:
    """Issue 11 test 5: manager -> agent's execd -> capture -> outcome alert on the manager."""
    manager, agent = ossec_pair
    manager.install_dfir({"dfir-pcap": "5710"}, manager=True)
    # The agent's site config: captures there end after 5 s when no delete came
    # (the delete follows the response's <timeout>, up to 90 s late).
    agent.write_dfir_config("collectors:\n  pcap:\n    duration_s: 5\n")
    # A new agent has no active-responses.log until a response runs, and its
    # logcollector tries a missing file again only every ~2 minutes (8 times):
    # install creates it, or the first outcome lines would not reach the manager.
    agent.ar_log.unlink(missing_ok=True)
    agent.install_dfir(edit=True)
    assert agent.ar_log.is_file()
    manager.start()
    agent.start()

    def diagnostics() -> str:
        return (f"=== manager\n{manager.diagnostics()}\n=== agent\n{agent.diagnostics()}\n"
                f"=== agent_control -l\n{_agent_control(manager, '-l').stdout}")
    wait_for("the agent to be active on the manager", lambda: re.search(
        r"ID: 001, Name: dfir-agent, IP: 127\.0\.0\.1, Active",
        _agent_control(manager, "-l").stdout), 60, interval_s=1, detail=diagnostics)
    names = re.findall(r"\bdfir-pcap\d+\b", _agent_control(manager, "-L").stdout)
    assert names, f"agent_control -L lists no dfir-pcap response:\n{diagnostics()}"
    name = names[0]
    ar_conf = agent.path("etc", "shared", "ar.conf")
    wait_for("the agent to fetch ar.conf with the response", lambda: ar_conf.exists() and
             "dfir-pcap" in ar_conf.read_text(), 90,
             interval_s=1, detail=diagnostics)
    wait_for("the agent's logcollector to read its active-responses.log",
             lambda: agent.logcollector_reads(agent.ar_log), 30, detail=diagnostics)

    ip = "203.0.113.9"
    res = _agent_control(manager, "-b", ip, "-f", name, "-u", "001")
    assert res.returncode == 0, res.stdout + res.stderr
    outcome = manager.wait_alert(OUTCOME_RULES, f"command=dfir-pcap srcip={ip} ",
                                 timeout_s=90)
    assert outcome.rule_id == "100901", outcome.text
    assert outcome.location.startswith("(dfir-agent) 127.0.0.1->"), outcome.location
    assert outcome.location.endswith("/logs/active-responses.log"), outcome.location
    incident = re.search(r"incident=(\S+)", outcome.log).group(1)

    agent.stop()
    agent.end_dfir_processes()
    doc = agent.show(incident)
    [trig] = [t for t in doc["triggers"] if t["action"] == "add"]
    assert trig["srcip"] == ip and trig["manual"] is True and trig["command"] == "dfir-pcap"
    assert [c["outcome"] for c in doc["collectors"] if c["collector"] == "pcap"] == ["complete"]
    res = agent.verify(incident)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not manager.evidence.exists(), "the capture ran on the manager, not on the agent"
