"""Decide which file-backed mappings may be read through /proc/PID/mem.

Reading a page of a file mapping that is not in memory asks the filesystem for
it. A filesystem served by a user-space process (FUSE, and the kernel clients
whose server is another program or another host: 9p, virtiofs, NFS, CIFS, ...)
may never answer, and the reader then sleeps in the kernel for good (a local
user can mount FUSE without privileges). So a mapping is read only when the
filesystem of its device (the ``dev`` field of /proc/PID/maps, which the kernel
writes, never the path, which the process chooses) is a local filesystem served
by the kernel itself (``KERNEL_LOCAL``), or the kernel's internal shared-memory
mount (memfd, SysV shm, shared anonymous memory). Everything else, including a
device found in no mount table (a mount detached with ``umount -l`` after the
file was mapped), is skipped with the reason. The filesystem type is looked up
in the target's /proc/PID/mountinfo (its mount namespace) and in ours.
"""
from __future__ import annotations

import os

PROC = "/proc"

# Filesystems the local kernel serves from memory or a local block device.
KERNEL_LOCAL = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "bcachefs", "f2fs", "jfs", "reiserfs", "nilfs2",
    "zfs", "tmpfs", "ramfs", "hugetlbfs", "devtmpfs", "overlay", "squashfs", "erofs",
    "iso9660", "udf", "vfat", "msdos", "exfat", "ntfs3", "hfs", "hfsplus", "cramfs", "romfs",
    "bpf"})
# Served by a user-space process or a remote host: never read (named in the reason).
USER_SERVED = frozenset({
    "fuse", "fuseblk", "virtiofs", "9p", "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph",
    "afs", "coda", "orangefs", "pvfs2", "gfs2", "ocfs2", "lustre", "glusterfs", "vboxsf",
    "ncpfs", "davfs", "sshfs"})

_SHMEM_DEVS: set[int] | None = None


def parse_dev(text: str) -> int | None:
    """Return os.makedev of a "MM:mm" field (hex in maps, decimal in mountinfo)."""
    return None if ":" not in text else _dev(text, 16)


def _dev(text: str, base: int) -> int | None:
    major, _, minor = text.partition(":")
    try:
        return os.makedev(int(major, base), int(minor, base))
    except ValueError:
        return None


def parse_mountinfo(text: str) -> dict[int, str]:
    """Return {device: filesystem type} from the text of a mountinfo file."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 3 or not tail.split():
            continue
        dev = _dev(fields[2], 10)
        if dev is not None:
            out.setdefault(dev, tail.split()[0])
    return out


def _read(path: str, max_bytes: int = 8 << 20) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(max_bytes).decode("utf-8", "surrogateescape")
    except OSError:
        return ""


def shmem_devs() -> set[int]:
    """Return the devices of the kernel's internal shared-memory mounts (memfd, SysV shm)."""
    global _SHMEM_DEVS
    if _SHMEM_DEVS is None:
        devs: set[int] = set()
        for flags in (0, getattr(os, "MFD_HUGETLB", 0)):
            try:
                fd = os.memfd_create("ossec-dfir-probe", os.MFD_CLOEXEC | flags)
            except (OSError, AttributeError):
                continue
            try:
                devs.add(os.fstat(fd).st_dev)
            finally:
                os.close(fd)
        _SHMEM_DEVS = devs
    return _SHMEM_DEVS


class FsTypes:
    """The filesystem type of each device a process may map, and the read policy."""

    def __init__(self, pid: int) -> None:
        self.types = parse_mountinfo(_read(f"{PROC}/self/mountinfo"))
        self.types.update(parse_mountinfo(_read(f"{PROC}/{pid}/mountinfo")))
        self.shmem = shmem_devs()

    def fstype(self, dev_field: str) -> str | None:
        """Return the filesystem type of a maps dev field ("fd:01"), or None if unknown."""
        dev = parse_dev(dev_field)
        if dev is None:
            return None
        if dev in self.shmem:
            return "shmem"
        return self.types.get(dev)

    def skip_reason(self, dev_field: str, inode: int) -> str | None:
        """Return why a mapping on this device must not be read, or None when it may be."""
        if inode == 0:
            return None  # anonymous memory: served by the kernel
        fstype = self.fstype(dev_field)
        if fstype is None:
            return (f"device {dev_field} is in no mount table (detached mount or kernel-internal"
                    " filesystem): not read, it may be served by a user process")
        if fstype == "shmem":
            return None
        base = fstype.split(".", 1)[0]
        if base in USER_SERVED:
            return (f"filesystem {fstype} is served by a user process or a remote host: "
                    "not read (a read may never return)")
        if base not in KERNEL_LOCAL:
            return f"filesystem {fstype} is not a known local kernel filesystem: not read"
        return None
