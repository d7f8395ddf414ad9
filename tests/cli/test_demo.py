"""make demo's end to end run: a simulated alert, the incident verifies, a report is written."""
from __future__ import annotations

import os

from ossec_dfir.cli.demo import run_demo


def test_demo_end_to_end(tmp_path, capsys):
    directory = tmp_path / "demo"
    assert run_demo(str(directory), None, 180) == 0
    out = capsys.readouterr().out
    assert "-> exit 0 after" in out and ": OK (" in out
    log = (directory / "ossec" / "logs" / "active-responses.log").read_text()
    outcome = [x for x in log.splitlines() if x.startswith("ossec-dfir: outcome=")][0]
    for step in ("memory:", "triage:", "host:", "yara:", "files:", "pcap:"):
        assert step in outcome
    reports = [p for p in os.listdir(directory) if p.endswith(".report.html")]
    assert len(reports) == 1
    assert os.stat(directory / reports[0]).st_mode & 0o777 == 0o600


def test_demo_refuses_a_directory_a_user_could_prepare(tmp_path):
    """As root, a --dir below a directory writable by others (a planted link, a swapped
    executable) is refused before anything is written or run."""
    import pytest

    from ossec_dfir.errors import BadRequest
    if os.geteuid() != 0:
        pytest.skip("the check applies to root only")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o777)
    with pytest.raises(BadRequest, match="writable by group or others"):
        run_demo(str(shared / "demo"), None, 5)
    assert not (shared / "demo").exists()
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    with pytest.raises(BadRequest):  # a user could create sticky/demo first
        run_demo(str(sticky / "demo"), None, 5)


def test_demo_attacker_address_is_free_loopback():
    import ipaddress

    from ossec_dfir.cli.demo import free_loopback_address
    addresses = {free_loopback_address() for _ in range(5)}
    for address in addresses:
        assert ipaddress.ip_address(address) in ipaddress.ip_network("127.0.0.0/8")
        assert address not in ("127.0.0.1", "127.0.0.0")
    assert len(addresses) > 1  # picked at random, not a fixed address
