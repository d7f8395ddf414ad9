"""Edit ossec.conf: one marked <ossec_config> block with ossec-dfir's commands, bindings, localfile.

OSSEC and Wazuh read every ``<ossec_config>`` root of ossec.conf, so the
block is appended as a root of its own (or replaced in place on a re-run).
The result is checked with the installation's test modes; a failure restores
the backup taken before the edit.
"""
from __future__ import annotations

import os

from ..config import Config
from ..errors import EXIT_BAD_INPUT, InstallError
from . import checks, conftext, files, snippets
from .layout import Installation

WHAT = "active responses, and the localfile reading logs/active-responses.log"


def _same_file(location: str, path: str) -> bool:
    if os.path.normpath(location) == os.path.normpath(path):
        return True
    try:
        return os.path.samefile(location, path)
    except OSError:
        return False


def has_localfile(text: str, log_path: str) -> bool:
    """Return whether text (outside comments) has a <localfile> reading log_path."""
    return any(_same_file(loc, log_path)
               for _, inner in conftext.elements(text, "localfile")
               for loc in conftext.children(inner, "location"))


def clashes(text: str, names: list[str], path: str) -> list[str]:
    """Return the administrator's <command>/<active-response> (outside our block) using our names."""
    mine = conftext.outside(text, path)
    legacy = conftext.legacy_block(mine)
    if legacy is not None:
        mine = mine.replace(legacy, "\n" * legacy.count("\n"))
    problems = []
    for line, inner in conftext.elements(mine, "command"):
        problems += [f"{path} line {line}: <command> {name} is defined outside the ossec-dfir "
                     "block" for name in conftext.children(inner, "name") if name in names]
    for line, inner in conftext.elements(mine, "active-response"):
        problems += [f"{path} line {line}: an <active-response> runs {name} outside the "
                     "ossec-dfir block" for name in conftext.children(inner, "command")
                     if name in names]
    return problems


def legacy_bindings(text: str) -> list[str]:
    """Return the enabled bindings of an unmarked block written by an earlier install."""
    legacy = conftext.legacy_block(text)
    if legacy is None:
        return []
    found = []
    for _, inner in conftext.elements(legacy, "active-response"):
        if "yes" in conftext.children(inner, "disabled"):
            continue
        for name in conftext.children(inner, "command"):
            rules = ",".join(conftext.children(inner, "rules_id"))
            found.append(f"{name}={rules}")
    return found


def new_text(inst: Installation, config: Config, text: str,
             binds: list[snippets.Binding]) -> tuple[str, list[str]]:
    """Return ossec.conf with the ossec-dfir block as it should be, and notes on it."""
    path = inst.ossec_conf
    names = snippets.commands(config)
    notes: list[str] = []
    problems = clashes(text, names, path)
    if problems:
        raise InstallError("ossec.conf not edited: it already has ossec-dfir's names outside the "
                           "marked block (pasted by hand?); remove them, then run install again:"
                           "\n  " + "\n  ".join(problems), EXIT_BAD_INPUT)
    if inst.is_agent and binds:
        raise InstallError(f"{inst.root} is an agent (no {inst.flavor}-analysisd): the "
                           "<command> and <active-response> blocks belong in the MANAGER's "
                           "ossec.conf; run install --bind there", EXIT_BAD_INPUT)
    outside = conftext.outside(text, path)
    legacy = legacy_bindings(outside)
    if conftext.legacy_block(outside) is not None:
        notes.append("replaced the unmarked blocks an earlier ossec-dfir install appended"
                     + (f" (its enabled bindings were: {' '.join(legacy)}; pass them as --bind "
                        "to keep them)" if legacy else ""))
        outside = conftext.remove(outside, path)
    localfile = None if has_localfile(outside, inst.ar_log) else inst.ar_log
    if localfile is None:
        notes.append(f"kept the existing <localfile> of {inst.ar_log}")
    with_commands = not inst.is_agent
    if with_commands or binds or localfile:
        block = conftext.marked_block(WHAT, snippets.conf_body(
            config, inst.flavor, binds, localfile, with_commands))
        legacy_text = conftext.legacy_block(text)
        base = text
        if legacy_text is not None and conftext.marked(text, path) is not None:
            base = text.replace(legacy_text, "\n", 1)
        result = conftext.replace(base, block, path)
    else:
        result = conftext.remove(text, path)
    return result, notes


def edit(inst: Installation, config: Config, binds: list[snippets.Binding]) -> list[str]:
    """Put the ossec-dfir block into ossec.conf (backup first), check it, restore on failure."""
    path = inst.ossec_conf
    text = files.read_text(path)
    if text is None:
        raise InstallError(f"{path} does not exist: is {inst.root} an OSSEC/Wazuh directory?",
                           EXIT_BAD_INPUT)
    result, notes = new_text(inst, config, text, binds)
    switch = checks.response_switch(result)
    if not switch.ok:
        raise InstallError(f"{path} not edited: {switch.detail}", EXIT_BAD_INPUT)
    if result == text:
        return notes + [f"{path}: unchanged (the ossec-dfir block is up to date)"]
    return notes + _write_checked(inst, path, text, result, "wrote the ossec-dfir block into")


def unedit(inst: Installation) -> list[str]:
    """Remove the ossec-dfir block (and an earlier unmarked one) from ossec.conf; check it."""
    path = inst.ossec_conf
    text = files.read_text(path)
    if text is None:
        return [f"{path} does not exist: nothing to remove"]
    result = conftext.remove(text, path)
    if result == text:
        return [f"{path}: no ossec-dfir block found"]
    return _write_checked(inst, path, text, result, "removed the ossec-dfir block from")


def _write_checked(inst: Installation, path: str, old: str, new: str, verb: str) -> list[str]:
    backup = files.backup(path)
    files.write_atomic(path, new, like=path)
    try:
        results = checks.test_modes(inst)
    except BaseException:
        files.restore(path, backup)
        raise
    failed = [c for c in results if not c.ok]
    if failed:
        files.restore(path, backup)
        before = [c for c in checks.test_modes(inst) if not c.ok]
        hint = ("\n  (the previous file fails the same check: the problem is not in the "
                "ossec-dfir block; fix it first)" if before else "")
        raise InstallError(f"the installation's own check refused the edited {path}; the "
                           f"previous file is back in place (backup {backup}):\n  "
                           + "\n  ".join(c.line() for c in failed) + hint)
    return [f"{verb} {path} (backup {backup})"] + [c.line() for c in results]
