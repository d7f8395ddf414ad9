"""Read the identity of this host: who collected the evidence, where, and when."""
from __future__ import annotations

import os
import re
import sys
import time

from . import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the AR hot path
    from typing import Any

# Root of the kernel's pseudo filesystems, constants so tests can point them elsewhere.
PROC = "/proc"
ETC = "/etc"


def _read(path: str, max_bytes: int = 65536) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(max_bytes).decode("utf-8", "replace").strip()
    except OSError:
        return None


def os_release() -> dict[str, str]:
    """Parse /etc/os-release into a dict (empty when absent)."""
    text = _read(os.path.join(ETC, "os-release")) or ""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def timezone_name() -> str | None:
    """Return the configured timezone (/etc/timezone or the /etc/localtime link)."""
    name = _read(os.path.join(ETC, "timezone"))
    if name:
        return name
    try:
        target = os.readlink(os.path.join(ETC, "localtime"))
    except OSError:
        return time.tzname[0] if time.tzname else None
    return target.split("zoneinfo/", 1)[-1]


_DIST_INFO = re.compile(r"^(psutil|yara_python|scapy|PyYAML|pyyaml)-([^-]+)\.dist-info$")


def _import_dirs() -> list[str]:
    """Return the import path, with the site directories when the interpreter skipped them.

    The installed AR executables run ``python -IS`` (no site directories until
    they need one): the libraries' versions are recorded all the same.
    """
    dirs = list(sys.path)
    if sys.flags.no_site:
        import site  # with -S, importing site does not run site.main()
        # A venv is what site.main() would have found: pyvenv.cfg beside the
        # interpreter or one directory up (and sys.prefix is not set to it).
        here = os.path.dirname(sys.executable)
        venv = [d for d in (here, os.path.dirname(here))
                if os.path.isfile(os.path.join(d, "pyvenv.cfg"))][:1]
        dirs += [d for d in site.getsitepackages(venv or None) if d not in dirs]
    return dirs


def _iso(epoch_ns: int) -> str:
    """Return a Unix time in nanoseconds as ISO-8601 UTC with microseconds (truncated)."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}+00:00"


def library_versions() -> dict[str, str | None]:
    """Return the versions of the libraries evidence depends on (from dist-info names).

    Neither importing the libraries nor importlib.metadata: this runs in the
    AR entry point, which must return to execd at once.
    """
    out: dict[str, str | None] = {"psutil": None, "yara-python": None, "scapy": None,
                                  "PyYAML": None}
    names = {"psutil": "psutil", "yara_python": "yara-python", "scapy": "scapy",
             "PyYAML": "PyYAML", "pyyaml": "PyYAML"}
    for directory in _import_dirs():
        try:
            entries = os.listdir(directory or ".")
        except OSError:
            continue
        for entry in entries:
            match = _DIST_INFO.match(entry)
            if match and out[names[match.group(1)]] is None:
                out[names[match.group(1)]] = match.group(2)
    return out


def identity() -> dict[str, Any]:
    """Return the host identity recorded in every incident.json."""
    uname = os.uname()  # what platform.uname() reads on Linux, without importing platform
    boot_time = None
    stat = _read(os.path.join(PROC, "stat")) or ""
    for line in stat.splitlines():
        if line.startswith("btime "):
            boot_time = time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                                      time.gmtime(int(line.split()[1])))
    return {
        "hostname": uname.nodename,  # what socket.gethostname() returns
        "machine_id": _read(os.path.join(ETC, "machine-id")),
        "boot_id": _read(os.path.join(PROC, "sys/kernel/random/boot_id")),
        "boot_time": boot_time,
        "kernel": {"system": uname.sysname, "release": uname.release,
                   "version": uname.version, "machine": uname.machine},
        "os_release": {k: v for k, v in os_release().items()
                       if k in ("ID", "VERSION_ID", "PRETTY_NAME")},
        "timezone": timezone_name(),
        "clock": {"utc": _iso(time.time_ns()),
                  "monotonic_s": time.monotonic()},
        "tool": {"name": "ossec-dfir", "version": __version__,
                 "python": sys.version.split()[0], "executable": sys.executable,
                 "libraries": library_versions()},
        "collector_uid": os.geteuid(),
    }
