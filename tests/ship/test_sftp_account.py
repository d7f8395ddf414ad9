"""The README's write-only SFTP account, word for word, with a real unprivileged user.

The ``Match User dfir`` block is read from README.md and used as it stands, with the
system user ``nobody`` for ``dfir`` and a fresh root-owned chroot for ``/srv/dfir``:
the agent's key (no options in authorized_keys: the block alone restricts it) ships an
incident, and the same key cannot list, read back or delete what it wrote.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from ossec_dfir.errors import ShipError
from ossec_dfir.ship.fetch import fetch
from ossec_dfir.ship.sftp import SftpClient
from ossec_dfir.ship.shipper import incident_host_id, ship_pass
from ossec_dfir.ship.targets import parse_targets

from .test_s3 import make_incident

README = Path(__file__).resolve().parents[2] / "README.md"
USER = "nobody"


def readme_match_block() -> str:
    """Return the README's sshd ``Match User dfir`` block as it is written."""
    blocks = re.findall(r"```\n(Match User dfir\n.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "README has no (or several) sshd Match User dfir block"
    return blocks[0]


@pytest.fixture
def nobody_sshd(tmp_path: Path):
    """Start sshd with the README's Match block for nobody; stop it by pid afterwards."""
    from .sshd import Sshd, keygen

    try:
        nobody = pwd.getpwnam(USER)
    except KeyError:
        pytest.fail("the system user nobody is missing")
    chroot = Path(tempfile.mkdtemp(prefix="ossec-dfir-sftp-nobody-", dir="/var/lib"))
    try:
        os.chmod(chroot, 0o755)                   # root-owned, not writable by others
        incoming = chroot / "incoming"
        incoming.mkdir(mode=0o700)
        os.chown(incoming, nobody.pw_uid, nobody.pw_gid)   # "owned by dfir"
        block = readme_match_block()
        assert "/srv/dfir" in block
        block = block.replace("Match User dfir", f"Match User {USER}") \
                     .replace("/srv/dfir", str(chroot))
        work = tmp_path / "sshd"
        work.mkdir()
        server = Sshd(work, extra_config=block)
        try:
            key = work / "agent_ed25519"
            server.authorize(USER, keygen(key))          # a plain key line: no options
            server.start()
            yield server, chroot, key
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(chroot, ignore_errors=True)


def agent_target(server, key: Path):
    targets, problems = parse_targets([{
        "name": "vault", "url": f"sftp://{USER}@127.0.0.1:{server.port}/incoming/agents",
        "credentials_file": str(key), "host_key": server.host_key}])
    assert problems == []
    return targets[0]


def test_readme_write_only_account_ships_and_cannot_list_read_or_delete(store, nobody_sshd,
                                                                        tmp_path):
    server, chroot, key = nobody_sshd
    files = {"test/01/a.txt": b"alpha\n", "test/01/big.bin": os.urandom(1 << 20)}
    incident = make_incident(store, files)
    target = agent_target(server, key)
    result = ship_pass(store, incident.id, [target])
    assert result.ok, result.errors
    hid = incident_host_id(incident)
    top = chroot / "incoming" / "agents" / hid / incident.id
    uid = pwd.getpwnam(USER).pw_uid
    for relpath, data in files.items():
        path = top / relpath
        assert path.read_bytes() == data
        st = path.stat()
        assert st.st_uid == uid and st.st_mode & 0o077 == 0     # nobody's, -u 0077
    assert (top / "manifest.jsonl").read_bytes() == \
        (Path(incident.path) / "manifest.jsonl").read_bytes()
    log = (server.work / "sshd.log").read_text(errors="replace")
    assert f"Accepted publickey for {USER}" in log

    # The same key: the server refuses every list, read and delete.
    victim = f"/incoming/agents/{hid}/{incident.id}/test/01/a.txt"
    client = SftpClient(target)
    try:
        for listing in ("/", "/incoming", f"/incoming/agents/{hid}/{incident.id}"):
            with pytest.raises(PermissionError):
                client.sftp.listdir(listing)
        with pytest.raises(PermissionError):
            with client.sftp.open(victim, "rb") as fh:
                fh.read(16)
        with pytest.raises(PermissionError):
            client.sftp.remove(victim)
        with pytest.raises(PermissionError):
            client.sftp.rmdir(f"/incoming/agents/{hid}/{incident.id}/test/01")
        with pytest.raises(PermissionError):
            client.sftp.symlink(victim, victim + ".link")
        with pytest.raises(PermissionError):
            client.sftp.chmod(victim, 0o644)
        # Chrooted: the host's own tree is not there.
        with pytest.raises(FileNotFoundError):
            client.sftp.stat("/etc/passwd")
    finally:
        client.close()
    # A shell or a command is not available either: ForceCommand runs internal-sftp.
    client = SftpClient(target)
    try:
        chan = client.transport.open_session(timeout=30)
        chan.settimeout(30)
        chan.exec_command("cat /etc/passwd")
        chan.shutdown_write()
        out = b""
        while True:
            data = chan.recv(4096)
            if not data:
                break
            out += data
        assert b"root:" not in out
        chan.close()
    finally:
        client.close()
    assert (top / "test/01/a.txt").read_bytes() == b"alpha\n"   # still there, unchanged
    with pytest.raises(ShipError, match="Permission denied"):
        fetch(target, f"{hid}/{incident.id}", str(tmp_path / "denied"))

    # What the account cannot be denied (README): writing over a file it wrote, since the
    # shipper needs open-for-write and posix-rename. The server side must make shipped
    # files immutable (move them out, snapshot) as Object Lock does for S3.
    client = SftpClient(target)
    try:
        with client.sftp.open(victim, "wb") as fh:
            fh.write(b"forged\n")
    finally:
        client.close()
    assert (top / "test/01/a.txt").read_bytes() == b"forged\n"
    incident.close()
