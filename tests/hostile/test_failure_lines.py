"""Every failure path leaves an outcome line the shipped decoder turns into the failed alert
(issue 12 item 14): the manager must hear of a collection that could not even start."""
from __future__ import annotations

import errno
import os
import re
import subprocess

import pytest

from ossec_dfir.ar.simulate import ossec_argv
from ossec_dfir.ossec import manager
from tests.ar.test_entry import Tree

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def decoded_failures(lines: list[str]) -> list[tuple[str, ...]]:
    """Return the fields the shipped decoder extracts from each failed outcome line."""
    decoder = manager.packaged_xml(manager.DECODER_XML)
    # the last sibling names the dfir_* fields (the first copies the command into id)
    regex = re.findall(r'<regex offset="after_parent">(.*)</regex>', decoder)[-1]
    regex = regex.replace(r"\S+", r"[^\s]+")
    out = []
    for line in lines:
        if line.startswith("ossec-dfir: "):
            match = re.match(regex, line[len("ossec-dfir: "):])
            if match and match.group(1) == "failed":
                out.append(match.groups())
    return out


def run(argv: list[str]) -> int:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, cwd="/", env=ENV, timeout=30).returncode


@pytest.fixture
def no_inodes(tmp_path):
    """An evidence filesystem with no inode left."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "evidence"
    mnt.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=16,mode=0700", "tmpfs",
                    str(mnt)], check=True, timeout=30)
    try:
        for i in range(100):
            try:
                (mnt / f"fill{i}").touch()
            except OSError as err:
                assert err.errno == errno.ENOSPC
                break
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_evidence_filesystem_out_of_inodes_raises_the_failed_alert(tmp_path, no_inodes):
    tree = Tree(tmp_path)
    assert tree.evidence == no_inodes
    code = run(ossec_argv(tree.script("dfir-host"), "add", "203.0.113.40"))
    assert code in (3, 4)
    [fields] = decoded_failures(tree.log_lines())
    assert fields[1:4] == ("dfir-host", "203.0.113.40", "-")


def test_a_bad_config_raises_the_failed_alert(tmp_path):
    tree = Tree(tmp_path)
    tree.conf.write_text("max_workers: many\n")
    assert run(ossec_argv(tree.script("dfir-host"), "add", "203.0.113.41")) == 2
    [fields] = decoded_failures(tree.log_lines())
    assert fields[1] == "dfir-host"


def test_a_refused_request_is_not_a_failed_collection(tmp_path):
    """Garbage from an attacker is refused with its invocation line only: no alert storm."""
    tree = Tree(tmp_path)
    assert run([tree.script("dfir-host"), "add", "-", "not-an-ip"]) == 2
    assert decoded_failures(tree.log_lines()) == []
    assert any("refused" in line for line in tree.log_lines())
