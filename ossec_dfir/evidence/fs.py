"""Create directories and files without following symbolic links.

Every evidence path below the evidence root is reached component by
component with ``openat``-style directory descriptors and ``O_NOFOLLOW``, so a
link planted anywhere in the tree makes the operation fail instead of writing
elsewhere.
"""
from __future__ import annotations

import errno
import json
import os
import re
import stat

from ..errors import StoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:  # the interpreter's own SHA-256: CPython 3.12 and later, then 3.11 and earlier
    from _sha2 import sha256 as _builtin_sha256
except ImportError:
    try:
        from _sha256 import sha256 as _builtin_sha256
    except ImportError:  # a build without it: hashlib's
        _builtin_sha256 = None

DIR_MODE = 0o700
FILE_MODE = 0o600
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Names of evidence files and directories: no attacker text reaches here
# except a validated, normalised IP address.
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=,-]{0,127}$")


def check_relpath(relpath: str) -> list[str]:
    """Return the components of a safe relative evidence path or raise StoreError."""
    parts = relpath.split("/")
    if not relpath or len(relpath) > 255 or any(
            not _SAFE_COMPONENT.fullmatch(p) or p in (".", "..") for p in parts):
        raise StoreError("unsafe evidence path", relpath)
    return parts


def open_dir_at(dir_fd: int, name: str, create: bool = False) -> int:
    """Open (optionally creating, mode 0700) a subdirectory, refusing links."""
    if create:
        try:
            os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
        except FileExistsError:
            pass
        except OSError as err:
            raise StoreError(f"cannot create directory ({err.strerror})", name) from err
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StoreError("refusing a symbolic link or non-directory", name) from err
        raise StoreError(f"cannot open directory ({err.strerror})", name) from err


def open_dirs_at(dir_fd: int, parts: list[str], create: bool = False) -> int:
    """Walk (and create) nested directories below dir_fd; return the last one's fd."""
    fd = os.dup(dir_fd)
    for part in parts:
        try:
            nfd = open_dir_at(fd, part, create=create)
        finally:
            os.close(fd)
        fd = nfd
    return fd


def mkdir_exclusive_at(dir_fd: int, name: str) -> int:
    """Create a new directory (it must not exist) and return its fd."""
    os.mkdir(name, DIR_MODE, dir_fd=dir_fd)  # FileExistsError propagates
    return open_dir_at(dir_fd, name)


def create_file_at(dir_fd: int, name: str, mode: int = FILE_MODE) -> int:
    """Create a new file exclusively (never overwriting, never through a link)."""
    try:
        return os.open(name, _NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
    except FileExistsError as err:
        raise StoreError("evidence file exists already; never overwritten", name) from err
    except OSError as err:
        raise StoreError(f"cannot create evidence file ({err.strerror})", name) from err


def open_append_at(dir_fd: int, name: str, mode: int = FILE_MODE) -> int:
    """Open (creating) an append-only store file, refusing links and non-files."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=dir_fd)
    except OSError as err:
        raise StoreError(f"cannot open ({err.strerror})", name) from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError("not a regular file", name)
    return fd


def open_read_at(dir_fd: int, name: str) -> int:
    """Open a file below dir_fd for reading without following a link."""
    return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of data to fd (os.write may write less)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_json_at(dir_fd: int, name: str, obj: object) -> None:
    """Replace name in dir_fd with obj as one JSON line, atomically: a new private temp
    file (never through a link), fsynced, then renamed over name."""
    check_relpath(name)
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = create_file_at(dir_fd, tmp)
    try:
        write_all(fd, (json.dumps(obj, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_json_at(dir_fd: int, name: str, max_bytes: int) -> object:
    """Return the JSON value of the regular file name in dir_fd (never through a link,
    at most max_bytes read). Raises OSError when it is absent, unreadable or not a
    regular file, ValueError when it is not JSON."""
    fd = open_read_at(dir_fd, name)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        return json.loads(os.read(fd, max_bytes))
    finally:
        os.close(fd)


def check_private_dir(path: str, fd: int) -> None:
    """Refuse a directory that other users could write to or that we do not own."""
    st = os.fstat(fd)
    if st.st_uid not in (0, os.geteuid()):
        raise StoreError(f"owned by uid {st.st_uid}, not by root or us", path)
    if st.st_mode & 0o022:
        raise StoreError(
            f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})", path)


def open_root(path: str, create: bool = True) -> int:
    """Open (creating, 0700) the evidence root and check nobody else can write it."""
    if not os.path.isabs(path):
        raise StoreError("evidence root must be an absolute path", path)
    if create and not os.path.lexists(path):
        parent = os.path.dirname(path.rstrip("/")) or "/"
        os.makedirs(parent, mode=0o755, exist_ok=True)
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as err:
        raise StoreError(f"cannot open evidence root ({err.strerror})", path) from err
    try:
        check_private_dir(path, fd)
    except StoreError:
        os.close(fd)
        raise
    return fd


def fsync_dir(dir_fd: int) -> None:
    """Flush a directory's entries to disk (after creating files in it)."""
    try:
        os.fsync(dir_fd)
    except OSError:
        pass


def small_sha256(data: bytes = b"") -> Any:
    """Return a SHA-256 hash object for small inputs: records, keys, config files.

    The interpreter's built-in implementation, same digests: importing hashlib
    loads OpenSSL, about 5 ms of every AR start. Bulk data (evidence files,
    captures, images: sha256_fd, EvidenceWriter) is hashed with hashlib's,
    several times faster per byte.
    """
    if _builtin_sha256 is None:
        import hashlib
        return hashlib.sha256(data)
    return _builtin_sha256(data)


def sha256_fd(fd: int, max_bytes: int = 0) -> tuple[str | None, int]:
    """Hash a file from offset 0 with pread (its position is untouched).

    Return (hex digest, bytes read); the digest is None when the file is
    longer than max_bytes (0: no limit).
    """
    import hashlib  # OpenSSL's: bulk data (not on the AR hot path)

    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return digest.hexdigest(), offset
        offset += len(chunk)
        if max_bytes and offset > max_bytes:
            return None, offset
        digest.update(chunk)


def sha256_path(path: str, follow_symlinks: bool = False) -> tuple[str, int]:
    """Hash a file by path (not through a link unless asked); return (hex, size)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        digest, size = sha256_fd(fd)
    finally:
        os.close(fd)
    return digest or "", size
