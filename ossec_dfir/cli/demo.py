"""``ossec-dfir demo``: a simulated alert end to end on this host, then the incident.

It builds a private OSSEC tree under --dir, installs the executables there,
starts an "attacker" process holding a loopback connection from a free
address of 127.0.0.0/8 (one no socket on this host uses), runs
the AR executable exactly as OSSEC's execd would, waits for the worker's
outcome line, and prints the incident, its verification and the report's path.
Nothing leaves loopback.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import random
import time

from ..errors import BadRequest
from ..trust import path_problems


def free_loopback_address() -> str:
    """Return an address of 127.0.0.0/8 that no socket and no interface on this host uses."""
    import psutil
    used = {str(a.address) for addrs in psutil.net_if_addrs().values() for a in addrs}
    for conn in psutil.net_connections(kind="inet4"):
        for addr in (conn.laddr, conn.raddr):
            if addr:
                used.add(addr.ip)
    rng = random.SystemRandom()
    for _ in range(1000):
        candidate = str(ipaddress.IPv4Address((127 << 24) | rng.randrange(0x010000, 0xfffffe)))
        if candidate not in used and not candidate.endswith((".0", ".255")):
            return candidate
    raise BadRequest("no free loopback address found for the demo attacker", "127.0.0.0/8")


def check_directory(directory: str) -> None:
    """Refuse, as root, a demo directory that a non-root user could prepare or change.

    The demo installs and runs executables as root from it: a user who can
    write the directory or any directory above it could plant a link or swap
    an executable.
    """
    if os.geteuid() != 0:
        return
    existing = directory
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    problems = path_problems(existing)
    if problems:
        raise BadRequest("as root, the demo directory and every directory above it must be "
                         "root-owned and writable by nobody else: " + "; ".join(problems[:3]),
                         directory)


def demo_profile(directory: str) -> dict:
    """Return the demo's dfir-collect: the shipped order of volatility, kept short and
    light whatever the host (a 15 s capture on lo, no RAM image, file scans limited
    to the demo directory, YARA on the suspects' memory only)."""
    return {"description": "make demo: the whole collection, short and light",
            "steps": [
                {"collector": "pcap", "background": True,
                 "params": {"duration_s": 15, "interface": "lo"}},
                {"collector": "memory", "params": {"host_image": False}},
                {"collector": "triage"},
                {"collector": "host"},
                {"collector": "yara", "params": {"roots": [directory],
                                                 "process_scope": "suspects"}},
                {"collector": "files", "params": {"roots": [directory]}}]}


_ATTACKER_CODE = """
import socket, sys, time
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
client = socket.socket(); client.bind((sys.argv[1], 0)); client.connect(server.getsockname())
conn, _ = server.accept()
print("ready", flush=True)
n = 0
while True:
    client.sendall(b"GET /demo-%d HTTP/1.1\\r\\nHost: demo.invalid\\r\\n\\r\\n" % n)
    conn.recv(65536)
    n += 1
    time.sleep(0.5)
"""


class _Attacker:
    """A separate process holding a loopback connection from ip (the suspect)."""

    def __init__(self, ip: str) -> None:
        import subprocess
        import sys
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", _ATTACKER_CODE, ip],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "ready": the connection is up

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _write_config(path: str, evidence_root: str, log_file: str, directory: str) -> None:
    import yaml
    doc = {"evidence_root": evidence_root, "log_file": log_file,
           "reserve_bytes": 256 << 20,
           "profiles": {"dfir-collect": demo_profile(directory)}}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("# Written by `ossec-dfir demo`; merged over the shipped defaults.\n")
        yaml.safe_dump(doc, fh, sort_keys=False)


def run_demo(directory: str, command: str | None, timeout_s: float) -> int:
    """Run the demo in directory; return 0 when the incident verifies."""
    from . import incidents
    from .. import config as config_mod
    from ..ossec import install
    from ..ar import simulate
    directory = os.path.abspath(directory)
    check_directory(directory)
    attacker_ip = free_loopback_address()
    ossec_dir = os.path.join(directory, "ossec")
    conf = os.path.join(ossec_dir, "etc", "ossec-dfir.yml")
    log_file = os.path.join(ossec_dir, "logs", "active-responses.log")
    _write_config(conf, os.path.join(directory, "evidence"), log_file, directory)
    config = config_mod.load(conf, ossec_dir)
    command = command or "dfir-collect"
    for line in install.install(config, ossec_dir, False, "ossec"):
        print(line)
    script = os.path.join(ossec_dir, "active-response", "bin", command)
    attacker = _Attacker(attacker_ip)
    try:
        log_size = os.path.getsize(log_file) if os.path.exists(log_file) else 0
        argv = simulate.ossec_argv(script, "add", attacker_ip, "root",
                                   f"{int(time.time())}.4242", "100100",
                                   f"(demo) {attacker_ip}->/var/log/auth.log", None)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        result = simulate.run_ossec(argv, env)
        print(f"\nexecd ran: {' '.join(argv)}\n  -> exit {result.returncode} after "
              f"{result.exit_s * 1000:.0f} ms; collection continues detached")
        outcome_line = _wait_outcome(log_file, log_size, timeout_s)
    finally:
        attacker.close()
    print("\nactive-responses.log:")
    with open(log_file, encoding="ascii", errors="replace") as fh:
        fh.seek(log_size)
        print("".join("  " + line for line in fh))
    if outcome_line is None:
        print(f"no outcome line within {timeout_s:g} s")
        return 1
    incident = outcome_line.split(" incident=", 1)[1].split()[0]
    args = {"config": conf, "ossec_dir": ossec_dir, "incident": incident, "json": False}
    incidents.cmd_show(argparse.Namespace(**args))
    print()
    code = incidents.cmd_verify(argparse.Namespace(expect_tip=None, **args))
    report = os.path.join(directory, f"{incident}.report.html")
    if not os.path.exists(report):
        print("\nthe analyst's report (ossec-dfir report):")
        incidents.cmd_report(argparse.Namespace(format="html", output=report, **args))
    return code


def _wait_outcome(log_file: str, offset: int, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(log_file, encoding="ascii", errors="replace") as fh:
                fh.seek(offset)
                for line in fh:
                    if line.startswith("ossec-dfir: outcome="):
                        return line.strip()
        except OSError:
            pass
        time.sleep(0.5)
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate an alert end to end on this host and print the incident."""
    return run_demo(args.dir, args.command, args.timeout_s)


def add_parsers(sub: argparse._SubParsersAction, parents: list) -> None:
    """Register the demo subcommand."""
    p = sub.add_parser("demo", help=cmd_demo.__doc__, parents=parents)
    p.add_argument("--dir", default="demo", help="where the demo OSSEC tree and evidence go")
    p.add_argument("--command", help="AR command to simulate (default: the fullest profile)")
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.set_defaults(func=cmd_demo)
