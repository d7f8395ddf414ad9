"""Find the suspect processes of an incident: those talking to the trigger's IP."""
from __future__ import annotations

import ipaddress
from typing import Any


def _norm(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def connections_with(srcip: Any) -> list[Any]:
    """Return psutil inet connections whose remote or local address is srcip."""
    import psutil

    target = _norm(str(srcip))
    if target is None:
        return []
    out = []
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return []
    for conn in conns:
        for addr in (conn.raddr, conn.laddr):
            if addr and _norm(addr.ip) == target:
                out.append(conn)
                break
    return out


def suspect_pids(srcip: Any) -> list[int]:
    """Return the pids (sorted, unique) with a connection to or from srcip.

    Empty when the srcip policy refuses srcip (``srcip_problem``); a caller that
    must say why uses ``live_suspects``.
    """
    return live_suspects(srcip)[0]


def live_suspects(srcip: Any, use: str = "suspects") -> tuple[list[int], str | None]:
    """Return (pids with a connection to or from srcip, None), or ([], why srcip is refused)."""
    why = srcip_problem(srcip, use)
    if why is not None:
        return [], why
    return sorted({c.pid for c in connections_with(srcip) if c.pid}), None


def is_local_address(srcip: Any) -> bool:
    """Return True when srcip is held by an interface of this host (127.0.0.1, ::1, ...)."""
    return host_interface_of(srcip) is not None


# -- the srcip policy: one rule for every collector that acts on the srcip ---
# What a refusal costs, per use (the end of the reason recorded in the outcome).
CONSEQUENCES = {
    "suspects": "no suspects derived",
    "memory": "no process dumped as a suspect",
    "yara": "no process scanned as a suspect",
    "capture": "not captured (a filter on it would record this host's own traffic)",
}


def srcip_problem(srcip: Any, use: str = "suspects") -> str | None:
    """Return why nothing may be derived from srcip (absent, unspecified, ours), or None.

    The one srcip policy of every collector. "Ours" means assigned to an
    interface of this host (127.0.0.1 and ::1 are; 127.0.0.2, routed to lo
    but held by no interface, is not): every local socket would match such an
    address, so its "suspects" would be every process talking on it (secrets
    included) and a capture of it the host's own traffic. ``use`` picks the
    consequence named at the end of the reason (see CONSEQUENCES).
    """
    then = CONSEQUENCES.get(use, CONSEQUENCES["suspects"])
    if srcip is None:
        return f"the trigger has no srcip: {then}"
    target = _norm(str(srcip))
    if target is None:
        return f"srcip {srcip!r} is not an IP address: {then}"
    if target.is_unspecified:
        return f"srcip {target} is the unspecified address: {then}"
    owner = host_interface_of(target)
    if owner is not None:
        return (f"srcip {target} is an address of this host (interface {owner}): every "
                f"local connection would match, so {then}")
    return None


def host_interface_of(srcip: Any) -> str | None:
    """Return the interface holding srcip on this host, or None."""
    target = _norm(str(srcip))
    if target is None:
        return None
    for name, address in _interface_addresses():
        if _norm(address) == target:
            return name
    return None


def _interface_addresses() -> list[tuple[str, str]]:
    """Return (interface, address) pairs: psutil's, or /proc's where psutil is missing.

    The capture (which needs no psutil otherwise) asks too. Without psutil,
    IPv6 comes from /proc/net/if_inet6 and IPv4 from the kernel's local
    routes in /proc/net/fib_trie (``/32 host LOCAL``: no interface name there).
    """
    try:
        import psutil
    except ImportError:
        pass
    else:
        return [(name, addr.address or "") for name, addrs in sorted(psutil.net_if_addrs().items())
                for addr in addrs]
    out: list[tuple[str, str]] = []
    try:
        with open("/proc/net/if_inet6", "rb") as fh:
            for line in fh.read(1 << 20).decode("ascii", "replace").splitlines():
                fields = line.split()
                if len(fields) >= 6 and len(fields[0]) == 32:
                    out.append((fields[5], ":".join(fields[0][i:i + 4] for i in range(0, 32, 4))))
    except OSError:
        pass
    try:
        with open("/proc/net/fib_trie", "rb") as fh:
            lines = fh.read(16 << 20).decode("ascii", "replace").splitlines()
    except OSError:
        lines = []
    for before, line in zip(lines, lines[1:]):
        if line.strip() == "/32 host LOCAL" and "|-- " in before:
            pair = ("unknown (from /proc/net/fib_trie)", before.split("|-- ", 1)[1].strip())
            if pair not in out:
                out.append(pair)
    return out


# -- suspects in a snapshot (the triage collector) --------------------------
def matching_connections(connections: list[dict[str, Any]], srcip: Any) -> list[dict[str, Any]]:
    """Return the connection records (local_ip/remote_ip keys) to or from srcip."""
    target = _norm(str(srcip))
    if target is None:
        return []
    return [c for c in connections
            if any(c.get(k) and _norm(c[k]) == target for k in ("remote_ip", "local_ip"))]


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec.get(k) for k in ("pid", "ppid", "name", "exe", "cmdline", "username",
                                    "create_time")}


def process_tree(processes: dict[int, dict[str, Any]], pid: int) -> dict[str, Any]:
    """Return the parent chain (up to pid 1) and all descendants of pid in a snapshot."""
    parents: list[dict[str, Any]] = []
    seen = {pid}
    current = processes.get(pid, {}).get("ppid")
    while current and current not in seen:
        seen.add(current)
        rec = processes.get(current)
        parents.append(_summary(rec) if rec else {"pid": current, "missing": True})
        current = rec.get("ppid") if rec else None
    children_of: dict[int, list[int]] = {}
    for child_pid, rec in processes.items():
        if rec.get("ppid") is not None:
            children_of.setdefault(rec["ppid"], []).append(child_pid)
    children: list[dict[str, Any]] = []
    queue, visited = sorted(children_of.get(pid, [])), {pid}
    while queue:
        child = queue.pop(0)
        if child in visited:
            continue
        visited.add(child)
        children.append(_summary(processes[child]))
        queue += sorted(children_of.get(child, []))
    return {"parents": parents, "children": children}


def suspects_in(processes: dict[int, dict[str, Any]], connections: list[dict[str, Any]],
                srcip: Any, exclude_pids: set[int] | frozenset[int] = frozenset()
                ) -> list[dict[str, Any]]:
    """Return one record per process holding a socket to or from srcip, with its tree.

    A connection record names its holders in ``owners`` ([{pid, fd}], every
    process sharing the socket) or, failing that, in ``pid``. Sockets with no
    known owner are returned as one record with ``pid: null``; exclude_pids
    (the collector itself, which inherits its parent's sockets) are left out.
    """
    by_pid: dict[int | None, list[dict[str, Any]]] = {}
    for conn in matching_connections(connections, srcip):
        holders = {o["pid"] for o in conn.get("owners") or []} or {conn.get("pid")}
        for pid in holders - set(exclude_pids):
            by_pid.setdefault(pid, []).append(conn)
    out = []
    for pid in sorted(by_pid, key=lambda p: (p is None, p or 0)):
        if pid is None:
            out.append({"pid": None, "srcip": str(srcip), "connections": by_pid[None],
                        "note": "socket owner unknown (not readable, or no process holds it)"})
            continue
        rec = processes.get(pid)
        entry = dict(_summary(rec)) if rec else {"pid": pid, "missing": True}
        entry.update({"srcip": str(srcip), "connections": by_pid[pid],
                      **process_tree(processes, pid)})
        out.append(entry)
    return out
