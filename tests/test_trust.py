"""trust: what root may execute, import or read as configuration."""
from __future__ import annotations

import os
import pwd

import pytest

from ossec_dfir.trust import path_problems, tree_problems

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")
NOBODY = pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def top(tmp_path):
    top = tmp_path / "top"
    (top / "pkg" / "sub").mkdir(parents=True)
    for d in (tmp_path, top, top / "pkg", top / "pkg" / "sub"):
        os.chmod(d, 0o755)
    (top / "pkg" / "mod.py").write_text("x = 1\n")
    (top / "pkg" / "sub" / "deep.py").write_text("y = 2\n")
    return top


def test_root_owned_tree_is_trusted(top):
    assert path_problems(str(top / "pkg" / "mod.py")) == []
    assert tree_problems(str(top)) == []


def test_a_file_owned_by_a_user_is_not(top):
    os.chown(top / "pkg" / "sub" / "deep.py", NOBODY, -1)
    assert any("owned by uid" in p for p in path_problems(str(top / "pkg" / "sub" / "deep.py")))
    assert any("deep.py" in p for p in tree_problems(str(top)))


def test_a_writable_directory_anywhere_above_is_not(top):
    os.chmod(top / "pkg", 0o777)
    problems = path_problems(str(top / "pkg" / "sub" / "deep.py"))
    assert problems == [f"{top / 'pkg'}: writable by group or others (mode 0777)"]
    os.chmod(top / "pkg", 0o775)
    assert path_problems(str(top / "pkg" / "mod.py"))


def test_a_sticky_directory_is_fine_above_but_not_as_the_path(top):
    os.chmod(top / "pkg", 0o1777)
    assert path_problems(str(top / "pkg" / "mod.py")) == []
    assert path_problems(str(top / "pkg")) != []


def test_links_are_judged_by_their_directory_and_their_target(top, tmp_path):
    user_dir = tmp_path / "home"
    user_dir.mkdir()
    os.chown(user_dir, NOBODY, -1)
    (user_dir / "evil.py").write_text("import os\n")
    os.symlink(user_dir / "evil.py", top / "pkg" / "link.py")      # trusted dir -> user file
    assert any(str(user_dir) in p for p in path_problems(str(top / "pkg" / "link.py")))
    assert any(str(user_dir) in p for p in tree_problems(str(top)))
    os.unlink(top / "pkg" / "link.py")
    os.symlink(top / "pkg" / "mod.py", user_dir / "python")        # user dir -> trusted file
    assert any(str(user_dir) in p for p in path_problems(str(user_dir / "python")))


def test_a_missing_path_is_a_problem(tmp_path):
    assert path_problems(str(tmp_path / "absent"))
