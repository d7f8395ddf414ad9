"""files: search the filesystem like GRR's file finder and list, hash or copy what matches.

The pipeline, per file: the alert's file first (OSSEC's filename argument,
Wazuh's ``syscheck.path``), then a safe walk of the roots (``_walk.Walk``: no
links followed, one filesystem, no pseudo or network filesystems, regular
files only) -> cheap conditions on the ``lstat`` result (path globs, name
regex, size, mtime/ctime window relative to the alert time, owner, permission
bits) -> content conditions from one bounded read (SHA-256 in an IOC list,
regex over the first bytes) -> one action: ``list`` (stat), ``hash`` or
``copy`` into the incident with a byte cap. Every file seen is counted in the
summary: acted upon, rejected by a condition, or skipped with a reason.

Evidence (``files/<NN>/``)::

    results.jsonl          one JSON line per matching file (stat, hashes, matches, copy)
    copies/0001-<name>     copies (action copy); the original path and stat in the
                           manifest entry's ``meta`` and in results.jsonl
"""
from __future__ import annotations

import os
import re
import stat
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..base import Collector, Context, Params, Result, register
from ...errors import ReserveReached
from ...evidence.store import utc_iso
from ...evidence.text import json_line
from . import search as fs
from .regex import BoundedRegex

# In priority order, like yara's (each root has a share of the walk's budgets first).
DEFAULT_ROOTS = (
    "/etc/cron*", "/var/spool/cron", "/etc/systemd/system", "/run/systemd/system",
    "/usr/lib/systemd/system", "/usr/local/bin", "/usr/local/sbin", "/var/www", "/dev/shm",
    "/tmp", "/var/tmp", "/root", "/home")
ACTIONS = ("list", "hash", "copy")
OVERSIZED_POLICIES = ("skip", "head")


@dataclass(frozen=True)
class FilesParams(Params):
    """Parameters of the files collector (0 disables a condition or a bound)."""

    timeout_s: float = 300.0
    roots: tuple[str, ...] = DEFAULT_ROOTS
    include_alert_file: bool = True
    include_alert_dir: bool = True     # the alert's file's directory (its files) before the roots
    path_globs: tuple[str, ...] = ()
    name_regex: str = ""
    min_size_bytes: int = 0
    max_size_bytes: int = 0
    mtime_within_s: float = 0.0
    ctime_within_s: float = 0.0
    owners: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    sha256_iocs: tuple[str, ...] = ()
    sha256_ioc_file: str = ""
    content_regex: str = ""
    content_regex_max_bytes: int = 8 << 20
    content_regex_timeout_s: float = 2.0
    action: str = "hash"
    max_file_bytes: int = 256 << 20
    oversized_policy: str = "skip"
    max_copy_bytes: int = 1 << 30
    max_files: int = 10000
    max_walk_files: int = 200000
    max_depth: int = 32
    one_filesystem: bool = True

    def validate(self) -> list[str]:
        """Return every problem of these parameters (empty when valid)."""
        errors = []
        if self.action not in ACTIONS:
            errors.append(f"action: must be one of {', '.join(ACTIONS)}, not {self.action!r}")
        if self.oversized_policy not in OVERSIZED_POLICIES:
            errors.append(f"oversized_policy: must be one of {', '.join(OVERSIZED_POLICIES)}")
        for name in ("name_regex", "content_regex"):
            try:
                re.compile(getattr(self, name))
            except re.error as err:
                errors.append(f"{name}: not a valid regular expression ({err})")
        for i, root in enumerate(self.roots):
            if not isinstance(root, str) or not os.path.isabs(root) or "/../" in root + "/":
                errors.append(f"roots[{i}]: must be an absolute path without '..'")
        for i, glob in enumerate(self.path_globs):
            if not isinstance(glob, str) or not glob:
                errors.append(f"path_globs[{i}]: must be a non-empty string")
        for i, owner in enumerate(self.owners):
            if owner in ("", None):
                errors.append(f"owners[{i}]: must be a user name or uid")
        for i, perm in enumerate(self.permissions):
            if perm not in fs.PERMISSIONS:
                errors.append(f"permissions[{i}]: {perm!r} is not one of "
                              f"{', '.join(fs.PERMISSIONS)}")
        for i, ioc in enumerate(self.sha256_iocs):
            if not isinstance(ioc, str) or not fs.SHA256_RE.match(ioc):
                errors.append(f"sha256_iocs[{i}]: not a SHA-256 (64 hex digits)")
        if self.sha256_ioc_file and not os.path.isabs(self.sha256_ioc_file):
            errors.append("sha256_ioc_file: must be an absolute path")
        if self.content_regex_timeout_s <= 0:
            errors.append("content_regex_timeout_s: must be more than 0")
        if self.max_size_bytes and self.min_size_bytes > self.max_size_bytes:
            errors.append("min_size_bytes: larger than max_size_bytes")
        for name in ("max_file_bytes", "max_files", "max_walk_files", "max_depth"):
            if getattr(self, name) <= 0:
                errors.append(f"{name}: must be at least 1")
        return errors


@register
class FilesCollector(Collector):
    """Find files by path, metadata and content; list, hash or copy them."""

    name = "files"
    description = ("File search (roots, globs, name, size, times relative to the alert, owner, "
                   "permissions, SHA-256 IOCs, content regex) with a list, hash or copy action.")
    params_type = FilesParams
    nice = 10
    ionice = "best-effort"

    def check(self, ctx: Context, params: Params) -> str | None:
        """Return why the search cannot run (nothing to search, unusable IOC file)."""
        assert isinstance(params, FilesParams)
        if not params.roots and not (params.include_alert_file and ctx.request.filename):
            return "nothing to search: roots is empty and the request names no file"
        if params.sha256_ioc_file:
            try:
                fs.load_ioc_file(params.sha256_ioc_file)
            except ValueError as err:
                return str(err)
        return None

    def run(self, ctx: Context, params: Params) -> Result:
        """Walk, filter, and act on matching files; write results.jsonl."""
        assert isinstance(params, FilesParams)
        search = _Search(ctx, params)
        try:
            with ctx.writer("results.jsonl") as out:
                search.out = out
                search.run()
        finally:
            if search.regex is not None:
                search.regex.close()
        return search.result()


class _Search:
    """One run of the pipeline, with its counters."""

    def __init__(self, ctx: Context, params: FilesParams) -> None:
        from ..walk import Walk, expand_roots

        self.ctx = ctx
        self.params = params
        self.out: Any = None
        self.alert_epoch, self.alert_source = fs.alert_time(ctx.request)
        self.iocs = {i.lower() for i in params.sha256_iocs}
        if params.sha256_ioc_file:
            self.iocs |= fs.load_ioc_file(params.sha256_ioc_file)
        # Matched in a helper killed after content_regex_timeout_s per file: a file
        # built to make the pattern backtrack costs that file, not the collector.
        self.regex = BoundedRegex(params.content_regex.encode("utf-8"),
                                  params.content_regex_timeout_s) \
            if params.content_regex else None
        self.content_conditions = bool(self.iocs) or self.regex is not None
        self.unknown_owners = [o for o in params.owners if fs.resolve_owner(str(o)) is None]
        uids = {fs.resolve_owner(str(o)) for o in params.owners}
        self.conditions = fs.CheapConditions(
            name_regex=re.compile(params.name_regex) if params.name_regex else None,
            path_globs=params.path_globs, min_size_bytes=params.min_size_bytes,
            max_size_bytes=params.max_size_bytes,
            mtime_since=self.alert_epoch - params.mtime_within_s
            if params.mtime_within_s else None,
            ctime_since=self.alert_epoch - params.ctime_within_s
            if params.ctime_within_s else None,
            uids=frozenset(u for u in uids if u is not None) if params.owners else None,
            permissions=params.permissions)
        self.roots = expand_roots(params.roots)
        filename = ctx.request.filename if params.include_alert_dir else None
        # The alert's directory first (its files), then the roots in their order, each
        # with a share of max_walk_files, of max_files (matches) and of the time (walk.py).
        self.walk = Walk(self.roots, one_filesystem=params.one_filesystem,
                         max_files=params.max_walk_files, max_depth=params.max_depth,
                         should_stop=ctx.should_stop, exclude=[ctx.incident.store.root],
                         time_budget_s=ctx.time_left,
                         first_dirs=[os.path.realpath(os.path.dirname(filename))]
                         if filename else [])
        self.rejected: Counter[str] = Counter()
        self.matched = 0
        self.copied_files = 0
        self.copied_bytes = 0
        self.copy_stopped: str | None = None
        self.halted: str | None = None
        self.degraded: list[str] = []
        self.alert_key: tuple[int, int] | None = None
        self.charged: dict[int, list[int]] = {}  # walk source -> [matches, copied bytes]

    # -- driving --------------------------------------------------------------
    def run(self) -> None:
        """Process the alert's file, then every file of the walk."""
        filename = self.ctx.request.filename
        if self.params.include_alert_file and filename:
            self._alert_file(filename)
        for path, st in self.walk:
            if self.matched >= self.params.max_files:  # more files beyond the limit
                self.halted = self.halted or f"max_files={self.params.max_files} reached"
            if self.halted:
                break
            if (st.st_dev, st.st_ino) == self.alert_key:
                self.walk.skip("alert_file_again", path)
                continue
            self._process(path, st, "search")
            if not self.halted:
                self.halted = self.ctx.should_stop()

    def _alert_file(self, given: str) -> None:
        """Process the alert's file (links in its directories resolved and recorded)."""
        from ..walk import is_skipped_fstype
        path = os.path.join(os.path.realpath(os.path.dirname(given)), os.path.basename(given))
        try:
            st = os.lstat(path)
        except OSError as err:
            self.walk.skip("alert_file_" + fs.skip_reason(err), given)
            return
        store_root = self.ctx.incident.store.root.rstrip("/") + "/"
        if stat.S_ISLNK(st.st_mode):
            self.walk.skip("alert_file_symlink", given)
        elif not stat.S_ISREG(st.st_mode):
            self.walk.skip("alert_file_not_regular", given)
        elif is_skipped_fstype(self.walk.fstype(st.st_dev)):
            self.walk.skip("alert_file_on_pseudo_or_network_fs", given)
        elif path.startswith(store_root):
            self.walk.skip("alert_file_in_evidence_store", given)
        else:
            self.alert_key = (st.st_dev, st.st_ino)
            self._process(path, st, "alert", None if path == given else given)

    # -- one file -------------------------------------------------------------
    def _process(self, path: str, st: os.stat_result, source: str,
                 alert_path: str | None = None) -> None:
        rejected = self.conditions.rejects(path, st)
        if rejected:
            self.rejected[rejected] += 1
            return
        params = self.params
        record: dict[str, Any] = {"source": source, **fs.stat_record(path, st)}
        if alert_path is not None:
            record["alert_path"] = alert_path  # as the alert named it, through links
        needs_read = self.content_conditions or params.action in ("hash", "copy")
        if not needs_read:
            self._emit(record)
            return
        oversized = st.st_size > params.max_file_bytes
        if oversized and params.oversized_policy == "skip":
            if self.content_conditions:
                self.walk.skip("oversized", path)
                return
            record["status"] = f"oversized: larger than max_file_bytes={params.max_file_bytes}" \
                               ", not read (oversized_policy skip)"
            self.walk.skip("oversized_not_read", path)
            self._emit(record)
            return
        from ..walk import open_regular
        try:
            fd = open_regular(path, st)
        except OSError as err:
            self.walk.skip(fs.skip_reason(err), path)
            return
        try:
            self._read_and_act(fd, path, record)
        except OSError as err:
            self.walk.skip(fs.skip_reason(err), path)
            if "evidence" in record:  # a copy was begun: say what became of it
                record["copy_status"] = f"read failed: {err.strerror}"
                self._emit(record)
        finally:
            os.close(fd)

    def _read_and_act(self, fd: int, path: str, record: dict[str, Any]) -> None:
        params = self.params
        copy_now = params.action == "copy" and not self.content_conditions
        if copy_now:
            self._copy(fd, path, record, scan=None)
            return
        scan = fs.scan_content(fd, max_bytes=params.max_file_bytes, want_hash=True,
                               regex=self.regex, regex_max_bytes=params.content_regex_max_bytes,
                               should_stop=self.ctx.should_stop)
        if scan.stopped:
            self.halted = scan.stopped
            self.walk.skip("stopped_while_reading", path)
            return
        if self.iocs:
            if not scan.complete:
                self.walk.skip("oversized", path)
                return
            if scan.sha256 not in self.iocs:
                self.rejected["sha256_iocs"] += 1
                return
            record["ioc_match"] = True
        if self.regex is not None:
            if scan.regex_timeout:
                self.walk.skip("content_regex_timeout", path)
                return
            if scan.regex_offset is None:
                self.rejected["content_regex"] += 1
                return
            record["regex_match"] = {"offset": scan.regex_offset,
                                     "text": scan.regex_match.decode("latin-1")
                                     if scan.regex_match is not None else None}
        _add_hash(record, scan.sha256, scan.bytes_read, scan.complete)
        if params.action == "copy":
            self._copy(fd, path, record, scan=scan)
        else:
            self._emit(record)

    def _copy(self, fd: int, path: str, record: dict[str, Any],
              scan: fs.ContentScan | None) -> None:
        params = self.params
        if self.copy_stopped:
            record["copy_status"] = f"not copied: {self.copy_stopped}"
            if scan is None:
                scan = fs.scan_content(fd, max_bytes=params.max_file_bytes, want_hash=True,
                                       should_stop=self.ctx.should_stop)
                _add_hash(record, scan.sha256, scan.bytes_read, scan.complete)
            self._emit(record)
            return
        limit = min(params.max_file_bytes, params.max_copy_bytes - self.copied_bytes)
        before = os.fstat(fd)
        meta = {"original_path": path, "source": record["source"],
                **{k: v for k, v in fs.stat_record(path, before).items() if k != "path"}}
        self.copied_files += 1
        name = "copies/" + fs.evidence_name(self.copied_files, path)
        copied: fs.ContentScan | None = None
        digest = None
        try:
            with self.ctx.writer(name, meta=meta) as writer:
                record["evidence"] = writer.relpath
                copied = fs.scan_content(fd, max_bytes=limit, want_hash=False,
                                         should_stop=self.ctx.should_stop, sink=writer.write)
                digest = writer.sha256
                why = self._copy_problem(copied, before, os.fstat(fd), scan, digest, limit)
                if why:
                    writer.mark_partial(why)
                    record["copy_status"] = why
        except ReserveReached as err:
            self.copy_stopped = f"evidence store reserve reached ({err})"
            self.degraded.append(self.copy_stopped)
            record["copy_status"] = f"partial: {self.copy_stopped}"
        if copied is not None:
            self.copied_bytes += copied.bytes_read
            if record.get("source") == "search":
                self._charge(copied_bytes=copied.bytes_read)
            record["copied_bytes"] = copied.bytes_read
            if copied.stopped:
                self.halted = copied.stopped
            if scan is None:
                _add_hash(record, digest, copied.bytes_read, copied.complete)
        if self.copied_bytes >= params.max_copy_bytes and not self.copy_stopped:
            self.copy_stopped = f"max_copy_bytes={params.max_copy_bytes} reached"
            self.degraded.append(self.copy_stopped)
        self._emit(record)

    def _copy_problem(self, copied: fs.ContentScan, before: os.stat_result,
                      after: os.stat_result, scan: fs.ContentScan | None, digest: str | None,
                      limit: int) -> str | None:
        """Return why a copy is not a faithful, whole copy of the file (None when it is)."""
        if copied.stopped:
            return f"copy stopped: {copied.stopped}"
        if not copied.complete:
            if limit < self.params.max_file_bytes:
                return f"truncated at max_copy_bytes={self.params.max_copy_bytes}"
            return f"truncated at max_file_bytes={self.params.max_file_bytes} (oversized_policy head)"
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            return "the file changed while it was copied"
        if scan is not None and scan.complete and scan.sha256 != digest:
            return "the file changed between the content check and the copy"
        return None

    def _emit(self, record: dict[str, Any]) -> None:
        self.out.write(json_line(record))
        self.matched += 1
        if record.get("source") == "search":
            self._charge(matches=1)

    def _charge(self, matches: int = 0, copied_bytes: int = 0) -> None:
        """Count a walked source's matches and copied bytes against its first-round shares.

        Decoys matching the conditions in the first root end that root's turn
        at its share of max_files or max_copy_bytes; the later roots keep theirs.
        """
        walk = self.walk
        if not walk.first_round or walk.current is None:
            return
        used = self.charged.setdefault(walk.current, [0, 0])
        used[0] += matches
        used[1] += copied_bytes
        params = self.params
        if params.max_files and used[0] >= walk.share(params.max_files):
            walk.end_turn(f"share of max_files={params.max_files} matches used "
                          f"({walk.share(params.max_files)})")
        elif params.max_copy_bytes and used[1] >= walk.share(params.max_copy_bytes):
            walk.end_turn(f"share of max_copy_bytes={params.max_copy_bytes} used "
                          f"({walk.share(params.max_copy_bytes)})")

    # -- result ---------------------------------------------------------------
    def result(self) -> Result:
        """Return the outcome and the summary accounting for every file seen."""
        walk = self.walk.summary()
        summary = {
            "action": self.params.action, "alert_time": utc_iso(self.alert_epoch),
            "alert_time_source": self.alert_source, "roots": self.roots,
            "matched": self.matched, "rejected_by": dict(sorted(self.rejected.items())),
            "copied_files": self.copied_files, "copied_bytes": self.copied_bytes,
            "walk": walk}
        result = Result(summary=summary)
        walk_stopped = walk.get("stopped")
        if isinstance(walk_stopped, str) and walk_stopped.startswith("max_files="):
            walk_stopped = f"max_walk_files={self.params.max_walk_files} reached"
            walk["stopped"] = walk_stopped
        stopped = self.halted or walk_stopped
        if stopped:
            result.degrade(f"search stopped early: {stopped}")
        for reason in self.degraded:
            result.degrade(reason)
        if self.regex is not None and self.regex.timeouts:
            result.degrade(f"content_regex: {self.regex.timeouts} file(s) skipped, not decided "
                           f"within content_regex_timeout_s={self.params.content_regex_timeout_s}"
                           " (see walk.skipped content_regex_timeout)")
        if self.unknown_owners:
            result.degrade("unknown owners (no such user here): "
                           + ", ".join(map(str, self.unknown_owners)))
        return result


def _add_hash(record: dict[str, Any], digest: str | None, nbytes: int, complete: bool) -> None:
    """Record a file's SHA-256, or the SHA-256 of its first bytes when not read whole."""
    if complete:
        record["sha256"] = digest
    else:
        record["sha256_head"] = digest
        record["head_bytes"] = nbytes
