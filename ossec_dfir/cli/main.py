"""The ``ossec-dfir`` command: collect by hand, list, show, verify, export, report, status, stop,
install, check-config, simulate, demo, prune, ship, ship-status, fetch, fleet."""
from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..config import ENV_CONFIG
from ..errors import EXIT_BAD_INPUT, EXIT_COMPLETE, EXIT_STORE, BadRequest, ConfigError, DfirError, \
    StoreError
from . import admin, collect, demo, fleet, incidents, retention, ship
from .common import resolve_ossec_dir


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ossec-dfir command."""
    parser = argparse.ArgumentParser(prog="ossec-dfir", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ossec-dfir {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    for target, default in ((parser, None), (common, argparse.SUPPRESS)):
        target.add_argument("--config", default=default,
                            help=f"config file (default: ${ENV_CONFIG}, then "
                                 "<ossec-dir>/etc/ossec-dfir.yml, then the defaults)")
        target.add_argument("--ossec-dir", default=default,
                            help="OSSEC/Wazuh directory (default: the tree of --config when it "
                                 "is <dir>/etc/ossec-dfir.yml, else /var/ossec)")
    parents = [common]
    sub = parser.add_subparsers(dest="cmd", required=True)
    for module in (collect, incidents, admin, demo, retention, ship, fleet):
        module.add_parsers(sub, parents)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ossec-dfir command; return its exit code."""
    args = build_parser().parse_args(argv)
    resolve_ossec_dir(args)
    try:
        return int(args.func(args))
    except (BadRequest, ConfigError) as err:
        print(f"ossec-dfir: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreError as err:
        print(f"ossec-dfir: evidence store: {err}", file=sys.stderr)
        return EXIT_STORE
    except DfirError as err:
        print(f"ossec-dfir: {err}", file=sys.stderr)
        return err.exit_code
    except FileExistsError as err:
        print(f"ossec-dfir: exists already, not overwritten: {err.filename}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `ossec-dfir show ID | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_COMPLETE


if __name__ == "__main__":
    sys.exit(main())
