"""Check an edited installation with its own tools: the daemons' test mode and logtest.

Nothing here starts a daemon. ``<daemon> -t`` reads the configuration (and,
for analysisd, every decoder and rule file) and exits non-zero on an error.
execd's test mode does not report the "Active response disabled" switch (it
exits 0 before looking at it), so that is checked on the text itself.
"""
from __future__ import annotations

import glob
import os
import subprocess
from dataclasses import dataclass

from . import conftext
from .layout import Installation

CHECK_TIMEOUT_S = 120
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
_MAX_DETAIL = 2000


@dataclass(frozen=True)
class Check:
    """The result of one check: passed, failed (with the tool's words) or skipped (why)."""

    name: str
    ok: bool
    detail: str = ""
    skipped: bool = False

    def line(self) -> str:
        """Return a one-line summary for the install's report."""
        state = "skipped" if self.skipped else "ok" if self.ok else "FAILED"
        return f"check {self.name}: {state}" + (f" ({self.detail})" if self.detail and (
            self.skipped or not self.ok) else "")


def _run(argv: list[str], stdin: str | None = None) -> tuple[int, str]:
    """Run a tool of the installation (argv list, bounded); return (exit code, its output)."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd="/",
                              env=_ENV, timeout=CHECK_TIMEOUT_S, errors="replace",
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return -1, f"no answer within {CHECK_TIMEOUT_S} s"
    except OSError as err:
        return -1, f"cannot run: {err.strerror}"
    output = (proc.stderr + proc.stdout).strip()
    return proc.returncode, output[-_MAX_DETAIL:]


def test_modes(inst: Installation) -> list[Check]:
    """Run `-t` of analysisd, execd and logcollector where the installation has them."""
    checks = []
    for daemon in ("analysisd", "execd", "logcollector"):
        if not inst.has(daemon):
            continue
        binary = inst.binary(daemon)
        code, output = _run([binary, "-t"])
        checks.append(Check(f"{os.path.basename(binary)} -t", code == 0,
                            output or f"exit code {code}"))
    if not checks:
        checks.append(Check("test mode", True, f"no {inst.flavor}-analysisd, -execd nor "
                            f"-logcollector in {inst.root}/bin: not checked", skipped=True))
    return checks


def response_switch(text: str) -> Check:
    """Check that no <active-response> holds <disabled>yes</disabled> (execd's global switch)."""
    for line, inner in conftext.elements(text, "active-response"):
        if "yes" in conftext.children(inner, "disabled"):
            return Check("active responses enabled", False,
                         f"the <active-response> at line {line} has <disabled>yes</disabled>: "
                         "execd reads it as the switch for every response (\"Active response "
                         "disabled. Exiting.\") and analysisd drops the responses bound before "
                         "it; remove that block (or comment it out) instead of disabling it")
    return Check("active responses enabled", True)


def _analysisd_running(inst: Installation) -> bool:
    for path in glob.glob(os.path.join(inst.root, "var", "run", f"{inst.flavor}-analysisd-*.pid")):
        pid = os.path.basename(path).rsplit("-", 1)[-1].split(".")[0]
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            return True
    return False


def logtest(inst: Installation, line: str, rule_id: str, level: int, decoder: str) -> Check:
    """Check with (ossec|wazuh)-logtest -U that line decodes as decoder and fires rule_id."""
    name = f"{inst.flavor}-logtest fires {rule_id}"
    if not inst.has("logtest"):
        return Check(name, True, f"no {inst.binary('logtest')}: not a manager", skipped=True)
    if inst.flavor == "wazuh" and not _analysisd_running(inst):
        return Check(name, True, "wazuh-logtest needs a running wazuh-analysisd; check by hand "
                     "after the manager starts", skipped=True)
    argv = [inst.binary("logtest"), "-U", f"{rule_id}:{level}:{decoder}"]
    if inst.flavor == "wazuh":
        argv.append("-q")
    code, output = _run(argv, stdin=line + "\n")
    if code == 0:
        return Check(name, True)
    return Check(name, False, f"exit code {code} for {line!r}: {output[-600:]}")
