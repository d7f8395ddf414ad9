"""Start detached helper processes (worker, shipper) and set CPU priority that holds.

``spawn`` starts ``python -I -c <boot>`` with ``posix_spawn`` (the kernel's
vfork and exec: the AR entry point neither imports ``subprocess`` nor copies
its own memory) in a new session, stdio on /dev/null, the PATH-only
environment, and no descriptor but the one it hands over (a slot or a lock).

Priority: with ``kernel.sched_autogroup_enabled`` (the default of most
distributions' kernels), the scheduler first shares the CPU between sessions
(autogroups), then between the processes of a session by their nice value.
A process that starts a new session is therefore as heavy as all of execd's
session together, whatever its own nice value: a worker started "nice 10"
still took as much CPU as the AR invocations execd was waiting for. So a
priority is set twice here, on the process (``setpriority``) and on its
session (``/proc/self/autogroup``); each is a no-op where the other one is
what the kernel uses.
"""
from __future__ import annotations

import os
import sys

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
AUTOGROUP = "/proc/self/autogroup"
# What a new process runs first (before any import): its priority while it
# starts, the root directory as working directory, then module.main(argv).
_BOOT = """import os, sys
os.chdir("/")
if {nice}:
    try:
        os.nice({nice})
        with open("{autogroup}", "w") as fh:
            fh.write("{nice}")
    except OSError:
        pass
sys.path.insert(0, sys.argv[1])
from {module} import main
sys.exit(main(sys.argv[2:]))
"""
_spawned: set[int] = set()


def package_parent() -> str:
    """Return the directory holding the ossec_dfir package (what a new process imports)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def boot_argv(module: str, nice: int, args: list[str]) -> list[str]:
    """Return the argv starting module.main(args) in a new interpreter at nice (0: as is)."""
    code = _BOOT.format(nice=int(nice), autogroup=AUTOGROUP, module=module)
    return [sys.executable, "-I", "-c", code, package_parent(), *args]


def spawn(argv: list[str], keep_fd: int) -> int:
    """Start argv detached (new session, stdio /dev/null) with keep_fd open; return its pid.

    Every other descriptor is closed in the new process: ours are close-on-exec
    already, and any that execd left inheritable is made close-on-exec first.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd != keep_fd:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # closed already (the listing's own descriptor)
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, mode, 0)
               for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY))]
    os.set_inheritable(keep_fd, True)
    try:
        pid = os.posix_spawn(argv[0], argv, ENV, file_actions=devnull, setsid=True)
    finally:
        os.set_inheritable(keep_fd, False)
    _spawned.add(pid)
    return pid


def reap_spawned(*_: object) -> None:
    """Collect the exit status of processes spawn() started that have exited (no zombies).

    Installed as the SIGCHLD handler of long-lived processes (the worker):
    it only waits for the pids spawn() returned, never for a collector child.
    """
    for pid in list(_spawned):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _spawned.discard(pid)


def session_nice() -> int:
    """Return the nice value of this process's session (autogroup), 0 when there is none."""
    try:
        with open(AUTOGROUP, "rb") as fh:
            return int(fh.read(128).rsplit(b"nice", 1)[1])
    except (OSError, ValueError, IndexError):
        return 0


def set_priority(nice: int, session: int | None = None) -> None:
    """Set this process's nice value and its session's (default: the same value).

    A value is clamped to -20..19; lowering one needs root (CAP_SYS_NICE), and a
    refusal leaves that value as it was. Only call this in a process that leads
    its own session: the session's value applies to every process in it.
    """
    nice = max(-20, min(19, int(nice)))
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        pass
    try:
        with open(AUTOGROUP, "w") as fh:
            fh.write(str(max(-20, min(19, nice if session is None else int(session)))))
    except (OSError, ValueError):
        pass  # no autogroup support (the kernel then uses the process's value)
