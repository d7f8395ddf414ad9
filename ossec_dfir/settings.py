"""What the AR entry point reads of the configuration: Settings, Response, and where.

The hot path never parses YAML: it reads a checked cache of the validated
configuration (configcache.py), rebuilt from ``config.load`` when the files
change. This module is that cache's vocabulary, kept apart from config.py
(the YAML, the validation and the collectors' parameters) so that starting
an AR imports neither.
"""
from __future__ import annotations

import os

from .errors import ConfigError
from .record import Record

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default-config.yml")
ENV_CONFIG = "OSSEC_DFIR_CONFIG"
CONFIG_NAME = "ossec-dfir.yml"
# What the OSSEC <command> of a profile asks analysisd to pass (<expect>): the
# alert's srcip, its file name (syscheck), or nothing (host-keyed alerts).
EXPECT_VALUES = ("srcip", "filename", "none")
DEFAULT_AR_TIMEOUT_S = 600


class Response(Record):
    """What the AR entry point needs of a profile: how its alerts are keyed, and if execd deletes.

    Fields: name, stateful (True), expect ("srcip"), ar_timeout_s (600, None: no timeout).
    """

    FIELDS = ("name", "stateful", "expect", "ar_timeout_s")
    DEFAULTS = {"stateful": True, "expect": "srcip", "ar_timeout_s": DEFAULT_AR_TIMEOUT_S}


class Settings(Record):
    """The validated configuration less the collectors: all the AR entry point reads.

    A Settings comes from a full validation (``Config.settings()``) or from the
    checked cache of one (configcache.py); it never holds collector parameters,
    so the AR hot path imports no collector. ``config.Config`` extends it and
    declares the same fields with the same defaults.
    """

    FIELDS = ("evidence_root", "log_file", "ossec_dir", "grouping_window_s", "reserve_bytes",
              "max_workers", "max_captures", "queue_max_age_s", "check_keys",
              "check_keys_timeout_s", "outcome_linger_s", "source", "responses")
    DEFAULTS = {"grouping_window_s": 3600.0, "reserve_bytes": 1 << 30, "max_workers": 4,
                "max_captures": 16, "queue_max_age_s": 3600.0, "check_keys": True,
                "check_keys_timeout_s": 5.0, "outcome_linger_s": 600.0, "source": ""}
    FACTORIES = {"responses": dict}

    def response(self, name: str) -> Response:
        """Return what the entry point needs of the profile for an AR command, or raise ConfigError."""
        if name not in self.responses:
            raise ConfigError([f"profiles: no profile named {name!r} "
                               f"(defined: {', '.join(sorted(self.responses))})"], self.source)
        return self.responses[name]


def ossec_dir_of_script(script: str) -> str:
    """Return the OSSEC directory of an installed AR script (bin/../..)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(script))))


def config_path_for(ossec_dir: str) -> str:
    """Return the config file to use: $OSSEC_DFIR_CONFIG or <ossec>/etc/ossec-dfir.yml."""
    return os.environ.get(ENV_CONFIG) or os.path.join(ossec_dir, "etc", CONFIG_NAME)
