"""install --manager --push-rules: checked rules mirrored into the manager's etc/shared/."""
from __future__ import annotations

import hashlib
import os

import pytest

from ossec_dfir.errors import InstallError
from ossec_dfir.ossec import push
from ossec_dfir.ossec.layout import Installation

RULE = 'rule pushed { strings: $a = "p-marker" condition: $a }\n'


def daemon(root: str, name: str) -> None:
    path = f"{root}/bin/ossec-{name}"
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, 0o755)


@pytest.fixture
def manager(tmp_path):
    root = tmp_path / "ossec"
    for sub in ("etc/shared", "bin", "rules"):
        (root / sub).mkdir(parents=True)
    daemon(str(root), "analysisd")
    (root / "etc" / "shared" / "ar.conf").write_text("keep me\n")
    return Installation(str(root), "ossec")


@pytest.fixture
def rules(tmp_path):
    d = tmp_path / "hunt"
    d.mkdir(mode=0o700)
    (d / "web.yar").write_text(RULE)
    (d / "dfir-already.yara").write_text(RULE.replace("pushed", "pushed2"))
    (d / "notes.txt").write_text("not a rule")
    return d


def test_rules_are_mirrored_with_the_dfir_prefix_and_stale_ones_removed(manager, rules):
    shared = manager.root + "/etc/shared"
    open(shared + "/dfir-old.yar", "w").write(RULE)
    open(shared + "/rootkit_files.txt", "w").write("OSSEC's own")
    done = push.push_rules(manager, str(rules))
    assert sorted(os.listdir(shared)) == ["ar.conf", "dfir-already.yara", "dfir-web.yar",
                                          "rootkit_files.txt"]
    assert open(shared + "/dfir-web.yar").read() == RULE
    assert oct(os.stat(shared + "/dfir-web.yar").st_mode & 0o777) == "0o640"
    digest = hashlib.sha256(RULE.encode()).hexdigest()
    assert f"pushed {shared}/dfir-web.yar (sha256 {digest})" in done
    assert any(line.startswith(f"removed {shared}/dfir-old.yar") for line in done)
    again = push.push_rules(manager, str(rules))
    assert all(line.startswith("up to date") for line in again)


def test_an_agent_a_link_or_a_bad_name_is_refused(tmp_path, manager, rules):
    agent = Installation(manager.root, "ossec")
    os.unlink(manager.root + "/bin/ossec-analysisd")
    daemon(manager.root, "agentd")
    with pytest.raises(InstallError, match="is an agent"):
        push.push_rules(agent, str(rules))
    os.unlink(manager.root + "/bin/ossec-agentd")
    daemon(manager.root, "analysisd")
    os.symlink("/etc/hostname", rules / "link.yar")
    with pytest.raises(InstallError, match="not a regular file"):
        push.push_rules(manager, str(rules))
    os.unlink(rules / "link.yar")
    (rules / "bad name;$(x).yar").write_text(RULE)
    with pytest.raises(InstallError, match="letters, digits"):
        push.push_rules(manager, str(rules))


def test_the_cli_checks_the_rules_first_and_wants_manager(tmp_path, manager, rules, capsys):
    from ossec_dfir.cli.main import main
    (rules / "broken.yar").write_text("rule broken { condition: nope }\n")
    code = main(["install", "--ossec-dir", manager.root, "--flavor", "ossec", "--manager",
                 "--push-rules", str(rules), "--allow-unsafe-paths"])
    assert code == 2 and "rules not pushed, nothing was installed" in capsys.readouterr().err
    assert not any(n.startswith("dfir-") for n in os.listdir(manager.root + "/etc/shared"))
    assert not os.path.exists(manager.root + "/active-response")
    code = main(["install", "--ossec-dir", manager.root, "--flavor", "ossec",
                 "--push-rules", str(rules), "--allow-unsafe-paths"])
    assert code == 2 and "goes with --manager" in capsys.readouterr().err


def test_uninstall_manager_removes_the_pushed_rules_only(manager, rules):
    push.push_rules(manager, str(rules))
    done = push.remove_pushed(manager)
    assert sorted(os.listdir(manager.root + "/etc/shared")) == ["ar.conf"]
    assert len(done) == 2
