"""Run the triage collector alone in this (freshly exec'd) process; print the result as JSON.

Usage: ``python triage_child.py CONFIG PARAMS_JSON [SRCIP]``. A fresh process
so that its ``VmHWM`` (peak resident memory) is the collector's own, not the
test runner's: fork would carry the parent's pages, and ``ru_maxrss`` of
children keeps the parent's peak across exec. The collector's forked reader
helper is always used (``PARALLEL_MIN_PROCESSES`` 2): its own peak comes back
in the summary (``memory.helper_vm_hwm_kb``).
"""
from __future__ import annotations

import json
import sys
import time


def main() -> int:
    """Run triage into the config's evidence root and print what it did."""
    from ossec_dfir import config as config_mod, hostinfo
    from ossec_dfir.ar.request import Request, parse_ip
    from ossec_dfir.collectors.base import Context, build_params, get_collector
    from ossec_dfir.collectors.triage import procs
    from ossec_dfir.evidence.store import Store

    conf, params_json = sys.argv[1], sys.argv[2]
    srcip = sys.argv[3] if len(sys.argv) > 3 else None
    procs.PARALLEL_MIN_PROCESSES = 2
    cfg = config_mod.load(conf, conf.rsplit("/", 1)[0])
    store = Store(cfg.evidence_root, 0)
    req = Request(protocol="cli", action="add", command="test",
                  srcip=parse_ip(srcip) if srcip else None)
    incident, _ = store.incident_for(req.key, hostinfo.identity, req.to_record())
    cls = get_collector("triage")
    params = build_params(cls, json.loads(params_json))
    ctx = Context(config=cfg, request=req, incident=incident, collector="triage",
                  run_dir=incident.new_run_dir("triage"), params=params,
                  deadline=time.monotonic() + params.timeout_s)
    result = cls().run(ctx, params)
    incident.close()
    store.close()
    from ossec_dfir.collectors.triage.procs import vm_hwm_kb
    print(json.dumps({"outcome": result.outcome, "reason": result.reason,
                      "incident": incident.path, "run_dir": ctx.run_dir,
                      "vm_hwm_kb": vm_hwm_kb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
