"""Contracts: every collector declares defaults, limits and a description; every
shipped profile, executable and OSSEC/Wazuh snippet agrees with the others."""
from __future__ import annotations

import dataclasses
import os
import re

import pytest

from ossec_dfir import config as config_mod
from ossec_dfir.ossec import manager, snippets
from ossec_dfir.collectors.base import Collector, Params, load_collectors
from tests.conftest import AR_DIR, ROOT

REGISTRY = load_collectors()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_collector_declares_params_limits_and_description(name):
    cls = REGISTRY[name]
    assert issubclass(cls, Collector) and cls.name == name and cls.description
    assert issubclass(cls.params_type, Params)
    assert dataclasses.is_dataclass(cls.params_type)
    assert cls.params_type.__dataclass_params__.frozen
    defaults = cls.params_type()  # every parameter has a default
    assert defaults.timeout_s > 0
    for field in dataclasses.fields(defaults):
        tokens = field.name.split("_")
        value = getattr(defaults, field.name)
        if {"timeout", "duration", "interval"} & set(tokens):
            assert tokens[-1] in ("s", "ms"), f"{name}.{field.name}: time unit in the name"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                {"size", "bytes", "memory"} & set(tokens):
            assert tokens[-1] in ("bytes", "mb", "kb"), f"{name}.{field.name}: size unit"


def test_shipped_config_validates_and_every_profile_has_an_executable():
    cfg = config_mod.load(str(ROOT / "etc" / "ossec-dfir.yml"), "/var/ossec")
    for name in snippets.commands(cfg):
        script = AR_DIR / name
        assert script.exists(), f"profile {name} has no active-response/{name}"
        assert os.access(script, os.X_OK)
        text = script.read_text()
        assert f'main("{name}")' in text and len(text.splitlines()) < 20
    for script in AR_DIR.iterdir():
        assert script.name in cfg.profiles, f"{script.name} has no profile"


def test_packaged_default_config_is_the_shipped_file():
    assert os.path.realpath(config_mod.DEFAULT_CONFIG) == str(ROOT / "etc" / "ossec-dfir.yml") \
        or open(config_mod.DEFAULT_CONFIG).read() == (ROOT / "etc" / "ossec-dfir.yml").read_text()


@pytest.mark.parametrize("flavor", ["ossec", "wazuh"])
def test_conf_snippets_match_the_generator(flavor):
    cfg = config_mod.load(None, "/var/ossec")
    shipped = (ROOT / "etc" / "ossec.conf.d" / f"{flavor}-active-response.xml").read_text()
    assert shipped == snippets.conf_snippet(cfg, flavor), \
        "run `make snippets` after changing profiles"
    assert ("<expect>srcip</expect>" in shipped) == (flavor == "ossec")
    assert ("<expect>filename</expect>" in shipped) == (flavor == "ossec")
    assert "<disabled>" not in shipped and "<active-response>" not in shipped
    for name in snippets.commands(cfg):
        assert f"<executable>{name}</executable>" in shipped


@pytest.mark.parametrize("name", manager.SHIPPED_XML)
def test_manager_xml_in_etc_is_the_packaged_xml(name):
    shipped = (ROOT / "etc" / "ossec.conf.d" / name).read_text()
    assert shipped == manager.packaged_xml(name), "run `make snippets` after changing the XML"


def test_decoder_matches_the_outcome_line():
    decoder = manager.packaged_xml(manager.DECODER_XML)
    assert "<prematch>^ossec-dfir: </prematch>" in decoder
    regexes = re.findall(r'<regex offset="after_parent">\^(.*)</regex>', decoder)
    assert len(regexes) == 2 and regexes[0].endswith("command=(\\S+) ")  # the id sibling first
    regex = regexes[-1]  # the dfir_* fields: the last sibling names them
    line = ("outcome=partial command=dfir-pcap srcip=203.0.113.5 incident=20261129T012533Z_"
            "203.0.113.5 steps=pcap:partial manifest_sha256=ab12 reason=\"x\"")
    py = regex.replace(r"\S+", r"[^\s]+")
    assert re.match(py, line)
    sample = manager.sample_line("complete")
    assert sample.startswith("ossec-dfir: ") and re.match(py, sample[len("ossec-dfir: "):])


def test_finding_decoder_reads_every_field_of_a_finding_line():
    from ossec_dfir.ar import findings
    decoder = manager.packaged_xml(manager.FINDINGS_DECODER_XML)
    assert "<prematch>^ossec-dfir: finding=</prematch>" in decoder
    regex = re.search(r'<regex offset="after_prematch">\^(.*)</regex>', decoder).group(1)
    order = re.search(r"<order>(.*)</order>", decoder).group(1).split(", ")
    assert order == [f"dfir_{name}" for name in findings.FIELDS]
    line = findings.format_finding(findings.Finding("yara_file", "yara/01/matches.jsonl",
                                                    "r", None, "/a b=c", "0" * 64),
                                   "dfir-yara", "i")
    m = re.match(regex.replace(r"\S+", r"[^\s]+"), line[len("ossec-dfir: finding="):])
    assert m and m.groups()[0] == "yara_file" and m.groups()[6] == "/a%20b%3Dc"
    assert "srcip" not in decoder.split("-->")[-1]


def test_wazuh_finding_rules_are_the_ossec_ones_with_mitre_ids():
    def body(name: str) -> str:
        text = manager.packaged_xml(name).split("-->", 1)[1]
        return re.sub(r"\s*<mitre>.*?</mitre>", "", text, flags=re.S)
    ossec, wazuh = manager.FINDINGS_RULES_XML["ossec"], manager.FINDINGS_RULES_XML["wazuh"]
    assert body(ossec) == body(wazuh)
    assert "<mitre>" not in manager.packaged_xml(ossec).split("-->", 1)[1]
    assert manager.packaged_xml(wazuh).count("<mitre>") == 2
    ids = re.findall(r'<rule id="(\d+)"', body(ossec))
    assert ids and all(i in manager.FINDING_RULE_IDS for i in ids)
    assert not re.search(r"<field name=\"[^\"]*srcip", body(ossec))  # no srcip field


def test_dropped_note_and_failure_lines_match_the_decoder():
    """The delivery code's dropped note and a worker failure line decode (rules 100904, 100903)."""
    from ossec_dfir.ar import delivery, log as arlog
    decoder = manager.packaged_xml(manager.DECODER_XML)
    py = [r.replace(r"\S+", r"[^\s]+") for r in
          re.findall(r'<regex offset="after_parent">\^(.*)</regex>', decoder)]
    for line in (delivery.dropped_note(3), arlog.format_outcome(arlog.failed_fields("-", None, "x"))):
        assert line.startswith("ossec-dfir: ")
        assert all(re.match(r, line[len("ossec-dfir: "):]) for r in py), line
