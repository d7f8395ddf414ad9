"""Failure and resume: the server killed mid-upload, then back: every object ends shipped
exactly as in the manifest; the outbox backs off and survives a new shipper."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ossec_dfir.ship import outbox, receipts as rc
from ossec_dfir.ship.fetch import fetch
from ossec_dfir.ship.s3 import S3Client
from ossec_dfir.ship.shipper import incident_host_id, ship_pass

from .test_s3 import make_incident, s3_target


def test_server_killed_mid_multipart_upload_then_restarted(store, s3_server, s3_credentials,
                                                          tmp_path, monkeypatch):
    big = os.urandom(17 * 1024 * 1024)
    files = {"test/01/a.txt": b"alpha\n", "test/01/big.bin": big, "test/01/z.txt": b"zulu\n"}
    incident = make_incident(store, files)
    target = s3_target(s3_server, s3_credentials, part_bytes=5 * 1024 * 1024)
    real_part = S3Client.upload_part
    parts_sent: list[int] = []

    def part_then_kill(self, key, upload_id, number, body):
        etag = real_part(self, key, upload_id, number, body)
        parts_sent.append(number)
        if number == 2 and len(parts_sent) == 2:
            s3_server.kill()     # the server dies between two parts of big.bin
        return etag
    monkeypatch.setattr(S3Client, "upload_part", part_then_kill)

    result = ship_pass(store, incident.id, [target])
    assert not result.ok and "lab" in result.errors
    assert parts_sent == [1, 2]
    hid = incident_host_id(incident)
    got = {e["path"] for e in incident.manifest() if e["type"] == "receipt"}
    assert "test/01/big.bin" not in got        # no receipt for what did not complete
    assert not rc.shipped_everywhere(incident.path)

    # Network down: the next pass fails fast, records nothing.
    assert not ship_pass(store, incident.id, [target]).ok
    s3_server.start()                           # back, same port and data
    result = ship_pass(store, incident.id, [target])
    assert result.ok, result.errors
    assert rc.shipped_everywhere(incident.path)
    for relpath, data in files.items():
        assert s3_server.object(f"dfir/{hid}/{incident.id}/{relpath}") == data
    # Every file has exactly one receipt from the target: shipped once it completed.
    paths = [e["path"] for e in incident.manifest() if e["type"] == "receipt"
             and e["path"] in files]
    assert sorted(paths) == sorted(files)
    report = fetch(target, f"{hid}/{incident.id}", str(tmp_path / "f"))
    assert report.ok, report.to_dict()
    incident.close()


def test_outbox_backs_off_and_persists(store):
    incident = make_incident(store, {"test/01/a.txt": b"a"})
    assert outbox.add(store, incident.id)
    assert [e["incident"] for e in outbox.due(store)] == [incident.id]
    first = outbox.failed(store, incident.id, "down")
    second = outbox.failed(store, incident.id, "down")
    assert second == 2 * first
    assert outbox.due(store) == []               # backing off
    entry = outbox.read(store, incident.id)
    assert entry["fails"] == 2 and entry["last_error"] == "down"
    # Queued again (a new trigger): due at once, and a stale pass may not remove it.
    gen = entry["gen"]
    outbox.add(store, incident.id)
    assert not outbox.remove(store, incident.id, if_gen=gen)
    assert outbox.ids(store) == [incident.id]
    assert Path(store.state_path("outbox", incident.id + ".json")).exists()
    for _ in range(60):
        delay = outbox.failed(store, incident.id, "down")
    assert delay == outbox.MAX_BACKOFF_S        # bounded backoff
    incident.close()


def test_a_local_file_changed_after_closing_is_never_shipped(store, s3_server, s3_credentials):
    incident = make_incident(store, {"test/01/a.txt": b"alpha\n", "test/01/b.txt": b"b\n",
                                     "test/01/c.txt": b"charlie\n"})
    path = Path(incident.path) / "test/01/a.txt"
    path.write_bytes(b"tampered\n")
    (Path(incident.path) / "test/01/b.txt").unlink()
    result = ship_pass(store, incident.id, [s3_target(s3_server, s3_credentials)])
    assert "lab" in result.errors
    assert not any(k.endswith(("test/01/a.txt", "test/01/b.txt")) for k in s3_server.keys())
    # The files the intruder did not touch still leave the host.
    [c] = [k for k in s3_server.keys() if k.endswith("test/01/c.txt")]
    assert s3_server.object(c) == b"charlie\n"
    assert result.pending == 2
    assert not rc.shipped_everywhere(incident.path)
    incident.close()


def test_a_full_outbox_is_recorded_in_the_incident(store, s3_server, s3_credentials,
                                                   monkeypatch, config):
    import dataclasses

    from ossec_dfir.ar import shipping

    cfg = dataclasses.replace(config, ship=(s3_target(s3_server, s3_credentials),))
    first = make_incident(store, {"test/01/a.txt": b"a"}, key="203.0.113.1")
    second = make_incident(store, {"test/01/a.txt": b"b"}, key="203.0.113.2")
    monkeypatch.setattr(outbox, "MAX_ENTRIES", 1)
    assert shipping.queue(cfg, store, first.id)
    assert not shipping.queue(cfg, store, second.id)
    assert outbox.ids(store) == [first.id]
    [skipped] = [e for e in second.manifest() if e["type"] == "ship"]
    assert skipped["outcome"] == "skipped" and "outbox is full" in skipped["reason"]
    first.close()
    second.close()


def test_the_ar_entry_imports_no_shipping_library():
    import subprocess
    import sys

    code = ("import sys; import ossec_dfir.ar.entry, ossec_dfir.ar.worker; "
            "bad = [m for m in ('pyrage', 'paramiko', 'http.client', 'ossec_dfir.ship.s3', "
            "'ossec_dfir.ship.sftp') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_status_and_ship_status_show_the_outbox(store, config_file, capsys):
    from ossec_dfir.cli.main import main

    incident = make_incident(store, {"test/01/a.txt": b"a"})
    outbox.add(store, incident.id)
    outbox.failed(store, incident.id, "HTTP 503")
    assert main(["--config", str(config_file), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outbox"] == 1
    assert main(["--config", str(config_file), "ship-status", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["incident"] == incident.id and row["fails"] == 1
    assert row["last_error"] == "HTTP 503"
    assert row["remote_id"] == f"web-01-{'ab' * 6}/{incident.id}"
    incident.close()
