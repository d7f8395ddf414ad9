"""What every command shares: the config and store they open, JSON output, exit codes."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..config import ENV_CONFIG, Config, load
from ..errors import EXIT_COMPLETE, EXIT_FAILED, EXIT_PARTIAL
from ..evidence.store import Store


EXIT_BY_OUTCOME = {"complete": EXIT_COMPLETE, "duplicate": EXIT_COMPLETE, "partial": EXIT_PARTIAL,
                   "failed": EXIT_FAILED}


def resolve_ossec_dir(args: argparse.Namespace) -> None:
    """Default --ossec-dir: the tree of a config at <dir>/etc/ossec-dfir.yml, else /var/ossec.

    Relative paths in a config (yara's rules_dirs) are below its OSSEC tree.
    """
    if getattr(args, "ossec_dir", None) is None:
        path = args.config or os.environ.get(ENV_CONFIG)
        if path and os.path.basename(os.path.dirname(os.path.abspath(path))) == "etc":
            args.ossec_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        else:
            args.ossec_dir = "/var/ossec"


def load_config(args: argparse.Namespace) -> Config:
    """Load --config, else $OSSEC_DFIR_CONFIG, else <ossec-dir>/etc/ossec-dfir.yml, else the defaults."""
    path = args.config or os.environ.get(ENV_CONFIG)
    resolve_ossec_dir(args)
    if path is None:
        candidate = os.path.join(args.ossec_dir, "etc", "ossec-dfir.yml")
        path = candidate if os.path.exists(candidate) else None
    return load(path, args.ossec_dir)


def open_store(config: Config, create: bool = False) -> Store:
    """Open the evidence store the config names."""
    return Store(config.evidence_root, reserve_bytes=config.reserve_bytes,
                 grouping_window_s=config.grouping_window_s, create=create)


def print_json(obj: Any) -> None:
    """Print obj as indented, sorted JSON."""
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def resolve_incident(config: Config, ref: str) -> str:
    """Return the path of an incident given its id or a directory path."""
    if os.path.sep in ref or ref.startswith("."):
        return os.path.abspath(ref)
    return os.path.join(config.evidence_root, ref)
