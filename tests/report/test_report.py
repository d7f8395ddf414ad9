"""The incident report: built from the directory alone, hostile evidence made harmless."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import stat
from html.parser import HTMLParser

import pytest

from ossec_dfir import hostinfo
from ossec_dfir.cli.main import main
from ossec_dfir.collectors.base import build_params, get_collector
from ossec_dfir.config import Profile, Step
from ossec_dfir.report.build import build_report, render_html, render_markdown
from ossec_dfir.ar.runner import Runner
from ossec_dfir.evidence.verify import verify

from tests.conftest import make_request

EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(2)>|`tick`|\nsecond | line'
BIG = "B" * 100_000
URL = "http://evil.example/payload.js"
CSP_META = ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            'style-src \'unsafe-inline\'">')
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "nav",
                "a", "p", "div", "table", "thead", "tbody", "tr", "th", "td", "pre"}
ALLOWED_ATTRS = {"lang", "charset", "http-equiv", "content", "name", "id", "class", "href"}
SKIP_REASON = "no srcip in the alert: the capture filter is built only from it"


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _write(incident, collector: str, relpath: str, data: bytes, **meta) -> None:
    with incident.writer(collector, relpath, meta=meta) as w:
        w.write(data)


def _proc(pid: int, ppid: int, name: str) -> dict:
    return {"pid": pid, "ppid": ppid, "name": name, "exe": f"/tmp/{name}",
            "cmdline": [name, EVIL], "username": "www-data",
            "create_time": "2026-11-29T01:00:00Z"}


def _hostile_evidence(incident) -> None:
    """Write collector files in the documented formats, full of attacker text."""
    conn = {"proto": "tcp", "local_ip": "10.0.0.5", "local_port": 4444,
            "remote_ip": "203.0.113.5", "remote_port": 51000, "status": "ESTABLISHED",
            "owners": [{"pid": 4242, "fd": 3}], "pid": 4242, "fd": 3}
    suspect = dict(_proc(4242, 4000, EVIL), srcip="203.0.113.5", connections=[conn],
                   parents=[_proc(4000, 1, "apache2"), _proc(1, 0, "systemd")],
                   children=[_proc(4300 + i, 4242, f"sh{i}") for i in range(40)])
    _write(incident, "triage", "triage/01/suspects.jsonl", _jsonl([suspect]))
    _write(incident, "triage", "triage/01/summary.json", json.dumps(
        {"srcip": "203.0.113.5", "suspects_status": "1 process with a connection"}).encode())
    # invalid UTF-8 smuggled as lone surrogates in JSON, a bidi override, 100 KB
    matches = [{"type": "file", "rule": "webshell_" + EVIL, "namespace": "webshell",
                "meta": {"severity": "high", "description": EVIL}, "tags": [],
                "path": "/var/www/\udc80\udcff\u202egnp.php", "sha256": "ab" * 32,
                "strings": [{"id": "$a", "offset": 0, "data_ascii": BIG}]}]
    matches += [{"type": "process", "rule": f"rule{i}", "namespace": "ns", "pid": i,
                 "name": "`x`|y", "meta": {}} for i in range(120)]
    _write(incident, "yara", "yara/01/matches.jsonl", _jsonl(matches))
    _write(incident, "yara", "yara/01/core.4242", b"\x7fELF" + b"\2" * 60)
    _write(incident, "yara", "yara/01/summary.json",
           json.dumps({"files": {"scanned": 3, "matched": 1}}).encode())
    raw_line = b'{"path": "/tmp/\xff\xfe<script>x</script>|a", "source": "search", "size": 5}\n'
    _write(incident, "files", "files/01/results.jsonl",
           raw_line + _jsonl([{"path": f"/srv/{EVIL}", "sha256": "cd" * 32,
                               "regex_match": {"offset": 1, "text": BIG}}]))
    _write(incident, "pcap", "pcap/01/capture.pcap", b"\xd4\xc3\xb2\xa1" + b"\0" * 20)
    _write(incident, "pcap", "pcap/01/capture.json", json.dumps(
        {"backend": "native", "interface": "any", "filter": "host 203.0.113.5",
         "packets_written": 10, "bytes_written": 900, "dropped_by_kernel": 7,
         "stop_reason": EVIL}).encode())
    _write(incident, "pcap", "pcap/01/summary.json", json.dumps({
        "directions": {"from_srcip": {"packets": 6, "bytes": 500},
                       "to_srcip": {"packets": 4, "bytes": 400}},
        "flows": [{"proto": "tcp", "src": "203.0.113.5", "sport": 51000, "dst": "10.0.0.5",
                   "dport": 4444, "packets": 10, "bytes": 900}],
        "dns": [{"kind": "query", "questions": [{"name": EVIL + ".evil.example."}]}],
        "tls_sni": [{"server_name": "<b>sni</b>.example"}],
        "http_requests": [{"request_line": f"GET {URL} HTTP/1.1", "host": URL}]}).encode())
    core = "memory/01/processes/4242/core"
    _write(incident, "memory", core, b"\x7fELF" + b"\0" * 60)
    _write(incident, "memory", "memory/01/processes/4242/exe", b"\x7fELF" + b"\1" * 60)
    _write(incident, "memory", "memory/01/host.lime", b"EMiL" + b"\0" * 28,
           format="LiME v1", source="/proc/kcore", ranges=[["0x1000", "0x9fff"]], hole_bytes=0)
    _write(incident, "memory", "memory/01/processes.json", json.dumps([
        {"pid": 4242, "comm": EVIL, "why": ["suspect"], "outcome": "complete",
         "file": core, "sha256": "ef" * 32, "size": 64,
         "exe": {"file": "memory/01/processes/4242/exe", "path": "/tmp/" + EVIL}}]).encode())


@pytest.fixture
def incident(config, store):
    """An incident with a real host step, a real skipped pcap step and hostile evidence."""
    req = make_request("203.0.113.5")
    inc, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    inc.append_trigger(dict(req.to_record(), trigger_id="t1", location=EVIL))
    Runner(config, store, inc, req, "t1").run_profile(
        Profile("t", "", (Step("host", build_params(get_collector("host"), {})),)))
    Runner(config, store, inc, make_request(None), "t2").run_profile(
        Profile("t", "", (Step("pcap", build_params(get_collector("pcap"), {})),)))
    _hostile_evidence(inc)
    yield inc
    inc.close()


class _Tags(HTMLParser):
    """Collect every tag and attribute the browser would see."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs += attrs


def _network_refs(doc: str) -> list[str]:
    parser = _Tags()
    parser.feed(doc)
    assert parser.tags <= ALLOWED_TAGS, parser.tags - ALLOWED_TAGS
    assert {name for name, _ in parser.attrs} <= ALLOWED_ATTRS
    refs = [v or "" for name, v in parser.attrs if name == "href"]
    refs += re.findall(r"(?i)(?:https?:)?//[a-z0-9.-]+", "".join(
        v or "" for name, v in parser.attrs if name != "content"))
    return [r for r in refs if not r.startswith("#")]


def test_html_is_self_contained_and_escapes_evidence(incident):
    assert verify(incident.path).ok
    doc = render_html(build_report(incident.path))
    assert CSP_META in doc
    assert "<script" not in doc.lower() and "<img" not in doc.lower()
    assert "<b>sni" not in doc and html.escape("<b>sni</b>.example") in doc
    assert _network_refs(doc) == []
    assert "@import" not in doc and "url(" not in doc
    doc.encode("utf-8")                       # no lone surrogate left in the output
    assert "\\x80\\xff\\u202e" in doc        # invalid UTF-8 (as \\xNN) and bidi shown, not applied
    assert "\u202e" not in doc
    assert BIG[:1000] not in doc and "more characters" in doc
    assert len(doc) < 1_000_000
    assert "more row(s) left out" in doc       # 121 YARA matches, 50 shown


def test_every_artifact_hash_and_the_skip_reason_appear(incident):
    report = build_report(incident.path)
    doc, md = render_html(report), render_markdown(report)
    files = [e for e in incident.manifest() if e["type"] == "file"]
    assert len(files) >= 14
    for entry in files:
        assert entry["sha256"] in doc and entry["sha256"] in md
        assert entry["sha256"] in {a["sha256"] for a in report["artifacts"]}
    assert html.escape(SKIP_REASON) in doc
    assert "pcap" in [c["collector"] for c in report["collectors"] if c["outcome"] == "skipped"]
    # collectors that never ran say so
    assert any(c["collector"] == "triage" for c in report["collectors"])
    assert "vol -s isf -f" in doc and "readelf -n" in doc
    assert "gdb -c &quot;$I&quot;/yara/01/core.4242" in doc
    assert ("gdb &quot;$I&quot;/memory/01/processes/4242/exe -c "
            "&quot;$I&quot;/memory/01/processes/4242/core") in doc
    assert report["pcap"][0]["capture"]["dropped_by_kernel"] == 7
    suspect = report["suspects"][0]["records"][0]
    assert [p["pid"] for p in suspect["parents"]] == [4000, 1]


def test_collectors_not_run_are_listed_with_a_reason(config, store):
    req = make_request("198.51.100.7")
    inc, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    try:
        Runner(config, store, inc, req, "t").run_profile(
            Profile("t", "", (Step("host", build_params(get_collector("host"), {})),)))
        _write(inc, "memory", "memory/01/processes.json", b"[]")
        why = "no usable memory source (kcore: absent; crash: absent; mem: <refused>)"
        inc.record({"type": "collector", "collector": "memory", "outcome": "partial",
                    "reason": f"host image skipped: {why}", "files": ["memory/01/processes.json"],
                    "summary": {"host_image": {"outcome": "skipped", "reason": why}}})
        report = build_report(inc.path)
    finally:
        inc.close()
    outcomes = {c["collector"]: c for c in report["collectors"]}
    assert outcomes["host"]["outcome"] == "complete"
    for name in ("triage", "pcap", "yara", "files"):
        assert outcomes[name]["outcome"] == "not run" and outcomes[name]["reason"]
    doc = render_html(report)
    assert "YARA hits" in doc and "yara: not run" in doc
    assert "No host image: " + html.escape(why) in doc


def test_report_of_a_copy_is_identical(incident, tmp_path):
    copy = tmp_path / "elsewhere" / incident.id
    shutil.copytree(incident.path, copy)
    original, copied = build_report(incident.path), build_report(str(copy))
    copied["generated"] = original["generated"]
    for render in (render_html, render_markdown):
        a = render(original).replace(incident.path, "<P>")
        b = render(copied).replace(str(copy), "<P>")
        assert a == b


def test_tampered_incident_shows_the_problems_first(incident):
    target = os.path.join(incident.path, "yara", "01", "summary.json")
    with open(target, "ab") as fh:
        fh.write(b" ")
    os.unlink(os.path.join(incident.path, "pcap", "01", "capture.pcap"))
    doc = render_html(build_report(incident.path))
    assert "VERIFY FOUND" in doc
    assert doc.index("VERIFY FOUND") < doc.index('id="summary"')
    assert "yara/01/summary.json" in doc and "pcap/01/capture.pcap" in doc
    md = render_markdown(build_report(incident.path))
    assert md.index("VERIFY FOUND") < md.index("## Summary")


def test_planted_link_is_not_followed(incident, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"srcip": "TOP-SECRET-VALUE"}))
    target = os.path.join(incident.path, "triage", "01", "summary.json")
    os.unlink(target)
    os.symlink(secret, target)
    report = build_report(incident.path)
    assert "TOP-SECRET-VALUE" not in render_html(report)
    assert any("triage/01/summary.json" in p for p in report["read_problems"])
    assert not report["verify"]["ok"]


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_tables_hold_and_nothing_links(incident):
    md = render_markdown(build_report(incident.path))
    lines = md.split("\n")
    in_code = False
    columns = None
    for line in lines:
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        if line.startswith("|"):
            count = _unescaped_pipes(line)
            if columns is None:
                columns = count
            assert count == columns, line[:200]
        else:
            columns = None
    assert "<script" not in md and "<img" not in md and "<b>" not in md
    found = re.findall(r".{0,80}http://.{0,40}", md)
    assert not found, found
    assert "hxxp\\[://\\]evil.example" in md
    assert "\\`tick\\`" in md
    md.encode("utf-8")


def test_cli_writes_0600_and_never_overwrites(incident, config_file, tmp_path, capsys):
    out = tmp_path / "out" / "r.html"
    out.parent.mkdir()
    args = ["--config", str(config_file), "report", incident.id, "-o", str(out)]
    assert main(args) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert CSP_META in out.read_text()
    before = out.read_bytes()
    assert main(args) == 2
    assert out.read_bytes() == before
    assert main(["--config", str(config_file), "report", incident.path, "--format", "md",
                 "-o", "-"]) == 0
    assert "## Artifacts" in capsys.readouterr().out
    inside = os.path.join(incident.path, "r.html")
    assert main(["--config", str(config_file), "report", incident.id, "-o", inside]) == 2
    assert not os.path.exists(inside)
    assert verify(incident.path).ok
    assert main(["--config", str(config_file), "report", "20000101T000000Z_nope"]) == 3


def test_malformed_records_do_not_break_the_report(config, store):
    """Wrong types everywhere (a tampered or buggy incident) still give a report."""
    req = make_request("192.0.2.77")
    inc, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    try:
        inc.record({"type": "collector", "collector": ["x"], "outcome": {"a": 1}, "reason": 5,
                    "files": "nope", "summary": [], "started": None})
        inc.record({"type": "outcome", "outcome": ["partial"]})
        inc.record({"type": "file", "path": ["a"], "sha256": 5})
        inc.record({"type": "trigger", "custody": "x"})
        _write(inc, "triage", "triage/01/suspects.jsonl", _jsonl(
            [{"pid": [1], "parents": "x", "children": {"a": 1}, "connections": [5, None]},
             {"pid": None, "connections": "x"}]) + b"[1, 2]\n" + b"[" * 5000 + b"\n{bad\n")
        _write(inc, "triage", "triage/01/summary.json", b'"just a string"')
        _write(inc, "yara", "yara/01/matches.jsonl", _jsonl(
            [{"strings": "x", "meta": [], "type": None}, {"strings": [5, {"id": []}]}]))
        _write(inc, "yara", "yara/01/summary.json", b'{"files": [1], "processes": 3}')
        _write(inc, "files", "files/01/results.jsonl", _jsonl([{"regex_match": "x",
                                                                 "size": "big"}]))
        _write(inc, "pcap", "pcap/01/capture.json", b"[]")
        _write(inc, "pcap", "pcap/01/summary.json", json.dumps(
            {"directions": {"x": 5}, "flows": [1, {"bytes": "x"}], "dns": [{"questions": 5},
             {"answers": [7]}], "tls_sni": "abc", "http_requests": [None]}).encode())
        _write(inc, "memory", "memory/01/processes.json", b'[1, {"exe": 5, "file": 7}]')
        report = build_report(inc.path)
    finally:
        inc.close()
    doc, md = render_html(report), render_markdown(report)
    assert CSP_META in doc and "## Artifacts" in md
    assert not report["verify"]["ok"]
    assert "VERIFY FOUND" in doc
