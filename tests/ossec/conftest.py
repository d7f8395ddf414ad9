"""Harness for the tests against the real OSSEC daemons (tests/ossec/test_real_*.py).

Session fixtures build OSSEC from the source kept beside the checkout
(``<checkout>/../shared/ossec/build-ossec``, idempotent: a second build of the
same source in the same directory returns at once) into directories of their
own: a local install, and a manager plus an agent. Everything skips, with the
reason, when not root or when the build script is absent.

Each test gets its tree back as it was built (``OssecTree.reset``: the
daemons stopped with ``ossec-control stop``, etc/, rules/ and
active-response/ restored from a snapshot taken right after the build, the
daemons' state queues and the evidence emptied), then sets the host's own
OSSEC up the way a site would (``site_setup``: the auth log it monitors,
realtime syscheck on one directory) and installs ossec-dfir with the
documented CLI only. The daemons it starts are stopped at the end with
``ossec-control stop``, never by a broad kill; AR workers that outlive the
test are waited for, then ended by pid.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
BUILD_OSSEC = CHECKOUT.parent / "shared" / "ossec" / "build-ossec"
# .ci/run builds the same three directories up front (keep the names in step).
LOCAL_DIR = Path("/opt/ossec-dfir-test-local")
MANAGER_DIR = Path("/opt/ossec-dfir-test-mgr")
AGENT_DIR = Path("/opt/ossec-dfir-test-agent")
# Files the tests write for the host's own setup (monitored logs, watched directory).
SITE_DIR = Path("/opt/ossec-dfir-test-site")
DFIR = Path(sys.executable).parent / "ossec-dfir"

BUILD_TIMEOUT_S = 900
CONTROL_TIMEOUT_S = 120
SNAPSHOT_DIRS = ("etc", "rules", "active-response")
STATE_DIRS = ("queue/syscheck", "queue/rootcheck", "queue/diff", "queue/rids",
              "queue/agent-info", "queue/agentless")
TRUNCATED = ("queue/fts/fts-queue", "queue/fts/ig-queue")  # first-time-seen memory
PRISTINE = ".dfir-test-pristine.tar"
OUTCOME_RULES = ("100901", "100902", "100903")  # complete, partial, failed
PRISTINE_STAMP = ".dfir-test-pristine.stamp"


def skip_reason() -> str | None:
    """Return why the real-daemon tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the real-OSSEC tests need root (OSSEC installs and runs as root)"
    if not BUILD_OSSEC.is_file():
        return f"no OSSEC build script at {BUILD_OSSEC} (the shared/ossec test material)"
    return None


def build(kind: str, directory: Path) -> None:
    """Build (or keep) an OSSEC install of kind local, server or agent in directory."""
    cmd = [str(BUILD_OSSEC), "--type", kind, "--dir", str(directory)]
    if kind == "agent":
        cmd += ["--server-ip", "127.0.0.1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if res.returncode != 0:
        pytest.fail(f"build-ossec {kind} in {directory} failed ({res.returncode}):\n"
                    f"{res.stdout[-3000:]}{res.stderr[-3000:]}")


@dataclass
class Alert:
    """One alert block of alerts.log."""

    alert_id: str
    rule_id: str
    level: int
    location: str
    srcip: str | None
    text: str

    @property
    def log(self) -> str:
        """Return the logged line(s) the alert was raised for (after the header lines)."""
        lines = self.text.split("\n")[3:]
        return "\n".join(x for x in lines if not x.startswith(_HEADER_LINES))


_ALERT_HEAD = re.compile(r"^\*\* Alert (\d+\.\d+):", re.M)
_RULE = re.compile(r"^Rule: (\d+) \(level (\d+)\)", re.M)
_SRCIP = re.compile(r"^Src IP: (\S+)", re.M)
_HEADER_LINES = ("Src IP: ", "Src Port: ", "Dst IP: ", "Dst Port: ", "User: ")


def parse_alerts(text: str) -> list[Alert]:
    """Split alerts.log text into Alert records."""
    heads = list(_ALERT_HEAD.finditer(text))
    alerts = []
    for i, head in enumerate(heads):
        block = text[head.start():heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        rule = _RULE.search(block)
        if rule is None:
            continue  # a block still being written
        lines = block.split("\n")
        srcip = _SRCIP.search(block)
        alerts.append(Alert(head.group(1), rule.group(1), int(rule.group(2)),
                            lines[1].split(" ", 4)[-1] if len(lines) > 1 else "",
                            srcip.group(1) if srcip else None, block.strip()))
    return alerts


def wait_for(what: str, probe: Callable[[], object], timeout_s: float,
             interval_s: float = 0.5, detail: Callable[[], str] | None = None) -> object:
    """Poll probe until it returns something truthy; fail with what (and detail) at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}"
                        + (f"\n{detail()}" if detail else ""))
        time.sleep(interval_s)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0")[:-1]]
    except OSError:
        return []


def _session(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[3]) if fields[0] != "Z" else None
    except (OSError, IndexError, ValueError):
        return None


class OssecTree:
    """One OSSEC install built by build-ossec, driven only through its own tools."""

    def __init__(self, directory: Path, kind: str) -> None:
        self.dir = directory
        self.kind = kind
        self.marks: dict[str, int] = {}

    # -- paths -------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """Return a path inside the install."""
        return self.dir.joinpath(*parts)

    @property
    def ossec_conf(self) -> Path:
        """Return etc/ossec.conf."""
        return self.path("etc", "ossec.conf")

    @property
    def ar_log(self) -> Path:
        """Return logs/active-responses.log."""
        return self.path("logs", "active-responses.log")

    @property
    def alerts_log(self) -> Path:
        """Return logs/alerts/alerts.log."""
        return self.path("logs", "alerts", "alerts.log")

    @property
    def ossec_log(self) -> Path:
        """Return logs/ossec.log."""
        return self.path("logs", "ossec.log")

    @property
    def evidence(self) -> Path:
        """Return the default evidence root (<ossec>/dfir)."""
        return self.path("dfir")

    # -- snapshot and reset --------------------------------------------------
    def snapshot(self) -> None:
        """Keep etc/, rules/ and active-response/ as built (once per build)."""
        stamp = self.path(".build-ossec").read_text()
        stamp_file = self.path(PRISTINE_STAMP)
        if stamp_file.exists() and stamp_file.read_text() == stamp and \
                self.path(PRISTINE).exists():
            return
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name in SNAPSHOT_DIRS:
                if self.path(name).exists():
                    tar.add(str(self.path(name)), arcname=name)
        tmp = self.path(PRISTINE + ".tmp")
        tmp.write_bytes(buf.getvalue())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path(PRISTINE))
        stamp_file.write_text(stamp)

    def reset(self) -> None:
        """Stop everything of this tree and put it back as built (evidence and state emptied)."""
        self.stop()
        self.end_dfir_processes()
        import shutil
        for name in SNAPSHOT_DIRS:
            if self.path(name).exists():
                shutil.rmtree(self.path(name))
        with tarfile.open(str(self.path(PRISTINE))) as tar:
            # Our own archive of this tree: owners and modes (etc/shared is
            # group-writable for the ossec group) come back exactly.
            extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") \
                else {}
            tar.extractall(str(self.dir), numeric_owner=True, **extra)
        for name in STATE_DIRS:
            directory = self.path(name)
            if directory.is_dir():
                for entry in directory.iterdir():
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
        for name in TRUNCATED:
            if self.path(name).exists():
                os.truncate(self.path(name), 0)
        if self.evidence.exists():
            shutil.rmtree(self.evidence)
        self.mark()

    # -- daemons -------------------------------------------------------------
    def control(self, action: str) -> subprocess.CompletedProcess:
        """Run bin/ossec-control action (start, stop, restart, status)."""
        return subprocess.run([str(self.path("bin", "ossec-control")), action],
                              capture_output=True, text=True, timeout=CONTROL_TIMEOUT_S)

    def daemon_pid(self, name: str) -> int | None:
        """Return the pid of a running daemon of this tree (from var/run), or None."""
        run = self.path("var", "run")
        for entry in run.glob(f"{name}-*.pid") if run.is_dir() else []:
            try:
                pid = int(entry.read_text().strip())
            except (OSError, ValueError):
                continue
            argv = _cmdline(pid)
            if argv and argv[0] == str(self.path("bin", name)) and _session(pid):
                return pid
        return None

    def start(self) -> None:
        """Start the daemons with ossec-control and fail with ossec.log if execd is not up."""
        res = self.control("start")
        if res.returncode != 0:
            pytest.fail(f"ossec-control start failed:\n{res.stdout}{res.stderr}\n"
                        f"{self.log_since('ossec')}")
        wait_for("ossec-execd to run", lambda: self.daemon_pid("ossec-execd"), 20,
                 detail=lambda: self.log_since("ossec"))

    def stop(self) -> None:
        """Stop the daemons with ossec-control stop (a no-op when they are not running)."""
        self.control("stop")

    def restart(self) -> subprocess.CompletedProcess:
        """Run ossec-control restart."""
        return self.control("restart")

    def logcollector_reads(self, path: Path) -> bool:
        """Return True when this tree's running logcollector holds path open."""
        pid = self.daemon_pid("ossec-logcollector")
        if pid is None:
            return False
        try:
            st = os.stat(path)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    held = os.stat(f"/proc/{pid}/fd/{fd}")
                    if (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino):
                        return True
                except OSError:
                    continue
        except OSError:
            return False
        return False

    def send_execq(self, message: str) -> None:
        """Send one datagram to execd's queue, as analysisd or remoted would."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), str(self.path("queue", "alerts", "execq")))

    # -- dfir processes ------------------------------------------------------
    def dfir_processes(self) -> list[int]:
        """Return the pids of AR scripts and workers of this tree, and of their sessions."""
        own = os.getpid()
        bin_prefix = str(self.path("active-response", "bin")) + "/"
        leaders = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == own:
                continue
            argv = _cmdline(int(entry))
            if any(a.startswith(bin_prefix) for a in argv[:2]) or any(
                    a == "--ossec-dir" and argv[i + 1:i + 2] == [str(self.dir)]
                    for i, a in enumerate(argv)):
                leaders.append(int(entry))
        sessions = {s for s in (_session(p) for p in leaders) if s}
        return sorted({int(e) for e in os.listdir("/proc") if e.isdigit() and
                       _session(int(e)) in sessions and int(e) != own} | set(leaders))

    def end_dfir_processes(self, grace_s: float = 30) -> list[int]:
        """Wait up to grace_s for this tree's dfir processes to exit, then end them by pid."""
        deadline = time.monotonic() + grace_s
        while self.dfir_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = self.dfir_processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.dfir_processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + 10
            while self.dfir_processes() and time.monotonic() < end:
                time.sleep(0.2)
        return left

    # -- logs ----------------------------------------------------------------
    def mark(self) -> None:
        """Remember the current end of the logs; *_since() read only what follows."""
        for key, path in (("alerts", self.alerts_log), ("ar", self.ar_log),
                          ("ossec", self.ossec_log)):
            self.marks[key] = path.stat().st_size if path.exists() else 0

    def log_since(self, key: str) -> str:
        """Return what was appended to a log (alerts, ar or ossec) since mark()."""
        path = {"alerts": self.alerts_log, "ar": self.ar_log, "ossec": self.ossec_log}[key]
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                fh.seek(self.marks.get(key, 0) if self.marks.get(key, 0) <= size else 0)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def alerts(self, rule_ids: tuple[str, ...] | None = None,
               contains: str = "") -> list[Alert]:
        """Return the alerts raised since mark(), optionally only these rules holding text."""
        return [a for a in parse_alerts(self.log_since("alerts"))
                if (rule_ids is None or a.rule_id in rule_ids) and contains in a.text]

    def wait_alert(self, rule_ids: tuple[str, ...], contains: str = "",
                   timeout_s: float = 60) -> Alert:
        """Wait for an alert of one of rule_ids holding contains; return the first."""
        found = wait_for(f"an alert {'/'.join(rule_ids)} holding {contains!r} in alerts.log",
                         lambda: self.alerts(rule_ids, contains), timeout_s,
                         detail=self.diagnostics)
        return found[0]  # type: ignore[index]

    def outcome_lines(self, contains: str = "") -> list[str]:
        """Return the ossec-dfir outcome lines written since mark()."""
        return [line for line in self.log_since("ar").splitlines()
                if line.startswith("ossec-dfir: outcome=") and contains in line]

    def diagnostics(self) -> str:
        """Return the logs since mark(), for a failure message.

        The daemons' own lines come apart from syscheck's, which fill the tail
        of ossec.log at every start; the keys and running daemons are listed.
        """
        own = [line for line in self.log_since("ossec").splitlines()
               if "syscheckd" not in line and "rootcheck" not in line]
        try:
            keys = len([x for x in self.path("etc", "client.keys").read_text().splitlines()
                        if x.strip()])
        except OSError as err:
            keys = f"unreadable ({err.strerror})"  # type: ignore[assignment]
        return (f"--- {self.ar_log} since the test began:\n{self.log_since('ar')[-4000:]}\n"
                f"--- {self.ossec_log}, without syscheck and rootcheck:\n"
                f"{chr(10).join(own)[-4000:]}\n"
                f"--- client.keys: {keys} entries; ossec-control status:\n"
                f"{self.control('status').stdout}\n"
                f"--- alerts.log (rules):\n" +
                "\n".join(f"{a.alert_id} {a.rule_id} {a.log[:200]}" for a in self.alerts())[-3000:])

    # -- ossec-dfir ------------------------------------------------------------
    def dfir(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        """Run the ossec-dfir CLI of this checkout's venv on this tree."""
        return subprocess.run([str(DFIR), *args[:1], "--ossec-dir", str(self.dir), *args[1:]],
                              capture_output=True, text=True, timeout=timeout_s)

    def install_dfir(self, binds: dict[str, str] | None = None, manager: bool = False,
                     edit: bool = True) -> str:
        """Install ossec-dfir with the documented command; return its output.

        ``ossec-dfir install --ossec-dir DIR [--edit-ossec-conf] [--manager]
        [--bind COMMAND=RULES ...]`` (``--allow-unsafe-paths`` only when this
        checkout's venv is not root-owned all the way up).
        """
        args = ["install"]
        if edit:
            args.append("--edit-ossec-conf")
        if manager:
            args.append("--manager")
        for command, rules in (binds or {}).items():
            args += ["--bind", f"{command}={rules}"]
        from ossec_dfir.ossec.install import unsafe_code_paths
        if unsafe_code_paths():
            args.append("--allow-unsafe-paths")
        res = self.dfir(*args)
        assert res.returncode == 0, f"ossec-dfir {' '.join(args)} failed ({res.returncode}):\n" \
                                    f"{res.stdout}{res.stderr}"
        return res.stdout

    def write_dfir_config(self, text: str) -> Path:
        """Write <ossec>/etc/ossec-dfir.yml (the site's ossec-dfir configuration)."""
        path = self.path("etc", "ossec-dfir.yml")
        path.write_text(text)
        os.chmod(path, 0o640)
        return path

    def dfir_status(self) -> dict:
        """Return ``ossec-dfir status --json`` of this tree (running collectors, workers)."""
        res = self.dfir("status", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout)

    def incidents(self) -> list[dict]:
        """Return ``ossec-dfir incidents --json`` of this tree ([] before the first incident)."""
        if not self.evidence.exists():
            return []
        res = self.dfir("incidents", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout)

    def show(self, incident: str) -> dict:
        """Return ``ossec-dfir show --json`` of one incident."""
        res = self.dfir("show", incident, "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout)

    def verify(self, incident: str) -> subprocess.CompletedProcess:
        """Run ``ossec-dfir verify`` on one incident."""
        return self.dfir("verify", incident)

    def logtest(self, lines: list[str], timeout_s: float = 60) -> list[dict[str, str]]:
        """Feed lines to the install's own ossec-logtest; return per line its decoder and rule."""
        res = subprocess.run([str(self.path("bin", "ossec-logtest"))],
                             input="\n".join(lines) + "\n", capture_output=True, text=True,
                             timeout=timeout_s)
        return parse_logtest(res.stdout + res.stderr, len(lines))


def parse_logtest(output: str, count: int) -> list[dict[str, str]]:
    """Split ossec-logtest output into one dict per input line (decoder, rule, level, alert)."""
    parts = re.split(r"\*\*Phase 1: Completed pre-decoding\.", output)[1:]
    results = []
    for part in parts[:count]:
        decoder = re.search(r"decoder: '([^']*)'", part)
        rule = re.search(r"Rule id: '(\d+)'", part)
        level = re.search(r"Level: '(\d+)'", part)
        fields = dict(re.findall(r"^\s+(\w+): '([^']*)'", part, re.M))
        results.append({"decoder": decoder.group(1) if decoder else "",
                        "rule": rule.group(1) if rule else "",
                        "level": level.group(1) if level else "",
                        "alert": "yes" if "**Alert to be generated." in part else "no",
                        **{f"field:{k}": v for k, v in fields.items()}})
    return results


def root_denied_pids() -> set[int]:
    """Return the live, non-zombie processes whose /proc links this root test process cannot read.

    Some hosts keep processes from root (a sandbox's init, an LSM policy):
    a triage there is rightly partial whoever runs it. Nothing to do with
    execd: zombies and exited processes are not in this set.
    """
    denied = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _session(int(entry)) is None:
            continue
        for link in ("exe", "cwd", "root", "ns/net"):
            try:
                os.readlink(f"/proc/{entry}/{link}")
            except PermissionError:
                denied.add(int(entry))
                break
            except OSError:
                continue
    return {p for p in denied if _session(p) is not None}


def assert_triage_complete(tree: OssecTree, incident: str, outcome: Alert,
                           host_denied: set[int]) -> None:
    """Assert the triage outcome alert is 100901, unless the host itself denies root.

    Under execd a triage meets the zombies execd has not reaped yet and
    processes that exit while they are read: none may count as denied. Only
    where some live process is unreadable to root outside execd too
    (host_denied, taken before the alert) is a partial outcome right, and
    then its only reason is that denial, for exactly those processes.
    """
    if not host_denied or outcome.rule_id == "100901":
        assert outcome.rule_id == "100901", f"triage did not end complete:\n{outcome.text}"
        return
    assert outcome.rule_id == "100902", outcome.text
    reason = re.search(r'reason="(.*)"', outcome.log).group(1)
    assert re.fullmatch(r"triage: processes: \d+ processes with fields not readable "
                        r"\(uid 0\); see their 'denied' lists", reason), outcome.text
    records = [json.loads(line) for line in
               (tree.evidence / incident / "triage" / "01" / "processes.jsonl")
               .read_text().splitlines()]
    denied = {r["pid"] for r in records if r.get("denied")}
    assert denied and denied <= host_denied, \
        f"denied under execd: {sorted(denied)}; unreadable to root here anyway: " \
        f"{sorted(host_denied)}"


def dfir_blocks(conf: str) -> list[str]:
    """Return the <active-response> blocks of an ossec.conf text that run a dfir-* command."""
    return [b for b in re.findall(r"<active-response>.*?</active-response>", conf, re.S)
            if re.search(r"<command>\s*dfir-", b)]


# -- the host's own OSSEC setup (not ossec-dfir's) --------------------------------

SYSLOG_HEAD = "Dec  2 07:30:01 dfirtest"


def sshd_failed_line(ip: str, port: int = 4242) -> str:
    """Return an sshd line that OSSEC's rule 5710 matches (invalid user, failed password)."""
    return f"{SYSLOG_HEAD} sshd[1234]: Failed password for invalid user admin from {ip} " \
           f"port {port} ssh2"


def site_setup(tree: OssecTree, auth_log: Path | None = None, watch_dir: Path | None = None,
               frequency_s: int = 3600) -> None:
    """Set up the host's own monitoring, as a site has it before ossec-dfir is installed.

    OSSEC watches an auth log (``<localfile>``, syslog) and, for syscheck,
    only watch_dir in realtime, with alerts for new files (the defaults would
    first hash /etc, /usr/bin... for minutes). With a watch_dir, syscheckd's
    pauses (``syscheck.sleep``, 2 s by default, multiplied up to 15 times
    before the first scan) are set to 0 in etc/local_internal_options.conf,
    OSSEC's place for such tuning. This is the OSSEC configuration
    ossec-dfir's install finds on a host, not ossec-dfir's: its own blocks
    are written by ``ossec-dfir install`` only.
    """
    if watch_dir is not None:
        with open(tree.path("etc", "local_internal_options.conf"), "a") as fh:
            fh.write("\nsyscheck.sleep=0\n")
    text = tree.ossec_conf.read_text()
    directories = (f'    <directories realtime="yes" check_all="yes">{watch_dir}</directories>\n'
                   if watch_dir else "")
    syscheck = (f"<syscheck>\n    <frequency>{frequency_s}</frequency>\n"
                f"    <alert_new_files>yes</alert_new_files>\n{directories}  </syscheck>")
    text, count = re.subn(r"<syscheck>.*?</syscheck>", lambda _m: syscheck, text, count=1,
                          flags=re.S)
    assert count == 1, f"no <syscheck> block in {tree.ossec_conf}"
    if auth_log is not None:
        auth_log.parent.mkdir(parents=True, exist_ok=True)
        auth_log.touch()
        text = text.rstrip() + (f"\n\n<ossec_config>\n  <localfile>\n"
                                f"    <log_format>syslog</log_format>\n"
                                f"    <location>{auth_log}</location>\n  </localfile>\n"
                                f"</ossec_config>\n")
    tree.ossec_conf.write_text(text)


def append_line(path: Path, line: str) -> None:
    """Append one log line to a monitored file (as syslog would)."""
    with open(path, "a") as fh:
        fh.write(line + "\n")


# -- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="session")
def ossec_local_build() -> OssecTree:
    """Build (or keep) the local install; skip when that is impossible here."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    build("local", LOCAL_DIR)
    tree = OssecTree(LOCAL_DIR, "local")
    tree.snapshot()
    return tree


@pytest.fixture(scope="session")
def ossec_pair_build() -> tuple[OssecTree, OssecTree]:
    """Build (or keep) the manager and the agent; skip when that is impossible here."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    build("server", MANAGER_DIR)
    build("agent", AGENT_DIR)
    manager, agent = OssecTree(MANAGER_DIR, "server"), OssecTree(AGENT_DIR, "agent")
    manager.snapshot()
    agent.snapshot()
    return manager, agent


@pytest.fixture
def site(tmp_path_factory) -> Path:
    """Return a fresh directory for the host's monitored files (outside any root the tests scan)."""
    import shutil
    if SITE_DIR.exists():
        shutil.rmtree(SITE_DIR)
    SITE_DIR.mkdir(mode=0o755)
    return SITE_DIR


@pytest.fixture
def ossec_local(ossec_local_build: OssecTree) -> Iterator[OssecTree]:
    """Return the local install as built; stop its daemons at the end."""
    tree = ossec_local_build
    tree.reset()
    try:
        yield tree
    finally:
        tree.stop()
        tree.end_dfir_processes()


@pytest.fixture
def ossec_pair(ossec_pair_build: tuple[OssecTree, OssecTree]) -> Iterator[tuple[OssecTree, OssecTree]]:
    """Return the manager and the agent as built, the agent registered (id 001); stop both at the end."""
    manager, agent = ossec_pair_build
    manager.reset()
    agent.reset()
    res = subprocess.run([str(manager.path("bin", "manage_agents")), "-a", "127.0.0.1",
                          "-n", "dfir-agent"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([str(manager.path("bin", "manage_agents")), "-e", "001"],
                         capture_output=True, text=True, timeout=60)
    key = [line for line in res.stdout.splitlines() if line.strip()][-1].strip()
    res = subprocess.run([str(agent.path("bin", "manage_agents")), "-i", key],
                         input="y\n\n", capture_output=True, text=True, timeout=60)
    assert "Added." in res.stdout, res.stdout + res.stderr
    for tree in (manager, agent):  # each side holds the key it will authenticate with
        keys = tree.path("etc", "client.keys").read_text()
        assert " dfir-agent 127.0.0.1 " in keys, f"{tree.dir}: client.keys: {keys!r}"
    try:
        yield manager, agent
    finally:
        agent.stop()
        manager.stop()
        agent.end_dfir_processes()
