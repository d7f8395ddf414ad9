"""yara: scan the alert's file, process memory and suspicious directories with YARA rules.

Order: the file named by the alert first, then the memory of every process
(or of the suspects only), then the configured roots. Files are walked with
``_walk`` (no links followed, one filesystem, no pseudo or network
filesystems, special files never opened) and scanned by parallel threads
(yara-python releases the GIL). Every file and process seen is counted as
scanned, matched or skipped with a reason.

Evidence (``yara/<NN>/``): ``rules.json`` (rule files, hashes, YARA version,
cache key), ``matches.jsonl`` (one line per file or process and rule),
``summary.json`` (counts, skips by reason, timings), and with
``dump_matched_processes`` one ELF core per matched process.
"""
from __future__ import annotations

import errno
import os
import pwd
import stat
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from . import rules as _yararules
from ...evidence import text as _text
from ...evidence.fs import sha256_fd
from ...evidence.store import utc_iso_ns
from ..base import Collector, Context, Params, Result, register
from ...errors import LimitReached
from .. import walk as _walk

# In priority order (each root gets its share of max_files and of the time first;
# see walk.py): small root-owned persistence places, the web roots, the
# world-writable drop zones, then the home directories (largest, user-owned).
DEFAULT_ROOTS: tuple[str, ...] = (
    "/etc/ld.so.preload", "/etc/rc.local", "/etc/cron*", "/var/spool/cron",
    "/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/etc/init.d",
    "/etc/profile.d", "/usr/local/bin", "/usr/local/sbin", "/var/www", "/srv", "/dev/shm",
    "/tmp", "/var/tmp", "/root", "/home",
)
OVERSIZE_POLICIES = ("skip", "truncate")
PROCESS_SCOPES = ("all", "suspects")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class YaraParams(Params):
    """Parameters of the yara collector."""

    timeout_s: float = 900.0
    rules_dirs: tuple[str, ...] = ("etc/yara",)
    pushed_rules: bool = False         # also the manager's rules: etc/shared/dfir-*.yar (README "Hunting")
    roots: tuple[str, ...] = DEFAULT_ROOTS
    exclude: tuple[str, ...] = ()
    scan_alert_file: bool = True
    scan_alert_dir: bool = True        # the alert's file's directory (its files) before the roots
    scan_files: bool = True
    scan_processes: bool = True
    process_scope: str = "all"
    one_filesystem: bool = True
    max_files: int = 200000
    max_file_bytes: int = 64 << 20
    oversize_policy: str = "truncate"
    file_timeout_s: int = 30
    process_timeout_s: int = 30
    max_process_bytes: int = 4 << 30
    threads: int = 2
    max_matches: int = 10000
    max_strings: int = 16
    max_string_bytes: int = 64
    max_hash_bytes: int = 1 << 30
    use_cache: bool = True
    dump_matched_processes: bool = False
    dump_max_bytes: int = 1 << 30

    def validate(self) -> list[str]:
        """Return the problems of these parameters."""
        problems = []
        if self.oversize_policy not in OVERSIZE_POLICIES:
            problems.append(f"oversize_policy: must be one of {', '.join(OVERSIZE_POLICIES)}")
        if self.process_scope not in PROCESS_SCOPES:
            problems.append(f"process_scope: must be one of {', '.join(PROCESS_SCOPES)}")
        if not 1 <= self.threads <= 64:
            problems.append("threads: must be between 1 and 64")
        if self.file_timeout_s < 1 or self.process_timeout_s < 1:
            problems.append("file_timeout_s and process_timeout_s: must be at least 1")
        if not self.rules_dirs or not all(isinstance(d, str) and d for d in self.rules_dirs):
            problems.append("rules_dirs: must list at least one directory")
        for key in ("roots", "exclude"):
            bad = [r for r in getattr(self, key) if not (isinstance(r, str) and r.startswith("/"))]
            if bad:
                problems.append(f"{key}: must be absolute paths, not {bad!r}")
        if self.max_file_bytes < 1:
            problems.append("max_file_bytes: must be at least 1")
        return problems


def resolve_rules_dirs(ossec_dir: str, dirs: tuple[str, ...]) -> list[str]:
    """Return the rule directories, relative ones resolved under the OSSEC directory."""
    return [d if os.path.isabs(d) else os.path.join(ossec_dir, d) for d in dirs]


def step_rules_dirs(ossec_dir: str, params: YaraParams) -> list[str]:
    """Return the rule directories of a step: rules_dirs, then etc/shared with pushed_rules."""
    dirs = resolve_rules_dirs(ossec_dir, params.rules_dirs)
    shared = os.path.join(ossec_dir, _yararules.SHARED_DIR)
    return dirs + [shared] if params.pushed_rules and shared not in dirs else dirs


def rules_dirs(ctx: Context, params: YaraParams) -> list[str]:
    """Return the rule directories of this run."""
    return step_rules_dirs(ctx.config.ossec_dir, params)


_STOPPED = "stopped_before_scan"
# Files handed to a scanning thread at once, and batches kept in flight per thread.
_BATCH_FILES = 16
_BATCHES_IN_FLIGHT = 8
# Files up to this size are read with one pread and scanned from memory.
_SMALL_FILE_BYTES = 256 << 10



class _Owners:
    """Cache of uid -> user name (the ``owner`` external)."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    def __call__(self, uid: int) -> str:
        if uid not in self.names:
            try:
                self.names[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self.names[uid] = str(uid)
        return self.names[uid]


def scan_file(rules: Any, path: str, st: os.stat_result, params: YaraParams,
              owner: str, timeout_s: int) -> dict[str, Any]:
    """Scan one file (thread-safe); return {"skip": reason} or the scan outcome."""
    import yara
    truncated = st.st_size > params.max_file_bytes
    if truncated and params.oversize_policy == "skip":
        return {"skip": "too_large"}
    try:
        fd = _walk.open_regular(path, st)
    except OSError as err:
        return {"skip": _open_skip_reason(err)}
    try:
        ext = os.path.splitext(path)[1].lower()
        # libyara takes UTF-8: a name with undecodable bytes is given escaped (\xNN).
        externals = {"filename": _text.escape(os.path.basename(path)),
                     "filepath": _text.escape(path), "extension": _text.escape(ext),
                     "owner": _text.escape(owner)}
        try:
            if truncated:
                data = os.pread(fd, params.max_file_bytes, 0)
                matches = rules.match(data=data, externals=externals, timeout=timeout_s)
                scanned = len(data)
            elif st.st_size <= _SMALL_FILE_BYTES:
                # One pread costs less than libyara's open/fstat/mmap/munmap/close.
                data = os.pread(fd, _SMALL_FILE_BYTES + 1, 0)
                matches = rules.match(data=data, externals=externals, timeout=timeout_s)
                scanned = len(data)
            elif os.path.isdir(_walk.PROC_SELF_FD):
                # libyara maps the already opened and checked file, not the path again.
                matches = rules.match(filepath=f"{_walk.PROC_SELF_FD}/{fd}",
                                      externals=externals, timeout=timeout_s)
                scanned = st.st_size
            else:
                data = os.pread(fd, params.max_file_bytes, 0)
                matches = rules.match(data=data, externals=externals, timeout=timeout_s)
                scanned = len(data)
        except yara.TimeoutError:
            return {"skip": "yara_timeout"}
        except yara.Error:
            return {"skip": "yara_error"}
        except OSError as err:
            return {"skip": _walk._reason(err)}
        out: dict[str, Any] = {"matches": matches, "scanned_bytes": scanned,
                               "truncated": truncated}
        if matches:
            out["sha256"] = sha256_fd(fd, params.max_hash_bytes)[0]
        return out
    finally:
        os.close(fd)


def scan_batch(rules: Any, items: list[tuple[str, os.stat_result, str]], params: YaraParams,
               timeout_s: int, deadline: float) -> list[dict[str, Any]]:
    """Scan several files (path, lstat, owner) in one hand-over to a thread, until deadline."""
    out = []
    for path, st, owner in items:
        if time.monotonic() >= deadline:
            out.append({"skip": _STOPPED})
        else:
            out.append(scan_file(rules, path, st, params, owner, timeout_s))
    return out


def _open_skip_reason(err: OSError) -> str:
    if err.errno == errno.EINVAL:
        return _walk.SPECIAL
    if err.errno == errno.ELOOP:
        return _walk.SYMLINK
    if err.errno == errno.ESTALE:
        return _walk.CHANGED
    return _walk._reason(err)


def _hard_stop(walk: _walk.Walk) -> str | None:
    """Return why the scan must stop now (timeout, signal), not the walk's max_files limit."""
    stopped = walk.stopped
    return stopped if stopped and not stopped.startswith("max_files=") else None


def _write_line(writer: Any, budget: dict[str, int], record: dict[str, Any]) -> None:
    """Write one match line, counting against max_matches."""
    if budget["left"] <= 0:
        budget["dropped"] += 1
        return
    budget["left"] -= 1
    writer.write(_text.json_line(record))


class _FileScan:
    """The file half: the alert's file, then the walk, scanned by a thread pool."""

    def __init__(self, ctx: Context, rules: Any, params: YaraParams, writer: Any,
                 budget: dict[str, int]) -> None:
        self.ctx, self.rules, self.params = ctx, rules, params
        self.writer, self.budget = writer, budget
        self.owner = _Owners()
        self.alert_file: str | None = None
        self.scanned = self.matched = self.scanned_bytes = self.truncated = 0
        self.started = time.monotonic()

    def run(self, walk: _walk.Walk, alert_file: str | None = None) -> None:
        """Scan the alert's file (when given) or every file of the walk, until stopped.

        Files go to the scanning threads in batches (fewer hand-overs) and many
        batches are kept in flight, so no thread idles behind one large file.
        """
        from concurrent.futures import ThreadPoolExecutor
        threads = self.params.threads
        window: deque[tuple[list[tuple[str, os.stat_result, str]], Any]] = deque()
        batch: list[tuple[str, os.stat_result, str]] = []
        with ThreadPoolExecutor(threads, thread_name_prefix="yara-file") as pool:

            def submit() -> None:
                timeout_s = int(min(self.params.file_timeout_s, max(self.ctx.time_left(), 1)))
                window.append((batch[:], pool.submit(
                    scan_batch, self.rules, [(p, st, self.owner(st.st_uid)) for p, st, _ in batch],
                    self.params, timeout_s, self.ctx.deadline)))
                batch.clear()

            items = self._alert_item(walk, alert_file) if alert_file else self._walk_items(walk)
            for path, st, origin in items:
                if walk.stopped is None:
                    walk.stopped = self.ctx.should_stop()
                if walk.stopped:
                    walk.skip(_STOPPED, path)
                    break
                batch.append((path, st, origin))
                if len(batch) >= _BATCH_FILES:
                    submit()
                while len(window) >= threads * _BATCHES_IN_FLIGHT:
                    self._handle_batch(walk, *window.popleft())
            # The walk's own max_files limit ends the walk, not the scan of what it yielded.
            if batch and not _hard_stop(walk):
                submit()
            for path, _, _ in batch:
                walk.skip(_STOPPED, path)
            while window:
                items_done, future = window.popleft()
                if _hard_stop(walk) and future.cancel():
                    for path, _, _ in items_done:
                        walk.skip(_STOPPED, path)
                else:
                    self._handle_batch(walk, items_done, future)

    def _handle_batch(self, walk: _walk.Walk, items: list[tuple[str, os.stat_result, str]],
                      future: Any) -> None:
        for (path, st, origin), outcome in zip(items, future.result()):
            self._handle(walk, path, st, origin, outcome)

    def _alert_item(self, walk: _walk.Walk, alert_file: str):
        """Yield the alert's file if it is a regular file (links are not followed)."""
        self.alert_file = alert_file
        st = walk.single_file(alert_file)
        if st is not None:
            yield alert_file, st, "alert"

    def _walk_items(self, walk: _walk.Walk):
        for path, st in walk:
            if path != self.alert_file:
                yield path, st, "walk"

    def _handle(self, walk: _walk.Walk, path: str, st: os.stat_result, origin: str,
                outcome: dict[str, Any]) -> None:
        if "skip" in outcome:
            walk.skip(outcome["skip"], path)
            if outcome["skip"] == _STOPPED and walk.stopped is None:
                walk.stopped = self.ctx.should_stop() or "stopped"
            return
        self.scanned += 1
        self.scanned_bytes += outcome["scanned_bytes"]
        if outcome["truncated"]:
            self.truncated += 1
        if not outcome["matches"]:
            return
        self.matched += 1
        base = {"type": "file", "origin": origin, "path": path, "size": st.st_size,
                "mtime": utc_iso_ns(st.st_mtime_ns), "ctime": utc_iso_ns(st.st_ctime_ns),
                "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                "mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid, "gid": st.st_gid,
                "owner": self.owner(st.st_uid), "inode": st.st_ino,
                "sha256": outcome.get("sha256"), "scanned_bytes": outcome["scanned_bytes"],
                "truncated_scan": outcome["truncated"]}
        for record in _yararules.match_records(outcome["matches"], self.params.max_strings,
                                               self.params.max_string_bytes):
            _write_line(self.writer, self.budget, {**base, **record})

    def summary(self, walk: _walk.Walk) -> dict[str, Any]:
        """Return the counts of the file scan."""
        seconds = time.monotonic() - self.started
        counts = walk.summary()
        return {"scanned": self.scanned, "matched": self.matched,
                "scanned_bytes": self.scanned_bytes, "truncated": self.truncated,
                "skipped": counts["skipped"], "skipped_examples": counts["skipped_examples"],
                "directories": counts["directories"], "stopped": counts["stopped"],
                "sources": counts["sources"],
                "seconds": round(seconds, 3),
                "mib_per_s": round(self.scanned_bytes / (1 << 20) / seconds, 1) if seconds else None}


@register
class YaraCollector(Collector):
    """Scan the alert's file, process memory and suspicious directories with YARA."""

    name = "yara"
    description = ("YARA scan of the alert's file, process memory and suspicious "
                   "directories; matches with strings, hashes and skip accounting.")
    params_type = YaraParams
    nice = 15
    ionice = "best-effort"

    def check(self, ctx: Context, params: Params) -> str | None:
        """Skip when yara-python is missing or no rules directory exists."""
        assert isinstance(params, YaraParams)
        try:
            import yara  # noqa: F401
        except ImportError:
            return "yara-python is not installed (python3 module yara)"
        dirs = rules_dirs(ctx, params)
        if not any(os.path.isdir(d) for d in dirs):
            return "no rules directory exists: " + ", ".join(dirs) + " (rules_dirs)"
        if not (params.scan_alert_file or params.scan_files or params.scan_processes):
            return "scan_alert_file, scan_files and scan_processes are all false"
        return None

    def run(self, ctx: Context, params: Params) -> Result:
        """Load the rules, then scan; write rules.json, matches.jsonl, summary.json."""
        assert isinstance(params, YaraParams)
        cache_fd = None
        if params.use_cache:
            try:
                cache_fd = ctx.incident.store.state_dir_fd("yara-cache")
            except OSError as err:
                ctx.note(f"rule cache unavailable: {err}")
        dirs = rules_dirs(ctx, params)
        try:
            loaded = _yararules.load_rules(dirs, cache_fd)
        except _yararules.RulesError as err:
            return Result("failed", "rules refused: " + "; ".join(err.problems)[:3000],
                          {"rule_problems": err.problems[:100]})
        finally:
            if cache_fd is not None:
                os.close(cache_fd)
        ctx.write_json("rules.json", loaded.record())
        result = Result(summary={"rules": {"files": len(loaded.files), "cache": loaded.cache}})
        budget = {"left": params.max_matches, "dropped": 0}
        alert_file = ctx.request.filename if params.scan_alert_file else None
        # The alert's directory first (its files), then the roots in their order,
        # each with a share of max_files and of the time left (walk.py).
        walk = _walk.Walk(_walk.expand_roots(params.roots) if params.scan_files else [],
                          one_filesystem=params.one_filesystem, max_files=params.max_files,
                          should_stop=ctx.should_stop, time_budget_s=ctx.time_left,
                          first_dirs=[os.path.realpath(os.path.dirname(ctx.request.filename))]
                          if ctx.request.filename and params.scan_alert_dir
                          and params.scan_files else [],
                          # never the evidence, nor our own signatures (they match themselves)
                          exclude=(ctx.incident.store.root, *dirs, *params.exclude))
        files = _FileScan(ctx, loaded.rules, params, None, budget)
        with ctx.writer("matches.jsonl") as writer:
            files.writer = writer
            if alert_file:
                files.run(walk, alert_file)  # first, alone
            procs = None
            dumps = None
            if params.scan_processes:
                from .procs import scan_processes
                procs = scan_processes(ctx, loaded.rules, params, writer, budget, _write_line)
                if params.dump_matched_processes and procs.matched_pids:
                    dumps = self._dump(ctx, params, procs.matched_pids, result)  # volatile first
            if params.scan_files:
                files.run(walk)
        summary: dict[str, Any] = {"files": files.summary(walk),
                                   "matches_written": params.max_matches - budget["left"],
                                   "matches_dropped": budget["dropped"]}
        if procs is not None:
            summary["processes"] = procs.summary()
        if dumps is not None:
            summary["dumps"] = dumps
        ctx.write_json("summary.json", summary)
        result.summary.update({
            "files_scanned": files.scanned, "files_matched": files.matched,
            "files_skipped": sum(walk.skipped.values()),
            "processes_scanned": procs.scanned if procs else 0,
            "processes_matched": procs.matched if procs else 0,
            "matches": params.max_matches - budget["left"]})
        stopped = walk.stopped or (procs.stopped if procs else None)
        if stopped and not stopped.startswith("max_files"):
            result.degrade(f"stopped: {stopped}")
        elif stopped:
            result.degrade(str(LimitReached("max_files", params.max_files, self.name)))
        if budget["dropped"]:
            result.degrade(str(LimitReached("max_matches", params.max_matches, self.name)))
        if procs is not None and procs.suspects_status and ctx.request.srcip is not None:
            # the srcip policy said no (an address of this host): the reason says why
            refused = procs.suspects_status
            result.reason = f"{result.reason}; {refused}" if result.reason else refused
        return result

    @staticmethod
    def _dump(ctx: Context, params: YaraParams, pids: dict[int, str],
              result: Result) -> list[dict[str, Any]]:
        try:
            from ..memory.procdump import dump_process_core
        except ImportError as err:
            result.degrade(f"dump_matched_processes: process dump unavailable ({err})")
            return []
        records = []
        for pid in sorted(pids):
            if ctx.should_stop():
                result.degrade("dump_matched_processes: stopped before every dump")
                break
            record = dump_process_core(ctx, pid, f"core.{pid}", params.dump_max_bytes)
            records.append(record)
            if record.get("outcome") != "complete":
                result.degrade(f"process dump of pid {pid}: {record.get('reason')}")
        return records
