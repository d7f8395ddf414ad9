"""A real OpenSSH sshd for the SFTP tests: loopback port, own config and host key, a chroot,
and two keys for root: the shipper's (write-only sftp-server) and the analyst's (read)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import free_port, wait_port

SSHD = "/usr/sbin/sshd"
# What the shipper's key may not do: read, list, delete, link (write-only account).
DENIED = "read,readdir,opendir,remove,rmdir,readlink,symlink,hardlink,setstat,fsetstat," \
         "lsetstat,copy-data"


def keygen(path: Path, kind: str = "ed25519") -> str:
    """Create an unencrypted key pair; return the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)],
                   check=True, timeout=60)
    os.chmod(path, 0o600)
    return (path.with_suffix(".pub") if path.suffix else Path(str(path) + ".pub")).read_text().strip()


class Sshd:
    """sshd -D on 127.0.0.1:<port>, chrooted sftp for root; stopped by pid."""

    def __init__(self, work: Path, extra_config: str = "") -> None:
        if not os.path.exists(SSHD):
            pytest.fail("sshd is missing: apt-get install openssh-server (.ci/run installs it)")
        self.work = work
        # The chroot and every directory above it must be root's and writable by nobody
        # else: /tmp (1777) cannot hold it.
        self.chroot = Path(tempfile.mkdtemp(prefix="ossec-dfir-sftp-", dir="/var/lib"))
        os.chmod(self.chroot, 0o755)
        (self.chroot / "upload").mkdir(mode=0o700)
        self.port = free_port()
        self.host_key_pub = keygen(work / "host_ed25519")
        self.shipper_pub = keygen(work / "shipper_ed25519")
        self.analyst_pub = keygen(work / "analyst_ed25519")
        self.shipper_key = work / "shipper_ed25519"
        self.analyst_key = work / "analyst_ed25519"
        # One authorized_keys per user (%u), in a root-owned 0755 directory: sshd reads a
        # user's file with that user's uid, so an unprivileged account needs to reach it.
        self.keys_dir = Path(tempfile.mkdtemp(prefix="ossec-dfir-sshkeys-", dir="/var/lib"))
        os.chmod(self.keys_dir, 0o755)
        auth = self.keys_dir / "root"
        auth.write_text(f'restrict,command="internal-sftp -u 0077 -P {DENIED}" '
                        f"{self.shipper_pub}\nrestrict {self.analyst_pub}\n")
        os.chmod(auth, 0o600)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.config = work / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {work}/host_ed25519\n"
            f"PidFile {work}/sshd.pid\nAuthorizedKeysFile {self.keys_dir}/%u\nStrictModes no\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\n"
            "Subsystem sftp internal-sftp\n"
            f"ChrootDirectory {self.chroot}\nAllowTcpForwarding no\nX11Forwarding no\n"
            + extra_config)                      # Match blocks come last

        self.proc: subprocess.Popen | None = None

    @property
    def host_key(self) -> str:
        """Return the server's public host key as 'TYPE BASE64'."""
        return " ".join(self.host_key_pub.split()[:2])

    def authorize(self, user: str, line: str) -> None:
        """Write USER's authorized_keys (root-owned, readable by the user's uid)."""
        path = self.keys_dir / user
        path.write_text(line + "\n")
        os.chmod(path, 0o644)

    def start(self) -> None:
        """Check the config (sshd -t), start sshd in the foreground (-D), wait for its port."""
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True,
                               text=True, timeout=30)
        assert check.returncode == 0, f"sshd -t refuses the config: {check.stderr}"
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.work / "sshd.log", "ab"))
        wait_port(self.port)

    def kill(self) -> None:
        """Kill sshd and its per-connection sessions, each by its pid (SIGKILL)."""
        import psutil

        if self.proc is not None and self.proc.poll() is None:
            try:
                sessions = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                sessions = []
            os.kill(self.proc.pid, 9)
            for child in sessions:
                try:
                    os.kill(child.pid, 9)
                except ProcessLookupError:
                    pass
            self.proc.wait(timeout=10)
        self.proc = None

    def cleanup(self) -> None:
        """Stop sshd and remove the chroot and the keys directory."""
        self.kill()
        shutil.rmtree(self.chroot, ignore_errors=True)
        shutil.rmtree(self.keys_dir, ignore_errors=True)
