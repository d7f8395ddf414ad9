"""procdump writes a live process's memory as an ELF core: marker at its address."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time

import pytest

from ossec_dfir.collectors.memory import memread, procdump
from ossec_dfir import hostinfo
from ossec_dfir.collectors.base import Context, Params
from tests.conftest import evidence_path, make_request

CHILD = r"""
import ctypes, os, sys
marker = os.urandom(32)
buf = ctypes.create_string_buffer(marker, 32)
sys.stdout.write(f"{ctypes.addressof(buf):x} {marker.hex()}\n")
sys.stdout.flush()
sys.stdin.read()
"""


@pytest.fixture
def marker_child():
    """Start a child holding a random 32-byte marker; yield (proc, address, marker)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    addr_hex, marker_hex = proc.stdout.readline().decode().split()
    yield proc, int(addr_hex, 16), bytes.fromhex(marker_hex)
    proc.stdin.close()
    proc.wait(timeout=10)


@pytest.fixture
def ctx(config, store):
    """Return a collector Context on a fresh incident (as the runner builds it)."""
    req = make_request("127.0.0.2")
    incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    run_dir = incident.new_run_dir("memory")
    yield Context(config=config, request=req, incident=incident, collector="memory",
                  run_dir=run_dir, params=Params(), deadline=time.monotonic() + 60)
    incident.close()


def read_core(path):
    """Return (ehdr fields, phdrs, data) of an ELF64 core."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF"
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    phdrs = [struct.unpack_from("<IIQQQQQQ", data, phoff + 56 * i) for i in range(phnum)]
    return (e_type, e_machine), phdrs, data


def merged(ranges):
    """Return ranges [start, end) with touching ones joined."""
    out = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def value_at(phdrs, data, vaddr, size):
    """Return the bytes of the core at a virtual address."""
    for p_type, _flags, off, va, _pa, filesz, _memsz, _align in phdrs:
        if p_type == 1 and va <= vaddr and vaddr + size <= va + filesz:
            return data[off + vaddr - va: off + vaddr - va + size]
    raise AssertionError(f"address {vaddr:#x} not in any PT_LOAD")


def test_marker_found_at_reported_address(ctx, marker_child):
    proc, addr, marker = marker_child
    rec = procdump.dump_process_core(ctx, proc.pid, "core", 0)
    assert rec["outcome"] == "complete", rec
    path = evidence_path(ctx.incident, rec["file"])
    (e_type, _), phdrs, data = read_core(path)
    assert e_type == 4
    assert value_at(phdrs, data, addr, 32) == marker
    maps = procdump.parse_maps(open(f"/proc/{proc.pid}/maps").read())
    readable = [m for m in maps if m.skip_reason() is None]
    loads = [p for p in phdrs if p[0] == 1]
    assert merged([(p[3], p[3] + p[6]) for p in loads]) == \
        merged([(m.start, m.end) for m in readable])
    assert rec["dumped_bytes"] == sum(p[5] for p in loads) < sum(p[6] for p in loads)
    assert not any(m.path == "[vvar]" for m in readable)
    entry = [e for e in ctx.incident.manifest() if e["type"] == "file"
             and e["path"] == rec["file"]][0]
    assert entry["sha256"] == rec["sha256"] and entry["meta"]["pid"] == proc.pid


def test_core_notes_name_the_process_and_its_files(ctx, marker_child):
    proc, _, _ = marker_child
    rec = procdump.dump_process_core(ctx, proc.pid, "core", 0)
    _, phdrs, data = read_core(evidence_path(ctx.incident, rec["file"]))
    note = [p for p in phdrs if p[0] == 4][0]
    blob = data[note[2]:note[2] + note[5]]
    types, pos = {}, 0
    while pos < len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, pos)
        pos += 12 + namesz + (-namesz % 4)
        types[ntype] = blob[pos:pos + descsz]
        pos += descsz + (-descsz % 4)
    prpsinfo = types[procdump.NT_PRPSINFO]
    assert len(prpsinfo) == 136
    assert struct.unpack_from("<i", prpsinfo, 24)[0] == proc.pid
    assert os.path.basename(sys.executable).encode()[:15] in prpsinfo[40:56] \
        or b"python" in prpsinfo[40:56]
    assert os.path.realpath(sys.executable).encode() in types[procdump.NT_FILE]


@pytest.mark.skipif(not shutil.which("readelf"), reason="readelf (binutils) not installed")
def test_readelf_lists_the_segments(ctx, marker_child):
    proc, _, _ = marker_child
    rec = procdump.dump_process_core(ctx, proc.pid, "core", 0)
    path = evidence_path(ctx.incident, rec["file"])
    out = subprocess.run(["readelf", "-W", "-l", "-n", str(path)], capture_output=True,
                         text=True, check=True)
    assert "CORE (Core file)" in out.stdout
    assert out.stdout.count("LOAD ") == rec["segments"]
    assert "NT_PRPSINFO" in out.stdout and "NT_FILE" in out.stdout
    assert "Warning" not in out.stderr and "Error" not in out.stderr


@pytest.mark.skipif(not shutil.which("gdb"), reason="gdb not installed")
def test_gdb_loads_the_core(ctx, marker_child):
    proc, addr, marker = marker_child
    rec = procdump.dump_process_core(ctx, proc.pid, "core", 0)
    path = evidence_path(ctx.incident, rec["file"])
    out = subprocess.run(["gdb", "-nx", "-batch", "-c", str(path),
                          "-ex", f"x/32xb {addr:#x}"], capture_output=True, text=True,
                         timeout=60)
    dumped = bytes(int(tok, 16) for line in out.stdout.splitlines() if line.startswith("0x")
                   for tok in line.split(":", 1)[1].split())
    assert dumped == marker, out.stdout + out.stderr


def test_max_bytes_cuts_segments_and_marks_partial(ctx, marker_child):
    proc, _, _ = marker_child
    rec = procdump.dump_process_core(ctx, proc.pid, "core", 1 << 20)
    assert rec["outcome"] == "partial" and "max_bytes" in rec["reason"]
    assert rec["size"] == 1 << 20  # max_bytes caps the whole file
    _, phdrs, data = read_core(evidence_path(ctx.incident, rec["file"]))
    loads = [p for p in phdrs if p[0] == 1]
    assert sum(p[5] for p in loads) == rec["dumped_bytes"] == len(data) - loads[0][2]
    assert any(p[5] == 0 and p[6] > 0 for p in loads)
    last = max(loads, key=lambda p: p[2] + p[5] if p[5] else 0)
    assert len(data) == last[2] + last[5]
    entry = [e for e in ctx.incident.manifest() if e["type"] == "file"][-1]
    assert entry["outcome"] == "partial"


def test_vanished_process_is_a_failed_record_not_an_exception(ctx):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    rec = procdump.dump_process_core(ctx, child.pid, "core", 0)
    assert rec["outcome"] == "failed" and f"/proc/{child.pid}" in rec["reason"]
    assert rec["file"] is None


def test_unreadable_pages_are_zero_filled_holes(ctx, monkeypatch, marker_child):
    proc, addr, marker = marker_child
    real_preadv = os.preadv
    bad_page = addr - addr % procdump.PAGE

    def flaky_preadv(fd, buffers, pos):
        if pos <= bad_page < pos + len(buffers[0]):
            raise OSError(5, "Input/output error")
        return real_preadv(fd, buffers, pos)
    monkeypatch.setattr(memread.os, "preadv", flaky_preadv)
    rec = procdump.dump_process_core(ctx, proc.pid, "core", 0)
    assert rec["holes"] == [[hex(bad_page), hex(bad_page + procdump.PAGE)]]
    _, phdrs, data = read_core(evidence_path(ctx.incident, rec["file"]))
    assert value_at(phdrs, data, bad_page, procdump.PAGE) == bytes(procdump.PAGE)


def test_parse_maps_and_skip_rules():
    text = ("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/dbus-daemon\n"
            "7ffd1000-7ffd3000 r--p 00000000 00:00 0 [vvar]\n"
            "7f000000-7f001000 rw-s 00000000 00:05 12 /dev/dri/card0\n"
            "7f100000-7f101000 rw-s 00000000 00:01 4 /dev/zero (deleted)\n"
            "7f200000-7f201000 ---p 00000000 00:00 0 \n"
            "garbage line\n")
    maps = procdump.parse_maps(text)
    assert [m.skip_reason() for m in maps] == [None, "kernel pseudo mapping", "device mapping",
                                                None, "not readable"]
    assert maps[0].file_backed and not maps[4].file_backed


def test_stop_freezes_then_continues_the_process(ctx, marker_child):
    proc, addr, marker = marker_child
    rec = procdump.dump_process_core(ctx, proc.pid, "core", 0, stop=True)
    assert rec["outcome"] == "complete"
    _, phdrs, data = read_core(evidence_path(ctx.incident, rec["file"]))
    assert value_at(phdrs, data, addr, 32) == marker
    assert procdump._stopped_state(proc.pid) not in ("T", "t")
