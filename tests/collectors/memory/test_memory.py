"""The memory collector: LiME image from a synthetic kcore, process cores, skip reasons."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ossec_dfir import config as config_mod, hostinfo
from ossec_dfir.collectors.base import build_params, get_collector
from ossec_dfir.collectors.memory import lime as _lime
from ossec_dfir.errors import ConfigError
from ossec_dfir.ar.runner import Runner
from ossec_dfir.evidence.store import Store
from tests.conftest import AR_DIR, evidence_path, make_request

PAGE = 4096
IOMEM = """\
00000000-00000fff : Reserved
00001000-00004fff : System RAM
00005000-00005fff : Reserved
00010000-00017fff : System RAM
  00010000-00010fff : Kernel code
c0000000-c0000fff : PCI Bus 0000:00
"""


def elf_core(path: Path, loads: list[tuple[int, int, int]], size: int) -> None:
    """Write an ELF64 core with PT_LOADs (paddr, file offset, filesz), sized size bytes."""
    phdrs = [struct.pack("<IIQQQQQQ", 4, 0, 0, 0, 0, 0, 0, 4)]  # a PT_NOTE, ignored
    phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, 0x1000, 0xffffc90000000000,
                             0xFFFFFFFFFFFFFFFF, 0x1000, 0x1000, PAGE))  # vmalloc: no paddr
    for paddr, off, filesz in loads:
        phdrs.append(struct.pack("<IIQQQQQQ", 1, 7, off, 0xffff888000000000 + paddr, paddr,
                                 filesz, filesz, PAGE))
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,
                       4, 62, 1, 0, 64, 0, 0, 64, 56, len(phdrs), 64, 0, 0)
    with open(path, "wb") as fh:
        fh.write(ehdr + b"".join(phdrs))
        fh.truncate(size)


@pytest.fixture
def fake_kernel(tmp_path, monkeypatch):
    """A proc/dev/sys tree with a synthetic kcore; return the expected LiME bytes."""
    root = tmp_path / "kernel"
    for d in ("proc", "dev", "sys/kernel/security"):
        (root / d).mkdir(parents=True)
    (root / "proc/iomem").write_text(IOMEM)
    (root / "sys/kernel/security/lockdown").write_text("[none] integrity confidentiality\n")
    pages = {n: os.urandom(PAGE) for n in range(16)}
    # RAM 0x1000-0x4fff split across two segments (A, B); RAM 0x10000-0x17fff covered
    # by C (4 pages), a gap at 0x14000 (no segment), then D whose last 2 pages lie
    # beyond the end of the kcore file (unreadable).
    loads = [(0x1000, 0x10000, 0x2000), (0x3000, 0x12000, 0x2000),
             (0x10000, 0x14000, 0x4000), (0x15000, 0x18000, 0x3000)]
    kcore = root / "proc/kcore"
    elf_core(kcore, loads, 0x19000)
    with open(kcore, "r+b") as fh:
        for i, off in enumerate(range(0x10000, 0x19000, PAGE)):
            fh.seek(off)
            fh.write(pages[i])
    monkeypatch.setattr(_lime, "PROC", str(root / "proc"))
    monkeypatch.setattr(_lime, "DEV", str(root / "dev"))
    monkeypatch.setattr(_lime, "SYS", str(root / "sys"))
    hdr = lambda s, e: struct.pack("<IIQQ8x", 0x4C694D45, 1, s, e)  # noqa: E731
    expected = (hdr(0x1000, 0x4fff) + b"".join(pages[i] for i in range(4)) +
                hdr(0x10000, 0x17fff) + b"".join(pages[i] for i in range(4, 8)) +
                bytes(PAGE) + pages[8] + bytes(2 * PAGE))
    return root, expected


def host_only(**extra):
    """Params for the host image alone (no symbols, no processes)."""
    return {"process_dumps": False, "symbols": False, "timeout_s": 60, **extra}


def manifest_file(incident, relpath):
    return [e for e in incident.manifest() if e["type"] == "file" and e["path"] == relpath][0]


def test_lime_from_synthetic_kcore_byte_for_byte(run_collector, fake_kernel):
    root, expected = fake_kernel
    outcome, incident = run_collector("memory", host_only())
    assert outcome.outcome == "complete", outcome
    image = evidence_path(incident, "memory/01/host.lime").read_bytes()
    assert image == expected
    entry = manifest_file(incident, "memory/01/host.lime")
    assert entry["meta"]["holes"] == [["0x14000", "0x15000"], ["0x16000", "0x18000"]]
    assert entry["meta"]["hole_bytes"] == 3 * PAGE
    assert entry["meta"]["source"] == str(root / "proc/kcore")
    assert entry["meta"]["ranges"] == [["0x1000", "0x4fff"], ["0x10000", "0x17fff"]]
    assert outcome.summary["host_image"]["holes"] == 2


def test_small_chunks_give_the_same_image(fake_kernel, tmp_path):
    root, expected = fake_kernel
    plan, reasons = _lime.choose(("kcore",))
    assert reasons == {}

    class Sink:
        data = bytearray()

        def write(self, b):
            self.data += b
    sink = Sink()
    stats = _lime.write_lime(sink, plan, lambda: None, chunk_bytes=3 * PAGE)
    assert bytes(sink.data) == expected and stats["stopped"] is None


def test_dev_mem_source_reads_at_physical_offsets(run_collector, fake_kernel):
    root, _ = fake_kernel
    ram = os.urandom(0x18000)
    (root / "dev/mem").write_bytes(ram)
    outcome, incident = run_collector("memory", host_only(sources=["mem", "kcore"]))
    image = evidence_path(incident, "memory/01/host.lime").read_bytes()
    assert image[32:32 + 0x4000] == ram[0x1000:0x5000]
    assert image[-0x8000:] == ram[0x10000:0x18000]
    assert outcome.outcome == "complete"


def test_no_source_reasons_are_precise(fake_kernel, monkeypatch):
    root, _ = fake_kernel
    (root / "dev/mem").write_bytes(bytes(PAGE))
    (root / "sys/kernel/security/lockdown").write_text("none [integrity] confidentiality\n")
    plan, reasons = _lime.choose(("crash", "mem"))
    assert plan is None
    assert reasons == {"crash": f"{root}/dev/crash does not exist",
                       "mem": f"{root}/dev/mem blocked by kernel lockdown=integrity"}
    (root / "sys/kernel/security/lockdown").write_text("none integrity [confidentiality]\n")
    assert _lime.choose(("kcore",))[1] == {
        "kcore": f"{root}/proc/kcore blocked by kernel lockdown=confidentiality"}
    (root / "sys/kernel/security/lockdown").write_text("[none] integrity confidentiality\n")

    def refuse(fd, n, off):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(_lime.os, "pread", refuse)
    assert "STRICT_DEVMEM" in _lime.choose(("mem",))[1]["mem"]
    monkeypatch.undo()


def test_tiny_kcore_and_missing_iomem(fake_kernel):
    root, _ = fake_kernel
    kcore = root / "proc/kcore"
    kcore.write_bytes(b"")
    assert _lime.choose(("kcore",))[1]["kcore"] == f"{kcore} is empty or tiny (0 bytes)"
    elf_core(kcore, [(0x100000000, 0x10000, 0x1000)], 0x20000)
    assert "no PT_LOAD whose physical address covers System RAM" in \
        _lime.choose(("kcore",))[1]["kcore"]
    (root / "proc/iomem").unlink()
    reason = _lime.choose(("kcore",))[1]["kcore"]
    assert reason.startswith(f"{root}/proc/iomem not readable") and "container" in reason


def test_disk_precheck_skips_with_figures(run_collector, fake_kernel, monkeypatch):
    _, expected = fake_kernel
    monkeypatch.setattr(Store, "free_bytes", lambda self: len(expected) - 1)
    outcome, incident = run_collector("memory", host_only())
    assert outcome.outcome == "partial"
    assert outcome.reason == (f"host image skipped: image needs {len(expected)} bytes + "
                              f"reserve 0 bytes but only {len(expected) - 1} bytes are free "
                              "on the evidence filesystem")
    assert not evidence_path(incident, "memory/01/host.lime").exists()


def parse_lime(data: bytes) -> list[tuple[int, int, bytes]]:
    """Parse a LiME file as Volatility's LiME layer does; fail on any inconsistency.

    Returns (start, inclusive end, bytes) per segment. Every header must carry the
    magic and version, ranges must not go backwards or overlap, and the bytes that
    follow each header must be exactly its range's length (a cut file fails).
    """
    out, pos, max_end = [], 0, 0
    while pos < len(data):
        assert len(data) - pos >= 32, f"truncated header at file offset {pos:#x}"
        magic, version, start, end = struct.unpack_from("<IIQQ", data, pos)
        assert (magic, version) == (0x4C694D45, 1), f"bad header at {pos:#x}"
        assert start >= max_end and end >= start, f"bad range {start:#x}-{end:#x} at {pos:#x}"
        length = end + 1 - start
        body = data[pos + 32:pos + 32 + length]
        assert len(body) == length, (f"segment {start:#x}-{end:#x} announces {length} bytes, "
                                     f"{len(body)} follow")
        out.append((start, end, body))
        pos += 32 + length
        max_end = end + 1
    return out


def test_lime_cut_by_a_timeout_has_every_header_matching(run_collector, fake_kernel,
                                                          monkeypatch):
    """Issue 12 item 17: a stopped image keeps headers that match the bytes written."""
    _, expected = fake_kernel
    monkeypatch.setattr(_lime, "SEGMENT_BYTES", 3 * PAGE)
    full = parse_lime(expected)
    stops = iter(range(1000))
    orig = _lime.write_lime

    def write_lime(writer, plan, should_stop, **kw):
        # the timeout strikes before the fourth segment (asked once per segment)
        return orig(writer, plan, lambda: "timeout_s=1 reached" if next(stops) >= 3 else None,
                    **kw)
    monkeypatch.setattr(_lime, "write_lime", write_lime)
    outcome, incident = run_collector("memory", host_only())
    assert outcome.outcome == "partial" and "timeout_s=1 reached" in outcome.reason
    entry = manifest_file(incident, "memory/01/host.lime")
    assert entry["outcome"] == "partial"
    image = evidence_path(incident, "memory/01/host.lime").read_bytes()
    segs = parse_lime(image)
    # 0x1000-0x4fff (4 pages) -> 3 + 1 pages; 0x10000-0x17fff -> 3 + 3 + 2 pages
    assert [(s, e) for s, e, _ in segs] == [(0x1000, 0x3fff), (0x4000, 0x4fff),
                                            (0x10000, 0x12fff)]
    assert len(image) == 3 * 32 + 7 * PAGE
    assert entry["size"] == len(image)
    assert entry["meta"]["segments"] == 3 and entry["meta"]["not_read_from"] == "0x13000"
    whole = {s: b for s, _, b in full}
    flat = b"".join(whole[s] for s in sorted(whole))
    offsets = {0x1000: 0, 0x10000: 0x4000}
    for start, end, body in segs:
        base = 0x1000 if start < 0x10000 else 0x10000
        at = offsets[base] + start - base
        assert body == flat[at:at + end + 1 - start]


def test_lime_segments_concatenate_to_the_whole_image(fake_kernel, monkeypatch):
    _, expected = fake_kernel
    plan, _ = _lime.choose(("kcore",))

    class Sink:
        data = bytearray()

        def write(self, b):
            self.data += b
    sink = Sink()
    stats = _lime.write_lime(sink, plan, lambda: None, segment_bytes=2 * PAGE)
    segs = parse_lime(bytes(sink.data))
    assert stats["segments"] == len(segs) == 2 + 4
    assert b"".join(b for _, _, b in segs) == b"".join(b for _, _, b in parse_lime(expected))


def test_lime_stops_whole_when_the_reserve_is_near(fake_kernel):
    plan, _ = _lime.choose(("kcore",))

    class Sink:
        data = bytearray()

        def write(self, b):
            self.data += b
    sink = Sink()
    budget = [32 + 4 * PAGE + 32 + 2 * PAGE]

    def room(n):
        if n > budget[0]:
            return False
        budget[0] -= n
        return True
    stats = _lime.write_lime(sink, plan, lambda: None, room=room, segment_bytes=2 * PAGE)
    assert stats["stopped"] == "evidence reserve reached" and stats["next_address"] == 0x10000
    assert [(s, e) for s, e, _ in parse_lime(bytes(sink.data))] == [(0x1000, 0x2fff),
                                                                    (0x3000, 0x4fff)]


CHILD = r"""
import ctypes, os, socket, sys
marker = os.urandom(32)
buf = ctypes.create_string_buffer(marker, 32)
srv = socket.socket()
srv.bind((sys.argv[1], 0))
srv.listen(1)
sys.stdout.write(f"{ctypes.addressof(buf):x} {marker.hex()}\n")
sys.stdout.flush()
sys.stdin.read()
"""


@pytest.fixture
def suspect_child():
    """A child listening on a random 127/8 address with a random marker.

    Yields (pid, addr, marker, ip). Its argv[0] is unique (memtest-<hex>) and so is
    its address, so that process_names and suspects select it alone even when
    other tests run on this host at the same time.
    """
    argv0 = f"memtest-{os.urandom(4).hex()}"
    ip = "127.{}.{}.{}".format(*(1 + b % 254 for b in os.urandom(3)))
    proc = subprocess.Popen([argv0, "-c", CHILD, ip], executable=sys.executable,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    addr_hex, marker_hex = proc.stdout.readline().decode().split()
    yield proc.pid, int(addr_hex, 16), bytes.fromhex(marker_hex), ip
    proc.stdin.close()
    proc.wait(timeout=10)


def marker_in_core(path: Path, addr: int) -> bytes:
    data = path.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    for i in range(phnum):
        p_type, _, off, vaddr, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data,
                                                                    phoff + 56 * i)
        if p_type == 1 and vaddr <= addr < vaddr + filesz:
            return data[off + addr - vaddr:off + addr - vaddr + 32]
    raise AssertionError("address not in the core")


@pytest.mark.skipif(os.path.exists("/proc/kcore"), reason="this host has a /proc/kcore")
def test_no_kcore_here_is_partial_with_exact_reason_and_suspect_dumped(run_collector,
                                                                       suspect_child):
    pid, addr, marker, ip = suspect_child
    outcome, incident = run_collector("memory", {"timeout_s": 60}, srcip=ip)
    missing = [s for s in ("/proc/kcore", "/dev/crash", "/dev/mem") if not os.path.exists(s)]
    assert outcome.outcome == "partial"
    assert outcome.reason.startswith("host image skipped: no usable memory source (kcore: "
                                     "/proc/kcore does not exist; crash: ")
    for path in missing:
        assert f"{path} does not exist" in outcome.reason
    assert outcome.summary["processes"]["pids"] == [pid]
    core = evidence_path(incident, f"memory/01/processes/{pid}/core")
    assert marker_in_core(core, addr) == marker
    maps = evidence_path(incident, f"memory/01/processes/{pid}/maps").read_text()
    assert maps == Path(f"/proc/{pid}/maps").read_text()
    exe = evidence_path(incident, f"memory/01/processes/{pid}/exe").read_bytes()
    assert exe == Path(os.path.realpath(sys.executable)).read_bytes()
    records = json.loads(evidence_path(incident, "memory/01/processes.json").read_text())
    assert records[0]["why"] == [f"connection with {ip}"]
    kernel = json.loads(evidence_path(incident, "memory/01/symbols/kernel-image.json")
                        .read_text())
    assert kernel["release"] == os.uname().release
    assert evidence_path(incident, "memory/01/symbols/kallsyms").stat().st_size > 0
    assert os.getpid() not in outcome.summary["processes"]["pids"]


def test_pids_and_names_select_processes_within_caps(run_collector, suspect_child):
    pid, _, _, _ = suspect_child
    name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert name.startswith("memtest-")
    outcome, incident = run_collector("memory", {
        "host_image": False, "suspects": False, "pids": [pid], "process_names": [name],
        "max_process_bytes": 1 << 20, "max_exe_bytes": 4096, "timeout_s": 60}, srcip=None)
    assert outcome.outcome == "partial" and "max_bytes=1048576" in outcome.reason
    records = json.loads(evidence_path(incident, "memory/01/processes.json").read_text())
    mine = [r for r in records if r["pid"] == pid][0]
    assert mine["why"] == ["pids parameter", f"name {name}"]
    assert [r["pid"] for r in records] == [pid]
    assert mine["size"] <= 1 << 20 and mine["exe"]["truncated"]  # the whole core file
    assert mine["size"] - mine["dumped_bytes"] < 64 << 10  # headers and notes
    assert evidence_path(incident, f"memory/01/processes/{pid}/exe").stat().st_size == 4096
    assert os.getpid() not in [r["pid"] for r in records]


def test_vanished_pid_is_recorded_and_run_partial(run_collector):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    outcome, incident = run_collector("memory", {"host_image": False, "pids": [child.pid]},
                                      srcip=None)
    assert outcome.outcome == "partial" and outcome.reason == "1 of 1 process dumps failed"
    records = json.loads(evidence_path(incident, "memory/01/processes.json").read_text())
    assert records[0]["outcome"] == "failed"


def test_params_are_validated():
    cls = get_collector("memory")
    with pytest.raises(ConfigError) as err:
        build_params(cls, {"sources": ["kcore", "swap"], "backend": "lime", "pids": ["x"],
                           "host_image": False, "process_dumps": False})
    text = str(err.value)
    for word in ("sources", "backend", "pids", "nothing to collect"):
        assert word in text
    assert build_params(cls, {"pids": [1, "2"]}).pids == (1, "2")


FAKE_AVML = """#!{python}
import struct, sys
if sys.argv[1] == "--version":
    print("avml 0.14.0")
    sys.exit(0)
with open(sys.argv[1], "wb") as out:
    out.write(struct.pack("<IIQQ8x", 0x4C694D45, 1, 0x1000, 0x1fff) + b"A" * 4096)
"""


def test_avml_backend_streams_through_the_store(tmp_path, evidence_root, fake_kernel):
    avml = tmp_path / "avml"
    avml.write_text(FAKE_AVML.format(python=sys.executable))
    avml.chmod(0o755)
    cfg = tmp_path / "avml.yml"
    cfg.write_text(f"evidence_root: {evidence_root}\nlog_file: {tmp_path}/ar.log\n"
                   f"reserve_bytes: 0\nbinaries:\n  avml: {avml}\n"
                   "profiles:\n  dfir-memory:\n    description: test\n    steps:\n"
                   "      - collector: memory\n        params: {backend: avml, symbols: false,"
                   " process_dumps: false}\n")
    config = config_mod.load(str(cfg), str(tmp_path))
    store = Store(config.evidence_root, reserve_bytes=0)
    req = make_request("127.0.0.2", command="dfir-memory")
    incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    runner = Runner(config, store, incident, req, "t")
    assert runner.run_profile(config.profile("dfir-memory")) == "complete"
    image = evidence_path(incident, "memory/01/host.lime").read_bytes()
    assert image[:4] == b"EMiL" and image[32:] == b"A" * 4096
    meta = manifest_file(incident, "memory/01/host.lime")["meta"]
    assert meta["avml_version"] == "avml 0.14.0" and len(meta["avml_sha256"]) == 64
    incident.close()
    store.close()


def test_active_response_executable_names_the_collector():
    script = AR_DIR / "dfir-memory"
    assert os.access(script, os.X_OK)
    assert 'main("dfir-memory")' in script.read_text()
