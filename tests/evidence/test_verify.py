"""verify: flipped bytes, deleted, extra and unfinished files, removed manifest lines."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ossec_dfir.evidence.verify import verify


@pytest.fixture
def incident(store):
    inc, _ = store.incident_for("192.0.2.9", lambda: {"hostname": "t"}, {"trigger_id": "t"})
    inc.append_trigger({"trigger_id": "t", "action": "add"})
    for name in ("a.bin", "b.bin", "c.bin"):
        with inc.writer("test", f"test/01/{name}") as w:
            w.write(os.urandom(4096))
    yield inc
    inc.close()


def kinds(report):
    return sorted((p["kind"], p["path"]) for p in report.problems)


def test_intact_incident_verifies(incident):
    report = verify(incident.path)
    assert report.ok and report.files_checked == 4  # incident.json + 3


def test_one_flipped_byte_is_found(incident):
    path = os.path.join(incident.path, "test/01/b.bin")
    data = bytearray(open(path, "rb").read())
    data[1234] ^= 0x01
    open(path, "wb").write(data)
    assert kinds(verify(incident.path)) == [("modified", "test/01/b.bin")]


def test_deleted_file_is_found(incident):
    os.unlink(os.path.join(incident.path, "test/01/c.bin"))
    assert kinds(verify(incident.path)) == [("missing", "test/01/c.bin")]


def test_extra_file_is_found(incident):
    open(os.path.join(incident.path, "test/01/planted.sh"), "w").write("x")
    assert kinds(verify(incident.path)) == [("extra", "test/01/planted.sh")]


def test_removed_middle_manifest_line_breaks_the_chain(incident):
    path = os.path.join(incident.path, "manifest.jsonl")
    lines = open(path, "rb").read().splitlines(True)
    del lines[4]
    open(path, "wb").write(b"".join(lines))
    report = verify(incident.path)
    assert not report.ok
    assert any(p["kind"] == "chain" for p in report.problems)


def test_removed_last_manifest_line_leaves_an_unrecorded_file(incident):
    path = os.path.join(incident.path, "manifest.jsonl")
    lines = open(path, "rb").read().splitlines(True)
    tip_before = verify(incident.path).tip_sha256
    open(path, "wb").write(b"".join(lines[:-1]))  # the "file" entry of c.bin
    report = verify(incident.path)
    assert ("unfinished", "test/01/c.bin") in kinds(report)
    assert ("modified", "SHA256SUMS") in kinds(report)
    # and the tip from the outcome log line exposes it too
    assert any(p["kind"] == "chain" for p in verify(incident.path, tip_before).problems)


def test_unfinished_file_is_named(incident):
    w = incident.writer("test", "test/01/partial.pcap")
    w.write(b"abc")  # never closed: like a collector killed while writing
    os.close(w.fd)
    assert kinds(verify(incident.path)) == [("unfinished", "test/01/partial.pcap")]


def test_cli_verify_exit_codes(incident, config_file):
    cmd = [sys.executable, "-m", "ossec_dfir.cli.main", "--config", str(config_file), "verify"]
    ok = subprocess.run(cmd + [incident.id], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    os.unlink(os.path.join(incident.path, "test/01/a.bin"))
    bad = subprocess.run(cmd + [incident.path, "--json"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert '"missing"' in bad.stdout and "test/01/a.bin" in bad.stdout


def test_linked_manifest_is_reported(incident, tmp_path):
    copy = tmp_path / "manifest-copy.jsonl"
    src = os.path.join(incident.path, "manifest.jsonl")
    copy.write_bytes(open(src, "rb").read())
    os.unlink(src)
    os.symlink(copy, src)
    report = verify(incident.path)
    assert not report.ok
    assert ("modified", "manifest.jsonl") in kinds(report) or \
        ("missing", "manifest.jsonl") in kinds(report)


def test_wrongly_typed_manifest_entry_is_a_problem_not_a_crash(incident):
    import hashlib
    import json
    path = os.path.join(incident.path, "manifest.jsonl")
    lines = open(path, "rb").read().splitlines(True)
    prev = hashlib.sha256(lines[-1]).hexdigest()
    bad = {"seq": len(lines) + 1, "type": "file", "path": ["a"], "prev": prev}
    with open(path, "ab") as fh:
        fh.write((json.dumps(bad) + "\n").encode())
    report = verify(incident.path)
    assert not report.ok and any(p["kind"] == "chain" for p in report.problems)


def _append_chained(manifest_path: str, count: int, pad: int) -> None:
    """Append count chained metadata lines of about pad bytes (as a file search writes)."""
    import hashlib
    import json
    with open(manifest_path, "rb") as fh:
        lines = fh.read().splitlines(keepends=True)
    prev, seq = hashlib.sha256(lines[-1]).hexdigest(), len(lines)
    with open(manifest_path, "ab") as fh:
        for _ in range(count):
            seq += 1
            line = (json.dumps({"seq": seq, "type": "metadata", "path": "/srv/x" * 8,
                                "detail": "m" * pad, "prev": prev}, sort_keys=True,
                               separators=(",", ":")) + "\n").encode()
            fh.write(line)
            prev = hashlib.sha256(line).hexdigest()


def test_verify_streams_a_large_manifest(incident):
    """A 120 MiB manifest is checked in bounded memory (peak RSS measured in a child)."""
    manifest = os.path.join(incident.path, "manifest.jsonl")
    _append_chained(manifest, 120_000, 1000)
    assert os.path.getsize(manifest) > 120 << 20
    # VmHWM is this process image's peak (ru_maxrss would carry pytest's over the exec).
    code = ("import re, sys; from ossec_dfir.evidence.verify import verify; "
            "r = verify(sys.argv[1]); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print(r.ok, r.entries, hwm)")
    out = subprocess.run([sys.executable, "-c", code, incident.path], capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    assert out[0] == "True" and int(out[1]) > 120_000
    peak_mib = int(out[2]) / 1024
    assert peak_mib < 80, f"verify peaked at {peak_mib:.0f} MiB for a 120 MiB manifest"


def test_verify_lists_at_most_max_problems(incident):
    from ossec_dfir.evidence import verify as verify_mod
    for i in range(verify_mod.MAX_PROBLEMS + 50):
        with open(os.path.join(incident.path, "test", "01", f"planted-{i}"), "w") as fh:
            fh.write("x")
    report = verify(incident.path)
    assert not report.ok
    assert len(report.problems) == verify_mod.MAX_PROBLEMS
    assert report.problems_not_listed == 50
