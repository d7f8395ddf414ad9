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
    """Return the pids (sorted, unique) with a connection to or from srcip."""
    return sorted({c.pid for c in connections_with(srcip) if c.pid})


def is_local_address(srcip: Any) -> bool:
    """Return True when srcip is an address of this host (or loopback)."""
    import psutil

    target = _norm(str(srcip))
    if target is None:
        return False
    if target.is_loopback:
        return True
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if _norm(addr.address or "") == target:
                return True
    return False
