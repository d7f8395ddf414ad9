"""The request parser: execd's argv and Wazuh's JSON, and everything hostile."""
from __future__ import annotations

import ipaddress
import json
import os

import pytest

from ossec_dfir.errors import BadRequest
from ossec_dfir.ar.request import (check_keys_message, from_ossec_argv, from_wazuh_json,
    parse_check_keys_answer, parse_ip, read_line)


def wazuh_line(srcip="203.0.113.5", command="add", **alert_extra) -> bytes:
    alert = {"timestamp": "2026-11-29T01:00:00.000+0000", "rule": {"id": "5712", "level": 10},
             "agent": {"id": "025", "name": "web1"}, "id": "1764376501.123456",
             "data": {"srcip": srcip, "srcuser": "root"} if srcip is not None else {},
             **alert_extra}
    msg = {"version": 1, "origin": {"name": "node01", "module": "wazuh-execd"},
           "command": command, "parameters": {"extra_args": ["-a", "b"], "alert": alert,
                                              "program": "active-response/bin/dfir-pcap"}}
    return (json.dumps(msg) + "\n").encode()


def test_ossec_alert_argv_as_verified_on_ossec_4_2():
    req = from_ossec_argv("dfir-pcap", ["add", "-", "203.0.113.5", "1795912782.2", "5710",
                                        "/var/log/auth.log", "-"])
    assert req.action == "add" and req.user is None
    assert req.srcip == ipaddress.ip_address("203.0.113.5")
    assert (req.alert_id, req.rule_id) == ("1795912782.2", "5710")
    assert req.location == "/var/log/auth.log" and req.filename is None
    assert not req.manual and req.key == "203.0.113.5"


def test_ossec_manual_form_from_agent_control():
    req = from_ossec_argv("dfir-pcap", ["add", "-", "203.0.113.5", "(from_the_server)",
                                        "(no_rule_id)"])
    assert req.manual and req.alert_id is None and req.rule_id is None
    assert str(req.srcip) == "203.0.113.5"


def test_ossec_location_with_spaces_takes_several_slots():
    args = ["add", "root", "198.51.100.7", "1764376501.123456", "5712", "(web1)",
            "1.2.3.4->/var/log/secure", "/etc/passwd"]
    req = from_ossec_argv("dfir-pcap", args)
    assert req.location == "(web1) 1.2.3.4->/var/log/secure"
    assert req.filename == "/etc/passwd"
    assert req.user == "root"


@pytest.mark.parametrize("text,expected", [
    ("::ffff:203.0.113.5", "203.0.113.5"), ("2001:db8::1", "2001:db8::1"),
    ("2001:DB8:0:0::1", "2001:db8::1"), ("127.0.0.2", "127.0.0.2")])
def test_ips_are_normalised(text, expected):
    assert str(parse_ip(text)) == expected


def test_ipv6_key_has_no_colons():
    req = from_ossec_argv("dfir-pcap", ["add", "-", "2001:db8::1", "-", "-"])
    assert req.key == "2001_db8__1"


HOSTILE_SRCIPS = ["1.2.3.4;id", "$(touch${IFS}/tmp/pwn)", "../../etc/passwd", "--help", "-x",
                  "example.com", "localhost", "1.2.3", "01.2.3.4", "1.2.3.4 ", " 1.2.3.4",
                  "fe80::1%eth0", "1.2.3.4/24", "1.2.3.4\x00", "1.2.3.4\n5.6.7.8",
                  "...", "A" * 65536, "١.٢.٣.٤", "0x7f.0.0.1"]


@pytest.mark.parametrize("srcip", HOSTILE_SRCIPS)
def test_hostile_srcip_refused_ossec(srcip):
    with pytest.raises(BadRequest):
        from_ossec_argv("dfir-pcap", ["add", "-", srcip, "-", "-"])


@pytest.mark.parametrize("srcip", HOSTILE_SRCIPS + [5, None.__class__.__name__, ["1.2.3.4"]])
def test_hostile_srcip_refused_wazuh(srcip):
    with pytest.raises(BadRequest):
        from_wazuh_json("dfir-pcap", wazuh_line(srcip))


@pytest.mark.parametrize("args", [
    ["start", "-", "1.2.3.4"], ["add"], [], ["add", "--help", "1.2.3.4"],
    ["add", "-x", "1.2.3.4"], ["add", "root;id", "1.2.3.4"], ["add", "-", "1.2.3.4", "12;3"],
    ["add", "-", "1.2.3.4", "1.2", "57a"], ["add", "-", "1.2.3.4", "-", "-", "x\x00y"],
    ["add", "-", "1.2.3.4"] + ["x"] * 100, ["add", "-", "1.2.3.4", "-", "-", "A" * 65536],
])
def test_hostile_argv_refused(args):
    with pytest.raises(BadRequest):
        from_ossec_argv("dfir-pcap", args)


def test_unusable_filename_is_dropped_with_its_reason_not_the_request():
    req = from_ossec_argv("dfir-pcap", ["add", "-", "1.2.3.4", "-", "-", "loc",
                                        "/a/../../etc/shadow"])
    assert str(req.srcip) == "1.2.3.4" and req.location == "loc"
    assert req.filename is None and "normalised" in req.filename_refused


def test_wazuh_message_parsed():
    req = from_wazuh_json("dfir-pcap", wazuh_line())
    assert req.protocol == "wazuh" and req.action == "add"
    assert str(req.srcip) == "203.0.113.5" and req.rule_id == "5712"
    assert req.alert_id == "1764376501.123456" and req.agent_id == "025"
    assert req.extra_args == ("-a", "b") and req.user == "root"


def test_wazuh_without_srcip_is_a_host_request():
    req = from_wazuh_json("dfir-triage", wazuh_line(None))
    assert req.srcip is None and req.key == "host"


def test_wazuh_syscheck_path_is_the_filename():
    req = from_wazuh_json("dfir-yara", wazuh_line(syscheck={"path": "/var/www/shell.php"}))
    assert req.filename == "/var/www/shell.php"


@pytest.mark.parametrize("line", [
    b"", b"\n", b"{\"version\":1", b"{\"version\":1}\n", b"\xff\xfe{}\n", b"[1,2]\n",
    b"{\"command\":\"add\",\"parameters\":{\"alert\":{\"data\":{\"srcip\":\"1.2.3.4\\u0000\"}}}}\n",
    b"{\"command\":\"rm\",\"parameters\":{}}\n",
    b"{\"command\":\"add\",\"parameters\":{\"alert\":{\"rule\":{\"id\":\"1;id\"}}}}\n",
    b"{\"command\":\"add\",\"parameters\":{\"alert\":\"x\"}}\n",
    b"{\"command\":\"add\",\"parameters\":{\"extra_args\":\"-rf\"}}\n",
    b"[" * 100000 + b"\n",
])
def test_bad_wazuh_input_refused(line):
    with pytest.raises(BadRequest):
        from_wazuh_json("dfir-pcap", line)


def test_wazuh_truncated_json_refused():
    with pytest.raises(BadRequest):
        from_wazuh_json("dfir-pcap", wazuh_line()[:-20])


def test_read_line_reads_one_line_and_not_to_eof():
    r, w = os.pipe()
    os.write(w, b'{"a":1}\n')  # execd keeps the pipe open: no EOF follows
    try:
        assert read_line(r, timeout_s=2) == b'{"a":1}\n'
    finally:
        os.close(r)
        os.close(w)


def test_read_line_is_bounded_in_size_and_time():
    r, w = os.pipe()
    os.write(w, b"x" * 5000)
    try:
        with pytest.raises(BadRequest):
            read_line(r, max_bytes=4096, timeout_s=2)
        with pytest.raises(BadRequest, match="within"):
            read_line(r, max_bytes=1 << 20, timeout_s=0.2)
    finally:
        os.close(r)
        os.close(w)


def test_check_keys_exchange_format():
    msg = json.loads(check_keys_message("dfir-pcap", ["203.0.113.5"]))
    assert msg == {"version": 1, "origin": {"name": "dfir-pcap", "module": "active-response"},
                   "command": "check_keys", "parameters": {"keys": ["203.0.113.5"]}}
    assert parse_check_keys_answer(b'{"command":"abort"}\n') == "abort"
    assert parse_check_keys_answer(b'{"command":"continue"}\n') == "continue"
    with pytest.raises(BadRequest):
        parse_check_keys_answer(b'{"command":"rm -rf"}\n')
