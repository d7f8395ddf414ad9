"""Pseudo-file reads: a multi-record seq file is read to the end, not one page."""
from __future__ import annotations

import socket

from ossec_dfir import procfs
from ossec_dfir.collectors.triage import net as _triage_net


def test_socket_tables_with_more_than_a_page_of_sockets():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.6", 0))
    listener.listen(512)
    clients, accepted = [], []
    try:
        for _ in range(300):  # /proc/net/tcp lines are 150 bytes: 300 is ~11 pages
            c = socket.create_connection(listener.getsockname())
            clients.append(c)
            accepted.append(listener.accept()[0])
        text = procfs.read_text("/proc/self/net/tcp", 64 << 20)
        assert len(text) > 300 * 150
        inet, _, _ = _triage_net.socket_tables()
        client_side = {c["local_port"] for c in inet if c["remote_ip"] == "127.0.0.6"}
        assert {c.getsockname()[1] for c in clients} <= client_side
    finally:
        for s in clients + accepted + [listener]:
            s.close()
