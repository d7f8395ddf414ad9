"""Outcome lines written while the install's logcollector is down are delivered once it is back.

A fake install tree has ``bin/ossec-logcollector`` (a copy of the Python
interpreter, so that a process started from it has that ``/proc/PID/exe``)
and ``var/run/``; a fake logcollector is that interpreter holding the log
open, announced by a pid file as OSSEC's is. It is stopped by closing its
stdin (it exits by itself) and waited for by pid.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ossec_dfir import config as config_mod
from ossec_dfir.ar import delivery, entry, log as arlog, logcollector, runner, worker
from ossec_dfir.ar.request import Request, parse_ip
from ossec_dfir.collectors.base import DELETE_STOP, SHUTDOWN_STOP
from ossec_dfir.collectors.pcap.collector import _judge
from ossec_dfir.evidence.store import Store
from ossec_dfir.procfs import pid_alive
from tests.ar.test_entry import Tree
from tests.conftest import ROOT, wait_for

FAKE = ("import os, select, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "follow = sys.argv[2] == 'seek'\n"
        "if follow:\n"
        "    os.lseek(fd, 0, os.SEEK_END)\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "while not select.select([0], [], [], float(sys.argv[3]))[0]:\n"
        "    while follow and os.read(fd, 65536):\n"
        "        pass\n")
PYTHON = os.path.realpath(sys.executable)


class FakeLogcollector:
    """A process whose exe is exe, holding log open and reading what is appended
    (or, with seek=False, opened and not yet seeked: what logcollector is between
    its fopen and its fseek to the end)."""

    def __init__(self, ossec: Path, log: Path, exe: str | None = None, seek: bool = True,
                 flavour: str = "ossec", interval_s: float = 0.05) -> None:
        exe = exe or str(ossec / "bin" / f"{flavour}-logcollector")
        self.proc = subprocess.Popen([exe, "-I", "-S", "-c", FAKE, str(log),
                                      "seek" if seek else "noseek", str(interval_s)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == b"ready\n"
        self.pid = self.proc.pid
        self.pidfile = ossec / "var" / "run" / f"{flavour}-logcollector-{self.pid}.pid"
        self.pidfile.write_text(f"{self.pid}\n")

    def stop(self) -> None:
        """End it (it exits when its stdin closes) and remove its pid file, as ossec-control."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.pidfile.unlink(missing_ok=True)


def make_install(ossec: Path, flavour: str = "ossec") -> Path:
    """Turn ossec into a fake install: bin/<flavour>-logcollector, var/run, the log file."""
    (ossec / "bin").mkdir(parents=True, exist_ok=True)
    (ossec / "var" / "run").mkdir(parents=True, exist_ok=True)
    shutil.copy2(PYTHON, ossec / "bin" / f"{flavour}-logcollector")
    log = ossec / "logs" / "active-responses.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    return log


@pytest.fixture
def started():
    """Start fake logcollectors; stop every one at the end."""
    procs: list[FakeLogcollector] = []

    def start(*args, **kwargs) -> FakeLogcollector:
        fake = FakeLogcollector(*args, **kwargs)
        procs.append(fake)
        return fake
    yield start
    for fake in procs:
        fake.stop()


@pytest.fixture
def inst(tmp_path):
    """A fake install with its config and an open store."""
    ossec = tmp_path / "ossec"
    log = make_install(ossec)
    evidence = tmp_path / "evidence"
    conf = tmp_path / "ossec-dfir.yml"
    conf.write_text(f"evidence_root: {evidence}\nreserve_bytes: 0\noutcome_linger_s: 30\n")
    config = config_mod.load(str(conf), str(ossec))
    store = worker.open_store(config)
    yield config, store, ossec, log
    store.close()


def outcome_fields(n: int = 0) -> dict[str, object]:
    return {"outcome": "complete", "command": "dfir-host", "srcip": "203.0.113.5",
            "incident": f"20260101T000000Z_203.0.113.{n}", "steps": "host:complete",
            "manifest_sha256": f"{n:064x}", "reason": "-"}


def lines_of(log: Path) -> list[str]:
    return log.read_text().splitlines()



# -- detecting the logcollector ------------------------------------------------
def test_running_logcollector_holding_the_log_is_found(inst, started):
    config, _, ossec, log = inst
    assert logcollector.log_holder(str(ossec), str(log)) is None
    assert logcollector.is_down(config)
    fake = started(ossec, log)
    assert logcollector.log_holder(str(ossec), str(log)) == fake.pid
    assert not logcollector.is_down(config)
    fake.stop()
    assert logcollector.log_holder(str(ossec), str(log)) is None


def test_wazuh_logcollector_is_found(tmp_path, started):
    ossec = tmp_path / "wazuh"
    log = make_install(ossec, "wazuh")
    fake = started(ossec, log, flavour="wazuh")
    assert logcollector.has_install(str(ossec))
    assert logcollector.log_holder(str(ossec), str(log)) == fake.pid


def test_reused_or_stale_pid_does_not_count(inst, started):
    _, _, ossec, log = inst
    # A live process that holds the log but is not this install's logcollector
    # (what a reused pid in a stale pid file looks like).
    other = started(ossec, log, exe=PYTHON)
    assert logcollector.log_holder(str(ossec), str(log)) is None
    # A logcollector of the right binary that does not hold this log.
    elsewhere = ossec / "logs" / "other.log"
    elsewhere.write_text("x\n")
    started(ossec, elsewhere)
    assert logcollector.log_holder(str(ossec), str(log)) is None
    # A pid file naming a process that is gone.
    other.stop()
    (ossec / "var" / "run" / f"ossec-logcollector-{other.pid}.pid").write_text("1\n")
    assert logcollector.log_holder(str(ossec), str(log)) is None


def test_descriptor_not_yet_seeked_does_not_count(inst, started):
    _, _, ossec, log = inst
    log.write_text("an earlier line\n")
    started(ossec, log, seek=False)  # opened, not yet at the end: a new line could be skipped
    assert logcollector.log_holder(str(ossec), str(log)) is None
    fake = started(ossec, log, seek=True)
    assert logcollector.log_holder(str(ossec), str(log)) == fake.pid


# -- keeping and delivering ----------------------------------------------------
def test_first_lines_of_an_empty_log_are_not_taken_for_a_restart(inst, started):
    config, store, ossec, log = inst
    # logcollector opened the log while it was empty and reads it once a second:
    # right after the invocation line its offset is still 0 of a non-empty file.
    started(ossec, log, interval_s=1.0)
    with open(log, "a") as fh:
        fh.write("Wed Dec  2 13:22:14 UTC 2026 dfir-host add - 203.0.113.5 -- accepted\n")
    assert arlog.outcome(config, outcome_fields(), store)
    assert delivery.pending_lines(store) == (0, [])


def test_line_written_while_up_is_not_kept(inst, started):
    config, store, ossec, log = inst
    started(ossec, log)
    assert arlog.outcome(config, outcome_fields(), store)
    assert len(lines_of(log)) == 1
    assert delivery.pending_lines(store) == (0, [])
    assert not os.path.lexists(delivery.pending_path(config.evidence_root))


def test_line_written_while_down_is_delivered_exactly_once(inst, started):
    config, store, ossec, log = inst
    assert arlog.outcome(config, outcome_fields(), store)
    [original] = lines_of(log)
    assert delivery.pending_lines(store) == (0, [original])
    assert delivery.flush(config, store) == 0  # still down: nothing delivered, still kept
    assert delivery.pending_lines(store) == (0, [original])
    started(ossec, log)
    assert delivery.flush_pending(config) == 1
    assert lines_of(log) == [original, original + " redelivered=1"]
    assert delivery.flush_pending(config) == 0
    assert delivery.flush(config, store) == 0
    assert lines_of(log) == [original, original + " redelivered=1"]
    assert not os.path.lexists(delivery.pending_path(config.evidence_root))


def test_redelivered_line_still_matches_the_shipped_decoder(inst, started):
    config, store, ossec, log = inst
    arlog.outcome(config, dict(outcome_fields(), reason="pcap: delete received"), store)
    started(ossec, log)
    delivery.flush(config, store)
    [original, again] = lines_of(log)
    xml = (ROOT / "etc" / "ossec.conf.d" / "local_decoder.xml").read_text()
    prematch = re.search(r"<prematch>(.*?)</prematch>", xml).group(1)
    regex = re.findall(r'<regex offset="after_parent">(.*?)</regex>', xml)[-1]  # dfir_* fields
    assert re.match(prematch, again)
    rest = again[len("ossec-dfir: "):]
    assert re.match(regex, rest).groups() == re.match(regex, original[len("ossec-dfir: "):]).groups()
    assert again.endswith('reason="pcap: delete received" redelivered=1')


def test_nothing_kept_without_an_install(tmp_path, monkeypatch):
    ossec = tmp_path / "ossec"  # no bin/*-logcollector: tests, demo
    conf = tmp_path / "ossec-dfir.yml"
    conf.write_text(f"evidence_root: {tmp_path / 'evidence'}\nreserve_bytes: 0\n")
    config = config_mod.load(str(conf), str(ossec))
    store = worker.open_store(config)
    try:
        assert arlog.outcome(config, outcome_fields(), store)
        assert len(lines_of(Path(config.log_file))) == 1
        assert not (tmp_path / "evidence" / ".state" / "outcomes").exists()
        assert delivery.linger(config, store, sleep=lambda s: pytest.fail("lingered")) == 0
    finally:
        store.close()

    def no_store(*args, **kwargs):
        raise AssertionError("opened the store with nothing pending")
    monkeypatch.setattr(delivery, "Store", no_store)
    assert delivery.flush_pending(config) == 0  # the hot path: one stat, nothing opened


def test_bounds_drop_oldest_with_a_counted_note(inst, started, monkeypatch):
    config, store, ossec, log = inst
    monkeypatch.setattr(delivery, "MAX_PENDING_LINES", 5)
    for n in range(8):
        arlog.outcome(config, outcome_fields(n), store)
    written = lines_of(log)
    dropped, kept = delivery.pending_lines(store)
    assert dropped == 3 and kept == written[3:]
    monkeypatch.setattr(delivery, "MAX_PENDING_BYTES", len(written[0]) * 2 + 2)
    arlog.outcome(config, outcome_fields(8), store)
    dropped, kept = delivery.pending_lines(store)
    assert dropped == 7 and kept == lines_of(log)[7:]
    started(ossec, log)
    assert delivery.flush(config, store) == 2
    tail = lines_of(log)[9:]
    assert tail[:2] == [x + " redelivered=1" for x in kept]
    assert tail[2].startswith("ossec-dfir: outcome=dropped command=- srcip=- incident=- "
                              "steps=- manifest_sha256=- reason=\"7 outcome lines")
    assert len(tail) == 3


def test_pending_file_is_private_and_never_followed(inst):
    config, store, ossec, log = inst
    arlog.outcome(config, outcome_fields(), store)
    path = Path(delivery.pending_path(config.evidence_root))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    path.unlink()
    target = ossec / "target"
    target.write_text("untouched\n")
    path.symlink_to(target)
    assert arlog.outcome(config, outcome_fields(1), store)  # still in the log
    assert target.read_text() == "untouched\n"
    assert path.is_symlink()


def _child(body) -> None:
    """Run body in a forked child and leave with its verdict (never return to pytest)."""
    try:
        body()
    except BaseException:  # noqa: BLE001 - reported through the exit status
        os._exit(1)
    os._exit(0)


def _flusher(config: config_mod.Config, go_fd: int) -> None:
    os.read(go_fd, 1)
    store = Store(config.evidence_root, create=False)
    for _ in range(200):
        delivery.flush(config, store)


def _keeper(evidence_root: str, first: int, count: int, go_fd: int) -> None:
    os.read(go_fd, 1)
    store = Store(evidence_root, create=False)
    for n in range(first, first + count):
        delivery.keep(store, [arlog.format_outcome(outcome_fields(n))])


def test_racing_flushers_and_keepers_deliver_each_line_once(inst, started):
    config, store, ossec, log = inst
    for n in range(40):
        delivery.keep(store, [arlog.format_outcome(outcome_fields(n))])
    started(ossec, log)
    go_read, go_write = os.pipe()
    pids = []
    for i in range(6):
        pid = os.fork()
        if pid == 0:
            if i < 4:
                _child(lambda: _flusher(config, go_read))
            first = 1000 + (i - 4) * 100
            _child(lambda: _keeper(config.evidence_root, first, 60, go_read))  # noqa: B023
        pids.append(pid)
    os.write(go_write, b"x" * len(pids))
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    os.close(go_read)
    os.close(go_write)
    # Whatever the keepers added after the flushers ended, delivered as the lingering
    # worker does: waiting (SETTLE_S) for the fake to read what the flushers appended
    # (a holder still at offset 0 of a non-empty log is not taken as reading it).
    delivery.flush(config, store, delivery.SETTLE_S)
    delivered = [x for x in lines_of(log) if x.endswith(" redelivered=1")]
    expected = [arlog.format_outcome(outcome_fields(n)) + " redelivered=1"
                for n in [*range(40), *range(1000, 1060), *range(1100, 1160)]]
    assert sorted(delivered) == sorted(expected)
    assert delivery.pending_lines(store) == (0, [])
    assert not [n for n in os.listdir(store.state_path("outcomes"))
                if n.startswith(delivery.CLAIMED_PREFIX)]


def test_claim_of_a_dead_flusher_is_put_back(inst, started):
    config, store, ossec, log = inst
    arlog.outcome(config, outcome_fields(), store)
    [original] = lines_of(log)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a pid that is gone
    dirpath = Path(store.state_path("outcomes"))
    os.rename(dirpath / "pending", dirpath / f"claimed.{pid}.0000")
    assert delivery.recover_claims(store) == 1
    assert delivery.pending_lines(store) == (0, [original])
    started(ossec, log)
    assert delivery.flush(config, store) == 1
    assert lines_of(log) == [original, original + " redelivered=1"]


# -- through the real executables ----------------------------------------------
def installed_tree(tmp_path: Path, extra: str) -> Tree:
    tree = Tree(tmp_path, extra)
    make_install(tree.ossec)
    return tree


def run(cmd: list[str]) -> int:
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, cwd="/", timeout=30).returncode


def host_argv(tree: Tree, action: str, ip: str) -> list[str]:
    return [tree.script("dfir-host"), action, "-", ip, "1764376501.9", "100100",
            "/var/log/auth.log", "-"]


def redelivered(tree: Tree) -> list[str]:
    return [x for x in tree.log_lines() if x.endswith(" redelivered=1")]


def test_next_invocation_delivers_a_line_kept_while_down(tmp_path, started):
    tree = installed_tree(tmp_path, "outcome_linger_s: 0\n")
    assert run(host_argv(tree, "add", "203.0.113.21")) == 0
    [original] = tree.wait_outcome()
    pending = Path(delivery.pending_path(str(tree.evidence)))
    assert wait_for(lambda: not any(pid_alive(int(p)) for p in re.findall(
        r"worker (\d+)", "\n".join(tree.invocation_lines()))))
    assert pending.exists() and redelivered(tree) == []  # the worker did not linger
    started(tree.ossec, tree.log)
    assert run(host_argv(tree, "delete", "203.0.113.21")) == 0
    assert redelivered(tree) == [original + " redelivered=1"]
    assert not pending.exists()
    assert run(host_argv(tree, "delete", "203.0.113.21")) == 0
    assert redelivered(tree) == [original + " redelivered=1"]


def test_worker_lingers_without_a_slot_and_delivers_once(tmp_path, started):
    tree = installed_tree(tmp_path, "outcome_linger_s: 120\n")
    assert run(host_argv(tree, "add", "203.0.113.22")) == 0
    [original] = tree.wait_outcome()
    [pid] = [int(p) for p in re.findall(r"worker (\d+)", "\n".join(tree.invocation_lines()))]
    cfg = config_mod.load(str(tree.conf), str(tree.ossec))
    store = worker.open_store(cfg)
    try:
        assert wait_for(lambda: worker.busy_slots(store, cfg.max_workers) == 0)
        assert pid_alive(pid)  # lingering, holding no worker slot
        assert delivery.pending_lines(store) == (0, [original])
    finally:
        store.close()
    started(tree.ossec, tree.log)
    assert wait_for(lambda: redelivered(tree) != [])
    assert wait_for(lambda: not pid_alive(pid)), "the worker kept lingering after delivering"
    assert redelivered(tree) == [original + " redelivered=1"]
    assert not Path(delivery.pending_path(str(tree.evidence))).exists()


# -- a capture ended by execd's shutdown deletes -------------------------------
def test_delete_while_logcollector_down_is_a_shutdown(inst, started):
    config, store, ossec, log = inst
    req = Request(protocol="ossec", action="delete", command="dfir-host",
                  srcip=parse_ip("203.0.113.23"))
    since = time.time() - 1
    check = runner.StopCheck(store, "dfir-host", req.key, since)
    entry.stop(config, req)
    assert check() == SHUTDOWN_STOP
    started(ossec, log)
    entry.stop(config, req)
    assert runner.StopCheck(store, "dfir-host", req.key, since)() == DELETE_STOP


def test_shutdown_stop_is_complete_and_says_so():
    stats = {"backend": "native", "stop_reason": SHUTDOWN_STOP, "packets_written": 3}
    result = _judge(stats)
    assert result.outcome == "complete" and result.reason == SHUTDOWN_STOP
    dropped = _judge(dict(stats, dropped_by_kernel=2))
    assert dropped.outcome == "partial"
    assert dropped.reason == f"{SHUTDOWN_STOP}; 2 packets dropped by the kernel"
    plain = _judge(dict(stats, stop_reason=DELETE_STOP))
    assert plain.outcome == "complete" and plain.reason is None


@pytest.mark.skipif(os.geteuid() != 0, reason="captures need root (CI runs as root)")
def test_capture_stopped_by_restart_reports_it_and_reaches_the_log_once(tmp_path, started):
    tree = installed_tree(tmp_path, (
        "outcome_linger_s: 120\nprofiles:\n  dfir-pcap:\n    steps:\n      - collector: pcap\n"
        "        params: {duration_s: 120, timeout_s: 180, interface: lo, summary: false}\n"))
    argv = [tree.script("dfir-pcap"), "add", "-", "127.0.0.3", "1764376501.8", "100100",
            "/var/log/auth.log", "-"]
    fake = started(tree.ossec, tree.log)
    assert run(argv) == 0
    running = tree.evidence / ".state" / "running"
    assert wait_for(lambda: running.exists() and any(running.glob("*.json"))), "no capture"
    fake.stop()  # ossec-control stop: logcollector first, then execd runs the delete
    assert run([argv[0], "delete", *argv[2:]]) == 0
    [original] = tree.wait_outcome(1, timeout_s=45)
    assert "outcome=complete" in original and "command=dfir-pcap" in original
    assert 'reason="pcap: delete received: stopped by execd shutdown ' \
           '(ossec-control stop/restart)"' in original
    assert any("delete: stop requested (execd shutdown)" in x for x in tree.invocation_lines())
    assert wait_for(lambda: Path(delivery.pending_path(str(tree.evidence))).exists())
    started(tree.ossec, tree.log)  # ossec-control start: logcollector is back
    assert wait_for(lambda: redelivered(tree) != [])
    assert not Path(delivery.pending_path(str(tree.evidence))).exists()
    assert redelivered(tree) == [original + " redelivered=1"]
