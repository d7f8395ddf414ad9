"""Keep the validated Settings of a config in a checked, root-only cache for the AR hot path.

The YAML stays the one source of truth. Loading it means importing a YAML
parser and every collector (their parameters are validated), which costs an
AR invocation more than the rest of its work; so after a full validation the
AR writes the Settings it needs (settings.py: no collector parameters) to
``/run/ossec-dfir/config-<hash of the install and config path>.json``:
a directory and a file only root may write (mode 0700 and 0600, checked on
every read, never through a link), written atomically. The cache is used only
when it parses, has exactly the expected shape and types, and its key matches:
the SHA-256 of the config file's bytes and of the package's default config,
the package version, the install directory and the config path. Everything
that validation checks beyond the file contents is checked again on every
use, as a full load would: the config file's trust (every directory above it)
and, as root, the trust of the binaries it names. Anything else - not root, a
mismatch, a file that does not parse - means a full load (which reports the
problems of a bad config, line by line) and, when it validates, a new cache.
"""
from __future__ import annotations

import json
import os
import stat
import sys

from . import __version__, trust
from .errors import StoreError
from .evidence import fs
from .settings import DEFAULT_CONFIG, EXPECT_VALUES, Response, Settings

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the AR hot path
    from typing import Any

    from .config import Config

CACHE_DIR = "/run/ossec-dfir"
FORMAT = 1
MAX_CONFIG_BYTES = 1 << 22
MAX_CACHE_BYTES = 1 << 20
MAX_CACHE_FILES = 64
_FLOATS = ("grouping_window_s", "queue_max_age_s", "check_keys_timeout_s", "outcome_linger_s")
_INTS = ("reserve_bytes", "max_workers", "max_captures")
_STRS = ("evidence_root", "log_file", "ossec_dir", "source")
_site_added = False


def cache_path(ossec_dir: str, path: str | None, cache_dir: str = CACHE_DIR) -> str:
    """Return the cache file for one install and config path."""
    where = fs.small_sha256(f"{os.path.abspath(ossec_dir)}\0{path or ''}".encode()).hexdigest()
    return os.path.join(cache_dir, f"config-{where[:32]}.json")


def _digest(path: str) -> str:
    with open(path, "rb") as fh:
        return fs.small_sha256(fh.read(MAX_CONFIG_BYTES + 1)).hexdigest()


def cache_key(path: str | None, ossec_dir: str) -> dict[str, Any]:
    """Return what a cached Settings must have been derived from (hashes of both files)."""
    return {"format": FORMAT, "version": __version__, "ossec_dir": ossec_dir,
            "path": path, "default_sha256": _digest(DEFAULT_CONFIG),
            "config_sha256": _digest(path) if path is not None else None}


def _typed(data: dict[str, Any], name: str, kinds: tuple[type, ...]) -> Any:
    value = data[name]
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ValueError(name)
    return value


def settings_from_json(data: Any) -> Settings:
    """Rebuild Settings from its cached form; raise ValueError unless every field is right."""
    if not isinstance(data, dict) or not isinstance(data.get("responses"), dict):
        raise ValueError("shape")
    values: dict[str, Any] = {n: float(_typed(data, n, (int, float))) for n in _FLOATS}
    values.update({n: _typed(data, n, (int,)) for n in _INTS})
    values.update({n: _typed(data, n, (str,)) for n in _STRS})
    values["check_keys"] = _typed(data, "check_keys", (bool,))
    responses = {}
    for name, raw in data["responses"].items():
        if not isinstance(raw, dict) or raw.get("expect") not in EXPECT_VALUES:
            raise ValueError(f"responses.{name}")
        timeout = raw.get("ar_timeout_s")
        if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)):
            raise ValueError(f"responses.{name}.ar_timeout_s")
        responses[name] = Response(name, _typed(raw, "stateful", (bool,)), raw["expect"], timeout)
    values["responses"] = responses
    if set(data) != set(values):
        raise ValueError("unknown or missing keys")
    return Settings(**values)


def settings_to_json(settings: Settings) -> dict[str, Any]:
    """Return the cached form of Settings (what settings_from_json reads back)."""
    out: dict[str, Any] = {n: getattr(settings, n) for n in _FLOATS + _INTS + _STRS}
    out["check_keys"] = settings.check_keys
    out["responses"] = {n: {"stateful": r.stateful, "expect": r.expect,
                            "ar_timeout_s": r.ar_timeout_s} for n, r in settings.responses.items()}
    return out


def _private_dir(cache_dir: str) -> bool:
    """Return True when cache_dir and every directory above it only root can change."""
    try:
        st = os.lstat(cache_dir)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o077 and \
        not trust.path_problems(cache_dir)


def read_cache(file: str, key: dict[str, Any]) -> tuple[Settings, list[str]] | None:
    """Return (Settings, binaries) from a root-only cache file matching key, else None."""
    if not _private_dir(os.path.dirname(file)):
        return None
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o077:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = json.loads(fh.read(MAX_CACHE_BYTES + 1))
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        binaries = data.get("binaries")
        if not isinstance(binaries, list) or not all(isinstance(b, str) for b in binaries):
            return None
        return settings_from_json(data.get("settings")), binaries
    except (OSError, ValueError, TypeError, KeyError):
        return None
    finally:
        os.close(fd)


def write_cache(file: str, key: dict[str, Any], settings: Settings, binaries: list[str]) -> bool:
    """Write the cache file atomically (a private new file renamed over it); True when written."""
    cache_dir = os.path.dirname(file)
    try:
        os.mkdir(cache_dir, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    if not _private_dir(cache_dir):
        return False
    body = json.dumps({"key": key, "binaries": binaries,
                       "settings": settings_to_json(settings)}, sort_keys=True).encode()
    try:
        dfd = os.open(cache_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        _prune(dfd)
        tmp = f".{os.path.basename(file)}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = fs.create_file_at(dfd, tmp, 0o600)
        try:
            fs.write_all(fd, body)  # no fsync: a torn cache does not parse and is rebuilt
        finally:
            os.close(fd)
        os.rename(tmp, os.path.basename(file), src_dir_fd=dfd, dst_dir_fd=dfd)
        return True
    except (OSError, StoreError):
        return False
    finally:
        os.close(dfd)


def _prune(dfd: int) -> None:
    """Remove the oldest cache files beyond MAX_CACHE_FILES (one per install and config path)."""
    names = os.listdir(dfd)
    if len(names) < MAX_CACHE_FILES:
        return
    aged = []
    for name in names:
        try:
            aged.append((os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mtime, name))
        except OSError:
            continue
    for _, name in sorted(aged)[:len(aged) - MAX_CACHE_FILES // 2]:
        try:
            os.unlink(name, dir_fd=dfd)
        except OSError:
            pass


def _load(path: str | None, ossec_dir: str) -> Config:
    """Run the full validation (config.load): YAML, collectors, ship targets.

    The installed executables start ``python -IS``: the site directories (where
    PyYAML and the collectors' libraries are) are added first, as site.py would
    have added them at start-up.
    """
    global _site_added
    if sys.flags.no_site and not _site_added:
        import site
        site.main()
        _site_added = True
    from .config import load
    return load(path, ossec_dir)


def load_settings(path: str | None, ossec_dir: str, cache_dir: str = CACHE_DIR) -> Settings:
    """Return the Settings of a config (None: the defaults) as load() would validate them.

    Raise ConfigError as load() does. Only root uses the cache.
    """
    if os.geteuid() != 0 or path is not None and (
            not os.path.exists(path) or trust.path_problems(path)):
        return _load(path, ossec_dir).settings()  # raises the problems, or validates as non-root
    file = cache_path(ossec_dir, path, cache_dir)
    try:
        key = cache_key(path, ossec_dir)
    except OSError:
        return _load(path, ossec_dir).settings()
    cached = read_cache(file, key)
    if cached is not None:
        settings, binaries = cached
        if not any(os.path.lexists(b) and trust.path_problems(b) for b in binaries):
            return settings
    config = _load(path, ossec_dir)
    settings = config.settings()
    try:
        unchanged = cache_key(path, ossec_dir) == key
    except OSError:
        unchanged = False
    if unchanged:  # what load() read is what the key names
        write_cache(file, key, settings, sorted(set(config.binaries.values())))
    return settings
