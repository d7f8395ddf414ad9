"""Hold a process still while its core is written, bounded in time, always released.

A helper process (``python -m ossec_dfir.collectors.memory.freeze PID``) is the
ptrace tracer: it seizes every thread (PTRACE_SEIZE, no signal sent), stops it
with PTRACE_INTERRUPT, reads its registers (NT_PRSTATUS, NT_PRFPREG through
PTRACE_GETREGSET), reports them on stdout as one JSON line and waits for its
stdin to close; then it detaches (re-injecting a signal caught in the stop)
and exits. The stop ends, whatever happens, when the helper ends:

- released: the collector closes the helper's stdin after the core is read;
- ``max_stop_s``: the helper's alarm() kills it (SIGALRM, default action);
- the collector dies, even by SIGKILL: PR_SET_PDEATHSIG kills the helper.

When a tracer exits the kernel detaches its tracees and they run on. A
SIGSTOP, by contrast, would leave the process stopped for good if the
collector were killed between the stop and the SIGCONT, which is why it is
not used. A thread that does not stop within ``wait_s`` (asleep in the kernel)
is recorded; its registers come from /proc/PID/task/TID/syscall instead.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from typing import Any

from .elfnotes import Thread

PROC = "/proc"
MAX_STOP_S = 10.0
WAIT_STOP_S = 2.0
MAX_THREADS = 4096

PTRACE_DETACH, PTRACE_GETREGSET = 17, 0x4204
PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000
PR_SET_PDEATHSIG = 1
NT_PRSTATUS, NT_PRFPREG = 1, 2


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    return libc


def _ptrace(libc: Any, request: int, tid: int, addr: int = 0, data: Any = 0) -> int:
    ctypes.set_errno(0)
    ret = libc.ptrace(request, tid, addr, data)
    if ret == -1 and ctypes.get_errno():
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _regset(libc: Any, tid: int, kind: int) -> bytes | None:
    buf = ctypes.create_string_buffer(4096)
    iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), 4096)
    try:
        _ptrace(libc, PTRACE_GETREGSET, tid, kind, ctypes.addressof(iov))
    except OSError:
        return None
    return buf.raw[:iov.len]


def _tids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"{PROC}/{pid}/task") if t.isdigit())
    except OSError:
        return []


def hold(pid: int, wait_s: float) -> tuple[dict[str, Any], dict[int, int]]:
    """Seize and interrupt every thread of pid; return the report and {tid: signal to give back}."""
    libc = _libc()
    seized: list[int] = []
    errors: dict[str, str] = {}
    for _ in range(10):  # threads created while we seize: list again until stable
        new = [t for t in _tids(pid) if t not in seized and str(t) not in errors]
        if not new:
            break
        for tid in new[:MAX_THREADS - len(seized)]:
            try:
                _ptrace(libc, PTRACE_SEIZE, tid)
                _ptrace(libc, PTRACE_INTERRUPT, tid)
                seized.append(tid)
            except OSError as err:
                errors[str(tid)] = err.strerror or str(err)
    stopped: dict[int, int] = {}
    deadline = time.monotonic() + wait_s
    while len(stopped) < len(seized) and time.monotonic() < deadline:
        for tid in seized:
            if tid in stopped:
                continue
            try:
                got, status = os.waitpid(tid, os.WNOHANG | WALL)
            except ChildProcessError:
                errors[str(tid)] = "exited"
                stopped[tid] = -1
                continue
            if got and os.WIFSTOPPED(status):
                event = status >> 16
                sig = os.WSTOPSIG(status)
                # a signal-delivery stop: the signal is given back on detach
                stopped[tid] = 0 if event == PTRACE_EVENT_STOP or sig == signal.SIGTRAP else sig
            elif got:
                errors[str(tid)] = "exited"
                stopped[tid] = -1
        time.sleep(0.005)
    threads = []
    for tid in seized:
        if stopped.get(tid, -1) >= 0:
            threads.append({"tid": tid, "regs": (_regset(libc, tid, NT_PRSTATUS) or b"").hex(),
                            "fpregs": (_regset(libc, tid, NT_PRFPREG) or b"").hex()})
    report = {"threads": threads, "seized": len(seized),
              "not_stopped": [t for t in seized if t not in stopped][:100], "errors": errors}
    return report, {t: s for t, s in stopped.items() if s >= 0}


def release_all(stopped: dict[int, int]) -> int:
    """Detach every stopped thread (giving back a caught signal); return how many."""
    libc = _libc()
    done = 0
    for tid, sig in stopped.items():
        try:
            _ptrace(libc, PTRACE_DETACH, tid, 0, sig)
            done += 1
        except OSError:
            pass
    return done


def main(argv: list[str]) -> int:
    """Run the helper: hold pid, report, wait for stdin to close, release."""
    pid, max_stop_s, wait_s = int(argv[0]), float(argv[1]), float(argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(argv[3]):
        return 3  # the collector died before prctl: hold nothing
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, max(max_stop_s, 0.1))
    report, stopped = hold(pid, wait_s)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    while True:
        try:
            if not os.read(0, 4096):
                break
        except OSError as err:
            if err.errno != errno.EINTR:
                break
    release_all(stopped)
    return 0


class Freeze:
    """The collector's side: start the helper, read the registers, release."""

    def __init__(self, pid: int, max_stop_s: float = MAX_STOP_S,
                 wait_s: float = WAIT_STOP_S) -> None:
        self.pid = pid
        self.max_stop_s = max_stop_s
        self.wait_s = min(wait_s, max_stop_s)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.info: dict[str, Any] = {"enabled": True, "method": "ptrace",
                                     "max_stop_s": max_stop_s, "ended_by": None}

    def start(self) -> list[Thread]:
        """Stop the process's threads; return them with their registers (empty on failure)."""
        self.started = time.monotonic()
        argv = [sys.executable, "-I", "-m", __name__, str(self.pid), str(self.max_stop_s),
                str(self.wait_s), str(os.getpid())]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, close_fds=True,
                                         env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
        except OSError as err:
            self.info.update(ended_by="not stopped", error=f"cannot start helper: {err}")
            return []
        assert self.proc.stdout is not None
        line = b""
        deadline = self.started + self.wait_s + 10
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                line += chunk
        try:
            report = json.loads(line)
        except ValueError:
            self.release()
            self.info.update(ended_by="not stopped", error="the ptrace helper gave no report")
            return []
        self.info.update(seized=report["seized"], stopped=len(report["threads"]),
                         not_stopped=report["not_stopped"], errors=report["errors"])
        if not report["seized"]:
            self.info["ended_by"] = "not stopped"
        expect = {"x86_64": 216, "aarch64": 272}.get(platform.machine())
        return [Thread(t["tid"], bytes.fromhex(t["regs"]) or None,
                       bytes.fromhex(t["fpregs"]) or None, "ptrace")
                for t in report["threads"] if expect is None or len(t["regs"]) == 2 * expect]

    def release(self) -> dict[str, Any]:
        """Let the process run again (idempotent); return what the stop was."""
        if self.proc is None or self.info.get("seconds") is not None:
            return self.info
        proc = self.proc
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.info["seconds"] = round(time.monotonic() - self.started, 3)
        if self.info["ended_by"] is None:
            self.info["ended_by"] = "max_stop_s" if code == -signal.SIGALRM else (
                "released" if code == 0 else f"helper exit status {code}")
        return self.info


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
