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
