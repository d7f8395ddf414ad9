"""Decide whether root may trust a path: nobody but root can change it, or what it names.

ossec-dfir runs as root on a host where an intruder may hold an ordinary
account. Whatever root executes, imports, reads as configuration or writes
evidence into must be out of that account's reach: the file itself, every
directory above it (a writable directory lets its files be replaced), and for
a link, the directory holding the link as well as its target.

The rule, applied to each of those: owned by root, and not writable by group
or others. One exception: a directory with the sticky bit (``/tmp``) may be
world-writable when it is not the path itself, because a user cannot rename or
remove the root-owned entry below it.
"""
from __future__ import annotations

import os
import stat

MAX_TREE_ENTRIES = 200_000


def _mode_problem(path: str, st: os.stat_result, is_final: bool) -> str | None:
    if st.st_uid != 0:
        return f"{path}: owned by uid {st.st_uid}, not root"
    if stat.S_ISLNK(st.st_mode):
        return None  # a link's own mode means nothing; its directory and target count
    if st.st_mode & 0o022 and not (st.st_mode & stat.S_ISVTX and stat.S_ISDIR(st.st_mode)
                                   and not is_final):
        return f"{path}: writable by group or others (mode {st.st_mode & 0o7777:04o})"
    return None


def _chain(path: str, problems: list[str], seen: set[str], depth: int = 0) -> None:
    """Check path and every directory above it, following each link to its target."""
    path = os.path.abspath(path)
    is_final = True
    current = path
    while True:
        if current not in seen:
            seen.add(current)
            try:
                st = os.lstat(current)
            except OSError as err:
                problems.append(f"{current}: {err.strerror}")
                return
            problem = _mode_problem(current, st, is_final)
            if problem:
                problems.append(problem)
            if stat.S_ISLNK(st.st_mode):
                if depth > 40:
                    problems.append(f"{current}: too many levels of links")
                    return
                target = os.path.join(os.path.dirname(current), os.readlink(current))
                _chain(target, problems, seen, depth + 1)
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent
        is_final = False


def path_problems(path: str) -> list[str]:
    """Return why a non-root user could change path (or what it leads to); [] when none.

    Checks path, every directory above it, and, for each link met on the way,
    the link's target with its own directories.
    """
    problems: list[str] = []
    _chain(path, problems, set())
    return _unique(problems)


def tree_problems(top: str, max_entries: int = MAX_TREE_ENTRIES) -> list[str]:
    """Return path_problems(top) plus those of every file, directory and link below it.

    A link below top is followed to its target, which must be trusted too
    (it is what an import would read). More than max_entries entries is a problem.
    """
    problems = path_problems(top)
    seen: set[str] = set()
    count = 0
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in dirnames + filenames:
            count += 1
            if count > max_entries:
                problems.append(f"{top}: more than {max_entries} entries, not all checked")
                return _unique(problems)
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError as err:
                problems.append(f"{full}: {err.strerror}")
                continue
            problem = _mode_problem(full, st, True)
            if problem:
                problems.append(problem)
            if stat.S_ISLNK(st.st_mode):
                _chain(full, problems, seen)
    return _unique(problems)


def _unique(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))
