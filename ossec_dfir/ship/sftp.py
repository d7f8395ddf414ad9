"""Write evidence to an SFTP server with a pinned host key (paramiko, imported here only).

The server's host key must equal the configured ``host_key`` ("TYPE BASE64",
as in known_hosts): there is no trust on first use, and a different key ends
the connection before authentication. The agent only creates directories,
writes ``<key>.part-<random>`` and renames it over ``<key>`` (posix-rename),
so a chrooted account whose sftp-server denies read, readdir and remove is
enough (README). An interrupted upload leaves a ``.part-`` file behind and is
restarted whole on the next pass.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import socket
from typing import Any, Callable

from ..errors import ShipError
from .targets import Target

TIMEOUT_S = 30.0


def _paramiko() -> Any:
    try:
        import paramiko
    except ImportError as err:
        raise ShipError("sftp targets need paramiko: pip install 'ossec-dfir[ship]'") from err
    return paramiko


def pinned_key(host_key: str) -> tuple[str, bytes]:
    """Return (key type, key blob) of a configured ``TYPE BASE64 [comment]`` host key."""
    parts = host_key.split()
    try:
        return parts[0], base64.b64decode(parts[1], validate=True)
    except (IndexError, binascii.Error) as err:
        raise ShipError("host_key is not 'TYPE BASE64'") from err


class SftpClient:
    """One authenticated SFTP session to a target, host key checked before authenticating."""

    def __init__(self, target: Target) -> None:
        paramiko = _paramiko()
        self.target = target
        key_type, blob = pinned_key(target.host_key)
        try:
            pkey = paramiko.PKey.from_path(target.credentials_file)
        except (OSError, paramiko.SSHException, ValueError) as err:
            raise ShipError(f"cannot load the private key ({err})",
                            target.credentials_file) from err
        try:
            sock = socket.create_connection((target.host, target.port), timeout=TIMEOUT_S)
        except OSError as err:
            raise ShipError(f"cannot connect ({err})", f"{target.host}:{target.port}") from err
        self.transport = paramiko.Transport(sock)
        try:
            self.transport.banner_timeout = TIMEOUT_S
            self.transport.auth_timeout = TIMEOUT_S
            self.transport.get_security_options().key_types = [key_type]
            self.transport.start_client(timeout=TIMEOUT_S)
            remote = self.transport.get_remote_server_key()
            if remote.get_name() != key_type or remote.asbytes() != blob:
                raise ShipError(f"host key mismatch: the server offers {remote.get_name()} "
                                f"SHA256:{base64.b64encode(hashlib.sha256(remote.asbytes()).digest()).decode().rstrip('=')}, "
                                "not the pinned host_key; refusing to authenticate",
                                f"{target.host}:{target.port}")
            self.transport.auth_publickey(target.user, pkey)
            self.sftp = paramiko.SFTPClient.from_transport(self.transport)
            self.sftp.get_channel().settimeout(TIMEOUT_S)
        except ShipError:
            self.transport.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as err:
            self.transport.close()
            raise ShipError(f"ssh failed: {err}", f"{target.host}:{target.port}") from err
        self._made: set[str] = set()

    def close(self) -> None:
        """End the session."""
        self.transport.close()

    def path(self, key: str) -> str:
        """Return the remote path of an object key (below the chroot's root)."""
        return "/" + key

    def makedirs(self, directory: str) -> None:
        """Create the directories of a path (without listing: a failed mkdir of an
        existing directory is expected and ignored)."""
        parts = [p for p in directory.split("/") if p]
        for i in range(1, len(parts) + 1):
            sub = "/" + "/".join(parts[:i])
            if sub in self._made:
                continue
            try:
                self.sftp.mkdir(sub, 0o700)
            except OSError:
                pass
            self._made.add(sub)

    def upload(self, key: str) -> SftpUpload:
        """Open a write-only stream into one remote file."""
        return SftpUpload(self, key)

    def get(self, key: str, sink: Callable[[bytes], None]) -> None:
        """Read one remote file into sink (fetch, with an account allowed to read)."""
        try:
            with self.sftp.open(self.path(key), "rb") as fh:
                fh.prefetch()
                while True:
                    data = fh.read(1 << 20)
                    if not data:
                        return
                    sink(data)
        except OSError as err:
            raise ShipError(f"cannot read ({err})", key) from err


class SftpUpload:
    """Write ``<key>.part-<random>``, renamed over ``<key>`` when finished."""

    def __init__(self, client: SftpClient, key: str) -> None:
        self.client = client
        self.final = client.path(key)
        self.temp = f"{self.final}.part-{os.urandom(6).hex()}"
        self.size = 0
        self.sha = hashlib.sha256()
        client.makedirs(os.path.dirname(self.final))
        try:
            self.fh = client.sftp.open(self.temp, "wb")
            self.fh.set_pipelined(True)
        except OSError as err:
            raise ShipError(f"cannot create ({err})", self.temp) from err

    def write(self, data: bytes) -> int:
        """Append bytes to the remote file."""
        try:
            self.fh.write(data)
        except OSError as err:
            raise ShipError(f"write failed ({err})", self.temp) from err
        self.size += len(data)
        self.sha.update(data)
        return len(data)

    def flush(self) -> None:
        """Do nothing (file-like API for the encryptor)."""

    def finish(self) -> None:
        """Close the file and rename it over the final name."""
        try:
            self.fh.close()
            self.client.sftp.posix_rename(self.temp, self.final)
        except OSError as err:
            raise ShipError(f"cannot complete ({err})", self.final) from err
