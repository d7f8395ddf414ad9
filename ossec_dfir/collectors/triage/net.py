"""Network state for the triage collector: sockets, interfaces, routes, neighbours, DNS.

Each function returns records (dicts) and a list of problems; it never raises
for a missing or unreadable source. Routes and the IPv4 neighbour table come
from /proc; IPv6 neighbours need netlink, read through ``ip -j neigh`` when
iproute2 is installed.
"""
from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any, Callable

from ... import procfs

ETC = "/etc"
RESOLVER_FILES = ("resolv.conf", "hosts", "nsswitch.conf")
RESOLVER_MAX_BYTES = 65536
_RTF_FLAGS = {0x1: "U", 0x2: "G", 0x4: "H", 0x10: "D", 0x20: "M", 0x200: "R"}


def net_namespace(pid: int | str = "self") -> int | None:
    """Return the inode of a process's network namespace (None when unreadable)."""
    try:
        return os.stat(procfs.path(pid, "ns", "net")).st_ino
    except OSError:
        return None


def socket_tables(pid: int | str = "self") -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                      list[str]]:
    """Return (inet sockets, unix sockets, problems) of the net namespace of pid.

    Read from ``/proc/PID/net/{tcp,tcp6,udp,udp6,unix}``: each record carries
    the socket inode, which the process walk maps to every (pid, fd) holding it
    (psutil names one owner per socket; a socket shared after fork has several).
    """
    netns = net_namespace(pid)
    inet: list[dict[str, Any]] = []
    problems: list[str] = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = procfs.read_text(procfs.path(pid, "net", proto), 64 << 20).splitlines()
        except OSError as err:
            if os.path.exists(os.path.join(procfs.PROC, "self", "net", proto)):
                problems.append(f"sockets ({proto}): {procfs.error_text(err)}")
            continue
        for line in lines[1:]:
            rec = _inet_record(proto, line.split())
            if rec is not None:
                rec["netns"] = netns
                inet.append(rec)
    unix: list[dict[str, Any]] = []
    try:
        lines = procfs.read_text(procfs.path(pid, "net", "unix"), 64 << 20).splitlines()
    except OSError as err:
        problems.append(f"sockets (unix): {procfs.error_text(err)}")
        lines = []
    for line in lines[1:]:
        f = line.split(None, 7)
        if len(f) >= 7:
            unix.append({"inode": int(f[6]), "path": f[7] if len(f) > 7 else None,
                         "type": _UNIX_TYPES.get(int(f[4], 16), f[4]),
                         "state": _UNIX_STATES.get(int(f[5], 16), f[5]),
                         "listening": bool(int(f[3], 16) & 0x10000), "netns": netns})
    return inet, unix, problems


_TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
               6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
               11: "CLOSING", 12: "NEW_SYN_RECV"}
_UNIX_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}
_UNIX_STATES = {1: "UNCONNECTED", 2: "CONNECTING", 3: "CONNECTED", 4: "DISCONNECTING"}


def _inet_record(proto: str, f: list[str]) -> dict[str, Any] | None:
    if len(f) < 10 or ":" not in f[1]:
        return None
    local_ip, local_port = _addr(f[1])
    remote_ip, remote_port = _addr(f[2])
    state = int(f[3], 16)
    if proto.startswith("tcp"):
        status: str | None = _TCP_STATES.get(state, str(state))
        listening = state == 10
    else:
        status = "ESTABLISHED" if state == 1 else None
        listening = state != 1
    unconnected = remote_port == 0
    return {"proto": proto, "family": "inet6" if proto.endswith("6") else "inet",
            "local_ip": local_ip, "local_port": local_port,
            "remote_ip": None if unconnected else remote_ip,
            "remote_port": None if unconnected else remote_port,
            "status": status, "listening": listening, "uid": int(f[7]), "inode": int(f[9])}


def _addr(text: str) -> tuple[str, int]:
    """Decode ``HEXIP:HEXPORT`` of /proc/net/tcp* (each 32-bit word printed in host order)."""
    hexip, _, hexport = text.partition(":")
    raw = b"".join(struct.pack("=I", int(hexip[i:i + 8], 16)) for i in range(0, len(hexip), 8))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(hexport, 16)


def attach_owners(records: list[dict[str, Any]],
                  owners: dict[int, list[tuple[int, int]]]) -> None:
    """Set pid (first owner), fd and owners [{pid, fd}] on socket records from the fd walk."""
    for rec in records:
        held = owners.get(rec["inode"], [])
        rec["owners"] = [{"pid": pid, "fd": fd} for pid, fd in held]
        rec["pid"] = held[0][0] if held else None
        rec["fd"] = held[0][1] if held else None


def interfaces() -> tuple[list[dict[str, Any]], list[str]]:
    """Return one record per interface: flags, MTU, MAC and addresses."""
    import psutil

    try:
        addrs = psutil.net_if_addrs()
        stats = psutil.net_if_stats()
    except OSError as err:
        return [], [f"interfaces: {procfs.error_text(err)}"]
    out = []
    for name in sorted(set(addrs) | set(stats)):
        st = stats.get(name)
        rec: dict[str, Any] = {"name": name, "up": st.isup if st else None,
                               "mtu": st.mtu if st else None,
                               "flags": getattr(st, "flags", None) if st else None,
                               "addresses": []}
        for addr in addrs.get(name, []):
            family = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}.get(
                addr.family, "link" if addr.family == psutil.AF_LINK else str(addr.family))
            rec["addresses"].append({"family": family, "address": addr.address,
                                     "netmask": addr.netmask, "broadcast": addr.broadcast})
        out.append(rec)
    return out, []


def routes() -> tuple[list[dict[str, Any]], list[str]]:
    """Return the IPv4 and IPv6 routing tables (main tables, from /proc/net)."""
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        lines = procfs.read_text(os.path.join(procfs.PROC, "net", "route")).splitlines()[1:]
    except OSError as err:
        problems.append(f"routes (IPv4): {procfs.error_text(err)}")
        lines = []
    for line in lines:
        f = line.split()
        if len(f) < 11:
            continue
        flags = int(f[3], 16)
        out.append({"family": "inet", "interface": f[0], "destination": _ip4(f[1]),
                    "gateway": _ip4(f[2]), "netmask": _ip4(f[7]), "metric": int(f[6]),
                    "flags": _flags(flags), "mtu": int(f[8])})
    try:
        lines = procfs.read_text(os.path.join(procfs.PROC, "net", "ipv6_route")).splitlines()
    except OSError as err:
        problems.append(f"routes (IPv6): {procfs.error_text(err)}")
        lines = []
    for line in lines:
        f = line.split()
        if len(f) < 10:
            continue
        out.append({"family": "inet6", "interface": f[9],
                    "destination": f"{_ip6(f[0])}/{int(f[1], 16)}",
                    "source": f"{_ip6(f[2])}/{int(f[3], 16)}", "gateway": _ip6(f[4]),
                    "metric": int(f[5], 16), "flags": _flags(int(f[8], 16))})
    return out, problems


def _ip4(hexle: str) -> str:
    return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(hexle, 16)))


def _ip6(hexbe: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hexbe))


def _flags(value: int) -> str:
    return "".join(c for bit, c in _RTF_FLAGS.items() if value & bit)


def neighbours(run_ip: Callable[[list[str]], tuple[str | None, str | None]] | None
               ) -> tuple[list[dict[str, Any]], list[str]]:
    """Return the ARP (/proc/net/arp) and NDP (``ip -j -6 neigh``) tables.

    run_ip runs ``ip`` with the given arguments and returns (stdout, error);
    None when iproute2 is not installed (IPv6 neighbours are then reported missing).
    """
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        lines = procfs.read_text(os.path.join(procfs.PROC, "net", "arp")).splitlines()[1:]
    except OSError as err:
        problems.append(f"neighbours (IPv4): {procfs.error_text(err)}")
        lines = []
    for line in lines:
        f = line.split()
        if len(f) >= 6:
            out.append({"family": "inet", "address": f[0], "lladdr": f[3],
                        "flags": f[2], "interface": f[5]})
    if run_ip is None:
        problems.append("neighbours (IPv6): iproute2 `ip` not found; the NDP table is "
                        "only readable through netlink")
        return out, problems
    text, error = run_ip(["-j", "-6", "neigh", "show"])
    if error:
        problems.append(f"neighbours (IPv6): {error}")
        return out, problems
    try:
        entries = json.loads(text or "[]")
    except ValueError:
        problems.append("neighbours (IPv6): `ip -j` output is not JSON")
        return out, problems
    for entry in entries if isinstance(entries, list) else []:
        out.append({"family": "inet6", "address": entry.get("dst"),
                    "lladdr": entry.get("lladdr"), "interface": entry.get("dev"),
                    "state": entry.get("state"), "router": "router" in entry})
    return out, problems


def resolver() -> tuple[dict[str, Any], list[str]]:
    """Return the resolver configuration files (bounded) and the parsed nameservers."""
    doc: dict[str, Any] = {"files": {}, "nameservers": [], "search": []}
    problems: list[str] = []
    for name in RESOLVER_FILES:
        file_path = os.path.join(ETC, name)
        try:
            text = procfs.read_text(file_path, RESOLVER_MAX_BYTES)
        except OSError as err:
            doc["files"][file_path] = None
            if name == "resolv.conf":
                problems.append(f"resolver: {file_path}: {procfs.error_text(err)}")
            continue
        doc["files"][file_path] = text
        if name == "resolv.conf":
            for line in text.splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    doc["nameservers"].append(words[1])
                elif words and words[0] in ("search", "domain"):
                    doc["search"] += words[1:]
    return doc, problems
