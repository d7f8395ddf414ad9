"""Encrypt evidence to the analysts' age recipients while it streams out; decrypt on fetch.

pyrage (Rust bindings of the age reference implementation) is imported only
here and only when a target has ``encrypt_to``: the host holds the public
recipients alone, so nothing on it can decrypt what it shipped.
"""
from __future__ import annotations

import hashlib
from typing import Any, BinaryIO

from ..errors import ShipError


def _pyrage() -> Any:
    try:
        import pyrage
    except ImportError as err:
        raise ShipError("encrypt_to needs pyrage: pip install 'ossec-dfir[ship]'") from err
    return pyrage


class HashingReader:
    """Read a stream through, hashing and counting what was read (the plaintext)."""

    def __init__(self, src: BinaryIO, limit: int) -> None:
        self.src = src
        self.left = limit
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        """Return up to n bytes (never past the limit given at creation)."""
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.src.read(n)
        self.sha.update(data)
        self.size += len(data)
        self.left -= len(data)
        return data

    def readinto(self, buf: Any) -> int:
        """Fill buf from the stream (file-like API)."""
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def encrypt_stream(src: Any, sink: Any, recipients: tuple[str, ...]) -> None:
    """Encrypt everything read from src to the age recipients, written to sink as it goes."""
    pyrage = _pyrage()
    try:
        keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
        pyrage.encrypt_io(src, sink, keys)
    except (pyrage.RecipientError, pyrage.EncryptError) as err:
        raise ShipError(f"age encryption failed: {err}") from err


def load_identities(path: str) -> list[Any]:
    """Read age identities (AGE-SECRET-KEY-1... lines) from an identity file."""
    pyrage = _pyrage()
    try:
        with open(path, encoding="ascii") as fh:
            lines = [ln.strip() for ln in fh.read(1 << 20).splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise ShipError(f"cannot read the identity file ({err})", path) from err
    try:
        ids = [pyrage.x25519.Identity.from_str(ln) for ln in lines
               if ln.startswith("AGE-SECRET-KEY-")]
    except pyrage.IdentityError as err:
        raise ShipError(f"not an age identity ({err})", path) from err
    if not ids:
        raise ShipError("no AGE-SECRET-KEY line in the identity file", path)
    return ids


def decrypt_stream(src: BinaryIO, sink: BinaryIO, identities: list[Any]) -> None:
    """Decrypt an age stream from src into sink (raises ShipError without a matching key)."""
    pyrage = _pyrage()
    try:
        pyrage.decrypt_io(src, sink, identities)
    except pyrage.DecryptError as err:
        raise ShipError(f"age decryption failed: {err}") from err
