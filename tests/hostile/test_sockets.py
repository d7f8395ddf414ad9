"""Issue 12 item 2: hostile socket names and malformed /proc tables cost one line, never a table.

A local user (nobody) binds an abstract unix socket whose name holds newlines,
fake columns and a forged socket line, and holds a TCP connection to the
alert's address; triage still lists the connection, its owner as a suspect and
every other socket, and keeps the hostile name whole.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from ossec_dfir import procfs
from ossec_dfir.collectors.triage import net as _net, system as _system
from tests.conftest import evidence_path
from tests.hostile.unprivileged import drop_to_nobody

LISTEN_IP = "127.0.0.61"
# A forged socket line short enough to fit in a socket name (108 bytes at most).
FORGED = b"00000000: 00000002 00000000 00010000 0001 01 4242 /f"
HOSTILE_NAME = b"evil\n" + b"x 1 2 3\n" + FORGED + b"\n" + b"\x1c\x85\xff"

CHILD = r"""
import socket, sys, time
name = bytes.fromhex(sys.argv[1])
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
u.bind(b"\0" + name)
u.listen(1)
t = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10)
print("ready", flush=True)
time.sleep(60)
"""


def read_jsonl(incident, relpath: str) -> list[dict]:
    text = evidence_path(incident, relpath).read_bytes().decode("utf-8", "strict")
    return [json.loads(line) for line in text.splitlines()]


def test_hostile_unix_name_costs_nothing_in_a_real_snapshot(run_collector):
    listener = socket.socket()
    listener.bind((LISTEN_IP, 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    child = subprocess.Popen(["/usr/bin/python3", "-I", "-c", CHILD, HOSTILE_NAME.hex(), LISTEN_IP,
                              str(port)], stdout=subprocess.PIPE, preexec_fn=drop_to_nobody,
                             cwd="/")
    try:
        listener.settimeout(10)
        accepted, _ = listener.accept()
        assert child.stdout.readline().strip() == b"ready"
        outcome, incident = run_collector("triage", {"timeout_s": 60, "open_files": False},
                                          srcip=LISTEN_IP)
        accepted.close()
    finally:
        child.kill()
        child.wait(timeout=10)
        listener.close()
    assert outcome.outcome in ("complete", "partial"), outcome.reason
    conns = read_jsonl(incident, "triage/01/connections.jsonl")
    mine = [c for c in conns if c["pid"] == child.pid]
    assert mine and mine[0]["remote_ip"] == LISTEN_IP and mine[0]["remote_port"] == port
    suspects = {r["pid"] for r in read_jsonl(incident, "triage/01/suspects.jsonl")}
    assert child.pid in suspects and child.pid in outcome.summary["suspects"]
    unix = read_jsonl(incident, "triage/01/unix_sockets.jsonl")
    assert len(unix) > 1  # the other sockets of the host are still there
    evil = [u for u in unix if u["pid"] == child.pid]
    assert len(evil) == 1
    # The name is whole up to the forged line (which the text table cannot tell
    # from a real one), kept with its newline.
    assert evil[0]["path"] == "@evil\nx 1 2 3"
    assert evil[0]["name_has_newline"] is True and evil[0]["listening"] is True


def test_malformed_lines_cost_that_line_only(tmp_path, monkeypatch):
    net_dir = tmp_path / "self" / "net"
    net_dir.mkdir(parents=True)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
    good = ("   0: 0500007F:1F90 0900007F:D431 01 00000000:00000000 "
            "00:00000000 00000000  1000        0 4242 1 0 20 4 30 10 -1\n")
    (net_dir / "tcp").write_text(header + "   1: ZZZZ:1F90 x y z\n" + good + "garbage\n")
    (net_dir / "unix").write_bytes(
        b"Num       RefCount Protocol Flags    Type St Inode Path\n"
        b"continues nothing\n"
        b"0000000000000000: 00000002 00000000 00010000 0001 01 99 @evil\n"
        b"0 0 0 fake columns\x1c\x0b\n"
        + FORGED.replace(b"4242", b"100") + b"\n"
        b"0000000000000000: 00000003 00000000 00000000 0002 01   100 /run/dup\n"
        b"0000000000000000: 00000002 00000000 00000000 0001 03 101\n")
    (tmp_path / "modules").write_text("bad line\nrootkit 16384 0 - Live 0xffffffffc0000000 (OE)\n")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "mountinfo").write_bytes(
        b"no separator here\n"
        b"36 35 98:0 / /home/u/m\\012ount\\377 rw - fuse.x /dev/fuse rw\n")
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    inet, unix, problems = _net.socket_tables()
    assert [c["inode"] for c in inet] == [4242]
    assert any(p.startswith("sockets (tcp): 2 malformed line(s) skipped") for p in problems)
    assert any(p.startswith("sockets (unix): 1 malformed line(s) skipped (first: continues")
               for p in problems)
    by_inode = {}
    for rec in unix:
        by_inode.setdefault(rec["inode"], []).append(rec)
    assert by_inode[99][0]["path"] == "@evil\n0 0 0 fake columns\x1c\x0b"
    assert by_inode[99][0]["name_has_newline"] is True
    assert [r["path"] for r in by_inode[100]] == ["/f", "/run/dup"]
    assert all(r["inode_conflict"] for r in by_inode[100])
    assert by_inode[101][0]["path"] is None and by_inode[101][0]["state"] == "CONNECTED"
    mods, problems = _system.modules()
    assert [m["name"] for m in mods] == ["rootkit"] and "1 malformed" in problems[0]
    mounts, problems = _system.mounts()
    assert [m["mount_point"] for m in mounts] == [os.fsdecode(b"/home/u/m\nount\xff")]
    assert "mounts: 1 malformed line(s)" in problems[0]


def test_a_broken_unix_table_never_costs_the_inet_tables(tmp_path, monkeypatch):
    net_dir = tmp_path / "self" / "net"
    net_dir.mkdir(parents=True)
    (net_dir / "tcp").write_text(
        "header\n   0: 0500007F:1F90 0900007F:D431 01 00000000:00000000 "
        "00:00000000 00000000  1000        0 4242 1 0 20 4 30 10 -1\n")
    Path(net_dir / "unix").mkdir()  # unreadable as a file: EISDIR
    monkeypatch.setattr(procfs, "PROC", str(tmp_path))
    inet, unix, problems = _net.socket_tables()
    assert [c["inode"] for c in inet] == [4242] and unix == []
    assert any(p.startswith("sockets (unix):") for p in problems)
