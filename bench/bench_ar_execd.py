"""AR latency under the real OSSEC execd: a storm of alerts, timed by the kernel's process accounting.

bench_ar_latency.py starts the executables itself, as execd would. This one
lets the real ``ossec-execd`` of the local OSSEC install that ``.ci/run``
builds (``/opt/ossec-dfir-test-local``) start them: ossec-dfir is installed
there with the documented command, OSSEC is started, and ``--storm`` alerts
for distinct IPs are written to execd's queue at once, as analysisd writes
them. BSD process accounting (acct(2), version 3 records) gives each
script's elapsed time from fork to exit and its CPU time, measured by the
kernel, not by us. The ratio is to the same number of bare interpreter
starts started by the same execd the same way: a response ``dfir-bare``
whose script is the executables' interpreter with ``-I`` and no code. (A
bare storm started by this process instead is staggered by its own spawning
and overlaps less: elapsed times per process are only comparable when one
spawner starts both.) A first alert fills the config cache; each storm
starts on an idle CPU; the tree is put back as built at the end.

    .venv/bin/python bench/bench_ar_execd.py [--storm 50] [--rounds 3]

Needs root, the local install, and a kernel with CONFIG_BSD_PROCESS_ACCT_V3;
without them it says what is missing and exits 0 (nothing measured).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_ar_latency import BARE, percentile, wait_idle  # noqa: E402

ACCT_V3 = struct.Struct("<BBHIIIIIIf8H16s")  # struct acct_v3, linux/acct.h (64 bytes)
AHZ = 100  # ac_etime is in AHZ ticks; comp_t times too


def comp_t(value: int) -> int:
    """Decode a comp_t (13-bit mantissa, 3-bit base-8 exponent)."""
    return (value & 0x1FFF) << (3 * (value >> 13))


def read_acct(path: str) -> list[dict]:
    """Return the records of a process accounting file (pid, ppid, comm, elapsed and CPU s)."""
    out = []
    with open(path, "rb") as fh:
        data = fh.read()
    for off in range(0, len(data) - ACCT_V3.size + 1, ACCT_V3.size):
        (_flag, version, _tty, exitcode, _uid, _gid, pid, ppid, _btime, etime,
         utime, stime, *_rest, comm) = ACCT_V3.unpack_from(data, off)
        if version & 0x7F != 3:
            raise SystemExit(f"{path}: accounting record version {version}, not 3")
        out.append({"pid": pid, "ppid": ppid, "exit": exitcode,
                    "comm": comm.split(b"\0", 1)[0].decode("ascii", "replace"),
                    "elapsed_s": etime / AHZ, "cpu_s": (comp_t(utime) + comp_t(stime)) / AHZ})
    return out


class Accounting:
    """Process accounting into a private file while the block runs (acct(2))."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        fd, self.path = tempfile.mkstemp(prefix="ossec-dfir-acct-")
        os.close(fd)

    def __enter__(self) -> Accounting:
        if self.libc.acct(self.path.encode()) != 0:
            raise OSError(ctypes.get_errno(), "acct(2)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.libc.acct(None)

    def records(self) -> list[dict]:
        """Return what was recorded, and remove the file."""
        try:
            return read_acct(self.path)
        finally:
            os.unlink(self.path)


def missing() -> str | None:
    """Return why this cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (execd and acct(2) need it)"
    from tests.ossec.conftest import LOCAL_DIR
    if not (LOCAL_DIR / "bin" / "ossec-execd").exists():
        return f"no local OSSEC install in {LOCAL_DIR} (.ci/run builds it)"
    probe = Accounting()
    try:
        with probe:
            pass
    except OSError as err:
        return f"no process accounting: {os.strerror(err.errno or 0)}"
    finally:
        probe.records()
    return None


def ar_name(tree, command: str) -> str:
    """Return execd's name of a command's response (etc/shared/ar.conf: <command><timeout>)."""
    for line in tree.path("etc", "shared", "ar.conf").read_text().splitlines():
        name, _, rest = line.partition(" - ")
        if rest.startswith(command + " - "):
            return name.strip()
    raise SystemExit(f"ar.conf has no response for {command}")


def daemons_cpu_s(tree) -> float:
    """Return the CPU seconds used so far by the install's running daemons (bin/ossec-*)."""
    bin_dir = str(tree.path("bin")) + "/"
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if not os.readlink(f"/proc/{entry}/exe").startswith(bin_dir):
                continue
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def execd_storm(tree, name: str, count: int, round_no: int) -> tuple[list[dict], float]:
    """Write count alerts for distinct IPs to execd's queue at once; return the scripts'
    records and the CPU seconds the OSSEC daemons used meanwhile."""
    script = name.rstrip("0123456789")
    before = tree.log_since("ar").count(" -- ")
    daemons_before = daemons_cpu_s(tree)
    with Accounting() as acct:
        for i in range(count):
            ip = f"198.51.{100 + round_no}.{i + 1}"
            tree.send_execq(f"{name} - {ip} 17643765{round_no:02d}.{i} 100200 bench -")
        deadline = time.monotonic() + 120
        while tree.log_since("ar").count(" -- ") < before + count:
            if time.monotonic() > deadline:
                raise SystemExit("execd did not run every script within 120 s:\n"
                                 + tree.diagnostics())
            time.sleep(0.2)
        time.sleep(1)  # the last scripts exit after their log line
    daemons = daemons_cpu_s(tree) - daemons_before
    records = [r for r in acct.records() if r["comm"] == script[:15]]
    if len(records) < count:
        raise SystemExit(f"{len(records)} accounting records of {script}, {count} expected")
    return records[:count], daemons


BARE_COMMAND = "dfir-bare"
BARE_BLOCK = f"""
<!-- bench_ar_execd: a response whose script is the bare interpreter -->
<ossec_config>
  <command>
    <name>{BARE_COMMAND}</name>
    <executable>{BARE_COMMAND}</executable>
    <expect>srcip</expect>
    <timeout_allowed>no</timeout_allowed>
  </command>
  <active-response>
    <command>{BARE_COMMAND}</command>
    <location>local</location>
    <rules_id>100201</rules_id>
  </active-response>
</ossec_config>
"""


def add_bare_response(tree) -> None:
    """Add the dfir-bare response: a script that is the interpreter started bare (-I, no code)."""
    script = tree.path("active-response", "bin", BARE_COMMAND)
    script.write_text(f"#!{BARE[0]} -I\n")
    os.chmod(script, 0o750)
    with open(tree.ossec_conf, "a") as fh:
        fh.write(BARE_BLOCK)


def execd_bare_storm(tree, name: str, count: int, round_no: int) -> list[dict]:
    """Have execd start count bare scripts at once; return their records."""
    with Accounting() as acct:
        for i in range(count):
            tree.send_execq(f"{name} - 198.51.{120 + round_no}.{i + 1} "
                            f"17643764{round_no:02d}.{i} 100201 bench -")
        deadline = time.monotonic() + 120
        while len([r for r in read_acct(acct.path) if r["comm"] == BARE_COMMAND]) < count:
            if time.monotonic() > deadline:
                raise SystemExit("execd did not run every bare script within 120 s")
            time.sleep(0.2)
    return [r for r in acct.records() if r["comm"] == BARE_COMMAND][:count]


def summary(records: list[dict]) -> tuple[float, float, float]:
    """Return (p50 s, p95 s, mean CPU s) of elapsed times."""
    elapsed = [r["elapsed_s"] for r in records]
    return (statistics.median(elapsed), percentile(elapsed, 95),
            statistics.mean(r["cpu_s"] for r in records))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storm", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--command", default="dfir-host")
    args = parser.parse_args()
    why = missing()
    if why:
        print(f"bench_ar_execd: nothing measured: {why}")
        return 0
    from tests.ossec.conftest import LOCAL_DIR, OssecTree
    tree = OssecTree(LOCAL_DIR, "local")
    tree.snapshot()
    tree.reset()
    try:
        tree.install_dfir({args.command: "100200"})
        add_bare_response(tree)
        tree.start()
        name = ar_name(tree, args.command)
        bare_name = ar_name(tree, BARE_COMMAND)
        # Round 1 would find the config cache cold (a full load in each of the 50,
        # as after an upgrade or a config change): one invocation fills it first.
        execd_storm(tree, name, 1, 99)
        print(f"{os.cpu_count()} CPUs, real ossec-execd of {LOCAL_DIR}, {args.storm} x {name} "
              f"(distinct IPs) written to its queue at once; elapsed fork-to-exit and CPU "
              f"from process accounting; {os.getloadavg()[0]:.2f} load before")
        for r in range(args.rounds):
            wait_idle()
            bare = summary(execd_bare_storm(tree, bare_name, args.storm, r))
            wait_idle()
            records, daemons = execd_storm(tree, name, args.storm, r)
            ar = summary(records)
            print(f"  round {r + 1}: p50 {ar[0] * 1000:6.0f} ms, p95 {ar[1] * 1000:6.0f} ms "
                  f"vs bare p50 {bare[0] * 1000:5.0f} ms, p95 {bare[1] * 1000:5.0f} ms: "
                  f"p95 {ar[1] / bare[1]:4.2f}x; CPU per invocation {ar[2] * 1000:4.0f} ms "
                  f"vs {bare[2] * 1000:4.0f} ms; OSSEC daemons meanwhile {daemons:.2f} CPU s")
        print(f"after: load {os.getloadavg()[0]:.2f}")
    finally:
        tree.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
