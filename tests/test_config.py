"""Configuration: defaults, merging, and every error reported at once with its line."""
from __future__ import annotations

import pytest

from ossec_dfir import config as config_mod
from ossec_dfir.errors import ConfigError


def test_defaults_load():
    cfg = config_mod.load(None, "/var/ossec")
    assert cfg.evidence_root == "/var/ossec/dfir"
    assert cfg.log_file == "/var/ossec/logs/active-responses.log"
    assert cfg.max_workers >= 1 and cfg.reserve_bytes > 0
    assert "dfir-host" in cfg.profiles


def test_user_file_merges_over_defaults(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("evidence_root: /srv/evidence\nmax_workers: 2\n"
                    "collectors:\n  host:\n    timeout_s: 5\n"
                    "profiles:\n  mine:\n    steps:\n      - collector: host\n")
    cfg = config_mod.load(str(path), "/var/ossec")
    assert cfg.evidence_root == "/srv/evidence" and cfg.max_workers == 2
    assert "dfir-host" in cfg.profiles and "mine" in cfg.profiles
    assert cfg.profiles["mine"].steps[0].params.timeout_s == 5.0


def test_every_error_at_once_with_lines(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("max_workers: 0\n"                      # line 1
                    "evidence_root: relative/path\n"         # line 2
                    "surprise: 1\n"                          # line 3
                    "collectors:\n"                          # line 4
                    "  nosuch: {}\n"                         # line 5
                    "  host:\n"                              # line 6
                    "    timeout_s: soon\n"                  # line 7
                    "profiles:\n"                            # line 8
                    "  p1:\n"                                # line 9
                    "    steps:\n"                           # line 10
                    "      - collector: ghost\n"             # line 11
                    "      - collector: host\n"              # line 12
                    "        params: {colour: red}\n")       # line 13
    with pytest.raises(ConfigError) as info:
        config_mod.load(str(path), "/var/ossec")
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) >= 6, text
    for needle in ("max_workers (line 1)", "evidence_root (line 2)", "surprise (line 3)",
                   "collectors.nosuch (line 5)", "timeout_s", "line 11", "colour"):
        assert needle in text, (needle, text)


def test_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("max_workers: 2\nprofiles: [\n")
    with pytest.raises(ConfigError, match="line"):
        config_mod.load(str(path), "/var/ossec")


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config_mod.load(str(tmp_path / "nope.yml"), "/var/ossec")


def test_unknown_profile_is_an_error():
    cfg = config_mod.load(None, "/var/ossec")
    with pytest.raises(ConfigError, match="no profile named"):
        cfg.profile("dfir-nothing")


def _as_root():
    import os
    if os.geteuid() != 0:
        pytest.skip("the ownership rule applies when running as root")


def test_a_config_a_user_can_change_is_refused_as_root(tmp_path):
    """A user-owned ossec-dfir.yml (or one in a user-writable directory) names what root
    runs: refused, with the reason (issue 12 item 11)."""
    import os
    import pwd
    _as_root()
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "c.yml"
    path.write_text("max_workers: 2\n")
    assert config_mod.load(str(path)).max_workers == 2
    os.chown(path, nobody, -1)
    with pytest.raises(ConfigError, match="owned by uid"):
        config_mod.load(str(path))
    os.chown(path, 0, -1)
    os.chmod(tmp_path, 0o777)
    with pytest.raises(ConfigError, match="writable by group or others"):
        config_mod.load(str(path))


def test_binaries_a_user_can_change_are_refused_and_never_run(tmp_path):
    import os
    import pwd

    from ossec_dfir.collectors.base import find_binary
    _as_root()
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chmod(tmp_path, 0o755)
    home = tmp_path / "home"
    home.mkdir()
    evil = home / "evil"
    evil.write_text("#!/bin/sh\ntouch /tmp/pwned\n")
    os.chmod(evil, 0o755)
    os.chown(home, nobody, -1)
    path = tmp_path / "c.yml"
    path.write_text(f"binaries: {{ip: {evil}}}\n")
    with pytest.raises(ConfigError, match="binaries.ip.*owned by uid"):
        config_mod.load(str(path))
    # and at run time, a tool a user can change is as good as absent
    assert find_binary("ip", {"ip": str(evil)}) is None
    os.chown(home, 0, -1)
    assert find_binary("ip", {"ip": str(evil)}) == str(evil)
