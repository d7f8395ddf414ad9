"""The capture's time contract: the AR delete ends it; duration_s is a safety cap beyond
the AR <timeout> (execd sends the delete up to 90 s late); timeout_s leaves room for
the summary. Asserted on the configuration, not on timing."""
from __future__ import annotations

import pytest
import yaml

from ossec_dfir import config as config_mod
from ossec_dfir.collectors.base import build_params, get_collector
from ossec_dfir.collectors.pcap.collector import (DRAIN_RESERVE_S, EXECD_DELETE_LATE_S,
    SUMMARY_RESERVE_S, PcapParams)
from ossec_dfir.errors import ConfigError


def _shipped_ar_timeout(name: str, raw: dict) -> int | None:
    """Return the <timeout> install writes for a shipped profile."""
    if "ar_timeout_s" in raw:
        return raw["ar_timeout_s"]
    from ossec_dfir.ossec import install
    return getattr(install, "AR_TIMEOUT_S", {}).get(name, 600)


def test_shipped_captures_end_on_the_delete_not_on_duration_s():
    cfg = config_mod.load(None)
    with open(config_mod.DEFAULT_CONFIG, encoding="utf-8") as fh:
        raw_profiles = yaml.safe_load(fh)["profiles"]
    captures = 0
    for name, profile in cfg.profiles.items():
        for step in profile.steps:
            if not isinstance(step.params, PcapParams):
                continue
            captures += 1
            ar_timeout = _shipped_ar_timeout(name, raw_profiles[name])
            assert ar_timeout, f"{name}: a capture profile must be bound to a delete"
            assert step.params.ar_timeout_problem(ar_timeout) is None, name
            # Well beyond: also a few timer resets by repeated alerts.
            assert step.params.duration_s >= 4 * (ar_timeout + EXECD_DELETE_LATE_S), name
            assert step.params.timeout_s >= step.params.duration_s + SUMMARY_RESERVE_S, name
    assert captures >= 2  # dfir-pcap and dfir-collect


def test_defaults_of_the_class_match_the_shipped_file():
    shipped = config_mod.load(None).collectors["pcap"]
    assert (PcapParams().duration_s, PcapParams().timeout_s) == \
        (shipped["duration_s"], shipped["timeout_s"]) == (3600, 3900)


@pytest.mark.parametrize("params,ok", [
    ({"duration_s": 600, "timeout_s": 630}, True),
    ({"duration_s": 600, "timeout_s": 629}, False),
    ({"duration_s": 600, "timeout_s": 600}, False),
    ({"duration_s": 600, "timeout_s": 605, "summary": False}, True),
    ({"duration_s": 600, "timeout_s": 604, "summary": False}, False),
    ({"duration_s": 0, "timeout_s": 60}, False),
])
def test_timeout_leaves_room_after_the_capture(params, ok):
    cls = get_collector("pcap")
    if ok:
        build_params(cls, params)
    else:
        with pytest.raises(ConfigError) as err:
            build_params(cls, params)
        assert "duration_s" in str(err.value)
    assert DRAIN_RESERVE_S < SUMMARY_RESERVE_S


def test_duration_shorter_than_the_ar_timeout_plus_execd_lateness_is_named():
    params = PcapParams(duration_s=600, timeout_s=700)
    assert "before the AR delete" in params.ar_timeout_problem(600)
    assert PcapParams(duration_s=690, timeout_s=720).ar_timeout_problem(600) is None
    assert params.ar_timeout_problem(None) is None  # no delete: duration_s is the end
    triage = build_params(get_collector("triage"), {})
    assert triage.ar_timeout_problem(1) is None  # only a capture waits for the delete


def test_config_check_names_a_capture_profile_that_would_end_before_its_delete(tmp_path, capsys):
    """A short capture may be what the administrator wants: check-config says so, as a note."""
    from ossec_dfir.cli.main import main
    path = tmp_path / "c.yml"
    path.write_text("profiles:\n  dfir-pcap:\n    ar_timeout_s: 600\n    steps:\n"
                    "      - collector: pcap\n        params: {duration_s: 600, timeout_s: 700}\n")
    [note] = [n for n in config_mod.timeout_notes(config_mod.load(str(path)))
              if n.startswith("profiles.dfir-pcap.")]
    assert note.startswith("profiles.dfir-pcap.steps[0]")
    assert "ends the capture before the AR delete" in note
    main(["--config", str(path), "check-config"])  # (its YARA rules may be absent here)
    out = capsys.readouterr().out
    assert "note: profiles.dfir-pcap.steps[0]" in out
