"""The AR's config cache: derived from the YAML, root-only, checked, never trusted on a mismatch."""
from __future__ import annotations

import json
import os
import pwd
import stat

import pytest

from ossec_dfir import config as config_mod, configcache
from ossec_dfir.errors import ConfigError


@pytest.fixture
def setup(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root uses the cache (it must be out of every user's reach)")
    os.chmod(tmp_path, 0o755)
    conf = tmp_path / "ossec-dfir.yml"
    conf.write_text("max_workers: 2\nevidence_root: /srv/ev\n")
    return conf, str(tmp_path / "ossec"), str(tmp_path / "cache")


def _file(conf, ossec, cache_dir):
    return configcache.cache_path(ossec, str(conf), cache_dir)


def test_a_cached_load_equals_a_full_load(setup):
    conf, ossec, cache_dir = setup
    first = configcache.load_settings(str(conf), ossec, cache_dir)
    full = config_mod.load(str(conf), ossec).settings()
    assert first == full and first.max_workers == 2 and first.evidence_root == "/srv/ev"
    path = _file(conf, ossec, cache_dir)
    st, dst = os.lstat(path), os.lstat(cache_dir)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_mode & 0o777 == 0o600
    assert dst.st_uid == 0 and dst.st_mode & 0o777 == 0o700
    cached = configcache.read_cache(path, configcache.cache_key(str(conf), ossec))
    assert cached is not None and cached[0] == full
    assert configcache.load_settings(str(conf), ossec, cache_dir) == full
    assert full.response("dfir-host").expect == "srcip"


def test_the_defaults_are_cached_too(setup):
    _, ossec, cache_dir = setup
    settings = configcache.load_settings(None, ossec, cache_dir)
    assert settings == config_mod.load(None, ossec).settings()
    assert os.path.exists(configcache.cache_path(ossec, None, cache_dir))


def test_a_changed_config_is_read_again(setup):
    conf, ossec, cache_dir = setup
    assert configcache.load_settings(str(conf), ossec, cache_dir).max_workers == 2
    conf.write_text("max_workers: 3\nevidence_root: /srv/ev\n")
    assert configcache.load_settings(str(conf), ossec, cache_dir).max_workers == 3
    conf.write_text("max_workers: 0\n")
    with pytest.raises(ConfigError, match="max_workers"):
        configcache.load_settings(str(conf), ossec, cache_dir)


def _forge(path: str, edit) -> None:
    data = json.loads(open(path).read())
    edit(data)
    with open(path, "w") as fh:
        fh.write(json.dumps(data))


@pytest.mark.parametrize("edit", [
    lambda d: d["key"].update(version="0.0.0"),                     # a key that does not match
    lambda d: d["key"].update(config_sha256="0" * 64),
    lambda d: d["key"].update(default_sha256="0" * 64),
    lambda d: d["key"].update(ossec_dir="/var/ossec"),
    lambda d: d["settings"].update(max_workers="64"),               # a wrong type
    lambda d: d["settings"].update(check_keys=1),
    lambda d: d["settings"]["responses"]["dfir-host"].update(expect="anything"),
    lambda d: d["settings"].update(surprise=1),                     # an unknown key
    lambda d: d["settings"].pop("log_file"),                        # a missing key
    lambda d: d.update(binaries="/bin/sh"),
])
def test_a_cache_that_does_not_match_or_parse_is_not_trusted(setup, edit):
    conf, ossec, cache_dir = setup
    full = configcache.load_settings(str(conf), ossec, cache_dir)
    path = _file(conf, ossec, cache_dir)
    key = configcache.cache_key(str(conf), ossec)
    # A matching cache is what the AR reads (only root can write it): the forged
    # root shows whether the one with the edit below is used.
    _forge(path, lambda d: d["settings"].update(evidence_root="/tmp/elsewhere"))
    assert configcache.load_settings(str(conf), ossec, cache_dir).evidence_root == "/tmp/elsewhere"
    _forge(path, edit)
    assert configcache.read_cache(path, key) is None
    assert configcache.load_settings(str(conf), ossec, cache_dir) == full  # from the YAML
    assert configcache.read_cache(path, key)[0] == full  # and written anew


def test_garbage_a_link_or_a_cache_others_could_write_is_not_used(setup, tmp_path):
    conf, ossec, cache_dir = setup
    full = configcache.load_settings(str(conf), ossec, cache_dir)
    path = _file(conf, ossec, cache_dir)
    key = configcache.cache_key(str(conf), ossec)
    with open(path, "w") as fh:
        fh.write("{not json")
    assert configcache.read_cache(path, key) is None
    assert configcache.load_settings(str(conf), ossec, cache_dir) == full
    os.chmod(path, 0o644)
    assert configcache.read_cache(path, key) is None
    os.chmod(path, 0o600)
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    assert configcache.read_cache(path, key) is None
    os.unlink(path)
    elsewhere = tmp_path / "elsewhere.json"
    configcache.load_settings(str(conf), ossec, cache_dir)
    os.rename(path, elsewhere)
    os.symlink(elsewhere, path)
    assert configcache.read_cache(path, key) is None
    os.unlink(path)
    configcache.load_settings(str(conf), ossec, cache_dir)
    os.chmod(cache_dir, 0o755)  # a directory others may read is not root-only
    assert configcache.read_cache(path, key) is None
    assert not configcache.write_cache(path, key, full, [])


def test_the_config_file_trust_is_checked_on_every_use(setup):
    conf, ossec, cache_dir = setup
    configcache.load_settings(str(conf), ossec, cache_dir)
    os.chown(conf, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(ConfigError, match="owned by uid"):
        configcache.load_settings(str(conf), ossec, cache_dir)
    os.chown(conf, 0, -1)
    os.chmod(conf.parent, 0o777)
    with pytest.raises(ConfigError, match="writable by group or others"):
        configcache.load_settings(str(conf), ossec, cache_dir)


def test_the_binaries_trust_is_checked_on_every_use(setup, tmp_path):
    conf, ossec, cache_dir = setup
    home = tmp_path / "home"
    home.mkdir()
    tool = home / "ip"
    tool.write_text("#!/bin/sh\n")
    os.chmod(tool, 0o755)
    conf.write_text(f"binaries: {{ip: {tool}}}\n")
    assert configcache.load_settings(str(conf), ossec, cache_dir).max_workers >= 1
    assert configcache.read_cache(_file(conf, ossec, cache_dir),
                                  configcache.cache_key(str(conf), ossec))[1] == [str(tool)]
    os.chown(home, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(ConfigError, match="binaries.ip.*owned by uid"):
        configcache.load_settings(str(conf), ossec, cache_dir)


def test_old_cache_files_are_pruned(setup):
    conf, ossec, cache_dir = setup
    configcache.load_settings(str(conf), ossec, cache_dir)
    for i in range(configcache.MAX_CACHE_FILES):
        configcache.load_settings(str(conf), f"{ossec}{i}", cache_dir)
    assert len(os.listdir(cache_dir)) <= configcache.MAX_CACHE_FILES
