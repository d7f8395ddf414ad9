"""Shared fixtures: a private evidence store, a config, and a one-step runner."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ossec_dfir import config as config_mod  # noqa: E402
from ossec_dfir.collectors.base import build_params, get_collector  # noqa: E402
from ossec_dfir.config import Profile, Step  # noqa: E402
from ossec_dfir.ar.request import Request, parse_ip  # noqa: E402
from ossec_dfir.ar.runner import Runner  # noqa: E402
from ossec_dfir.evidence.store import Store  # noqa: E402

AR_DIR = ROOT / "active-response"


@pytest.fixture
def evidence_root(tmp_path: Path) -> Path:
    """Return a private (0700) evidence root inside tmp_path."""
    root = tmp_path / "evidence"
    root.mkdir(mode=0o700)
    return root


@pytest.fixture
def config_file(tmp_path: Path, evidence_root: Path) -> Path:
    """Write a test config (no reserve, own log file) and return its path."""
    path = tmp_path / "ossec-dfir.yml"
    path.write_text(f"evidence_root: {evidence_root}\nlog_file: {tmp_path}/ar.log\n"
                    "reserve_bytes: 0\n")
    return path


@pytest.fixture
def config(config_file: Path) -> config_mod.Config:
    """Return the loaded test config."""
    return config_mod.load(str(config_file), str(config_file.parent))


@pytest.fixture
def store(config: config_mod.Config):
    """Return an open Store on the test evidence root."""
    st = Store(config.evidence_root, reserve_bytes=config.reserve_bytes,
               grouping_window_s=config.grouping_window_s)
    yield st
    st.close()


def make_request(srcip: str | None = "127.0.0.2", command: str = "test",
                 **fields) -> Request:
    """Build a CLI request for srcip."""
    return Request(protocol="cli", action="add", command=command,
                   srcip=parse_ip(srcip) if srcip else None, **fields)


@pytest.fixture
def run_collector(config, store):
    """Run one collector through the real runner; return (StepOutcome, Incident).

    Usage: ``outcome, incident = run_collector("triage", {"timeout_s": 30},
    srcip="127.0.0.2")``. The incident stays open for assertions.
    """
    from ossec_dfir import hostinfo
    opened = []

    def run(name: str, params: dict | None = None, srcip: str | None = "127.0.0.2",
            request: Request | None = None):
        cls = get_collector(name)
        step = Step(name, build_params(cls, params or {}))
        req = request or make_request(srcip)
        incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
        opened.append(incident)
        runner = Runner(config, store, incident, req, "test-trigger")
        runner.run_profile(Profile("test", "", (step,)))
        return runner.outcomes[-1], incident
    yield run
    for inc in opened:
        inc.close()


def evidence_path(incident, relpath: str) -> Path:
    """Return the absolute path of an evidence file of an incident."""
    return Path(incident.path) / relpath


def wait_collector_entry(evidence_root: Path, ip: str, collector: str,
                         timeout_s: float = 30) -> dict:
    """Wait for the worker to record a collector's manifest entry for ip; return it."""
    import json
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for manifest in evidence_root.glob(f"*_{ip}/manifest.jsonl"):
            for line in manifest.read_text().splitlines():
                rec = json.loads(line)
                if rec["type"] == "collector" and rec["collector"] == collector:
                    return rec
        time.sleep(0.2)
    raise AssertionError(f"the worker did not record the {collector} collector")


def ar_env(config_file: Path) -> dict[str, str]:
    """Return an environment for running an AR executable from the checkout."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OSSEC_DFIR_CONFIG": str(config_file)}
    return env


__all__ = ["make_request", "evidence_path", "ar_env", "wait_collector_entry", "AR_DIR", "ROOT"]


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    """Poll predicate every 0.1 s until it is true (True) or timeout_s passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
