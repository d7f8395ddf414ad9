"""host: the identity and clock of the collecting host, at the time of the trigger."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .. import hostinfo
from .base import Collector, Context, Params, Result, register


@dataclass(frozen=True)
class HostParams(Params):
    """Parameters of the host collector."""

    timeout_s: float = 30.0


@register
class HostCollector(Collector):
    """Record hostname, machine-id, boot id, kernel, OS, timezone, clock and uptime."""

    name = "host"
    description = "Host identity, kernel command line, clock, uptime and load."
    params_type = HostParams
    nice = 0

    def run(self, ctx: Context, params: Params) -> Result:
        """Write host.json."""
        doc = hostinfo.identity()
        for key, rel in (("proc_version", "version"), ("kernel_cmdline", "cmdline"),
                         ("uptime", "uptime"), ("loadavg", "loadavg")):
            doc[key] = hostinfo._read(os.path.join(hostinfo.PROC, rel))
        doc["os_release_full"] = hostinfo.os_release()
        ctx.write_json("host.json", doc)
        missing = [k for k in ("machine_id", "boot_id") if not doc.get(k)]
        result = Result(summary={"hostname": doc["hostname"], "boot_id": doc["boot_id"]})
        if missing:
            result.degrade("not readable on this host: " + ", ".join(missing))
        return result
