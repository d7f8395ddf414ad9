"""The active-response entry point: validate, record, hand off, return at once.

``active-response/dfir-*`` call ``main("<command>")``. The process is started
by OSSEC's or Wazuh's execd as root; it must exit within a fraction of a
second (Wazuh's execd blocks on it), so the collection itself runs in a
detached worker (worker.py). Every invocation writes exactly one line to
active-responses.log.
"""
from __future__ import annotations

import os
import sys
import time

from . import log as arlog, request as rq
from ..configcache import load_settings
from ..errors import (EXIT_BAD_INPUT, EXIT_COMPLETE, EXIT_FAILED, EXIT_STORE, BadRequest,
    ConfigError, DfirError, StoreError)
from ..record import Record
from ..settings import (DEFAULT_CONFIG, ENV_CONFIG, Response, Settings, config_path_for,
    ossec_dir_of_script)
from .request import Request

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported on the AR hot path
    from typing import Any

    from ..config import Profile


def _raw_args_text(args: list[str]) -> str:
    return " ".join(rq.sanitize(a, 256) for a in args[:rq.MAX_ARGS])[:2048]


def _request_text(req: Request) -> str:
    if req.protocol == "ossec":
        return req.raw[:2048]
    return (f"wazuh:{req.action} srcip={req.srcip or '-'} rule={req.rule_id or '-'} "
            f"alert={req.alert_id or '-'} agent={req.agent_id or '-'}")


def _trigger_record(req: Request, status: str) -> dict[str, Any]:
    compact = req.received.replace("-", "").replace(":", "").replace(".", "")
    return {"trigger_id": f"{compact}-{os.getpid()}-{os.urandom(3).hex()}",
            "status": status, "pid": os.getpid(), **req.to_record()}


def installed_script(script: str) -> bool:
    """Return True when script lives in <ossec>/active-response/bin/."""
    parent = os.path.dirname(os.path.abspath(script))
    return os.path.basename(parent) == "bin" and \
        os.path.basename(os.path.dirname(parent)) == "active-response"


def needs_file(profile: Profile | Response, req: Request) -> None:
    """Refuse (BadRequest) a request without a usable filename for a filename profile."""
    if profile.expect == "filename" and req.action == "add" and req.filename is None:
        raise BadRequest(req.filename_refused or "the alert carries no filename "
                         f"(profile {profile.name} has expect: filename)", "filename")


def handshake(req: Request, config: Settings, stdin_fd: int, stdout_fd: int) -> str:
    """Run Wazuh's check_keys exchange; return continue, abort or a no-answer note."""
    keys = [req.key]
    try:
        os.write(stdout_fd, rq.check_keys_message(req.command, keys))
        line = rq.read_line(stdin_fd, 65536, config.check_keys_timeout_s)
    except (OSError, BadRequest):
        return "no answer"
    try:
        return rq.parse_check_keys_answer(line)
    except BadRequest:
        return "no answer"


class Queued(Record):
    """Where an accepted add went: incident, created (new), path, trigger and started (who runs it)."""

    FIELDS = ("incident", "created", "path", "trigger", "started")


def queue(config: Settings, req: Request, config_path: str) -> Queued:
    """Record an add in its incident, queue it, start a worker if a slot is free."""
    from .. import hostinfo
    from . import worker

    store = worker.open_store(config)
    try:
        trigger = _trigger_record(req, "accepted")
        incident, created = store.incident_for(req.key, hostinfo.identity, trigger)
        try:
            incident.append_trigger(trigger)
        finally:
            incident.close()
        worker.enqueue(store, {"incident": incident.id, "trigger": trigger["trigger_id"],
                               "request": req.to_record(), "queued": time.time()})
        slot_fd = worker.try_slot(store, config.max_workers)
        if slot_fd is None:
            started = "queued (all worker slots busy)"
        else:
            try:
                pid = worker.spawn(slot_fd, config_path, config.ossec_dir)
            finally:
                os.close(slot_fd)
            started = f"worker {pid}"
        return Queued(incident.id, created, incident.path, trigger["trigger_id"], started)
    finally:
        store.close()


def accept(config: Settings, req: Request, config_path: str) -> str:
    """Queue an add (see queue) and return the status for its log line."""
    q = queue(config, req, config_path)
    return (f"accepted: incident={q.incident}{' (new)' if q.created else ''} "
            f"trigger={q.trigger} {q.started}")


def stop(config: Settings, req: Request) -> str:
    """Handle a delete: stop this command's running collection for the key; keep evidence."""
    from . import logcollector, stops, worker

    # execd runs every pending delete on ossec-control stop/restart, after
    # logcollector stopped: a delete while it is down is that shutdown.
    why = stops.STOP_SHUTDOWN if logcollector.is_down(config) else stops.STOP_DELETE
    store = worker.open_store(config)
    try:
        stops.request_stop(store, req.command, req.key, why)
        current = store.current_incident(req.key)
        if current is None:
            return "delete: stop requested; no incident for this key"
        incident = store.open_incident(current)
        try:
            incident.append_trigger(_trigger_record(req, "delete"))
        finally:
            incident.close()
        cause = " (execd shutdown)" if why == stops.STOP_SHUTDOWN else ""
        return f"delete: stop requested{cause}; incident={current}"
    finally:
        store.close()


def run(command: str) -> None:
    """Run one AR invocation and exit at once: the installed executables' whole body.

    ``os._exit`` skips the interpreter's shutdown (tearing down every module
    and object, several milliseconds execd would wait for). Everything main()
    writes goes out unbuffered (os.write) before it returns; the standard
    streams are flushed all the same.
    """
    code = main(command)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)


def main(command: str, argv: list[str] | None = None, stdin_fd: int = 0,
         stdout_fd: int = 1) -> int:
    """Run one AR invocation of command; return the exit code (see README).

    Whatever happens, the invocation leaves one log line and no traceback.
    """
    argv = list(sys.argv if argv is None else argv)
    try:
        return _main(command, argv, stdin_fd, stdout_fd)
    except Exception as err:  # a bug must still leave its one line, not a traceback
        script = argv[0] if argv else command
        log = os.path.join(ossec_dir_of_script(script), "logs", "active-responses.log")
        try:
            log = load_settings(os.environ.get(ENV_CONFIG) or None,
                                ossec_dir_of_script(script)).log_file
        except Exception:  # noqa: BLE001 - fall back to the OSSEC log
            pass
        why = f"internal error {type(err).__name__}: {err}"
        arlog.invocation(log, script, _raw_args_text(argv[1:]) or "(wazuh stdin)",
                         f"failed: {why}")
        arlog.outcome_to(log, arlog.failed_fields(command, None, why))
        return EXIT_FAILED


def _main(command: str, argv: list[str], stdin_fd: int, stdout_fd: int) -> int:
    os.umask(0o077)
    script = argv[0] if argv else command
    ossec_dir = ossec_dir_of_script(script)
    config_path = config_path_for(ossec_dir)
    default_log = os.path.join(ossec_dir, "logs", "active-responses.log")
    args = argv[1:]
    args_text = _raw_args_text(args) if args else "(wazuh stdin)"
    if not installed_script(script) and not os.environ.get(ENV_CONFIG):
        # Run from a checkout: bin/../.. is not an OSSEC tree; refuse to guess.
        # There is no OSSEC log to write to either: say it on stderr.
        os.write(2, f"{command}: refused: not installed in <ossec>/active-response/bin and "
                    f"{ENV_CONFIG} is not set\n".encode())
        return EXIT_BAD_INPUT
    try:
        config = load_settings(config_path if os.path.exists(config_path) or
                      os.environ.get(ENV_CONFIG) else None, ossec_dir)
    except ConfigError as err:
        # Not the attacker's doing: every response on this host is off until it is fixed.
        arlog.invocation(default_log, script, args_text, f"refused: bad config: {err}")
        arlog.outcome_to(default_log, arlog.failed_fields(command, None, f"bad config: {err}"))
        return EXIT_BAD_INPUT
    config_used = config.source if config.source != DEFAULT_CONFIG else ""
    try:
        if args:
            req = rq.from_ossec_argv(command, args)
        else:
            line = rq.read_line(stdin_fd)
            args_text = "wazuh-json " + rq.sanitize(line.decode("utf-8", "replace"), 300)
            req = rq.from_wazuh_json(command, line)
        args_text = _request_text(req)
        needs_file(config.response(command), req)
    except BadRequest as err:
        arlog.invocation(config.log_file, script, args_text, f"refused: {err}")
        return EXIT_BAD_INPUT
    except ConfigError as err:
        arlog.invocation(config.log_file, script, args_text, f"refused: bad config: {err}")
        return EXIT_BAD_INPUT
    try:
        if req.action == "delete":
            status = stop(config, req)
        else:
            if req.protocol == "wazuh" and config.check_keys and config.response(command).stateful:
                answer = handshake(req, config, stdin_fd, stdout_fd)
                if answer == "abort":
                    arlog.invocation(config.log_file, script, args_text,
                                     "check_keys: execd answered abort (already active); "
                                     "nothing started")
                    _flush_kept_outcomes(config)
                    return EXIT_COMPLETE
            status = accept(config, req, config_used)
    except StoreError as err:
        arlog.invocation(config.log_file, script, args_text, f"failed: evidence store: {err}")
        arlog.outcome(config, arlog.failed_fields(command, req.srcip, f"evidence store: {err}"))
        return EXIT_STORE
    except DfirError as err:
        arlog.invocation(config.log_file, script, args_text, f"failed: {err}")
        arlog.outcome(config, arlog.failed_fields(command, req.srcip, str(err)))
        return err.exit_code
    if req.filename_refused:
        status += f" (alert filename dropped: {req.filename_refused})"
    arlog.invocation(config.log_file, script, args_text, status)
    _flush_kept_outcomes(config)
    return EXIT_COMPLETE


def _flush_kept_outcomes(config: Settings) -> None:
    """Deliver outcome lines kept while logcollector was down, if it is back (one stat if none)."""
    from . import delivery
    delivery.flush_pending(config)
