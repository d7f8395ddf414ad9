"""Suspects: which processes talk to the trigger's srcip, with their parents and children."""
from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from ossec_dfir.collectors import suspects


def proc(pid: int, ppid: int | None, name: str = "p") -> dict:
    return {"pid": pid, "ppid": ppid, "name": name, "exe": f"/bin/{name}",
            "cmdline": [name], "username": "root", "create_time": None}


TABLE = {1: proc(1, 0, "init"), 100: proc(100, 1, "sshd"), 200: proc(200, 100, "sshd"),
         300: proc(300, 200, "bash"), 301: proc(301, 300, "nc"), 400: proc(400, 1, "cron")}


def conn(local: str, remote: str | None, owners: list[tuple[int, int]] | None = None,
         pid: int | None = None) -> dict:
    return {"local_ip": local, "local_port": 22, "remote_ip": remote, "remote_port": 5555,
            "owners": [{"pid": p, "fd": f} for p, f in owners or []], "pid": pid}


def test_srcip_problem_says_why_not_instead_of_guessing():
    assert "no srcip" in suspects.srcip_problem(None)
    assert "unspecified" in suspects.srcip_problem(ipaddress.ip_address("0.0.0.0"))
    assert "interface lo" in suspects.srcip_problem(ipaddress.ip_address("127.0.0.1"))
    assert "interface lo" in suspects.srcip_problem("::1")
    assert "not an IP" in suspects.srcip_problem("host.example")
    # 127.0.0.9 is routed to lo but assigned to no interface: usable (tests rely on it).
    assert suspects.srcip_problem(ipaddress.ip_address("127.0.0.9")) is None
    assert suspects.is_local_address("127.0.0.1")
    assert not suspects.is_local_address("127.0.0.9")
    # one policy, each use naming what the refusal costs
    capture = suspects.srcip_problem("::ffff:127.0.0.1", "capture")
    assert capture.endswith("not captured (a filter on it would record this host's own traffic)")
    assert suspects.live_suspects("127.0.0.1", "memory") == (
        [], suspects.srcip_problem("127.0.0.1", "memory"))
    assert suspects.suspect_pids("::1") == []


def test_the_policy_holds_without_psutil(monkeypatch):
    """The capture needs no psutil: the host's addresses then come from /proc."""
    import sys
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    assert suspects.host_interface_of("::1") == "lo"
    assert suspects.host_interface_of("127.0.0.1") in ("lo", "unknown (from /proc/net/fib_trie)")
    assert suspects.host_interface_of("127.0.0.9") is None
    assert "not captured" in suspects.srcip_problem("127.0.0.1", "capture")


def test_matching_connections_normalises_v4_mapped_and_scoped_addresses():
    conns = [conn("::ffff:203.0.113.5", None), conn("10.0.0.1", "203.0.113.5"),
             conn("fe80::1%eth0", "fe80::2"), conn("10.0.0.1", "198.51.100.7")]
    assert suspects.matching_connections(conns, "203.0.113.5") == conns[:2]
    assert suspects.matching_connections(conns, "fe80::2") == [conns[2]]
    assert suspects.matching_connections(conns, "not-an-ip") == []


def test_suspects_have_parent_chain_to_pid_1_and_descendants():
    conns = [conn("10.0.0.1", "203.0.113.5", [(200, 4), (300, 0)]),
             conn("10.0.0.1", "198.51.100.7", [(400, 3)])]
    found = {r["pid"]: r for r in suspects.suspects_in(TABLE, conns, "203.0.113.5")}
    assert set(found) == {200, 300}
    assert [p["pid"] for p in found[300]["parents"]] == [200, 100, 1]
    assert [c["pid"] for c in found[200]["children"]] == [300, 301]
    assert found[300]["connections"] == [conns[0]]
    assert found[300]["srcip"] == "203.0.113.5"


def test_exclude_pids_and_unknown_owners():
    conns = [conn("10.0.0.1", "203.0.113.5", [(300, 0), (999, 5)]),
             conn("10.0.0.1", "203.0.113.5", [], pid=None)]
    found = suspects.suspects_in(TABLE, conns, "203.0.113.5", exclude_pids={300})
    assert [r["pid"] for r in found] == [999, None]
    assert found[0]["missing"] is True
    assert "owner unknown" in found[1]["note"]


def test_process_tree_survives_a_parent_that_vanished():
    table = {5: proc(5, 4), 6: proc(6, 5)}
    tree = suspects.process_tree(table, 6)
    assert tree["parents"] == [suspects._summary(table[5]),
                               {"pid": 4, "missing": True}]
    assert tree["children"] == []


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(1, 30), st.integers(0, 30), min_size=1, max_size=30))
def test_process_tree_terminates_on_any_ppid_graph(ppids):
    table = {pid: proc(pid, ppid) for pid, ppid in ppids.items()}
    for pid in table:
        tree = suspects.process_tree(table, pid)
        parent_pids = [p["pid"] for p in tree["parents"]]
        assert len(parent_pids) == len(set(parent_pids)) and pid not in parent_pids
        child_pids = [c["pid"] for c in tree["children"]]
        assert len(child_pids) == len(set(child_pids)) and pid not in child_pids
