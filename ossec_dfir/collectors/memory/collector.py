"""memory: a LiME image of the host's RAM and ELF cores of the suspect processes.

Two parts that run separately (``host_image``, ``process_dumps``):

- ``host.lime``: physical memory in LiME format from the first usable source of
  ``sources`` (/proc/kcore, /dev/crash, /dev/mem; see ``lime``), or from a
  configured ``avml`` binary (``backend: avml``), with ``symbols/`` beside it.
- ``processes/<pid>/{core,maps,exe}``: an ELF core per process (``procdump``),
  its maps and its executable, for the suspects of the srcip and the configured
  pids and names; ``processes.json`` lists what was done per process.
"""
from __future__ import annotations

import os
import platform
import select
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from . import procdump
from .. import suspects
from ...evidence.fs import sha256_path
from ..base import BINARY_DIRS, Collector, Context, Params, Result, register
from . import lime

# Where the symbol material lives; constants so tests can use fixtures.
BOOT = "/boot"
ETC = "/etc"
BACKENDS = ("native", "avml")
KERNEL_IMAGES = ("vmlinuz-{release}", "vmlinux-{release}", "Image-{release}")
SYMBOL_MAX_BYTES = 512 << 20


@dataclass(frozen=True)
class MemoryParams(Params):
    """Parameters of the memory collector."""

    timeout_s: float = 1800.0
    host_image: bool = True
    sources: tuple[str, ...] = ("kcore", "crash", "mem")
    backend: str = "native"
    symbols: bool = True
    process_dumps: bool = True
    suspects: bool = True
    pids: tuple[int, ...] = ()
    process_names: tuple[str, ...] = ()
    max_processes: int = 20
    max_process_bytes: int = 4 << 30
    max_total_process_bytes: int = 16 << 30
    max_incident_core_bytes: int = 8 << 30
    max_exe_bytes: int = 256 << 20
    stop_processes: bool = True
    max_stop_s: float = 10.0

    def validate(self) -> list[str]:
        """Return the problems of this parameter set."""
        errors = []
        if not self.host_image and not self.process_dumps:
            errors.append("host_image and process_dumps are both false: nothing to collect")
        unknown = [s for s in self.sources if s not in lime.SOURCES]
        if unknown or not self.sources or len(set(self.sources)) != len(self.sources):
            errors.append(f"sources: must be distinct names among {', '.join(lime.SOURCES)}, "
                          f"not {list(self.sources)}")
        if self.backend not in BACKENDS:
            errors.append(f"backend: must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if any(not str(p).isdigit() or int(p) < 1 for p in self.pids):
            errors.append(f"pids: must be positive process ids, not {list(self.pids)}")
        if any(not isinstance(n, str) or not n or "/" in n for n in self.process_names):
            errors.append("process_names: must be non-empty names without '/'")
        return errors


@register
class MemoryCollector(Collector):
    """Image the host's physical memory (LiME) and dump suspect processes (ELF cores)."""

    name = "memory"
    description = ("Host RAM image in LiME format (kcore, /dev/crash, /dev/mem or avml) with "
                   "symbol material, and ELF cores of the suspect processes.")
    params_type = MemoryParams
    requires_root = True
    nice = 5

    def check(self, ctx: Context, params: Params) -> str | None:
        """Return why neither part can run."""
        assert isinstance(params, MemoryParams)
        if not params.host_image and not params.process_dumps:
            return "host_image and process_dumps are both disabled"
        return None

    def run(self, ctx: Context, params: Params) -> Result:
        """Write host.lime with symbols/, then processes/<pid>/ for each target process."""
        assert isinstance(params, MemoryParams)
        result = Result()
        if params.host_image:
            host_image(ctx, params, result)
        if params.process_dumps:
            process_dumps(ctx, params, result)
        refused = result.summary.get("suspects_status")
        if refused:  # the srcip policy said no: the step's reason says why
            result.reason = f"{result.reason}; {refused}" if result.reason else refused
        return result


# -- host image -------------------------------------------------------------
def host_image(ctx: Context, params: MemoryParams, result: Result) -> None:
    """Write symbols/ and host.lime; record a skip reason in the result when impossible."""
    if params.symbols:
        result.summary["symbols"] = collect_symbols(ctx)
    if params.backend == "avml":
        summary = _avml_image(ctx, params)
    else:
        summary = _native_image(ctx)
    result.summary["host_image"] = summary
    if summary["outcome"] == "skipped":
        result.degrade(f"host image skipped: {summary['reason']}")
    elif summary["outcome"] != "complete":
        result.degrade(f"host image {summary['outcome']}: {summary['reason']}")


def _space_reason(ctx: Context, need: int) -> str | None:
    store = ctx.incident.store
    free = store.free_bytes()
    if need + store.reserve_bytes > free:
        return (f"image needs {need} bytes + reserve {store.reserve_bytes} bytes but only "
                f"{free} bytes are free on the evidence filesystem")
    return None


def _native_image(ctx: Context) -> dict[str, Any]:
    params = ctx.params
    assert isinstance(params, MemoryParams)
    plan, reasons = lime.choose(params.sources)
    if plan is None:
        why = "; ".join(f"{s}: {r}" for s, r in reasons.items())
        return {"outcome": "skipped", "reason": f"no usable memory source ({why})",
                "sources": reasons}
    space = _space_reason(ctx, plan.image_bytes)
    if space:
        return {"outcome": "skipped", "reason": space, "source": plan.path}
    ranges = [[hex(s), hex(e)] for s, e, _ in plan.ranges]
    meta = {"format": "LiME v1", "source": plan.path, "ranges": ranges,
            "rejected_sources": reasons}
    with ctx.writer("host.lime", meta=meta) as w:
        stats = lime.write_lime(w, plan, ctx.should_stop,
                                room=lambda n: ctx.free_bytes() >= n)
        holes = stats["holes"]
        w.meta["holes"] = [[hex(a), hex(b)] for a, b in holes[:1000]]
        w.meta["hole_bytes"] = sum(b - a for a, b in holes)
        w.meta["segments"] = stats["segments"]
        stop_reason = None
        if stats["stopped"]:
            stop_reason = (f"stopped: {stats['stopped']} (image ends after {stats['segments']} "
                           f"whole segments; not read from {stats['next_address']:#x} on)")
            w.meta["not_read_from"] = hex(stats["next_address"])
            w.mark_partial(stop_reason)
    out = {"outcome": "partial" if stop_reason else "complete", "reason": stop_reason,
           "file": w.relpath, "source": plan.path, "size": w.size, "sha256": w.sha256,
           "ranges": len(plan.ranges), "holes": len(holes), "hole_bytes": w.meta["hole_bytes"]}
    return out


def _avml_image(ctx: Context, params: MemoryParams) -> dict[str, Any]:
    path = ctx.binary("avml")
    if not path:
        return {"outcome": "skipped", "reason": "backend avml: no executable avml in " +
                ":".join(BINARY_DIRS) + " (set binaries: avml: /absolute/path)"}
    ram, why = lime.read_ram_ranges()
    if not why:
        space = _space_reason(ctx, sum(e + 1 - s + lime.LIME_HEADER.size for s, e in ram))
        if space:
            return {"outcome": "skipped", "reason": space}
    version = ctx.run_tool([path, "--version"], 10).stdout.decode("utf-8", "replace").strip()
    meta = {"format": "LiME v1", "backend": "avml", "avml_path": path,
            "avml_version": version[:200], "avml_sha256": _sha256_file(path)}
    with tempfile.TemporaryFile() as errors, ctx.writer("host.lime", meta=meta) as w:
        proc = subprocess.Popen([path, "/dev/stdout"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=errors, close_fds=True,
                                env={"PATH": ":".join(BINARY_DIRS), "LC_ALL": "C"})
        assert proc.stdout is not None
        stopped = None
        with proc.stdout:
            fd = proc.stdout.fileno()
            while True:
                stopped = ctx.should_stop()
                if stopped:
                    proc.kill()
                    break
                if select.select([fd], [], [], 1.0)[0]:
                    data = os.read(fd, 8 << 20)
                    if not data:
                        break
                    w.write(data)
        code = proc.wait()
        errors.seek(0)
        err_text = errors.read(2000).decode("utf-8", "replace").strip()
        reason = f"stopped: {stopped}" if stopped else (
            f"avml exit status {code}: {err_text}" if code else None)
        if reason:
            w.mark_partial(reason)
    return {"outcome": "partial" if reason else "complete", "reason": reason,
            "file": w.relpath, "size": w.size, "sha256": w.sha256, "backend": "avml",
            "avml_version": version[:200]}


def _sha256_file(path: str) -> str | None:
    try:
        return sha256_path(path, follow_symlinks=True)[0]
    except OSError:
        return None


def _copy_file(ctx: Context, src: str, name: str, max_bytes: int,
               meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy a file (pseudo files included) into evidence; return what happened."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        return {"source": src, "missing": err.strerror or str(err)}
    try:
        with ctx.writer(name, meta=dict(meta or {}, source=src)) as w:
            w.copy_from_fd(fd, max_bytes)
            if os.read(fd, 1):
                w.mark_partial(f"larger than max_bytes={max_bytes}; truncated")
    except OSError as err:  # a read error of the source (not of the store)
        return {"source": src, "missing": f"read failed: {err.strerror}"}
    finally:
        os.close(fd)
    return {"source": src, "file": w.relpath, "size": w.size, "sha256": w.sha256,
            "truncated": w.outcome == "partial"}


def collect_symbols(ctx: Context) -> dict[str, Any]:
    """Write what an analyst needs to build Volatility symbols for this kernel."""
    release = platform.release()
    out: dict[str, Any] = {"release": release}
    uname = ctx.binary("uname")
    if uname:
        proc = ctx.run_tool([uname, "-a"], 10)
        ctx.write_bytes("symbols/uname-a.txt", proc.stdout)
        out["uname"] = proc.stdout.decode("utf-8", "replace").strip()
    sources = {"proc-version": os.path.join(lime.PROC, "version"),
               "os-release": os.path.join(ETC, "os-release"),
               "kallsyms": os.path.join(lime.PROC, "kallsyms"),
               "System.map": os.path.join(BOOT, f"System.map-{release}"),
               "config": os.path.join(BOOT, f"config-{release}"),
               "btf-vmlinux": os.path.join(lime.SYS, "kernel", "btf", "vmlinux")}
    for name, src in sources.items():
        out[name] = _copy_file(ctx, src, f"symbols/{name}", SYMBOL_MAX_BYTES)
    try:
        with open(sources["kallsyms"], "rb") as fh:
            if fh.readline().startswith(b"0000000000000000 "):
                out["kallsyms"]["warning"] = "addresses hidden (kptr_restrict or not root)"
    except OSError:
        pass
    kernel: dict[str, Any] = {"release": release, "candidates": []}
    for pattern in KERNEL_IMAGES:
        path = os.path.join(BOOT, pattern.format(release=release))
        kernel["candidates"].append(path)
        if os.path.isfile(path):
            kernel.update(path=path, size=os.path.getsize(path), sha256=_sha256_file(path))
            break
    else:
        kernel["missing"] = "no kernel image for the running release in " + BOOT
    ctx.write_json("symbols/kernel-image.json", kernel)
    out["kernel_image"] = kernel
    return out


# -- process dumps ------------------------------------------------------------
def _comm_and_argv0(pid: int) -> tuple[str, str]:
    base = os.path.join(procdump.PROC, str(pid))
    try:
        with open(os.path.join(base, "comm"), "rb") as fh:
            comm = fh.read(64).decode("utf-8", "replace").strip()
        with open(os.path.join(base, "cmdline"), "rb") as fh:
            argv0 = fh.read(4096).split(b"\0", 1)[0].decode("utf-8", "replace")
    except OSError:
        return "", ""
    return comm, os.path.basename(argv0)


def _ancestors() -> set[int]:
    """Return this process and its ancestors (never dumped: that is us)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(os.path.join(procdump.PROC, str(pid), "stat"), "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
            pid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def find_targets(ctx: Context, params: MemoryParams,
                 result: Result | None = None) -> dict[int, list[str]]:
    """Return the pids to dump, each with why (suspect, pid, name), in that priority.

    Suspects follow the srcip policy (``suspects.srcip_problem``): for an
    address of this host none is derived, and the reason goes into the
    result (``suspects_status`` and the step's reason).
    """
    targets: dict[int, list[str]] = {}
    if params.suspects and ctx.request.srcip is not None:
        pids, refused = suspects.live_suspects(ctx.request.srcip, "memory")
        if refused is not None:
            ctx.note(refused)
            if result is not None:
                result.summary["suspects_status"] = refused
        for pid in pids:
            targets.setdefault(pid, []).append(f"connection with {ctx.request.srcip}")
    for pid in params.pids:
        targets.setdefault(int(pid), []).append("pids parameter")
    if params.process_names:
        wanted = set(params.process_names)
        for entry in os.listdir(procdump.PROC):
            if entry.isdigit():
                comm, argv0 = _comm_and_argv0(int(entry))
                hit = wanted & {comm, argv0}
                if hit:
                    targets.setdefault(int(entry), []).append(f"name {sorted(hit)[0]}")
    for pid in _ancestors() & set(targets):
        del targets[pid]
        ctx.note(f"pid {pid} not dumped: it is this collector or its parent")
    return targets  # suspects first, then pids, then names (max_processes keeps the first)


def incident_core_bytes(ctx: Context) -> int:
    """Return the bytes of the process cores already in this incident (every collector's)."""
    return sum(int(e.get("size") or 0) for e in ctx.incident.manifest()
               if e.get("type") == "file" and (e.get("meta") or {}).get("format") == "ELF core")


def process_dumps(ctx: Context, params: MemoryParams, result: Result) -> None:
    """Dump each target process (core, maps, exe) within the per-process, run and incident caps."""
    targets = find_targets(ctx, params, result)
    if len(targets) > params.max_processes:
        result.degrade(f"max_processes={params.max_processes} reached "
                       f"({len(targets)} candidate processes)")
        targets = dict(list(targets.items())[:params.max_processes])
    earlier = incident_core_bytes(ctx)
    run_bytes = 0
    records: list[dict[str, Any]] = []
    not_dumped: list[int] = []
    failed = 0
    for pid, why in targets.items():
        stop = ctx.should_stop()
        if stop:
            result.degrade(f"stopped before all processes were dumped: {stop}")
            break
        run_left = params.max_total_process_bytes - run_bytes
        incident_left = params.max_incident_core_bytes - earlier - run_bytes
        if run_left <= 0 or incident_left <= 0:
            not_dumped = [p for p in targets if p not in {r["pid"] for r in records}]
            result.degrade(
                f"max_total_process_bytes={params.max_total_process_bytes} reached"
                if run_left <= 0 else
                f"max_incident_core_bytes={params.max_incident_core_bytes} reached "
                f"({earlier} bytes of cores from earlier runs, {run_bytes} from this one)")
            break
        rec = _dump_one(ctx, params, pid, min(params.max_process_bytes, run_left, incident_left))
        rec["why"] = why
        run_bytes += rec.get("size") or 0
        records.append(rec)
        failed += rec["outcome"] == "failed"
        if rec["outcome"] == "partial" and rec["reason"]:
            result.degrade(f"pid {pid}: {rec['reason']}")
    for pid in not_dumped:
        records.append({"pid": pid, "why": targets[pid], "outcome": "skipped", "file": None,
                        "reason": "core byte budget used up"})
    if records or targets:
        ctx.write_json("processes.json", records)
    if failed:
        result.degrade(f"{failed} of {len(records)} process dumps failed")
    result.summary["processes"] = {
        "targets": len(targets), "dumped": sum(r["outcome"] in ("complete", "partial")
                                               for r in records),
        "failed": failed, "not_dumped": not_dumped[:100],
        "bytes": sum(r.get("dumped_bytes", 0) for r in records),
        "core_bytes": run_bytes, "incident_core_bytes_before": earlier,
        "pids": [r["pid"] for r in records if r["file"]][:100]}


def _dump_one(ctx: Context, params: MemoryParams, pid: int, max_bytes: int) -> dict[str, Any]:
    comm, _ = _comm_and_argv0(pid)
    rec = procdump.dump_process_core(ctx, pid, f"processes/{pid}/core", max_bytes,
                                     stop=params.stop_processes, max_stop_s=params.max_stop_s)
    rec["comm"] = comm
    if rec["outcome"] == "failed":
        return rec
    base = os.path.join(procdump.PROC, str(pid))
    rec["maps"] = _copy_file(ctx, os.path.join(base, "maps"), f"processes/{pid}/maps",
                             64 << 20).get("file")
    try:
        exe_path = os.readlink(os.path.join(base, "exe"))
    except OSError as err:
        exe_path = None
        rec["exe"] = {"missing": err.strerror}
    if exe_path is not None:
        rec["exe"] = _copy_file(ctx, os.path.join(base, "exe"), f"processes/{pid}/exe",
                                params.max_exe_bytes, meta={"exe": exe_path})
        rec["exe"]["path"] = exe_path
        rec["exe"]["deleted"] = exe_path.endswith(" (deleted)")
    return rec


__all__ = ["MemoryCollector", "MemoryParams", "collect_symbols", "find_targets"]
