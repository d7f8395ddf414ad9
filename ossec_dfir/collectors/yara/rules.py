"""Load YARA rules from configured directories: checked, compiled once, cached.

A rules directory holds ``*.yar`` / ``*.yara`` files (searched recursively, no
links followed). A file or directory that another user could change (owned by
someone else than root or us, or writable by group or others) is refused: the
rules run as root against the whole host. ``include`` is disabled, so every
rule file is self-contained and checked. Each file becomes one namespace (its
name without extension), and the externals ``filename``, ``filepath``,
``extension`` and ``owner`` are defined for every rule.

Compiled rules are cached in a root-only directory (the evidence root's
``.state/yara-cache``) under the SHA-256 of the rule sources, their
namespaces and the YARA version, so an unchanged rule set is compiled once.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError

RULE_SUFFIXES = (".yar", ".yara")
EXTERNALS: dict[str, str] = {"filename": "", "filepath": "", "extension": "", "owner": ""}
MAX_RULE_FILE_BYTES = 16 << 20
MAX_RULE_FILES = 10000
_CACHE_SUFFIX = ".yarc"
_NAMESPACE_RE = re.compile(r"[^A-Za-z0-9_]")


class RulesError(ConfigError):
    """The configured YARA rules cannot be used (unsafe file, syntax error, none found)."""


@dataclass(frozen=True)
class RuleFile:
    """One checked rule file and its source."""

    path: str
    namespace: str
    source: str
    sha256: str
    size: int
    mode: int
    uid: int

    def record(self) -> dict[str, Any]:
        """Return the JSON record of this file (no source)."""
        return {"path": self.path, "namespace": self.namespace, "sha256": self.sha256,
                "size": self.size, "mode": f"{self.mode:04o}", "uid": self.uid}


@dataclass
class LoadedRules:
    """Compiled rules with what they were built from."""

    rules: Any
    files: list[RuleFile]
    key: str
    cache: str  # "hit", "miss" (compiled and stored), "off" or "miss-not-stored: <why>"
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """Return the JSON record of the rule set (for rules.json)."""
        import yara
        return {"yara_version": yara.YARA_VERSION, "yara_python": yara.__version__,
                "key": self.key, "cache": self.cache, "files": [f.record() for f in self.files],
                "notes": self.notes}


# Rules pushed by the manager: OSSEC's agent daemon writes the files of the
# manager's etc/shared/ into the agent's etc/shared/ (flat, as its own user,
# in a directory its group may write). Only files named dfir-*.yar(a) there are
# rules; their owner may be that daemon user, nobody else but root.
SHARED_DIR = os.path.join("etc", "shared")
SHARED_PREFIX = "dfir-"
DAEMON_USERS = ("ossec", "wazuh")


def is_shared_dir(path: str) -> bool:
    """Return whether a rules directory is an OSSEC/Wazuh install's etc/shared."""
    return os.path.normpath(path).endswith(os.sep + SHARED_DIR)


def _daemon_ids() -> tuple[set[int], set[int]]:
    """Return the uids and gids of OSSEC's and Wazuh's daemon users on this host."""
    import grp
    import pwd
    uids: set[int] = set()
    gids: set[int] = set()
    for name in DAEMON_USERS:
        with contextlib.suppress(KeyError):
            uids.add(pwd.getpwnam(name).pw_uid)
        with contextlib.suppress(KeyError):
            gids.add(grp.getgrnam(name).gr_gid)
    return uids, gids


def _unsafe(st: os.stat_result, shared: bool = False) -> str | None:
    """Return why a rule file or directory is refused, or None.

    Local rules: owned by root (or us), writable by nobody else. Pushed rules
    (``shared``): the owner may also be the OSSEC daemon user, and the
    directory (not a file) may be writable by the daemon's group.
    """
    uids, gids = _daemon_ids() if shared else (set(), set())
    if st.st_uid not in {0, os.geteuid()} | uids:
        return f"owned by uid {st.st_uid}, not by root or us" + \
            (" or the OSSEC user" if shared else "")
    mask = 0o002 if shared and stat.S_ISDIR(st.st_mode) and st.st_gid in gids else 0o022
    if st.st_mode & mask:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _read_checked(path: str) -> tuple[bytes, os.stat_result]:
    """Read a rule file without following a link, refusing unsafe ones (OSError/ValueError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        why = _unsafe(st, is_shared_dir(os.path.dirname(path)))
        if why:
            raise ValueError(why)
        if st.st_size > MAX_RULE_FILE_BYTES:
            raise ValueError(f"larger than {MAX_RULE_FILE_BYTES} bytes")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def find_rule_files(dirs: Iterable[str]) -> tuple[list[str], list[str]]:
    """Return (rule file paths, problems) for the rule directories, sorted by path."""
    files: list[str] = []
    problems: list[str] = []
    for top in dirs:
        try:
            st = os.lstat(top)
        except FileNotFoundError:
            if is_shared_dir(top):
                continue  # no OSSEC install here (yet): nothing pushed, nothing to scan with
            problems.append(f"{top}: rules directory not usable (No such file or directory)")
            continue
        except OSError as err:
            problems.append(f"{top}: rules directory not usable ({err.strerror})")
            continue
        if not stat.S_ISDIR(st.st_mode):
            problems.append(f"{top}: rules directory is not a directory (links are not followed)")
            continue
        shared = is_shared_dir(top)
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            why = _unsafe(os.lstat(dirpath), shared)
            if why:
                problems.append(f"{dirpath}: rules directory refused: {why}")
                dirnames[:] = []
                continue
            dirnames.sort()
            if shared:
                dirnames[:] = []  # OSSEC pushes a flat directory
            for name in sorted(filenames):
                if shared and not name.startswith(SHARED_PREFIX):
                    continue
                if name.endswith(RULE_SUFFIXES) and not name.startswith("."):
                    files.append(os.path.join(dirpath, name))
    if len(files) > MAX_RULE_FILES:
        problems.append(f"more than {MAX_RULE_FILES} rule files")
        files = files[:MAX_RULE_FILES]
    return files, problems


def read_rule_files(paths: list[str]) -> tuple[list[RuleFile], list[str]]:
    """Read and check every rule file; return (files, problems)."""
    out: list[RuleFile] = []
    problems: list[str] = []
    used: set[str] = set()
    for path in paths:
        try:
            data, st = _read_checked(path)
        except ValueError as err:
            problems.append(f"{path}: rules file refused: {err}")
            continue
        except OSError as err:
            problems.append(f"{path}: rules file not readable ({err.strerror or err})")
            continue
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(f"{path}: rules file is not UTF-8 (byte {err.start})")
            continue
        base = _NAMESPACE_RE.sub("_", os.path.splitext(os.path.basename(path))[0]) or "rules"
        namespace, n = base, 1
        while namespace in used:
            n += 1
            namespace = f"{base}_{n}"
        used.add(namespace)
        out.append(RuleFile(path, namespace, source, hashlib.sha256(data).hexdigest(),
                            st.st_size, stat.S_IMODE(st.st_mode), st.st_uid))
    return out, problems


def syntax_problems(files: list[RuleFile]) -> list[str]:
    """Compile each file alone; return every error as ``path: line N: message``."""
    import yara
    problems = []
    for rule_file in files:
        try:
            yara.compile(source=rule_file.source, externals=EXTERNALS, includes=False)
        except yara.SyntaxError as err:
            problems.append(f"{rule_file.path}: {err}")
        except yara.Error as err:
            problems.append(f"{rule_file.path}: {err}")
    return problems


def rules_key(files: list[RuleFile]) -> str:
    """Return the cache key: SHA-256 of YARA's version, externals, namespaces and sources."""
    import yara
    digest = hashlib.sha256()
    digest.update(f"yara {yara.YARA_VERSION} yara-python {yara.__version__}\n".encode())
    digest.update(("externals " + ",".join(sorted(EXTERNALS)) + "\n").encode())
    for rule_file in files:
        digest.update(f"{rule_file.namespace}\0{rule_file.sha256}\n".encode())
    return digest.hexdigest()


def check_rules(dirs: Iterable[str]) -> list[str]:
    """Return every problem of the rule directories (unsafe files, syntax errors), or []."""
    dirs = list(dirs)
    paths, problems = find_rule_files(dirs)
    files, read_problems = read_rule_files(paths)
    problems += read_problems
    if not paths and not problems:
        problems.append("no .yar/.yara rule files in " + ", ".join(dirs))
    try:
        problems += syntax_problems(files)
    except ImportError:
        problems.append("yara-python is not installed")
    return problems


def _cache_load(cache_fd: int, name: str) -> Any | None:
    import yara
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=cache_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or _unsafe(st) or st.st_mode & 0o077:
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read()
        return yara.load(file=io.BytesIO(data))
    except (OSError, yara.Error):
        return None
    finally:
        os.close(fd)


def _cache_store(cache_fd: int, name: str, rules: Any) -> None:
    buf = io.BytesIO()
    rules.save(file=buf)
    tmp = f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=cache_fd)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=cache_fd)
    try:
        view = memoryview(buf.getvalue())
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=cache_fd, dst_dir_fd=cache_fd)


def load_rules(dirs: Iterable[str], cache_fd: int | None = None) -> LoadedRules:
    """Check, compile (or load from the cache) the rules of dirs; raise RulesError."""
    import yara
    dirs = list(dirs)
    paths, problems = find_rule_files(dirs)
    files, read_problems = read_rule_files(paths)
    problems += read_problems
    if problems:
        raise RulesError(problems)
    if not files:
        raise RulesError(["no .yar/.yara rule files in " + ", ".join(dirs)])
    key = rules_key(files)
    name = key + _CACHE_SUFFIX
    if cache_fd is not None:
        rules = _cache_load(cache_fd, name)
        if rules is not None:
            return LoadedRules(rules, files, key, "hit")
    try:
        rules = yara.compile(sources={f.namespace: f.source for f in files},
                             externals=EXTERNALS, includes=False)
    except yara.Error as err:
        # Compile each file alone to name every broken file and line at once.
        raise RulesError(syntax_problems(files) or [
            f"compiling {len(files)} rule files together: {err}"]) from err
    cache = "off"
    if cache_fd is not None:
        try:
            _cache_store(cache_fd, name, rules)
            cache = "miss"
        except (OSError, yara.Error) as err:
            cache = f"miss-not-stored: {err}"
    return LoadedRules(rules, files, key, cache)


def match_records(matches: list[Any], max_strings: int, max_string_bytes: int) -> list[dict[str, Any]]:
    """Turn yara-python matches into JSON records, bounding the string instances kept."""
    out = []
    for match in matches:
        strings: list[dict[str, Any]] = []
        total = 0
        for string_match in match.strings:
            for instance in string_match.instances:
                total += 1
                if len(strings) >= max_strings:
                    continue
                data = bytes(instance.matched_data[:max_string_bytes])
                strings.append({
                    "id": string_match.identifier, "offset": instance.offset,
                    "length": instance.matched_length, "data_hex": data.hex(),
                    "data_ascii": "".join(chr(b) if 0x20 <= b < 0x7f else "." for b in data)})
        out.append({"rule": match.rule, "namespace": match.namespace,
                    "tags": list(match.tags), "meta": dict(match.meta),
                    "strings": strings, "string_instances": total,
                    "strings_truncated": total > len(strings)})
    return out


__all__ = ["RulesError", "LoadedRules", "RuleFile", "check_rules", "load_rules",
           "find_rule_files", "read_rule_files", "rules_key", "match_records", "EXTERNALS"]
