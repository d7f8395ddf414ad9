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

Consumers add their own skip reasons (``walk.skip("too_large", path)``) so one
summary accounts for every file the walk saw.
"""
from __future__ import annotations

import errno
import glob
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

# Where mount information is read from (tests may point it elsewhere).
MOUNTINFO = "/proc/self/mountinfo"
# Opened files are reached again through here (a name for an fd, no path lookup).
PROC_SELF_FD = "/proc/self/fd"

# Filesystems never entered: kernel pseudo filesystems and network or FUSE
# filesystems (slow, remote, or able to hang a reader). tmpfs is scanned: /tmp
# and /dev/shm are tmpfs on many hosts and are where intruders drop files.
SKIP_FSTYPES: tuple[str, ...] = (
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
    "securityfs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs",
    "binfmt_misc", "efivarfs", "nsfs", "rpc_pipefs", "selinuxfs", "ramfs",
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "afs", "ceph", "glusterfs",
    "lustre", "gpfs", "ocfs2", "gfs2", "davfs", "sshfs", "fuse", "fuseblk",
)
# Any fstype starting with one of these is skipped as well (fuse.sshfs, ...).
SKIP_FSTYPE_PREFIXES: tuple[str, ...] = ("fuse.",)

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
DEPTH = "max_depth"
EXCLUDED = "excluded"
ERROR = "error"

MAX_EXAMPLES = 5
_STOP_CHECK_EVERY = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_GLOB_CHARS = frozenset("*?[")


def mount_fstypes(mountinfo: str | None = None) -> dict[int, str]:
    """Return a map of device number (st_dev) to filesystem type from mountinfo."""
    out: dict[int, str] = {}
    try:
        with open(mountinfo or MOUNTINFO, "rb") as fh:
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        try:
            sep = fields.index("-")
            major, minor = fields[2].split(":")
            out[os.makedev(int(major), int(minor))] = fields[sep + 1]
        except (ValueError, IndexError):
            continue
    return out


def is_skipped_fstype(fstype: str | None, skip_fstypes: Iterable[str] = SKIP_FSTYPES) -> bool:
    """Return True when a filesystem type must not be entered."""
    if not fstype:
        return False
    return fstype in skip_fstypes or fstype.startswith(SKIP_FSTYPE_PREFIXES)


def expand_roots(patterns: Iterable[str]) -> list[str]:
    """Expand configured root patterns (``/etc/cron*``) into sorted absolute paths.

    Only configuration goes through here, never alert text: a pattern without
    glob characters is kept as it is (even when it does not exist, so the walk
    can count it as vanished).
    """
    out: list[str] = []
    for pattern in patterns:
        if not os.path.isabs(pattern):
            continue
        if _GLOB_CHARS & set(pattern):
            out.extend(sorted(glob.glob(pattern)))
        else:
            out.append(os.path.normpath(pattern))
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def open_regular(path: str, expected: os.stat_result | None = None) -> int:
    """Open a regular file for reading without following a link or blocking.

    Refuses (OSError) anything that is not a regular file once opened, and a
    file whose device and inode differ from ``expected`` (replaced since the
    walk saw it). ``O_NOATIME`` is used when allowed, to leave atime untouched.
    """
    try:
        fd = os.open(path, _FILE_FLAGS | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, _FILE_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if expected is not None and (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
            raise OSError(errno.ESTALE, "replaced since it was listed", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Walk:
    """An iterable walk over roots yielding ``(path, lstat result)`` of regular files."""

    def __init__(self, roots: Iterable[str], *, one_filesystem: bool = True,
                 skip_fstypes: Iterable[str] = SKIP_FSTYPES, max_files: int = 0,
                 max_depth: int = 64, should_stop: Callable[[], str | None] | None = None,
                 exclude: Iterable[str] = (), include_special: bool = False,
                 mountinfo: str | None = None) -> None:
        self.roots = [os.path.normpath(r) for r in roots]
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
                "stopped": self.stopped}

    def fstype(self, st_dev: int) -> str | None:
        """Return the filesystem type of a device number (None when unknown)."""
        return self._fstypes.get(st_dev)

    # -- walking -------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[str, os.stat_result]]:
        stack: list[tuple[str, os.stat_result, int, int]] = []
        for root in reversed(self.roots):
            item = self._root(root)
            if item is None:
                continue
            if stat.S_ISDIR(item.st_mode):
                stack.append((root, item, item.st_dev, 0))
            else:
                # A root that is a regular file is yielded in root order: push it as
                # a pseudo entry handled below.
                stack.append((root, item, item.st_dev, -1))
        while stack:
            if self._stop_now():
                return
            path, st, root_dev, depth = stack.pop()
            if depth < 0:
                if self._take_file(path, st):
                    yield path, st
                    if self._limit_reached():
                        return
                continue
            entries = self._list(path, st)
            if entries is None:
                continue
            subdirs: list[tuple[str, os.stat_result, int, int]] = []
            for name, est in entries:
                child = path.rstrip("/") + "/" + name
                if self._stop_now():
                    return
                mode = est.st_mode
                if stat.S_ISREG(mode):
                    if self._excluded(child):
                        continue
                    if self._take_file(child, est):
                        yield child, est
                        if self._limit_reached():
                            return
                elif stat.S_ISDIR(mode):
                    if self._enter_ok(child, est, root_dev, depth + 1):
                        subdirs.append((child, est, root_dev, depth + 1))
                elif stat.S_ISLNK(mode):
                    self.skip(SYMLINK, child)
                    if self.include_special:
                        yield child, est
                else:
                    self.skip(SPECIAL, child)
                    if self.include_special:
                        yield child, est
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

    def _excluded(self, path: str) -> bool:
        for prefix in self.exclude:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                self.skip(EXCLUDED, path)
                return True
        return False

    def _take_file(self, path: str, st: os.stat_result) -> bool:
        key = (st.st_dev, st.st_ino)
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

    def _list(self, path: str, st: os.stat_result) -> list[tuple[str, os.stat_result]] | None:
        """Return the sorted (name, lstat) entries of a directory, or None (counted)."""
        key = (st.st_dev, st.st_ino)
        if key in self._seen_dirs:  # a bind mount seen twice
            self.skip(HARDLINK, path)
            return None
        self._seen_dirs.add(key)
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError as err:
            self.skip(_reason(err), path)
            return None
        out: list[tuple[str, os.stat_result]] = []
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != key:
                self.skip(CHANGED, path)
                return None
            self.dirs += 1
            with os.scandir(fd) as it:
                for entry in it:
                    try:
                        out.append((entry.name, entry.stat(follow_symlinks=False)))
                    except OSError as err:
                        self.skip(_reason(err), path.rstrip("/") + "/" + entry.name)
        except OSError as err:
            self.skip(_reason(err), path)
            return None
        finally:
            os.close(fd)
        out.sort(key=lambda item: item[0])
        return out


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
