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
    ["start", "-", "1.2.3.4"], ["add"], [], ["add", "-", "1.2.3.4"] + ["x"] * 100,
    ["add", "-", "1.2.3.4;id"], ["add", "root", "--help"],
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
    b"{\"command\":\"add\",\"parameters\":{\"alert\":\"x\"}}\n",
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


# -- issue 12 item 3: fields the collection does not act on never refuse -----------------

@pytest.mark.parametrize("args,field,value", [
    (["add", "--help", "203.0.113.5"], "user", "--help"),
    (["add", "adm!n", "203.0.113.5"], "user", "adm!n"),
    (["add", "root;id", "203.0.113.5"], "user", "root;id"),
    (["add", "r\x1b[2J", "203.0.113.5"], "user", "r\\x1b[2J"),
    (["add", "-", "203.0.113.5", "12;3"], "alert_id", None),
    (["add", "-", "203.0.113.5", "1.2", "57a"], "rule_id", None),
    (["add", "-", "203.0.113.5", "-", "-", "x\x00y"], "location", "x\\x00y"),
    (["add", "-", "203.0.113.5", "-", "-", "A" * 65536], "location", "A" * 4096),
    (["add", "-", "203.0.113.5", "-", "-", "l\udcffoc", "-"], "location", "l\\xffoc"),
])
def test_unused_argv_fields_are_kept_escaped_with_a_note(args, field, value):
    req = from_ossec_argv("dfir-pcap", args)
    assert str(req.srcip) == "203.0.113.5"
    assert getattr(req, field) == value
    assert req.notes and all(n.startswith(field) for n in req.notes)
    rec = req.to_record()
    assert rec["notes"] == list(req.notes)
    json.dumps(rec).encode("ascii")


def test_an_unusable_filename_is_noted_for_the_entry_point_to_judge():
    req = from_ossec_argv("dfir-files", ["add", "-", "203.0.113.5", "-", "-", "loc",
                                         "/a/../../etc/shadow"])
    assert req.filename is None and "normalised" in req.filename_refused
    assert req.location == "loc"
    assert any(n.startswith("filename:") for n in req.notes)


def test_wazuh_alert_fields_not_acted_on_never_refuse():
    alert = {"timestamp": "\x1b]0;x\x07", "rule": {"id": "1;id"}, "id": 7,
             "agent": {"id": "0x1", "name": "we\nb1"}, "location": "\u202e\x00gol",
             "data": {"srcip": "203.0.113.5", "srcuser": "adm!n"},
             "syscheck": {"path": "/var/www/a\x1bb.php"}}
    msg = {"command": "add", "parameters": {"alert": alert, "extra_args": "-rf"}}
    line = json.dumps(msg).encode().replace(b"a\\u001bb", b"a\xffb") + b"\n"
    req = from_wazuh_json("dfir-pcap", line)
    assert str(req.srcip) == "203.0.113.5"
    assert req.user == "adm!n"
    assert (req.rule_id, req.alert_id, req.agent_id) == (None, None, None)
    assert req.agent_name == "we\\x0ab1" and req.location == "\\u202e\\x00gol"
    assert req.alert_timestamp == "\\x1b]0;x\\x07" and req.extra_args == ()
    assert req.filename == "/var/www/a\udcffb.php" and req.filename_refused is None
    assert not req.manual
    fields = {n.split(":")[0] for n in req.notes}
    assert fields >= {"parameters.alert.rule.id", "parameters.alert.id", "user",
                      "parameters.alert.agent.id", "parameters.alert.agent.name",
                      "parameters.alert.location", "parameters.alert.timestamp",
                      "parameters.extra_args"}
    line = json.dumps({**msg, "parameters": {"alert": {
        **alert, "syscheck": {"path": "/var/www/a\x1bb.php"}}}}).encode() + b"\n"
    req = from_wazuh_json("dfir-pcap", line)
    # a control character is valid in a file name: kept, so the file can be scanned
    assert req.filename == "/var/www/a\x1bb.php" and req.filename_refused is None
