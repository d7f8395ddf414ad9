"""What a walk may read: filesystems never entered, configured roots, safe opens.

Shared by ``walk`` (the tree walk) and the collectors that open what it
yields: a device number's filesystem type from mountinfo, the pseudo and
network filesystems never entered, configured root patterns expanded, and a
regular file opened without following a link or blocking.
"""
from __future__ import annotations

import errno
import glob
import os
import stat
from collections.abc import Iterable

# Where mount information is read from (tests may point it elsewhere).
MOUNTINFO = "/proc/self/mountinfo"

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


__all__ = ["MOUNTINFO", "SKIP_FSTYPES", "SKIP_FSTYPE_PREFIXES", "mount_fstypes",
           "is_skipped_fstype", "expand_roots", "open_regular"]
