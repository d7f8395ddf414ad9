"""``ossec-dfir simulate``: run an AR executable exactly as execd would.

OSSEC: positional argv, cwd ``/``, stdio on /dev/null, execd's queue socket
leaked as an extra descriptor. Wazuh: no arguments, one JSON line on stdin,
the check_keys exchange on stdout, and a blocking wait for the exit (as
Wazuh's single-threaded execd does).
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import time
from dataclasses import dataclass

from .ossec_filename import escape


@dataclass
class SimResult:
    """What a simulated execd saw: exit code, seconds to exit, the check_keys line."""

    returncode: int
    exit_s: float
    check_keys: dict | None = None


def find_script(name: str, ossec_dir: str) -> str:
    """Return the installed executable, or the checkout's one."""
    installed = os.path.join(ossec_dir, "active-response", "bin", name)
    if os.path.exists(installed):
        return installed
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "active-response", name)
    if os.path.exists(checkout):
        return checkout
    raise FileNotFoundError(installed)


def ossec_argv(script: str, action: str, srcip: str | None, user: str | None = None,
               alert_id: str | None = None, rule_id: str | None = None,
               location: str | None = None, filename: str | None = None,
               manual: bool = False) -> list[str]:
    """Return execd's argv for an OSSEC active response."""
    if manual:
        return [script, action, "-", srcip or "-", "(from_the_server)", "(no_rule_id)"]
    argv = [script, action, user or "-", srcip or "-", alert_id or "-", rule_id or "-"]
    # analysisd shell-escapes the filename; execd splits the line on spaces.
    argv += (location or "-").split(" ")
    argv += escape(filename).split(" ") if filename else ["-"]
    return argv


def wazuh_message(action: str, srcip: str | None, rule_id: str | None = None,
                  alert_id: str | None = None, name: str = "dfir", agent_id: str = "000",
                  extra_args: list[str] | None = None) -> dict:
    """Return the JSON message Wazuh's execd writes on the script's stdin."""
    alert: dict = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000+0000", time.gmtime()),
                   "agent": {"id": agent_id, "name": "simulated"}}
    if rule_id:
        alert["rule"] = {"id": rule_id, "level": 10, "description": "simulated alert"}
    if alert_id:
        alert["id"] = alert_id
    if srcip:
        alert["data"] = {"srcip": srcip}
    return {"version": 1, "origin": {"name": "node01", "module": "wazuh-execd"},
            "command": action, "parameters": {"extra_args": extra_args or [], "alert": alert,
                                              "program": f"active-response/bin/{name}"}}


def run_ossec(argv: list[str], env: dict[str, str] | None = None) -> SimResult:
    """Run argv as OSSEC's execd does and return the exit code and time."""
    leaked = os.open("/dev/null", os.O_RDONLY)  # stands for execd's queue socket (fd 3)
    try:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd="/", pass_fds=(leaked,), env=env)
        code = proc.wait()
        return SimResult(code, time.monotonic() - start)
    finally:
        os.close(leaked)


def run_wazuh(script: str, message: dict | bytes, answer: str | None = "continue",
              env: dict[str, str] | None = None, cwd: str = "/",
              answer_timeout_s: float = 10.0) -> SimResult:
    """Run script as Wazuh's execd does: JSON line in, check_keys out, answer, wait."""
    line = message if isinstance(message, bytes) else (json.dumps(message) + "\n").encode()
    start = time.monotonic()
    proc = subprocess.Popen([script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=cwd, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    check_keys = None
    try:
        proc.stdin.write(line)
        proc.stdin.flush()
    except BrokenPipeError:
        pass
    out_fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + answer_timeout_s
    while b"\n" not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([out_fd], [], [], 0.05)
        if ready:
            chunk = os.read(out_fd, 65536)
            if not chunk:
                break
            buf += chunk
    if buf.strip():
        try:
            check_keys = json.loads(buf.split(b"\n", 1)[0])
        except ValueError:
            check_keys = {"unparsed": buf[:200].decode("utf-8", "replace")}
        if answer is not None and check_keys.get("command") == "check_keys":
            reply = {"version": 1, "origin": {"name": "node01", "module": "wazuh-execd"},
                     "command": answer, "parameters": {}}
            try:
                proc.stdin.write((json.dumps(reply) + "\n").encode())
                proc.stdin.flush()
            except BrokenPipeError:
                pass
    code = proc.wait()  # execd blocks here until the script exits
    elapsed = time.monotonic() - start
    proc.stdin.close()
    proc.stdout.close()
    return SimResult(code, elapsed, check_keys)
