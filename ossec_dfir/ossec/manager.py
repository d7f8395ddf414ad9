"""The manager side: the decoders and rules that turn outcome lines into alerts 100901-100907
and finding lines into alerts 100910-100949.

The XML ships inside the package (``ossec_dfir/ossec/xml/``); ``etc/ossec.conf.d/``
holds the same text. install merges it between markers into the files the
flavour reads, leaving the administrator's own decoders and rules untouched,
and checks the result with analysisd's test mode and logtest on a sample line
of each outcome. Any failure puts the previous files back.
"""
from __future__ import annotations

import os

from ..errors import EXIT_BAD_INPUT, InstallError
from . import checks, conftext, files
from .layout import Installation

XML_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xml")
DECODER_XML, RULES_XML = "local_decoder.xml", "local_rules.xml"
XML_FILES = (DECODER_XML, RULES_XML)
FINDINGS_DECODER_XML = "findings_decoder.xml"
FINDINGS_RULES_XML = {"ossec": "findings_rules.xml", "wazuh": "findings_rules_wazuh.xml"}
SHIPPED_XML = (*XML_FILES, FINDINGS_DECODER_XML, *FINDINGS_RULES_XML.values())
DECODER_NAMES = ("ossec-dfir", "ossec-dfir-outcome", "ossec-dfir-finding")
HUNT_RULE_ID = "100949"  # the dfir-hunt response's binding; never fires it (no srcip)
FINDING_RULE_IDS = tuple(str(i) for i in range(100910, 100950))
RULE_IDS = (*(str(n) for n in range(100900, 100908)), *FINDING_RULE_IDS)
# rule id -> (level, finding line) of the finding alerts the check must see fire.
FINDING_RULES = {
    "100911": (12, "finding=yara_file command=dfir-yara incident=20261129T012533Z_203.0.113.5 "
                   "evidence=yara/01/matches.jsonl name=sample_rule pid=- "
                   f"path=/var/www/sample%20file sha256={'0' * 64} rules_sha256={'0' * 64}"),
    "100915": (10, "finding=suspect_process command=dfir-triage "
                   "incident=20261129T012533Z_203.0.113.5 evidence=triage/01/processes.jsonl "
                   f"name=exe_deleted pid=4242 path=/dev/shm/x sha256={'0' * 64} rules_sha256=-"),
}
# rule id -> (level, outcome) of the outcome alerts the check must see fire.
OUTCOME_RULES = {"100901": (3, "complete"), "100902": (7, "partial"), "100903": (10, "failed"),
                 "100904": (10, "dropped")}
# rule id -> (level, rule id of the single alert) of the storm rules (10 outcomes of one
# command within 600 s raise one of these).
STORM_RULES = {"100905": (5, "100901"), "100906": (9, "100902"), "100907": (12, "100903")}
_WHAT = {DECODER_XML: "decoders of the outcome and finding lines",
         RULES_XML: "rules 100900-100907 (outcome alerts), 100910-100949 (finding alerts)"}


def packaged_xml(name: str) -> str:
    """Return the text of a decoder/rules file shipped in the package."""
    with open(os.path.join(XML_DIR, name), encoding="utf-8") as fh:
        return fh.read()


def block_text(name: str, flavor: str) -> str:
    """Return what goes between the markers of a target file: the outcome XML and the
    findings XML of the flavour (the finding decoder first: analysisd takes the first
    top-level decoder whose prematch matches, and ``ossec-dfir: `` matches finding lines too)."""
    if name == DECODER_XML:
        return packaged_xml(FINDINGS_DECODER_XML).rstrip() + "\n\n" + packaged_xml(name)
    return packaged_xml(name).rstrip() + "\n\n" + packaged_xml(FINDINGS_RULES_XML[flavor])


def sample_line(outcome: str) -> str:
    """Return an outcome line as the AR writes it (TEST-NET address)."""
    return (f"ossec-dfir: outcome={outcome} command=dfir-triage srcip=203.0.113.5 "
            f"incident=20261129T012533Z_203.0.113.5 steps=host:complete,triage:{outcome} "
            f"manifest_sha256={'0' * 64} reason=\"sample\"")


def targets(inst: Installation) -> dict[str, str]:
    """Return where each packaged file is merged: {packaged name: installed path}."""
    return {DECODER_XML: inst.decoder_file, RULES_XML: inst.rules_file}


def clashes(name: str, text: str, path: str) -> list[str]:
    """Return the administrator's decoders/rules (outside our markers) that use our names."""
    mine = conftext.outside(text, path)
    if name == DECODER_XML:
        return [f"{path} line {line}: a decoder named {value!r} exists already"
                for line, value in conftext.attributes(mine, "decoder", "name")
                if value in DECODER_NAMES]
    return [f"{path} line {line}: rule id {value} exists already"
            for line, value in conftext.attributes(mine, "rule", "id") if value in RULE_IDS]


def _check(inst: Installation, fires: bool) -> list[checks.Check]:
    results = [c for c in checks.test_modes(inst) if "analysisd" in c.name]
    if fires and all(c.ok for c in results):
        results += [checks.logtest(inst, sample_line(outcome), rule_id, level, "ossec-dfir")
                    for rule_id, (level, outcome) in OUTCOME_RULES.items()]
        results += [checks.logtest(inst, "ossec-dfir: " + line, rule_id, level,
                                   "ossec-dfir-finding")
                    for rule_id, (level, line) in FINDING_RULES.items()]
    return results


def _apply(inst: Installation, new_texts: dict[str, str], verb: str, fires: bool) -> list[str]:
    """Write the changed files (backups first), check, and restore everything on failure."""
    done: list[str] = []
    saved: dict[str, str | None] = {}
    try:
        for path, text in new_texts.items():
            if os.path.exists(path):
                saved[path] = files.backup(path)
                done.append(f"{verb} {path} (backup {saved[path]})")
            else:
                saved[path] = None
                done.append(f"{verb} {path} (new file)")
            files.write_atomic(path, text, like=path, mode=0o640)
        results = _check(inst, fires)
    except BaseException:
        for path, backup in saved.items():
            files.restore(path, backup)
        raise
    done += [c.line() for c in results]
    failed = [c for c in results if not c.ok]
    if failed:
        for path, backup in saved.items():
            files.restore(path, backup)
        raise InstallError("the decoder/rules check failed, previous files restored:\n  "
                           + "\n  ".join(c.line() for c in failed))
    return done


def install_manager(inst: Installation) -> list[str]:
    """Merge the packaged decoder and rules into the installation; check; return what was done."""
    if inst.is_agent:
        raise InstallError(f"{inst.root} is an agent (no {inst.flavor}-analysisd): the decoder "
                           "and rules belong on the manager", EXIT_BAD_INPUT)
    new_texts: dict[str, str] = {}
    problems: list[str] = []
    for name, path in targets(inst).items():
        if not os.path.isdir(os.path.dirname(path)):
            raise InstallError(f"{os.path.dirname(path)} does not exist: is {inst.root} an "
                               f"{inst.flavor} manager? (--flavor)", EXIT_BAD_INPUT)
        text = files.read_text(path)
        problems += clashes(name, text or "", path)
        block = conftext.marked_block(_WHAT[name], block_text(name, inst.flavor))
        new = conftext.replace(text or "", block, path)
        if new != text:
            new_texts[path] = new
    if problems:
        raise InstallError("not merged, your files already use ossec-dfir's names (an earlier "
                           "copy by hand? remove it, or renumber yours):\n  "
                           + "\n  ".join(problems), EXIT_BAD_INPUT)
    if not new_texts:
        return [f"{path}: unchanged" for path in targets(inst).values()]
    return _apply(inst, new_texts, "merged the ossec-dfir block into", fires=True)


def uninstall_manager(inst: Installation) -> list[str]:
    """Remove the marked decoder and rules blocks; check; return what was done."""
    new_texts: dict[str, str] = {}
    removed_files: list[str] = []
    for path in targets(inst).values():
        text = files.read_text(path)
        if text is None or conftext.marked(text, path) is None:
            continue
        new = conftext.remove(text, path)
        if new.strip():
            new_texts[path] = new
        else:
            removed_files.append(path)
    if not new_texts and not removed_files:
        return ["no ossec-dfir decoder or rules block found"]
    done: list[str] = []
    backups = {}
    for path in removed_files:  # held nothing but ours: back it up, then remove it
        backups[path] = files.backup(path)
        os.unlink(path)
        done.append(f"removed {path} (it held only the ossec-dfir block; backup {backups[path]})")
    try:
        done += _apply(inst, new_texts, "removed the ossec-dfir block from", fires=False)
    except InstallError:
        for path, backup in backups.items():
            files.restore(path, backup)
        raise
    return done
