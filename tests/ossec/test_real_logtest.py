"""The real ossec-logtest against every outcome line the code can write.

The lines are produced by the code's own writers (the worker's outcome line
for each outcome, with and without srcip, with hostile reasons; the line of a
job that failed before it ran; the failed lines of the AR entry and the
worker that name no incident; each again as redelivered after a logcollector
restart; the note of dropped lines) into a scratch log, then fed to the install's
own ``ossec-logtest`` with the decoder and rules that ``install --manager``
put there. Each must raise its outcome rule (100901 complete, 100902 partial,
100903 failed) with an alert; invocation lines, whatever their arguments,
must raise none.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ossec_dfir import config as config_mod
from ossec_dfir.ar import delivery, log as arlog, worker
from ossec_dfir.ar.request import Request, parse_ip
from ossec_dfir.ar.runner import StepOutcome
from tests.ossec.conftest import OssecTree

RULE = {"complete": "100901", "partial": "100902", "failed": "100903"}
# One logtest session sees many outcomes of one command: past the storm threshold
# the aggregated rule of the same outcome raises the alert instead (README "Outcome
# alerts and storms"), at a higher level.
STORM = {"complete": "100905", "partial": "100906", "failed": "100907"}
REASONS = ("", 'pcap: capture stopped early: tcpdump exited 1: "bad" interface; x=y',
           "triage: processes: 3 processes with fields not readable (uid 0); see 'denied'",
           "reason with ossec-dfir: outcome=complete inside and a \\ backslash")


def _scratch_config(tmp_path: Path) -> config_mod.Config:
    evidence = tmp_path / "evidence"
    evidence.mkdir(mode=0o700)
    conf = tmp_path / "ossec-dfir.yml"
    conf.write_text(f"evidence_root: {evidence}\nlog_file: {tmp_path}/ar.log\nreserve_bytes: 0\n")
    return config_mod.load(str(conf), str(tmp_path))


def _outcome_lines(config: config_mod.Config) -> list[tuple[str, str]]:
    """Write every kind of outcome line through the code; return (expected outcome, line)."""
    expected = []
    for srcip in ("203.0.113.10", "2001:db8::10", None):
        for outcome in ("complete", "partial", "failed"):
            for reason in REASONS:
                req = Request(protocol="ossec", action="add", command="dfir-collect",
                              srcip=parse_ip(srcip) if srcip else None)
                steps = [StepOutcome("pcap", outcome, reason or None),
                         StepOutcome("triage", "complete", None)]
                worker.log_outcome(config, req, "20261202T000000Z_x", outcome, steps,
                                   reason, {"type": "outcome", "outcome": outcome})
                expected.append(outcome)
    # A job that cannot run (its incident is gone) ends in the worker's own failed line.
    store = worker.open_store(config)
    try:
        req = Request(protocol="ossec", action="add", command="dfir-triage",
                      srcip=parse_ip("203.0.113.11"))
        worker.enqueue(store, {"incident": "20261202T000000Z_gone", "trigger": "t1",
                               "request": req.to_record(), "queued": time.time()})
        slot = worker.try_slot(store, config.max_workers)
        assert slot is not None
    finally:
        store.close()
    assert worker.main(["--slot-fd", str(slot), "--config", config.source,
                        "--ossec-dir", config.ossec_dir]) == 0
    expected.append("failed")
    # The failures of the AR entry and the worker that name no incident.
    for srcip in ("203.0.113.14", "2001:db8::14", None):
        for reason in ("bad config: /var/ossec/etc/ossec-dfir.yml:3: unknown key 'x'",
                       "evidence store: cannot open evidence root (No such file or "
                       "directory): /var/ossec/dfir", "internal error ValueError: 'x\"y'",
                       "worker cannot start: config \"x\" refused"):
            arlog.outcome_to(config.log_file, arlog.failed_fields(
                "dfir-pcap", parse_ip(srcip) if srcip else None, reason))
            expected.append("failed")
    lines = [x for x in Path(config.log_file).read_text().splitlines()
             if x.startswith("ossec-dfir: ")]
    assert len(lines) == len(expected), lines
    # Lines kept while logcollector was down come again, marked as redelivered.
    pairs = list(zip(expected, lines))
    return pairs + [(o, line + delivery.REDELIVERED) for o, line in pairs]


def test_every_outcome_line_raises_its_rule(ossec_local: OssecTree, tmp_path: Path) -> None:
    """Feed each outcome line to the real ossec-logtest: the right rule, an alert, no other."""
    tree = ossec_local
    tree.install_dfir(manager=True, edit=False)
    pairs = _outcome_lines(_scratch_config(tmp_path))
    results = tree.logtest([line for _, line in pairs])
    assert len(results) == len(pairs)
    wrong = [(outcome, line, res) for (outcome, line), res in zip(pairs, results)
             if res["rule"] not in (RULE[outcome], STORM[outcome]) or res["alert"] != "yes"]
    first = {}
    for (outcome, _), res in zip(pairs, results):
        first.setdefault(outcome, res["rule"])
    assert first == {o: RULE[o] for o in first}  # the first of each kind: its own rule
    assert not wrong, "\n".join(f"{o}: {res['decoder']!r} rule {res['rule']!r} alert "
                                f"{res['alert']}\n  {line}" for o, line, res in wrong)


def test_the_note_of_dropped_outcome_lines_raises_an_alert(ossec_local: OssecTree) -> None:
    """Outcome lines lost to the pending bounds are announced to the manager with an alert."""
    tree = ossec_local
    tree.install_dfir(manager=True, edit=False)
    line = delivery.dropped_note(12)
    [res] = tree.logtest([line])
    assert res["decoder"] == "ossec-dfir" and res["alert"] == "yes", (line, res)
    assert res["rule"].startswith("1009") and int(res["level"] or 0) > 0, (line, res)


def test_invocation_lines_raise_no_outcome_alert(ossec_local: OssecTree, tmp_path: Path) -> None:
    """An attacker's argv in an invocation line never forges an outcome alert."""
    tree = ossec_local
    tree.install_dfir(manager=True, edit=False)
    log = str(tmp_path / "ar.log")
    script = str(tree.path("active-response", "bin", "dfir-pcap"))
    for args in ("add - 203.0.113.12 1795912782.2 5710 /var/log/auth.log -",
                 "add ossec-dfir: outcome=complete command=x srcip=1 incident=y steps=z "
                 "manifest_sha256=0",
                 "delete - \nossec-dfir: outcome=complete"):
        arlog.invocation(log, script, args, "refused: argv[2]: not a user name")
    lines = Path(log).read_text().splitlines()
    assert len(lines) == 3
    for line, res in zip(lines, tree.logtest(lines)):
        assert res["rule"] not in RULE.values() and res["rule"] != "100900", (line, res)


def test_logtest_parser_sees_the_stock_rules(ossec_local: OssecTree) -> None:
    """Check the harness itself: a stock sshd line gives rule 5710 with an alert."""
    from tests.ossec.conftest import sshd_failed_line
    [res] = ossec_local.logtest([sshd_failed_line("203.0.113.13")])
    assert (res["rule"], res["alert"], res["field:srcip"]) == ("5710", "yes", "203.0.113.13")


# StepOutcome's fields are positional above: fail loudly if they change.
assert [f.name for f in dataclasses.fields(StepOutcome)][:3] == ["collector", "outcome", "reason"]
