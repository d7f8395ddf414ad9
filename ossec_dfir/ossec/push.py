"""Put YARA rules into the manager's etc/shared/, which OSSEC copies to every agent.

The manager's remoted bundles the regular files of ``etc/shared/`` (flat) and
sends them to each agent, whose agent daemon writes them into its own
``etc/shared/``. A profile with the ``rules_dirs`` entry ``etc/shared``
(``dfir-hunt``) scans with the files named ``dfir-*.yar`` there. The push
mirrors a directory: every ``*.yar``/``*.yara`` of it becomes
``etc/shared/dfir-<name>``, and ``dfir-*`` rule files it no longer holds are
removed. OSSEC's remoted reads etc/shared/ when it starts: restart the
manager after a push. The caller checks the rules (syntax, ownership) first.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat

from ..errors import EXIT_BAD_INPUT, InstallError
from . import files
from .layout import Installation

RULE_SUFFIXES = (".yar", ".yara")
PREFIX = "dfir-"
MAX_RULE_FILE_BYTES = 16 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,120}")


def shared_dir(inst: Installation) -> str:
    """Return the manager's etc/shared directory."""
    return os.path.join(inst.root, "etc", "shared")


def shared_name(name: str) -> str:
    """Return the name a rules file gets in etc/shared (``dfir-`` prefixed once)."""
    return name if name.startswith(PREFIX) else PREFIX + name


def source_files(directory: str) -> list[str]:
    """Return the rule file names directly in directory (sorted); refuse unusable names."""
    names = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(RULE_SUFFIXES) or name.startswith("."):
            continue
        if not _NAME.fullmatch(name):
            raise InstallError(f"{directory}/{name!r}: rule file names are letters, digits, "
                               "'.', '_' and '-' only", EXIT_BAD_INPUT)
        st = os.lstat(os.path.join(directory, name))
        if not stat.S_ISREG(st.st_mode):
            raise InstallError(f"{directory}/{name}: not a regular file (links are not "
                               "followed)", EXIT_BAD_INPUT)
        names.append(name)
    if not names:
        raise InstallError(f"no .yar/.yara rule files in {directory}", EXIT_BAD_INPUT)
    return names


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_RULE_FILE_BYTES + 1)
    if len(data) > MAX_RULE_FILE_BYTES:
        raise InstallError(f"{path}: larger than {MAX_RULE_FILE_BYTES} bytes", EXIT_BAD_INPUT)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InstallError(f"{path}: not UTF-8 (byte {err.start})", EXIT_BAD_INPUT) from err


def push_rules(inst: Installation, directory: str) -> list[str]:
    """Mirror the rule files of directory into the manager's etc/shared/; return what was done."""
    if inst.is_agent:
        raise InstallError(f"{inst.root} is an agent: rules are pushed from the manager",
                           EXIT_BAD_INPUT)
    target = shared_dir(inst)
    if not os.path.isdir(target) or os.path.islink(target):
        raise InstallError(f"{target} is not a directory: is {inst.root} an OSSEC manager?",
                           EXIT_BAD_INPUT)
    gid = files.group_id()
    wanted: dict[str, str] = {}
    for name in source_files(directory):
        wanted[shared_name(name)] = _read(os.path.join(directory, name))
    done = []
    for name, text in wanted.items():
        path = os.path.join(target, name)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if files.read_text(path) == text:
            done.append(f"up to date {path} (sha256 {digest})")
            continue
        files.write_atomic(path, text, 0o640, 0, gid)  # remoted reads it through the group
        done.append(f"pushed {path} (sha256 {digest})")
    for name in sorted(os.listdir(target)):
        if name.startswith(PREFIX) and name.endswith(RULE_SUFFIXES) and name not in wanted:
            os.unlink(os.path.join(target, name))
            done.append(f"removed {os.path.join(target, name)} (not in {directory})")
    return done


def remove_pushed(inst: Installation) -> list[str]:
    """Remove the pushed rules (etc/shared/dfir-*.yar(a)) from the manager; return what was done."""
    target = shared_dir(inst)
    done = []
    for name in sorted(os.listdir(target)) if os.path.isdir(target) else []:
        if name.startswith(PREFIX) and name.endswith(RULE_SUFFIXES):
            os.unlink(os.path.join(target, name))
            done.append(f"removed {os.path.join(target, name)} (pushed rules)")
    return done
