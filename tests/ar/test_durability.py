"""What an accepted add makes durable before the AR exits, in which order, with how many fsyncs.

Write-ahead: a file's bytes before the manifest entry naming its hash, the
trigger line before its manifest entry, every new directory entry, and the
queued job. The count is the AR's cost on a slow disk (issue 15).
"""
from __future__ import annotations

import os

from ossec_dfir.ar import entry, worker
from ossec_dfir.settings import Response
from tests.conftest import make_request


def _record_fsyncs(monkeypatch) -> list[str]:
    """Replace os.fsync with one that notes what each fsync was for (the path behind the fd)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _queue(config, monkeypatch, ip: str) -> entry.Queued:
    monkeypatch.setattr(worker, "spawn", lambda *a: 0)  # the hand-off is tested elsewhere
    settings = config.settings().replace(responses={"test": Response("test")})
    return entry.queue(settings, make_request(ip), "")


def _kind(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    if rel.startswith(".state/queue/"):
        return "job"
    parts = rel.split("/")
    return "root dir" if rel == "." else "incident dir" if len(parts) == 1 else parts[-1]


def test_a_new_incident_is_durable_in_eight_fsyncs_data_first(config, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    q = _queue(config, monkeypatch, "192.0.2.7")
    assert q.created
    kinds = [_kind(p, config.evidence_root) for p in synced]
    assert kinds == ["root dir",                        # the incident directory's entry
                     "incident dir",                    # incident.json's entry
                     "incident.json",                   # its bytes ...
                     "manifest.jsonl", "SHA256SUMS",    # ... before its begin + file entries
                     "triggers.jsonl", "manifest.jsonl",  # the trigger before its entry
                     "job"]


def test_a_trigger_joining_an_incident_is_durable_in_three(config, monkeypatch):
    _queue(config, monkeypatch, "192.0.2.8")
    synced = _record_fsyncs(monkeypatch)
    q = _queue(config, monkeypatch, "192.0.2.8")
    assert not q.created
    assert [_kind(p, config.evidence_root) for p in synced] == \
        ["triggers.jsonl", "manifest.jsonl", "job"]
