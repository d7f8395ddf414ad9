"""Rules pushed by the manager: the agent's etc/shared/dfir-*.yar, written by OSSEC's own user."""
from __future__ import annotations

import grp
import os
import pwd

import pytest

from ossec_dfir.collectors.yara import rules

RULE = 'rule pushed_test { strings: $a = "pushed-marker" condition: $a }\n'


@pytest.fixture
def ossec_ids():
    try:
        return pwd.getpwnam("ossec").pw_uid, grp.getgrnam("ossec").gr_gid
    except KeyError:
        pytest.skip("no ossec user and group on this host (OSSEC creates them)")


@pytest.fixture
def shared(tmp_path, ossec_ids):
    if os.geteuid() != 0:
        pytest.skip("needs root to give files to the ossec user")
    uid, gid = ossec_ids
    top = tmp_path / "ossec"
    (top / "etc" / "shared").mkdir(parents=True)
    os.chown(top / "etc" / "shared", 0, gid)
    os.chmod(top / "etc" / "shared", 0o770)  # as OSSEC installs it
    return top / "etc" / "shared"


def put(directory, name, text, uid, gid, mode=0o640):
    path = directory / name
    path.write_text(text)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def test_dfir_files_written_by_the_ossec_user_are_loaded(shared, ossec_ids):
    uid, gid = ossec_ids
    put(shared, "dfir-hunt.yar", RULE, uid, gid)
    put(shared, "other.yar", "this is not yara", uid, gid)   # not ours: never read
    put(shared, "rootkit_files.txt", "x", uid, gid)
    paths, problems = rules.find_rule_files([str(shared)])
    assert problems == [] and paths == [str(shared / "dfir-hunt.yar")]
    assert rules.check_rules([str(shared)]) == []
    files, problems = rules.read_rule_files(paths)
    assert problems == [] and files[0].uid == uid


def test_the_same_files_are_refused_outside_etc_shared(tmp_path, shared, ossec_ids):
    uid, gid = ossec_ids
    elsewhere = tmp_path / "rules"
    elsewhere.mkdir(mode=0o750)
    put(elsewhere, "dfir-hunt.yar", RULE, uid, gid)
    problems = rules.check_rules([str(elsewhere)])
    assert any("not by root or us" in p for p in problems), problems


@pytest.mark.parametrize("owner, mode, why", [
    ("nobody", 0o640, "not by root or us or the OSSEC user"),
    ("ossec", 0o660, "writable by group or others"),
    ("ossec", 0o646, "writable by group or others"),
])
def test_pushed_files_anyone_else_could_change_are_refused(shared, ossec_ids, owner, mode, why):
    uid = pwd.getpwnam(owner).pw_uid
    put(shared, "dfir-hunt.yar", RULE, uid, ossec_ids[1], mode)
    problems = rules.check_rules([str(shared)])
    assert any(why in p for p in problems), problems


def test_a_shared_directory_others_can_write_is_refused(shared, ossec_ids):
    put(shared, "dfir-hunt.yar", RULE, *ossec_ids)
    os.chmod(shared, 0o777)
    assert any("rules directory refused" in p for p in rules.check_rules([str(shared)]))
    os.chmod(shared, 0o770)
    os.chown(shared, 0, 0)  # group writable, but not by OSSEC's group
    assert any("rules directory refused" in p for p in rules.check_rules([str(shared)]))


def test_a_missing_etc_shared_is_no_problem_but_a_missing_local_directory_is(tmp_path):
    assert rules.find_rule_files([str(tmp_path / "etc" / "shared")]) == ([], [])
    assert rules.find_rule_files([str(tmp_path / "etc" / "yara")])[1]
