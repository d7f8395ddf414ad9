"""Retention (issue 12 item 19): prune deletes only old incidents that were exported (or
shipped) with nothing added since and that nothing uses; links are never followed;
every deletion is recorded; state nobody reads again is trimmed."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from ossec_dfir.ar import delivery, prune, worker
from ossec_dfir.ar.runner import request_stop
from ossec_dfir.cli.main import main
from ossec_dfir.config import Retention
from ossec_dfir.evidence import retention
from ossec_dfir.evidence.store import Store

OLD_S = 100 * 86400


def make_incident(store: Store, ip: str, old: bool = True) -> str:
    """Create an incident with one trigger and one evidence file; age it by 100 days."""
    incident, _ = store.incident_for(ip, lambda: {"hostname": "h"},
                                     {"srcip": ip, "command": "dfir-test"})
    try:
        incident.append_trigger({"trigger_id": "t1", "srcip": ip, "command": "dfir-test",
                                 "action": "add", "status": "queued"})
        with incident.writer("host", f"{incident.new_run_dir('host')}/host.json") as w:
            w.write(b'{"x": 1}\n')
    finally:
        incident.close()
    if old:
        age(store, incident.id)
    return incident.id


def age(store: Store, incident_id: str, seconds: float = OLD_S) -> None:
    when = time.time() - seconds
    for name in ("manifest.jsonl", "triggers.jsonl", "incident.json"):
        os.utime(os.path.join(store.root, incident_id, name), (when, when))


def export(config_file: Path, incident_id: str, out: Path, capsys) -> None:
    assert main(["--config", str(config_file), "export", incident_id, "-o", str(out)]) == 0
    assert "export recorded" in capsys.readouterr().out


def run_prune(config_file: Path, capsys, *extra: str) -> tuple[int, dict]:
    code = main(["--config", str(config_file), "prune", "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def actions(result: dict) -> dict[str, str]:
    return {d["incident"]: d["action"] for d in result["incidents"]}


def test_exported_is_deleted_and_not_exported_is_kept(config_file, store, tmp_path, capsys):
    exported = make_incident(store, "203.0.113.10")
    kept = make_incident(store, "203.0.113.11")
    young = make_incident(store, "203.0.113.12", old=False)
    export(config_file, exported, tmp_path / "a.tar.gz", capsys)
    export(config_file, young, tmp_path / "c.tar.gz", capsys)
    age(store, exported)  # the export itself does not make it younger

    code, dry = run_prune(config_file, capsys, "--dry-run")
    assert code == 0 and actions(dry) == {exported: "delete", kept: "keep", young: "keep"}
    assert (Path(store.root) / exported).is_dir()  # dry run: nothing changed
    assert not os.path.exists(retention.prune_log_path(store))

    code, result = run_prune(config_file, capsys)
    assert code == 0 and actions(result) == {exported: "deleted", kept: "keep", young: "keep"}
    assert not (Path(store.root) / exported).exists()
    assert (Path(store.root) / kept / "manifest.jsonl").is_file()
    assert (Path(store.root) / young / "manifest.jsonl").is_file()
    assert (tmp_path / "a.tar.gz").is_file()  # the archive is the copy that remains
    [deleted] = [d for d in result["incidents"] if d["incident"] == exported]
    assert deleted["released_by"].startswith("exported: exported to ") and deleted["files"] >= 5
    assert not os.path.exists(store.state_path("exported", exported + ".json"))
    assert store.current_incident("203.0.113.10") is None
    # the record: the prune log and a line of active-responses.log
    logged = [json.loads(x) for x in open(retention.prune_log_path(store))]
    assert [(x["incident"], x["action"]) for x in logged if "incident" in x] == \
        [(exported, "deleted")]
    ar_log = (tmp_path / "ar.log").read_text()
    assert "ossec-dfir prune -- prune: deleted 1 incidents" in ar_log
    # and a new trigger for that IP gets a new incident (its own manifest from seq 1)
    again = make_incident(store, "203.0.113.10", old=False)
    inc = store.open_incident(again)
    assert [e["seq"] for e in inc.manifest()][:1] == [1] and len(inc.triggers()) == 1
    inc.close()


def test_changed_after_export_is_kept(config_file, store, tmp_path, capsys):
    incident_id = make_incident(store, "203.0.113.20")
    export(config_file, incident_id, tmp_path / "x.tar.gz", capsys)
    inc = store.open_incident(incident_id)
    try:
        inc.append_trigger({"trigger_id": "t2", "command": "dfir-test", "action": "add"})
    finally:
        inc.close()
    age(store, incident_id)
    _, result = run_prune(config_file, capsys)
    [d] = result["incidents"]
    assert d["action"] == "keep" and "not exported or shipped (or changed since)" in d["reason"]
    assert (Path(store.root) / incident_id / "triggers.jsonl").is_file()


def test_links_are_never_followed(config_file, store, tmp_path, capsys):
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / "keep.txt").write_text("precious")
    (outside / "file.txt").write_text("precious too")
    incident_id = make_incident(store, "203.0.113.30")
    export(config_file, incident_id, tmp_path / "l.tar.gz", capsys)
    run_dir = Path(store.root) / incident_id / "host" / "01"
    os.symlink(outside / "dir", run_dir / "link-to-dir")
    os.symlink(outside / "file.txt", run_dir / "link-to-file")
    os.symlink(outside, Path(store.root) / incident_id / "host" / "02")
    # a link in the evidence root that looks like an old, exported incident
    fake = "20200101T000000Z_203.0.113.31"
    os.symlink(outside / "dir", Path(store.root) / fake)
    retention.record_export(store, fake, "/nowhere.tar.gz", "0" * 64, 1, "")
    age(store, incident_id)

    _, result = run_prune(config_file, capsys)
    got = {d["incident"]: d for d in result["incidents"]}
    assert got[incident_id]["action"] == "deleted"
    assert got[fake]["action"] == "keep" and "never followed" in got[fake]["reason"]
    assert not (Path(store.root) / incident_id).exists()
    assert (outside / "dir" / "keep.txt").read_text() == "precious"
    assert (outside / "file.txt").read_text() == "precious too"
    assert os.path.islink(Path(store.root) / fake)
    assert not any(n.startswith(retention.PRUNING_PREFIX) for n in os.listdir(store.root))


def test_running_or_queued_incidents_are_never_deleted(config_file, store, tmp_path, capsys):
    running = make_incident(store, "203.0.113.40")
    queued = make_incident(store, "203.0.113.41")
    for incident_id, name in ((running, "r.tar.gz"), (queued, "q.tar.gz")):
        export(config_file, incident_id, tmp_path / name, capsys)
        age(store, incident_id)
    # a collection runs: its profile lock is held (as Runner.run_profile holds it)
    lock_fd = store.try_lock(f"profile-{running}-dfir-pcap")
    assert lock_fd is not None
    job = worker.enqueue(store, {"incident": queued, "trigger": "t", "queued": time.time(),
                                 "request": {"rule_id": "5710"}})
    try:
        _, result = run_prune(config_file, capsys)
        assert actions(result) == {running: "keep", queued: "keep"}
        assert all("in use" in d["reason"] for d in result["incidents"])
        assert (Path(store.root) / running).is_dir() and (Path(store.root) / queued).is_dir()
    finally:
        os.close(lock_fd)
    dfd = store.state_dir_fd("queue")
    os.unlink(job, dir_fd=dfd)
    os.close(dfd)
    _, result = run_prune(config_file, capsys)
    assert actions(result) == {running: "deleted", queued: "deleted"}
    assert not any(n.startswith(f"profile-{running}") for n in os.listdir(store.state_path("locks")))


def test_an_incident_locked_on_the_recheck_is_kept(store):
    incident_id = make_incident(store, "203.0.113.45")
    tip = retention.manifest_tip(store, incident_id)
    retention.record_export(store, incident_id, "/a.tar.gz", "0" * 64, 1, tip)
    decision = retention.decide(store, incident_id, 90, set())
    assert decision.action == "delete"
    # a collection took the incident between the decision and the deletion
    decision = retention.delete_incident(store, decision, lambda: {incident_id})
    assert decision.action == "keep" and (Path(store.root) / incident_id).is_dir()


def test_an_interrupted_removal_is_finished(config_file, store, capsys):
    hidden = Path(store.root) / f"{retention.PRUNING_PREFIX}20200101T000000Z_203.0.113.50-ab12"
    (hidden / "pcap" / "01").mkdir(parents=True)
    (hidden / "pcap" / "01" / "capture.pcap").write_bytes(b"x" * 100)
    _, result = run_prune(config_file, capsys)
    assert not hidden.exists()
    [d] = result["incidents"]
    assert d["action"] == "deleted" and d["bytes"] == 100


def test_state_is_trimmed_and_old_pending_lines_become_the_dropped_note(
        config, store, tmp_path):
    old = time.time() - 30 * 86400
    request_stop(store, "dfir-pcap", "203.0.113.60")
    os.utime(store.state_path("stop", "dfir-pcap@203.0.113.60"), (old, old))
    request_stop(store, "dfir-pcap", "203.0.113.61")  # recent: kept
    dead_pid = 2 ** 22 + 12345  # above pid_max's default range: never alive
    for directory, name in (("running", f"{dead_pid}.json"), ("capture-waiting", f"{dead_pid}-ab"),
                            ("queue", ".0001-1-aa-r5710.json")):
        dfd = store.state_dir_fd(directory)
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=dfd))
        os.utime(name, (old, old), dir_fd=dfd)
        os.close(dfd)
    delivery.keep(store, ["ossec-dfir: outcome=complete command=x srcip=- incident=- steps=- "
                          "manifest_sha256=- reason=\"-\""] * 3)
    os.utime(delivery.pending_path(store.root), (old, old))

    dry = prune.prune(config, store, 90, 7, worker.reap_orphans, dry_run=True)
    assert sorted(dry.state) == sorted([
        "stop/dfir-pcap@203.0.113.60", f"running/{dead_pid}.json",
        f"capture-waiting/{dead_pid}-ab", "queue/.0001-1-aa-r5710.json"])
    assert dry.expired_lines == 3 and os.path.exists(store.state_path("running", f"{dead_pid}.json"))

    result = prune.prune(config, store, 90, 7, worker.reap_orphans)
    assert sorted(result.state) == sorted(dry.state) and result.expired_lines == 3
    assert os.listdir(store.state_path("stop")) == ["dfir-pcap@203.0.113.61"]
    assert os.listdir(store.state_path("running")) == []
    assert delivery.pending_lines(store) == (3, [])  # the next flush writes outcome=dropped
    logged = [json.loads(x) for x in open(retention.prune_log_path(store))]
    assert logged[-1]["action"] == "state" and logged[-1]["expired_pending_lines"] == 3


def test_an_age_within_the_grouping_window_is_refused(config_file, capsys):
    assert main(["--config", str(config_file), "prune", "--days", "0.01"]) == 2
    assert "grouping_window_s" in capsys.readouterr().err


def test_worker_prunes_after_its_jobs_only_when_enabled(config, store, tmp_path):
    incident_id = make_incident(store, "203.0.113.70")
    retention.record_export(store, incident_id, "/a.tar.gz", "0" * 64, 1,
                            retention.manifest_tip(store, incident_id))
    assert prune.after_job(config, store, worker.reap_orphans) is None  # off by default
    assert (Path(store.root) / incident_id).is_dir()
    enabled = dataclasses.replace(config, retention=Retention(enabled=True))
    result = prune.after_job(enabled, store, worker.reap_orphans)
    assert result is not None and actions(result.to_dict()) == {incident_id: "deleted"}
    # at most once per interval_s
    assert prune.after_job(enabled, store, worker.reap_orphans) is None


@pytest.mark.parametrize("bad", ["{enabled: yes-please}", "{incident_age_days: 0.01}",
                                 "{state_age_days: -1}", "{nope: 1}"])
def test_retention_block_is_validated(tmp_path, bad):
    from ossec_dfir.config import load
    from ossec_dfir.errors import ConfigError
    path = tmp_path / "c.yml"
    path.write_text(f"retention: {bad}\n")
    with pytest.raises(ConfigError, match="retention"):
        load(str(path), str(tmp_path))


def test_a_link_at_the_prune_log_stops_the_prune_before_any_deletion(config_file, store,
                                                                      tmp_path, capsys):
    incident_id = make_incident(store, "203.0.113.90")
    export(config_file, incident_id, tmp_path / "p.tar.gz", capsys)
    age(store, incident_id)
    target = tmp_path / "elsewhere.log"
    target.write_text("")
    os.symlink(target, retention.prune_log_path(store))
    assert main(["--config", str(config_file), "prune"]) == 3  # the store is unusable
    assert (Path(store.root) / incident_id / "manifest.jsonl").is_file()
    assert target.read_text() == ""


def test_a_link_as_the_export_record_does_not_release(config_file, store, tmp_path, capsys):
    incident_id = make_incident(store, "203.0.113.91")
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({"incident": incident_id, "manifest_tip":
                                  retention.manifest_tip(store, incident_id)}))
    dfd = store.state_dir_fd(retention.EXPORTED_DIR)
    os.symlink(forged, incident_id + ".json", dir_fd=dfd)
    os.close(dfd)
    _, result = run_prune(config_file, capsys)
    assert actions(result) == {incident_id: "keep"}
    assert (Path(store.root) / incident_id).is_dir()
