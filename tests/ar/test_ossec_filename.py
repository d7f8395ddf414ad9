"""The alert's filename from OSSEC's argv: escaped by analysisd, split by execd.

The pipeline is reproduced byte for byte: os_shell_escape (checked against the
C source), analysisd's snprintf(.., 1024, ..) of the execd message (local and
forwarded to an agent), remoted's re-framing, and execd's split on single
spaces into at most 29 fields.
"""
from __future__ import annotations

import hashlib
import os
import re
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ossec_dfir.ar.ossec_filename import (ANALYSISD_MSG_MAX, EXECD_MAX_FIELDS,
    OSSEC_SHELL_ESCAPES, split_extra, unescape)
from ossec_dfir.ar.request import from_ossec_argv, from_wazuh_json, incident_key
from tests.ar.test_request import wazuh_line

OSSEC_TARBALL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "ossec"

# os_shell_escape's list as written in src/shared/string_op.c (OSSEC 4.x).
C_SHELL_ESCAPES = ['\\', '"', "'", ' ', '\t', ';', '`', '>', '<', '|', '#',
                   '*', '[', ']', '{', '}', '&', '$', '!', ':', '(', ')']


def os_shell_escape(src: bytes) -> bytes:
    """Twin of OSSEC's os_shell_escape: a backslash before each listed byte."""
    escapes = {ord(c) for c in C_SHELL_ESCAPES}
    out = bytearray()
    for byte in src:
        if byte in escapes:
            out += b"\\"
        out.append(byte)
    return bytes(out)


def analysisd_message(name: str, filename: bytes | None, location: str = "syscheck",
                      user: str = "-", ip: str = "-", alert: str = "1795912782.2",
                      rule: str = "554", forwarded: bool = False,
                      agent_id: str = "(null)") -> bytes:
    """Return what execd receives (src/analysisd/alerts/exec.c, src/remoted/ar-forward.c)."""
    escaped = os_shell_escape(filename) if filename is not None else None
    loc = location.encode()
    body = b" ".join([name.encode(), user.encode(), ip.encode(), alert.encode(),
                      rule.encode(), loc])
    if not forwarded:
        msg = (body + b" " + (escaped if escaped is not None else b"-"))[:1023]
        return msg
    # glibc prints a NULL %s as "(null)"; the prefix names the location again.
    prefix = (b"" if loc.startswith(b"(") else b"(local_source) ") + loc + b" NRN " + \
        agent_id.encode() + b" "
    msg = (prefix + body + b" " + (escaped if escaped is not None else b"(null)"))[:1023]
    # remoted: after the first ')' and the source IP, the flags and agent id.
    rest = msg[len(prefix):]
    sent = (b"#!-execd " + rest)[:1023]
    return sent[len(b"#!-execd "):]


def execd_argv(message: bytes, action: str = "add") -> list[str]:
    """Return argv[1:] as execd builds it (split on each space, 29 fields at most)."""
    _name, _, rest = message.partition(b" ")
    fields = rest.split(b" ")[:EXECD_MAX_FIELDS]
    return [action] + [os.fsdecode(f) for f in fields]


def through_ossec(filename: bytes | None, command: str = "dfir-yara-file", **kw):
    return from_ossec_argv(command, execd_argv(analysisd_message(command + "0", filename,
                                                                 **kw)))


def test_escape_list_matches_the_module():
    assert "".join(C_SHELL_ESCAPES) == OSSEC_SHELL_ESCAPES


def test_escape_list_matches_the_ossec_source():
    tarballs = sorted(OSSEC_TARBALL_DIR.glob("ossec-hids-*.tar.gz"))
    if not tarballs:
        pytest.skip(f"no OSSEC source tarball in {OSSEC_TARBALL_DIR}")
    with tarfile.open(tarballs[0]) as tar:
        def source(suffix: str) -> str:
            member = next(m for m in tar.getmembers() if m.name.endswith(suffix))
            return tar.extractfile(member).read().decode()
        string_op = source("src/shared/string_op.c")
        exec_c = source("src/analysisd/alerts/exec.c")
        execd_h = source("src/os_execd/execd.h")
    body = re.search(r"char shell_escapes\[\] = \{(.*?)\};", string_op, re.S).group(1)
    listed = [eval(lit) for lit in re.findall(r"'(?:\\.|[^'])'", body)]  # C char literals
    assert listed == C_SHELL_ESCAPES
    # The message format and length that the parser depends on.
    assert '"%s %s %s %ld.%ld %d %s %s"' in exec_c
    assert "char exec_msg[OS_SIZE_1024 + 1];" in exec_c
    assert exec_c.count("snprintf(exec_msg, OS_SIZE_1024,") == 3
    assert re.search(r"#define MAX_ARGS\s+32\b", execd_h)
    assert ANALYSISD_MSG_MAX == 1023 and EXECD_MAX_FIELDS == 32 - 3


NAMES = [
    b"/var/www/a b.php", b"/var/www/x$(id).php", b"/tmp/it's \"quoted\".php",
    b"/tmp/back\\slash", b"/tmp/star*.php", b"/tmp/c:d", b"/tmp/a   b", b"/tmp/tab\there",
    b"/tmp/\xff\xfe non-utf8.bin", b"/tmp/a\\ b", b"/tmp/ends with space ",
    b"/tmp/ending\\", b"/tmp/[x]{y}&!#|<>;`~", b"/tmp/dir /file", b"/tmp/ \\\\ \\ ",
    b"/tmp/\xc3\xa9t\xc3\xa9 caf\xc3\xa9", b"/tmp/-", b"/tmp/(null)", b"/tmp/new\nline\r\x1b[31m",
]
LOCATIONS = [("syscheck", False), ("(web1) 10.0.0.5->/var/log/x", False),
             ("(web1) 10.0.0.5->syscheck", True), ("syscheck", True),
             ("/var/log/my app.log", False)]


@pytest.mark.parametrize("location,forwarded", LOCATIONS)
@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_names_arrive_exactly(name, location, forwarded):
    req = through_ossec(name, location=location, forwarded=forwarded)
    assert req.filename_refused is None
    assert os.fsencode(req.filename) == name
    assert req.location == location


@pytest.mark.parametrize("location,forwarded", LOCATIONS)
def test_no_filename(location, forwarded):
    req = through_ossec(None, location=location, forwarded=forwarded)
    assert req.filename is None and req.filename_refused is None
    assert req.location == location


def test_agent_location_and_srcip_alert_without_filename():
    req = from_ossec_argv("dfir-pcap", execd_argv(analysisd_message(
        "dfir-pcap600", None, location="(web1) 10.0.0.5->/var/log/auth.log",
        ip="203.0.113.5", rule="5710", forwarded=True)))
    assert str(req.srcip) == "203.0.113.5" and req.rule_id == "5710"
    assert req.location == "(web1) 10.0.0.5->/var/log/auth.log"
    assert req.filename is None and req.filename_refused is None
    assert req.key == "203.0.113.5"


def test_names_of_one_kilobyte_are_refused_as_cut():
    name = b"/var/www/" + b"a" * 1015
    assert len(name) == 1024
    req = through_ossec(name)
    assert req.filename is None and "cut" in req.filename_refused
    # Spaces double nothing but take slots: 40 of them exceed execd's 29 fields.
    req = through_ossec(b"/tmp/" + b"x " * 40)
    assert req.filename is None and "cut" in req.filename_refused


def test_long_names_well_below_the_cut_are_kept():
    name = b"/var/www/" + b"b" * 800
    req = through_ossec(name, location="(web1) 10.0.0.5->syscheck", forwarded=True)
    assert os.fsencode(req.filename) == name


@pytest.mark.parametrize("forwarded", [False, True])
@pytest.mark.parametrize("fill", [b"c", b"$", b" ", b"\\"])
def test_around_the_cut_never_a_wrong_name(forwarded, fill):
    # Every length around the limit: either exactly the name, or no name.
    kept = 0
    for size in range(700, 1100, 3):
        name = b"/srv/" + fill * size
        req = through_ossec(name, location="(web1) 10.0.0.5->syscheck", forwarded=forwarded)
        if req.filename is not None:
            assert os.fsencode(req.filename) == name
            kept += 1
        else:
            assert "cut" in req.filename_refused
    assert kept > 0 or fill in (b" ", b"\\", b"$")  # escaped fills double in size


ALPHABET = st.sampled_from([bytes([b]) for b in b"ab/._- \t\\$()'\";:*&|<>#[]{}!`~"]
                           + [b"\xff", b"\xc3\xa9", b"/"])


@settings(max_examples=int(os.environ.get("OSSEC_DFIR_FUZZ_EXAMPLES", "400")), deadline=None)
@given(st.lists(ALPHABET, min_size=1, max_size=300).map(b"".join),
       st.sampled_from(LOCATIONS))
def test_any_name_is_exact_or_refused(tail, where):
    name = b"/" + tail
    req = through_ossec(name, location=where[0], forwarded=where[1])
    if req.filename is not None:
        assert os.fsencode(req.filename) == name
    else:
        assert req.filename_refused  # a name is never silently lost
    if len(os_shell_escape(name)) < 600 and req.filename is None:
        # Short names are only ever refused as paths (dot components), not as text.
        assert "normalised" in req.filename_refused


@pytest.mark.parametrize("slots,why", [
    (["syscheck", "/tmp/a\\b"], "does not escape"),
    (["syscheck", "/tmp/a\\"], "lone backslash"),
    (["syscheck", "/tmp/x$(id)"], "unescaped '$'"),
    (["syscheck", "/tmp/a;b"], "unescaped ';'"),
    (["syscheck", "/tmp/a\\", "\\"], "lone backslash"),
    (["syscheck", "relative\\ name"], "absolute"),
    (["syscheck", "/tmp/../etc/shadow"], "normalised"),
    (["/tmp/a\\", "b"], "no location slot"),
])
def test_text_ossec_cannot_have_written_is_refused(slots, why):
    req = from_ossec_argv("dfir-yara-file", ["add", "-", "-", "1795912782.2", "554"] + slots)
    assert req.filename is None and why in req.filename_refused


def test_unescape_is_the_inverse_of_the_twin():
    for name in NAMES:
        assert os.fsencode(unescape(os.fsdecode(os_shell_escape(name)))) == name
    with pytest.raises(ValueError):
        unescape("a\\")


def test_split_keeps_a_single_slot_as_location():
    assert split_extra("x", ["add", "-", "-", "-", "-", "/var/log/x"]) == \
        ("/var/log/x", None, None)


def test_wazuh_syscheck_path_is_not_unescaped():
    req = from_wazuh_json("dfir-yara-file", wazuh_line(None, syscheck={
        "path": "/var/www/a b$(id)\\x.php"}))
    assert req.filename == "/var/www/a b$(id)\\x.php" and req.filename_refused is None
    req = from_wazuh_json("dfir-yara-file", wazuh_line(None, syscheck={"path": "x/../y"}))
    assert req.filename is None and "absolute" in req.filename_refused


def test_incident_key_is_what_the_alert_is_about():
    name = b"/tmp/\xff a$(id).php"
    req = through_ossec(name)
    assert req.key == "file-" + hashlib.sha256(name).hexdigest()[:16]
    assert incident_key(None, None) == "host"
    with_ip = through_ossec(name, ip="203.0.113.7")
    assert with_ip.key == "203.0.113.7"
    assert through_ossec(None).key == "host"
    # Round trip through the job record (JSON) keeps the bytes and the key.
    from ossec_dfir.ar.request import Request
    from ossec_dfir.evidence.store import canonical_json
    import json
    back = Request.from_record(json.loads(canonical_json(req.to_record())))
    assert os.fsencode(back.filename) == name and back.key == req.key
