"""Walk directory trees safely: no links followed, one filesystem, every skip counted.

Shared by the ``yara`` and ``files`` collectors. A walk never follows a
symbolic link (a root that is a link is skipped too), never opens a file (only
directories, with ``O_NOFOLLOW``, checked against the inode seen when listing
them), stays on the filesystem of each root unless told otherwise, and never
enters pseudo or network filesystems (proc, sysfs, nfs, fuse, cifs, ...).
Each file is yielded once even if hard-linked under several names.

Usage::

    walk = Walk(["/tmp", "/home"], max_files=10000, should_stop=ctx.should_stop,
                exclude=[evidence_root])
    for path, st in walk:          # regular files only, lstat results
        fd = open_regular(path, st)  # O_NOFOLLOW|O_NONBLOCK, same inode, or OSError
        ...
    walk.summary()   # {"yielded": n, "skipped": {reason: count}, "examples": ..., "stopped": ...}

A directory is read as a stream (``scandir`` on its descriptor), in batches
of ``LIST_BATCH`` entries, each sorted by name (a whole directory, when it
holds no more): a directory of millions of entries costs no more memory than
one of a few thousand; only
its subdirectories are kept (sorted, to be walked next), and at most
``MAX_PENDING_DIRS`` directories wait in all, more counted as skipped
(``max_pending_dirs``).

Consumers add their own skip reasons (``walk.skip("too_large", path)``) so one
summary accounts for every file the walk saw.

Budgets are spent where evidence is likeliest, and first come is not first
served: ``first_dirs`` (the alert's file's directory: its files, not its
subdirectories) come before the roots, in the order given (their priority),
and with ``max_files`` each of these sources has a share of it (and of
``time_budget_s``) in a first round. Only after every source had its turn do
the sources cut short resume, in the same order, on what the others left.
200,000 empty files planted in the first root therefore cost that root its
share, not the web root its turn. ``summary()["sources"]`` records each
source's files, share and how its turn ended; a consumer with a per-source
budget of its own (the files collector's matches) ends a turn with
``end_turn()``.
"""
from __future__ import annotations

import errno
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from .walkfs import (MOUNTINFO, SKIP_FSTYPE_PREFIXES, SKIP_FSTYPES, expand_roots,  # noqa: F401
                     is_skipped_fstype, mount_fstypes, open_regular)

# Opened files are reached again through here (a name for an fd, no path lookup).
PROC_SELF_FD = "/proc/self/fd"

# Skip reasons used by the walk itself (consumers add their own).
SYMLINK = "symlink"
SPECIAL = "special_file"
OTHER_FS = "other_filesystem"
PSEUDO_FS = "pseudo_or_network_fs"
DENIED = "permission_denied"
VANISHED = "vanished"
ROOT_MISSING = "root_missing"
CHANGED = "changed_during_walk"
HARDLINK = "hard_link_seen"
SEEN = "already_walked"
DEPTH = "max_depth"
PENDING = "max_pending_dirs"
EXCLUDED = "excluded"
ERROR = "error"

MAX_EXAMPLES = 5
# Directories found but not yet walked, at most (their names and lstat results are
# what a walk keeps in memory; files are never gathered: they stream).
MAX_PENDING_DIRS = 100000
# Entries of one directory read (and sorted by name) at a time.
LIST_BATCH = 4096
_STOP_CHECK_EVERY = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Walk:
    """An iterable walk over roots yielding ``(path, lstat result)`` of regular files."""

    def __init__(self, roots: Iterable[str], *, one_filesystem: bool = True,
                 skip_fstypes: Iterable[str] = SKIP_FSTYPES, max_files: int = 0,
                 max_depth: int = 64, should_stop: Callable[[], str | None] | None = None,
                 exclude: Iterable[str] = (), include_special: bool = False,
                 mountinfo: str | None = None, first_dirs: Iterable[str] = (),
                 time_budget_s: Callable[[], float] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.roots = [os.path.normpath(r) for r in roots]
        self.first_dirs = [os.path.normpath(d) for d in first_dirs]
        self.time_budget_s = time_budget_s
        self.clock = clock
        self.one_filesystem = one_filesystem
        self.skip_fstypes = frozenset(skip_fstypes)
        self.max_files = max_files
        self.max_depth = max_depth
        self.should_stop = should_stop
        self.exclude = tuple(os.path.normpath(e) for e in exclude)
        self.include_special = include_special
        self._fstypes = mount_fstypes(mountinfo)
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.yielded = 0
        self.dirs = 0
        self.stopped: str | None = None
        self._seen_files: set[tuple[int, int]] = set()
        self._seen_dirs: set[tuple[int, int]] = set()
        self._since_check = 0
        # Excluded directories and files by inode too: a link cannot lead around them.
        self._excluded_keys: set[tuple[int, int]] = set()
        for path in self.exclude:
            try:
                st = os.stat(path)
            except OSError:
                continue
            self._excluded_keys.add((st.st_dev, st.st_ino))
        # The directories listed alone (first_dirs), and the files yielded from them.
        self._shallow_dirs: set[tuple[int, int]] = set()
        self._shallow_files: set[tuple[int, int]] = set()
        self.sources: list[dict[str, object]] = []
        self.current: int | None = None  # index into sources of the source walked now
        self.first_round = True
        self._turn_end: str | None = None

    # -- accounting ----------------------------------------------------------
    def skip(self, reason: str, path: str) -> None:
        """Count one skipped item under reason, keeping a few example paths."""
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(path)

    def summary(self) -> dict[str, object]:
        """Return the counts of this walk (JSON-safe)."""
        return {"yielded": self.yielded, "directories": self.dirs,
                "skipped": dict(sorted(self.skipped.items())),
                "skipped_examples": {k: v for k, v in sorted(self.examples.items())},
                "stopped": self.stopped, "sources": [dict(s) for s in self.sources]}

    def share(self, total: int, index: int | None = None) -> int:
        """Return source index's (default: the current one's) first-round share of total."""
        index = self.current if index is None else index
        n = len(self.sources)
        if not total or not n or index is None:
            return total
        base, extra = divmod(total, n)
        return max(1, base + (1 if index < extra else 0))

    def end_turn(self, reason: str) -> None:
        """End the current source's first-round turn (a consumer's own share ran out)."""
        if self.first_round and self._turn_end is None:
            self._turn_end = reason

    def fstype(self, st_dev: int) -> str | None:
        """Return the filesystem type of a device number (None when unknown)."""
        return self._fstypes.get(st_dev)

    # -- walking -------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[str, os.stat_result]]:
        found: list[tuple[str, os.stat_result, bool]] = []
        for path in self.first_dirs:
            st = self._root(path)
            if st is not None and stat.S_ISDIR(st.st_mode):
                found.append((path, st, True))
                self._shallow_dirs.add((st.st_dev, st.st_ino))
        for root in self.roots:
            st = self._root(root)
            if st is not None:
                found.append((root, st, False))
        self.sources = [{"root": p, "alone": shallow, "files": 0, "turn": None}
                        for p, _, shallow in found]
        walks = [self._source(i, p, st, shallow) for i, (p, st, shallow) in enumerate(found)]
        budget_s = self.time_budget_s() if self.time_budget_s is not None else 0.0
        done: set[int] = set()
        # First round: each source up to its share of files and of time.
        for i, source in enumerate(walks):
            self.current, self._turn_end = i, None
            share = self.share(self.max_files, i) if self.max_files else 0
            self.sources[i]["share"] = share
            until = self.clock() + budget_s / len(walks) if budget_s > 0 else None
            for item in source:
                yield item
                if self.stopped or self._limit_reached():
                    return
                if share and int(self.sources[i]["files"]) >= share:  # type: ignore[call-overload]
                    self._turn_end = f"share of max_files={self.max_files} used ({share})"
                if until is not None and self.clock() >= until:
                    self._turn_end = self._turn_end or (
                        f"share of the time budget used ({budget_s / len(walks):.1f} s)")
                if self._turn_end:
                    self.sources[i]["turn"] = self._turn_end
                    break
            else:
                if self.stopped:
                    return
                done.add(i)
                self.sources[i]["turn"] = "walked to the end"
        # Then the sources cut short, in priority order, on what the others left.
        self.first_round = False
        for i, source in enumerate(walks):
            if i in done:
                continue
            self.current = i
            self.sources[i]["resumed"] = True
            for item in source:
                yield item
                if self.stopped or self._limit_reached():
                    return
            if self.stopped:
                return
            self.sources[i]["turn"] += "; walked to the end after the others"  # type: ignore[operator]
        self.current = None

    def _source(self, index: int, root: str, root_st: os.stat_result,
                shallow: bool) -> Iterator[tuple[str, os.stat_result]]:
        """Yield the files of one source: a root file, a directory tree, or one directory alone."""
        if not stat.S_ISDIR(root_st.st_mode):
            if self._take_file(root, root_st):
                self.sources[index]["files"] += 1  # type: ignore[operator]
                yield root, root_st
            return
        stack: list[tuple[str, os.stat_result, int]] = [(root, root_st, 0)]
        while stack:
            if self._stop_now():
                return
            path, st, depth = stack.pop()
            entries = self._list(path, st, mark=not shallow)
            in_shallow = (st.st_dev, st.st_ino) in self._shallow_dirs
            subdirs: list[tuple[str, os.stat_result, int]] = []
            for name, est in entries:
                child = path.rstrip("/") + "/" + name
                if self._stop_now():
                    return
                mode = est.st_mode
                if stat.S_ISREG(mode):
                    if self._excluded(child, est):
                        continue
                    if self._take_file(child, est, in_shallow):
                        self.sources[index]["files"] += 1  # type: ignore[operator]
                        yield child, est
                elif stat.S_ISDIR(mode):
                    if not shallow and self._enter_ok(child, est, root_st.st_dev, depth + 1):
                        if len(stack) + len(subdirs) >= MAX_PENDING_DIRS:
                            self.skip(PENDING, child)
                        else:
                            subdirs.append((child, est, depth + 1))
                elif stat.S_ISLNK(mode):
                    self.skip(SYMLINK, child)
                    if self.include_special:
                        yield child, est
                else:
                    self.skip(SPECIAL, child)
                    if self.include_special:
                        yield child, est
            subdirs.sort(key=lambda item: item[0])
            stack.extend(reversed(subdirs))

    def _stop_now(self) -> bool:
        if self.stopped:
            return True
        self._since_check += 1
        if self.should_stop is not None and self._since_check >= _STOP_CHECK_EVERY:
            self._since_check = 0
            reason = self.should_stop()
            if reason:
                self.stopped = reason
                return True
        return False

    def _limit_reached(self) -> bool:
        if self.max_files and self.yielded >= self.max_files:
            self.stopped = f"max_files={self.max_files} reached"
            return True
        return False

    def _excluded(self, path: str, st: os.stat_result | None = None) -> bool:
        if st is not None and (st.st_dev, st.st_ino) in self._excluded_keys:
            self.skip(EXCLUDED, path)
            return True
        for prefix in self.exclude:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                self.skip(EXCLUDED, path)
                return True
        return False

    def _take_file(self, path: str, st: os.stat_result, in_shallow: bool = False) -> bool:
        key = (st.st_dev, st.st_ino)
        if in_shallow:  # a first_dirs directory, met again below a root: each file once
            if key in self._shallow_files:
                self.skip(SEEN, path)
                return False
            self._shallow_files.add(key)
        if st.st_nlink > 1:
            if key in self._seen_files:
                self.skip(HARDLINK, path)
                return False
            self._seen_files.add(key)
        self.yielded += 1
        return True

    def _root(self, root: str) -> os.stat_result | None:
        if not os.path.isabs(root):
            self.skip(ERROR, root)
            return None
        if self._excluded(root):
            return None
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            self.skip(ROOT_MISSING, root)
            return None
        except PermissionError:
            self.skip(DENIED, root)
            return None
        except OSError:
            self.skip(ERROR, root)
            return None
        if stat.S_ISLNK(st.st_mode):
            self.skip(SYMLINK, root)
            return None
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            self.skip(SPECIAL, root)
            return None
        # /proc/kcore or a sysfs file is a "regular" file too: never read one.
        if is_skipped_fstype(self.fstype(st.st_dev), self.skip_fstypes):
            self.skip(PSEUDO_FS, root)
            return None
        return st

    def single_file(self, path: str) -> os.stat_result | None:
        """Check one named file (the alert's) like a root: absolute, not excluded, not
        a link, a regular file, not on a pseudo or network filesystem; counted if not."""
        st = self._root(path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            self.skip(SPECIAL, path)
            return None
        return st

    def _enter_ok(self, path: str, st: os.stat_result, root_dev: int, depth: int) -> bool:
        if self._excluded(path):
            return False
        if st.st_dev != root_dev:
            if self.one_filesystem:
                self.skip(OTHER_FS, path)
                return False
            if is_skipped_fstype(self.fstype(st.st_dev), self.skip_fstypes):
                self.skip(PSEUDO_FS, path)
                return False
        if depth > self.max_depth:
            self.skip(DEPTH, path)
            return False
        return True

    def _list(self, path: str, st: os.stat_result,
              mark: bool = True) -> Iterator[tuple[str, os.stat_result]]:
        """Yield the (name, lstat) entries of a directory as they are read (counted if not).

        At most ``LIST_BATCH`` entries are held (sorted by name within the
        batch): the directory stays open while they are yielded (one
        descriptor: the walk lists one directory at a time).
        mark=False lists a first_dirs directory without claiming it, so that
        the root it lies in still walks it (and its subdirectories) later.
        """
        key = (st.st_dev, st.st_ino)
        if key in self._excluded_keys:
            self.skip(EXCLUDED, path)
            return
        if key in self._seen_dirs:  # a bind mount seen twice
            self.skip(HARDLINK, path)
            return
        if mark:
            self._seen_dirs.add(key)
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError as err:
            self.skip(_reason(err), path)
            return
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != key:
                self.skip(CHANGED, path)
                return
            self.dirs += 1
            with os.scandir(fd) as it:
                batch: list[tuple[str, os.stat_result]] = []
                for entry in it:
                    try:
                        batch.append((entry.name, entry.stat(follow_symlinks=False)))
                    except OSError as err:
                        self.skip(_reason(err), path.rstrip("/") + "/" + entry.name)
                    if len(batch) >= LIST_BATCH:
                        batch.sort(key=lambda item: item[0])
                        yield from batch
                        batch = []
                batch.sort(key=lambda item: item[0])
                yield from batch
        except OSError as err:
            self.skip(_reason(err), path)
        finally:
            os.close(fd)


def _reason(err: OSError) -> str:
    if err.errno in (errno.ENOENT, errno.ESTALE):
        return VANISHED
    if err.errno in (errno.EACCES, errno.EPERM):
        return DENIED
    if err.errno in (errno.ELOOP, errno.ENOTDIR):
        return CHANGED
    return ERROR


def walk(roots: Iterable[str], **kwargs: object) -> Walk:
    """Return a Walk over roots (see Walk for the keyword arguments)."""
    return Walk(roots, **kwargs)  # type: ignore[arg-type]


__all__ = ["Walk", "walk", "open_regular", "expand_roots", "mount_fstypes",
           "is_skipped_fstype", "SKIP_FSTYPES"]
