"""Write into an OSSEC tree as root: atomic replaces, timestamped backups, never through a link."""
from __future__ import annotations

import errno
import grp
import os
import stat
import time

from ..errors import EXIT_BAD_INPUT, InstallError

MAX_CONF_BYTES = 16 << 20


def group_id() -> int:
    """Return the gid of the wazuh or ossec group (root when neither exists)."""
    for name in ("wazuh", "ossec"):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return 0


def read_text(path: str) -> str | None:
    """Return the text of a regular file (None when missing); refuse links and huge files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InstallError(f"{path} is a symbolic link: refusing to edit it (point "
                               "--ossec-dir at the real tree)", EXIT_BAD_INPUT) from err
        raise InstallError(f"{path}: cannot read: {err.strerror}") from err
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InstallError(f"{path} is not a regular file", EXIT_BAD_INPUT)
        data = fh.read(MAX_CONF_BYTES + 1)
    if len(data) > MAX_CONF_BYTES:
        raise InstallError(f"{path} is larger than {MAX_CONF_BYTES} bytes: not edited",
                           EXIT_BAD_INPUT)
    return data.decode("utf-8", errors="surrogateescape")


def write_atomic(path: str, text: str, mode: int = 0o640, uid: int = 0,
                 gid: int | None = None, like: str | None = None) -> str:
    """Replace path with text atomically (temporary file made O_EXCL in the same directory).

    The owner and mode are copied from like (normally the file being
    replaced) when it exists, else mode, uid and the ossec/wazuh group.
    """
    directory, name = os.path.split(path)
    if like is not None:
        try:
            st = os.lstat(like)
            mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        except FileNotFoundError:
            pass
    gid = group_id() if gid is None else gid
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        data = text.encode("utf-8", errors="surrogateescape")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    return path


def backup(path: str) -> str:
    """Copy path to path.bak-<UTC timestamp> (a new file, same owner and mode); return it."""
    text = read_text(path)
    if text is None:
        raise InstallError(f"{path}: cannot back up a missing file")
    st = os.lstat(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(100):
        candidate = f"{path}.bak-{stamp}" + (f"-{n}" if n else "")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8", errors="surrogateescape"))
            if os.geteuid() == 0:
                os.fchown(fh.fileno(), st.st_uid, st.st_gid)
            os.fchmod(fh.fileno(), stat.S_IMODE(st.st_mode))
        return candidate
    raise InstallError(f"{path}: no free backup name for {stamp}")


def restore(path: str, backup_path: str | None) -> None:
    """Put the backup back in place (None: the file did not exist before, remove it)."""
    if backup_path is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    text = read_text(backup_path)
    if text is None:
        raise InstallError(f"backup {backup_path} vanished: restore {path} by hand")
    write_atomic(path, text, like=backup_path)
