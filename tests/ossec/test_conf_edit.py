"""ossec.conf, decoder and rules editing without a real OSSEC: markers, clashes, refusals, round trips."""
from __future__ import annotations

import os

import pytest

from ossec_dfir import config as config_mod
from ossec_dfir.cli.main import main
from ossec_dfir.errors import ConfigError, InstallError
from ossec_dfir.ossec import checks, conftext, install, manager, ossecconf, snippets
from ossec_dfir.ossec.layout import Installation

ADMIN_CONF = """<ossec_config>
  <!-- the admin's own comment, kept byte for byte -->
  <command>
    <name>host-deny</name>
    <executable>host-deny.sh</executable>
    <expect>srcip</expect>
    <timeout_allowed>yes</timeout_allowed>
  </command>
</ossec_config>
"""


@pytest.fixture
def cfg():
    return config_mod.load(None, "/var/ossec")


@pytest.fixture
def tree(tmp_path):
    """An OSSEC-like directory without daemons (nothing can be checked there)."""
    root = tmp_path / "ossec"
    for sub in ("etc", "rules", "logs", "active-response/bin"):
        (root / sub).mkdir(parents=True)
    (root / "etc" / "ossec.conf").write_text(ADMIN_CONF)
    (root / "rules" / "local_rules.xml").write_text(
        '<group name="local,">\n  <rule id="100001" level="0">\n    <if_sid>5711</if_sid>\n'
        '    <description>admin rule</description>\n  </rule>\n</group>\n')
    return Installation(str(root), "ossec")


def write_agent_daemon(inst: Installation) -> None:
    path = inst.binary("agentd")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, 0o755)


# --- config: expect and ar_timeout_s -------------------------------------------------------

def test_shipped_profiles_expect_and_timeouts(cfg):
    assert cfg.profile("dfir-pcap").expect == "srcip" and cfg.profile("dfir-pcap").ar_timeout_s == 600
    for name, expect in (("dfir-yara-file", "filename"), ("dfir-files-file", "filename"),
                         ("dfir-triage-host", "none")):
        profile = cfg.profile(name)
        assert (profile.expect, profile.ar_timeout_s, profile.stateful) == (expect, None, False)


@pytest.mark.parametrize("extra, message", [
    ("expect: filename\n    ar_timeout_s: 600", "must be null with expect: filename"),
    ("expect: none\n    ar_timeout_s: 60", "must be null with expect: none"),
    ("expect: user", "must be one of srcip, filename, none"),
    ("ar_timeout_s: 0", "must be null or an integer"),
    ("ar_timeout_s: true", "must be null or an integer"),
    ("ar_timeout_s: '600'", "must be null or an integer"),
])
def test_profile_response_keys_are_validated(tmp_path, extra, message):
    path = tmp_path / "c.yml"
    path.write_text(f"profiles:\n  dfir-x:\n    {extra}\n    steps:\n      - collector: host\n")
    with pytest.raises(ConfigError) as err:
        config_mod.load(str(path), str(tmp_path))
    assert message in str(err.value) and "profiles.dfir-x" in str(err.value)


def test_profile_defaults_follow_expect(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("profiles:\n  dfir-a:\n    steps: [{collector: host}]\n"
                    "  dfir-b:\n    expect: filename\n    steps: [{collector: host}]\n")
    cfg = config_mod.load(str(path), str(tmp_path))
    assert (cfg.profile("dfir-a").ar_timeout_s, cfg.profile("dfir-a").stateful) == (600, True)
    assert (cfg.profile("dfir-b").ar_timeout_s, cfg.profile("dfir-b").stateful) == (None, False)


# --- --bind and the generated blocks -------------------------------------------------------

def test_binds_are_parsed_merged_and_written_enabled(cfg):
    binds = snippets.parse_binds(["dfir-pcap=5710,5712", "dfir-yara-file=550,554",
                                  "dfir-pcap=5712,5720"], cfg)
    assert binds == [snippets.Binding("dfir-pcap", ("5710", "5712", "5720")),
                     snippets.Binding("dfir-yara-file", ("550", "554"))]
    body = snippets.conf_body(cfg, "ossec", binds, "/var/ossec/logs/active-responses.log")
    assert "<disabled>" not in body
    assert body.count("<active-response>") == 2
    pcap = body[body.index("<command>dfir-pcap</command>"):]
    assert pcap.index("<timeout>600</timeout>") < pcap.index("</active-response>")
    yara = body[body.index("<command>dfir-yara-file</command>"):]
    assert "<timeout>" not in yara[:yara.index("</active-response>")]
    assert "<rules_id>550,554</rules_id>" in yara
    assert "<location>/var/ossec/logs/active-responses.log</location>" in body
    cmd = body[body.index("<name>dfir-triage-host</name>"):]
    assert cmd.index("<expect></expect>") < cmd.index("<timeout_allowed>no</timeout_allowed>") \
        < cmd.index("</command>")
    assert snippets.manual_runs(cfg, binds) == [
        "agent_control -b 203.0.113.5 -f dfir-pcap600 -u <agent id>"]


def test_wazuh_commands_carry_no_expect(cfg):
    body = snippets.conf_body(cfg, "wazuh", snippets.parse_binds(["dfir-pcap=5712"], cfg))
    assert "<expect>" not in body and "<disabled>" not in body and "<timeout>600</timeout>" in body


@pytest.mark.parametrize("value", [
    "dfir-pcap", "dfir-pcap=", "dfir-pcap=5710,", "dfir-pcap=0", "dfir-pcap=0100",
    "dfir-pcap=5710;id", "dfir-pcap=1234567", "dfir-pcap= 5710", "dfir-pcap=abc",
    "dfir-nope=5710", "host-deny=5710", "=5710", "dfir-pcap=5710\n5712",
])
def test_bad_binds_are_refused(cfg, value):
    with pytest.raises(InstallError) as err:
        snippets.parse_binds([value], cfg)
    assert err.value.exit_code == 2


# --- marked blocks -------------------------------------------------------------------------

def test_replace_and_remove_round_trip_byte_for_byte():
    block = conftext.marked_block("x", "<ossec_config>\n</ossec_config>")
    for original in (ADMIN_CONF, "", ADMIN_CONF + "\n\n<!-- tail -->\n"):
        edited = conftext.replace(original, block, "f")
        assert edited.startswith(original) and conftext.marked(edited, "f") == block
        again = conftext.replace(edited, block, "f")
        assert again == edited
        assert conftext.remove(edited, "f") == original


def test_broken_markers_are_refused():
    text = ADMIN_CONF + conftext.begin_marker("x") + "\n<ossec_config/>\n"
    with pytest.raises(InstallError, match="markers are broken"):
        conftext.replace(text, conftext.marked_block("x", "y"), "f")


def test_the_unmarked_snippet_of_an_earlier_install_is_replaced(tree, cfg):
    legacy = ("\n<!-- ossec-dfir ossec active responses: generated by `ossec-dfir install`. -->\n"
              "<ossec_config>\n  <command>\n    <name>dfir-pcap</name>\n  </command>\n"
              "  <active-response>\n    <disabled>yes</disabled>\n    <command>dfir-host"
              "</command>\n  </active-response>\n  <active-response>\n    <command>dfir-pcap"
              "</command>\n    <rules_id>100100</rules_id>\n  </active-response>\n"
              "</ossec_config>\n")
    result, notes = ossecconf.new_text(tree, cfg, ADMIN_CONF + legacy, [])
    assert "<disabled>" not in result and result.startswith(ADMIN_CONF)
    assert "dfir-pcap=100100" in notes[0]
    assert conftext.remove(result, "f") == ADMIN_CONF


# --- ossec.conf ----------------------------------------------------------------------------

def test_edit_adds_localfile_once_and_is_idempotent(tree, cfg):
    binds = snippets.parse_binds(["dfir-pcap=5712"], cfg)
    ossecconf.edit(tree, cfg, binds)
    first = open(tree.ossec_conf).read()
    assert first.startswith(ADMIN_CONF)
    assert first.count(f"<location>{tree.ar_log}</location>") == 1
    assert ossecconf.edit(tree, cfg, binds)[-1].endswith("(the ossec-dfir block is up to date)")
    assert open(tree.ossec_conf).read() == first
    ossecconf.edit(tree, cfg, snippets.parse_binds(["dfir-triage=5710"], cfg))
    second = open(tree.ossec_conf).read()
    assert "<command>dfir-triage</command>" in second and "<command>dfir-pcap</command>" not in second
    ossecconf.unedit(tree)
    assert open(tree.ossec_conf).read() == ADMIN_CONF


def test_an_existing_localfile_is_not_duplicated(tree, cfg):
    conf = ADMIN_CONF + (f"<ossec_config>\n  <localfile>\n    <log_format>syslog</log_format>\n"
                         f"    <location>{tree.ar_log}</location>\n  </localfile>\n</ossec_config>\n")
    result, notes = ossecconf.new_text(tree, cfg, conf, [])
    assert result.count("<localfile>") == 1 and any("kept the existing" in n for n in notes)
    commented = ADMIN_CONF + f"<!-- <localfile><location>{tree.ar_log}</location></localfile> -->\n"
    assert ossecconf.new_text(tree, cfg, commented, [])[0].count(f">{tree.ar_log}<") == 2


@pytest.mark.parametrize("extra", [
    "<ossec_config>\n  <command>\n    <name>dfir-pcap</name>\n  </command>\n</ossec_config>\n",
    "<ossec_config>\n  <active-response>\n    <command>dfir-yara</command>\n  </active-response>"
    "\n</ossec_config>\n",
])
def test_our_names_outside_the_block_are_refused_and_nothing_changes(tree, cfg, extra):
    with open(tree.ossec_conf, "a") as fh:
        fh.write(extra)
    with pytest.raises(InstallError, match="outside the") as err:
        ossecconf.edit(tree, cfg, [])
    assert err.value.exit_code == 2
    assert open(tree.ossec_conf).read() == ADMIN_CONF + extra
    assert not [p for p in os.listdir(os.path.dirname(tree.ossec_conf)) if ".bak-" in p]


def test_a_disabled_response_of_the_admin_is_refused_with_the_reason(tree, cfg):
    extra = ("<ossec_config>\n  <active-response>\n    <disabled>yes</disabled>\n"
             "    <command>host-deny</command>\n  </active-response>\n</ossec_config>\n")
    with open(tree.ossec_conf, "a") as fh:
        fh.write(extra)
    with pytest.raises(InstallError, match="Active response disabled") as err:
        ossecconf.edit(tree, cfg, snippets.parse_binds(["dfir-pcap=5712"], cfg))
    assert "line 11" in str(err.value)  # the <active-response> line
    assert open(tree.ossec_conf).read() == ADMIN_CONF + extra
    assert checks.response_switch(ADMIN_CONF.replace("<command>", "<!-- <disabled>yes"
                                                     "</disabled> -->\n<command>")).ok


def test_an_agent_gets_the_localfile_only_and_no_bindings(tree, cfg):
    write_agent_daemon(tree)
    assert tree.is_agent and tree.kind == "agent"
    with pytest.raises(InstallError, match="belong in the MANAGER"):
        ossecconf.edit(tree, cfg, snippets.parse_binds(["dfir-pcap=5712"], cfg))
    ossecconf.edit(tree, cfg, [])
    block = conftext.marked(open(tree.ossec_conf).read(), "f")
    assert "<localfile>" in block and "<command>" not in block


@pytest.mark.parametrize("option", [["--bind", "dfir-pcap=5712"], ["--manager"]])
def test_install_on_an_agent_refuses_manager_options_before_writing(tree, capsys, option):
    write_agent_daemon(tree)
    before = open(tree.ossec_conf).read()
    assert main(["install", "--ossec-dir", tree.root, "--allow-unsafe-paths", "--edit-ossec-conf",
                 *option]) == 2
    assert "belong on the manager" in capsys.readouterr().err
    assert os.listdir(tree.ar_bin_dir) == [] and open(tree.ossec_conf).read() == before


def test_a_symlinked_ossec_conf_is_refused(tree, cfg, tmp_path):
    real = tmp_path / "elsewhere.conf"
    real.write_text(ADMIN_CONF)
    os.unlink(tree.ossec_conf)
    os.symlink(real, tree.ossec_conf)
    with pytest.raises(InstallError, match="symbolic link"):
        ossecconf.edit(tree, cfg, [])
    assert real.read_text() == ADMIN_CONF


# --- manager files -------------------------------------------------------------------------

def test_manager_merge_keeps_admin_rules_and_uninstall_restores_them(tree):
    rules_before = open(tree.rules_file).read()
    manager.install_manager(tree)
    rules = open(tree.rules_file).read()
    assert rules.startswith(rules_before) and 'rule id="100901"' in rules
    assert manager.packaged_xml("local_decoder.xml") in open(tree.decoder_file).read()
    assert all(line.endswith("unchanged") for line in manager.install_manager(tree))
    manager.uninstall_manager(tree)
    assert open(tree.rules_file).read() == rules_before
    assert not os.path.exists(tree.decoder_file)


def test_manager_merge_refuses_a_clash_and_changes_nothing(tree):
    clash = '<group name="x,">\n  <rule id="100901" level="3">\n  </rule>\n</group>\n'
    with open(tree.rules_file, "a") as fh:
        fh.write(clash)
    before = open(tree.rules_file).read()
    with pytest.raises(InstallError, match="rule id 100901 exists already") as err:
        manager.install_manager(tree)
    assert err.value.exit_code == 2
    assert open(tree.rules_file).read() == before and not os.path.exists(tree.decoder_file)


def test_wazuh_paths():
    inst = Installation("/var/ossec", "wazuh")
    assert inst.decoder_file == "/var/ossec/etc/decoders/local_decoder.xml"
    assert inst.rules_file == "/var/ossec/etc/rules/local_rules.xml"
    assert inst.binary("logtest") == "/var/ossec/bin/wazuh-logtest"
    ossec = Installation("/var/ossec", "ossec")
    assert (ossec.decoder_file, ossec.rules_file) == ("/var/ossec/etc/local_decoder.xml",
                                                      "/var/ossec/rules/local_rules.xml")


# --- the commands --------------------------------------------------------------------------

def test_install_prints_the_snippet_only_when_it_did_not_edit(tree, capsys):
    before = open(tree.ossec_conf).read()
    assert main(["install", "--ossec-dir", tree.root, "--flavor", "ossec", "--allow-unsafe-paths",
                 "--bind", "dfir-pcap=5712"]) == 0
    out = capsys.readouterr().out
    assert "Add to " in out and "<rules_id>5712</rules_id>" in out and "-f dfir-pcap600" in out
    assert open(tree.ossec_conf).read() == before
    assert main(["install", "--ossec-dir", tree.root, "--flavor", "ossec", "--allow-unsafe-paths",
                 "--edit-ossec-conf", "--bind", "dfir-pcap=5712"]) == 0
    out = capsys.readouterr().out
    assert "Add to " not in out and "wrote the ossec-dfir block" in out
    assert main(["install", "--ossec-dir", tree.root, "--allow-unsafe-paths",
                 "--bind", "dfir-pcap=5712;id"]) == 2


def test_uninstall_removes_exactly_what_install_added(tree, cfg, capsys):
    install.install(cfg, tree.root, True, "ossec", snippets.parse_binds(["dfir-pcap=5712"], cfg),
                    manager_xml=True)
    own = os.path.join(tree.ar_bin_dir, "dfir-mine")
    with open(own, "w") as fh:
        fh.write("#!/bin/sh\n# the admin's own script\n")
    assert main(["uninstall", "--ossec-dir", tree.root, "--flavor", "ossec", "--edit-ossec-conf",
                 "--manager"]) == 0
    assert sorted(os.listdir(tree.ar_bin_dir)) == ["dfir-mine"]
    assert open(tree.ossec_conf).read() == ADMIN_CONF
    assert "100901" not in open(tree.rules_file).read()
    assert os.path.exists(os.path.join(tree.root, "etc", "ossec-dfir.yml"))
    assert os.listdir(os.path.join(tree.root, "etc", "yara"))
    assert "kept " in capsys.readouterr().out


def test_the_wheel_carries_the_manager_xml():
    from tests.conftest import ROOT
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"ossec/xml/*.xml"' in pyproject  # [tool.setuptools.package-data] ossec_dfir
    for name in manager.XML_FILES:
        assert os.path.isfile(os.path.join(manager.XML_DIR, name))
        assert manager.XML_DIR.startswith(os.path.dirname(os.path.dirname(manager.__file__)))
