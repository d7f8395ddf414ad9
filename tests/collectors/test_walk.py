"""The safe walk: no links followed, special files never yielded, every skip counted."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ossec_dfir.collectors import walk as _walk
from ossec_dfir.collectors.walk import Walk, expand_roots, open_regular


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "one.txt").write_text("1")
    (root / "a" / "b" / "two.txt").write_text("2")
    (root / "top.txt").write_text("t")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s")
    (root / "link-to-outside").symlink_to(outside)
    (root / "link-to-file").symlink_to(outside / "secret.txt")
    os.mkfifo(root / "fifo")
    os.link(root / "top.txt", root / "a" / "hardlink.txt")
    return root


def test_walk_yields_regular_files_once_and_counts_skips(tree: Path) -> None:
    walk = Walk([str(tree)])
    paths = [p for p, _ in walk]
    rel = sorted(os.path.relpath(p, tree) for p in paths)
    # top.txt and a/hardlink.txt are one inode: yielded once.
    assert rel == ["a/b/two.txt", "a/one.txt", "top.txt"]
    assert walk.skipped["symlink"] == 2
    assert walk.skipped["special_file"] == 1
    assert walk.skipped["hard_link_seen"] == 1
    assert not any("outside" in p for p in paths)
    summary = walk.summary()
    assert summary["yielded"] == 3 and summary["stopped"] is None


def test_walk_lists_a_directory_then_its_subdirectories_in_name_order(tree: Path) -> None:
    paths = [os.path.relpath(p, tree) for p, _ in Walk([str(tree)])]
    assert paths == ["top.txt", "a/one.txt", "a/b/two.txt"]


def test_root_symlink_is_not_followed(tree: Path, tmp_path: Path) -> None:
    walk = Walk([str(tree / "link-to-outside"), str(tmp_path / "missing")])
    assert list(walk) == []
    assert walk.skipped == {"symlink": 1, "root_missing": 1}


def test_root_may_be_a_file(tree: Path) -> None:
    assert [p for p, _ in Walk([str(tree / "top.txt")])] == [str(tree / "top.txt")]


def test_max_files_and_should_stop(tree: Path) -> None:
    walk = Walk([str(tree)], max_files=1)
    assert len(list(walk)) == 1
    assert walk.stopped == "max_files=1 reached"
    many = tree / "many"
    many.mkdir()
    for i in range(200):
        (many / f"f{i:03d}").write_text("x")
    walk = Walk([str(many)], should_stop=lambda: "timeout_s=1 reached")
    assert len(list(walk)) < 200
    assert walk.stopped == "timeout_s=1 reached"


def test_exclude_and_include_special(tree: Path) -> None:
    walk = Walk([str(tree)], exclude=[str(tree / "a")], include_special=True)
    got = {os.path.basename(p) for p, _ in walk}
    assert got == {"top.txt", "fifo", "link-to-file", "link-to-outside"}
    assert walk.skipped["excluded"] == 1


def test_other_and_pseudo_filesystems_are_skipped(tmp_path: Path) -> None:
    # /proc is another filesystem than / and its type is in the skip list.
    walk = Walk(["/proc"], max_files=5)
    assert list(walk) == []
    assert walk.skipped["pseudo_or_network_fs"] == 1
    # A mount below a root is a different device: skipped with one_filesystem.
    mountinfo = tmp_path / "mountinfo"
    dev = os.stat(tmp_path).st_dev
    mountinfo.write_text(f"1 0 {os.major(dev)}:{os.minor(dev)} / / rw - nfs4 srv:/ rw\n")
    walk = Walk([str(tmp_path)], mountinfo=str(mountinfo))
    assert list(walk) == []
    assert walk.skipped["pseudo_or_network_fs"] == 1


def test_fstype_table_and_fuse_prefix() -> None:
    assert _walk.is_skipped_fstype("fuse.sshfs")
    assert _walk.is_skipped_fstype("cifs")
    assert not _walk.is_skipped_fstype("tmpfs")
    assert not _walk.is_skipped_fstype(None)
    table = _walk.mount_fstypes()
    assert table.get(os.stat("/proc").st_dev) == "proc"


def test_expand_roots_globs_config_patterns(tree: Path) -> None:
    roots = expand_roots([str(tree / "a*"), str(tree / "nope"), "relative/ignored",
                          str(tree / "a")])
    assert roots == [str(tree / "a"), str(tree / "nope")]


def test_open_regular_refuses_fifo_link_and_replaced_file(tree: Path) -> None:
    with pytest.raises(OSError):
        open_regular(str(tree / "fifo"))  # O_NONBLOCK: does not hang, refused
    with pytest.raises(OSError):
        open_regular(str(tree / "link-to-file"))
    st = os.lstat(tree / "a" / "one.txt")
    (tree / "a" / "new.txt").write_text("replaced")
    os.replace(tree / "a" / "new.txt", tree / "a" / "one.txt")
    with pytest.raises(OSError):
        open_regular(str(tree / "a" / "one.txt"), st)
    fd = open_regular(str(tree / "top.txt"), os.lstat(tree / "top.txt"))
    try:
        assert os.read(fd, 10) == b"t"
    finally:
        os.close(fd)


def test_errors_map_to_skip_reasons() -> None:
    import errno
    assert _walk._reason(OSError(errno.EACCES, "x")) == "permission_denied"
    assert _walk._reason(OSError(errno.ENOENT, "x")) == "vanished"
    assert _walk._reason(OSError(errno.ELOOP, "x")) == "changed_during_walk"
    assert _walk._reason(OSError(errno.EIO, "x")) == "error"
