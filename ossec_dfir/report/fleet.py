"""The fleet view: per agent, the incidents, outcomes, findings and manifest tips the manager saw.

Built from the ossec-dfir alerts of the manager (alerts.py). Finding values
arrive percent-encoded (ar/findings.py); they are decoded here and shown
through the display escaping (terminal) or html.escape (page).
"""
from __future__ import annotations

import re
import time
from typing import Any

from ..evidence.text import display
from .alerts import Alert
from .html import page
from .layout import Block, Cell, outcome, table_block, text

_FIELD = re.compile(r"(\w+)=(\S*)")
MAX_FINDINGS_PER_INCIDENT = 1000


def _unquote(text: str) -> str:
    """Return a percent-encoded finding value as text (undecodable bytes as \\xNN)."""
    if text in ("", "-"):
        return ""
    cut = text.endswith("~")
    text = text[:-1] if cut else text
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%" and re.fullmatch(r"[0-9A-Fa-f]{2}", text[i + 1:i + 3]):
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out += text[i].encode("utf-8", "replace")
            i += 1
    return out.decode("utf-8", "backslashreplace") + ("..." if cut else "")


def fields(line: str) -> dict[str, str]:
    """Return the key=value fields of an outcome or finding line, before any quoted reason."""
    head = line[len("ossec-dfir: "):].split(' reason="', 1)[0]
    out: dict[str, str] = {}
    for key, value in _FIELD.findall(head):
        out.setdefault(key, value)
    return out


def build(alerts: list[Alert]) -> dict[str, Any]:
    """Return {"agents": {name: {"incidents": {id: {...}}}}} from the alerts, oldest first."""
    agents: dict[str, Any] = {}
    for alert in sorted(alerts, key=lambda a: a.epoch):
        f = fields(alert.line)
        incident = f.get("incident") or "-"
        inc = agents.setdefault(alert.agent, {"incidents": {}})["incidents"].setdefault(
            incident, {"incident": incident, "first_seen": alert.epoch, "commands": [],
                       "outcomes": [], "findings": [], "findings_left_out": 0,
                       "manifest_sha256": None})
        if f.get("command") and f["command"] not in inc["commands"]:
            inc["commands"].append(f["command"])
        if "outcome" in f:
            inc["outcomes"].append({"outcome": f["outcome"], "rule": alert.rule_id,
                                    "steps": f.get("steps"), "time": alert.epoch})
            if re.fullmatch(r"[0-9a-f]{64}", f.get("manifest_sha256", "")):
                inc["manifest_sha256"] = f["manifest_sha256"]
        elif f.get("finding") == "omitted":
            inc["findings_left_out"] += int(f["name"]) if f.get("name", "").isdigit() else 0
        elif "finding" in f:
            if len(inc["findings"]) >= MAX_FINDINGS_PER_INCIDENT:
                inc["findings_left_out"] += 1
                continue
            inc["findings"].append({
                "finding": f["finding"], "rule": alert.rule_id, "level": alert.level,
                "name": _unquote(f.get("name", "")), "pid": f.get("pid", "-"),
                "path": _unquote(f.get("path", "")), "sha256": f.get("sha256", "-"),
                "rules_sha256": f.get("rules_sha256", "-"),
                "evidence": _unquote(f.get("evidence", "")), "time": alert.epoch})
    return {"agents": agents}


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "Z"


def render_text(view: dict[str, Any]) -> str:
    """Return the fleet view as terminal text (every host value escaped)."""
    lines: list[str] = []
    if not view["agents"]:
        return "no ossec-dfir alerts\n"
    for agent, data in sorted(view["agents"].items()):
        lines.append(f"agent {display(agent)}: {len(data['incidents'])} incident(s)")
        for inc in data["incidents"].values():
            last = inc["outcomes"][-1]["outcome"] if inc["outcomes"] else "no outcome yet"
            lines.append(f"  {display(inc['incident'])}  {display(','.join(inc['commands']))}  "
                         f"{display(last)}  findings={len(inc['findings'])}"
                         + (f" (+{inc['findings_left_out']} left out)"
                            if inc["findings_left_out"] else "")
                         + f"  manifest={inc['manifest_sha256'] or '-'}")
            for fnd in inc["findings"]:
                lines.append(f"    {display(fnd['finding'])} rule {fnd['rule']}: "
                             f"{display(fnd['name'])} pid={display(fnd['pid'])} "
                             f"path={display(fnd['path'])} sha256={display(fnd['sha256'])}")
    return "\n".join(lines) + "\n"


def render_html(view: dict[str, Any], source: str) -> str:
    """Return the fleet view as one self-contained page (no script, escaped, CSP)."""
    blocks = [Block("title", "ossec-dfir fleet view"),
              Block("para", items=[f"From {source}, {_stamp(time.time())}."])]
    for agent, data in sorted(view["agents"].items()):
        blocks.append(Block("heading", f"Agent {agent}", f"agent-{len(blocks)}"))
        rows = [[Cell(text(inc["incident"]), "mono"), ",".join(inc["commands"]),
                 outcome(inc["outcomes"][-1]["outcome"] if inc["outcomes"] else "-"),
                 str(len(inc["findings"]) + inc["findings_left_out"]),
                 Cell(text(inc["manifest_sha256"] or "-"), "mono")]
                for inc in data["incidents"].values()]
        blocks.append(table_block(["incident", "commands", "outcome", "findings",
                                   "manifest tip"], rows, title="Incidents"))
        frows = [[Cell(text(inc["incident"]), "mono"), f["finding"], f["rule"], f["name"], f["pid"],
                  Cell(text(f["path"]), "mono"), Cell(text(f["sha256"]), "mono")]
                 for inc in data["incidents"].values() for f in inc["findings"]]
        blocks.append(table_block(["incident", "finding", "rule", "name", "pid", "path",
                                   "sha256"], frows, title="Findings"))
    return page("ossec-dfir fleet view", blocks)
