"""Where an OSSEC or Wazuh installation keeps what ossec-dfir installs, and what kind it is.

OSSEC reads custom decoders from ``etc/local_decoder.xml`` and custom rules
from ``rules/local_rules.xml``; Wazuh reads ``etc/decoders/`` and
``etc/rules/``. A manager or a local install has an analysis daemon; an agent
has none (its ``<command>`` and ``<active-response>`` come from the manager).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

FLAVORS = ("ossec", "wazuh")


def detect_flavor(ossec_dir: str) -> str:
    """Return wazuh when the tree has Wazuh's binaries, else ossec."""
    return "wazuh" if os.path.exists(os.path.join(ossec_dir, "bin", "wazuh-control")) else "ossec"


@dataclass(frozen=True)
class Installation:
    """One OSSEC/Wazuh directory and its flavour."""

    root: str
    flavor: str

    def binary(self, daemon: str) -> str:
        """Return the path of a daemon or tool, e.g. analysisd -> bin/ossec-analysisd."""
        return os.path.join(self.root, "bin", f"{self.flavor}-{daemon}")

    def has(self, daemon: str) -> bool:
        """Return whether the installation has that daemon or tool as an executable."""
        return os.access(self.binary(daemon), os.X_OK)

    @property
    def is_manager(self) -> bool:
        """Return whether this is a manager or a local install (it analyses events itself)."""
        return self.has("analysisd")

    @property
    def is_agent(self) -> bool:
        """Return whether this is an agent: agentd and no analysisd (its responses come from the manager)."""
        return self.has("agentd") and not self.is_manager

    @property
    def kind(self) -> str:
        """Return manager, local, agent, or unknown (no daemons found: nothing can be checked)."""
        if self.is_manager:
            return "manager" if self.has("remoted") and not self._local() else "local"
        return "agent" if self.is_agent else "unknown"

    def _local(self) -> bool:
        # OSSEC's installer records the type in etc/ossec-init.conf (TYPE="local").
        try:
            with open(os.path.join(self.root, "etc", "ossec-init.conf"),
                      encoding="utf-8", errors="replace") as fh:
                return any(line.strip() == 'TYPE="local"' for line in fh.read(8192).splitlines())
        except OSError:
            return False

    @property
    def ossec_conf(self) -> str:
        """Return the path of ossec.conf."""
        return os.path.join(self.root, "etc", "ossec.conf")

    @property
    def ar_bin_dir(self) -> str:
        """Return the directory execd runs active responses from."""
        return os.path.join(self.root, "active-response", "bin")

    @property
    def ar_log(self) -> str:
        """Return the active-response log the scripts append to."""
        return os.path.join(self.root, "logs", "active-responses.log")

    @property
    def decoder_file(self) -> str:
        """Return the local decoder file this flavour reads."""
        if self.flavor == "wazuh":
            return os.path.join(self.root, "etc", "decoders", "local_decoder.xml")
        return os.path.join(self.root, "etc", "local_decoder.xml")

    @property
    def rules_file(self) -> str:
        """Return the local rules file this flavour reads."""
        if self.flavor == "wazuh":
            return os.path.join(self.root, "etc", "rules", "local_rules.xml")
        return os.path.join(self.root, "rules", "local_rules.xml")


def installation(ossec_dir: str, flavor: str = "auto") -> Installation:
    """Return the Installation of ossec_dir (flavour auto-detected unless given)."""
    root = os.path.abspath(ossec_dir)
    return Installation(root, detect_flavor(root) if flavor == "auto" else flavor)
