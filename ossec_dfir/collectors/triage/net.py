"""Network state for the triage collector: sockets, interfaces, routes, neighbours, DNS.

Each function returns records (dicts) and a list of problems; it never raises
for a missing or unreadable source. Routes and the IPv4 neighbour table come
from /proc; IPv6 neighbours need netlink, read through ``ip -j neigh`` when
iproute2 is installed.
"""
from __future__ import annotations

import json
import os
import re
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
    problems: list[str] = []
    inet: list[dict[str, Any]] = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        inet += _table(pid, proto, problems, lambda line, proto=proto: _inet_line(proto, line),
                       optional=True)
    # The unix table is read and parsed on its own: whatever its names hold, the
    # inet tables above never depend on it.
    unix = _unix_records(pid, problems)
    for rec in inet:
        rec["netns"] = netns
    for rec in unix:
        rec["netns"] = netns
    return inet, unix, problems


def _table(pid: int | str, name: str, problems: list[str],
           parse: Callable[[str], dict[str, Any] | None],
           optional: bool = False) -> list[dict[str, Any]]:
    """Read ``/proc/PID/net/<name>`` and parse it line by line (header skipped)."""
    try:
        lines = procfs.read_text(procfs.path(pid, "net", name), 64 << 20).split("\n")
    except OSError as err:
        if not optional or os.path.exists(os.path.join(procfs.PROC, "self", "net", name)):
            problems.append(f"sockets ({name}): {procfs.error_text(err)}")
        return []
    return procfs.parse_lines((line for line in lines[1:] if line.strip()), parse,
                              f"sockets ({name})", problems)


def _inet_line(proto: str, line: str) -> dict[str, Any]:
    rec = _inet_record(proto, line.split())
    if rec is None:
        raise ValueError("not a socket line")
    return rec


# One line of /proc/net/unix as the kernel prints it ("%pK: %08X %08X %08X %04X %02X
# %5lu" then " path"). A socket's name is printed raw and may hold a newline.
_UNIX_LINE = re.compile(rb"([0-9a-f]{8,16}): ([0-9A-F]{8}) ([0-9A-F]{8}) ([0-9A-F]{8}) "
                        rb"([0-9A-F]{4}) ([0-9A-F]{2}) +([0-9]{1,20})(?: (.*))?", re.S)


def _unix_records(pid: int | str, problems: list[str]) -> list[dict[str, Any]]:
    """Parse ``/proc/PID/net/unix`` from bytes, split on newlines only.

    A line that is not a socket line continues the name of the socket before it
    (names may hold newlines: the record gets ``name_has_newline``); one that
    continues nothing is malformed and costs only itself. Names keep their
    bytes (escaped as ``\\xNN`` when written). A name may also hold a whole
    line that looks real: records sharing an inode are flagged ``inode_conflict``.
    """
    try:
        data = procfs.read_bytes(procfs.path(pid, "net", "unix"), 64 << 20)
    except OSError as err:
        problems.append(f"sockets (unix): {procfs.error_text(err)}")
        return []
    lines = data.split(b"\n")
    if lines and lines[0].startswith(b"Num "):
        lines = lines[1:]
    if lines and lines[-1] == b"":
        lines.pop()
    out: list[dict[str, Any]] = []

    def parse(line: bytes) -> dict[str, Any] | None:
        m = _UNIX_LINE.fullmatch(line)
        if m is None:
            if out and out[-1]["path"] is not None:
                out[-1]["path"] += "\n" + line.decode("utf-8", "surrogateescape")
                out[-1]["name_has_newline"] = True
                return None
            raise ValueError("not a unix socket line")
        flags, kind, state, inode, name = (int(m[4], 16), int(m[5], 16), int(m[6], 16),
                                           int(m[7]), m[8])
        rec = {"inode": inode,
               "path": name.decode("utf-8", "surrogateescape") if name is not None else None,
               "type": _UNIX_TYPES.get(kind, m[5].decode()),
               "state": _UNIX_STATES.get(state, m[6].decode()),
               "listening": bool(flags & 0x10000)}
        out.append(rec)
        return None

    procfs.parse_lines(lines, parse, "sockets (unix)", problems)
    seen: dict[int, int] = {}
    for rec in out:
        seen[rec["inode"]] = seen.get(rec["inode"], 0) + 1
    conflicts = [rec for rec in out if seen[rec["inode"]] > 1]
    for rec in conflicts:
        rec["inode_conflict"] = True
    if conflicts:
        problems.append(f"sockets (unix): {len(conflicts)} records share an inode (a name "
                        "holding a forged line?); flagged inode_conflict")
    return out


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
    """Set owners [{pid, fd}] (by pid, then fd) and pid, fd (the lowest pid's) on socket
    records from the fd walk.

    A socket shared after fork has several owners, found in whatever order the
    walk (split between processes when there are many) met them; the lowest pid,
    normally the one that opened it before forking, is named the same way every time.
    """
    for rec in records:
        held = sorted(owners.get(rec["inode"], []))
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
    def route4(line: str) -> dict[str, Any]:
        f = line.split()
        return {"family": "inet", "interface": f[0], "destination": _ip4(f[1]),
                "gateway": _ip4(f[2]), "netmask": _ip4(f[7]), "metric": int(f[6]),
                "flags": _flags(int(f[3], 16)), "mtu": int(f[8])}
    out += procfs.parse_lines((ln for ln in lines if ln.strip()), route4, "routes (IPv4)",
                              problems)
    try:
        lines = procfs.read_text(os.path.join(procfs.PROC, "net", "ipv6_route")).splitlines()
    except OSError as err:
        problems.append(f"routes (IPv6): {procfs.error_text(err)}")
        lines = []
    def route6(line: str) -> dict[str, Any]:
        f = line.split()
        return {"family": "inet6", "interface": f[9],
                "destination": f"{_ip6(f[0])}/{int(f[1], 16)}",
                "source": f"{_ip6(f[2])}/{int(f[3], 16)}", "gateway": _ip6(f[4]),
                "metric": int(f[5], 16), "flags": _flags(int(f[8], 16))}
    out += procfs.parse_lines((ln for ln in lines if ln.strip()), route6, "routes (IPv6)",
                              problems)
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
    def arp(line: str) -> dict[str, Any]:
        f = line.split()
        return {"family": "inet", "address": f[0], "lladdr": f[3], "flags": f[2],
                "interface": f[5]}
    out += procfs.parse_lines((ln for ln in lines if ln.strip()), arp, "neighbours (IPv4)",
                              problems)
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
