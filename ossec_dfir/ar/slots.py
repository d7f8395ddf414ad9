"""Capture slots: at most max_captures captures, and none held for good by a decoy.

A capture (a continuous collector) holds one of ``max_captures`` slot locks
(``.state/capture-slots/<i>.lock``) while it runs. When every slot is taken, a
new capture does not give up: it registers as waiting
(``.state/capture-waiting/<pid>-<random>``) and polls for a free slot until its
own capture window (``duration_s``), a delete or its timeout ends. A running
capture that has written no packet for ``yield_after_s`` (a trigger for an IP
that sends nothing: a decoy) claims one waiter by renaming its file to
``granted-...`` (one rename succeeds per waiter, so one capture yields per
waiting trigger), releases its slot at once and ends, recording why in its
outcome. A capture that sees its attacker's packets never yields.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Any, Callable

from ..evidence import fs
from ..procfs import pid_alive

SLOTS_DIR = "capture-slots"
WAIT_DIR = "capture-waiting"
GRANTED = "granted-"
POLL_S = 0.2
# How often a running capture looks for waiters (it asks on every packet loop).
CHECK_INTERVAL_S = 1.0
# A waiter granted a slot that someone else took first registers again after this.
GRANT_WAIT_S = 10.0


class CaptureSlot:
    """One capture's slot: held (a lock fd), or waited for; and the yield to a waiter."""

    def __init__(self, store: Any, max_captures: int, fd: int | None = None) -> None:
        self.store = store
        self.max_captures = max_captures
        self.fd = fd
        self.waited_s = 0.0
        self.yielded_to: str | None = None
        self._next_check = 0.0

    @property
    def held(self) -> bool:
        """Return True while this capture holds a slot."""
        return self.fd is not None

    # -- a trigger waiting for a slot ------------------------------------------
    def wait(self, stop: Callable[[], str | None]) -> str | None:
        """Wait (registered as waiting) for a free slot; return None once held, else why not."""
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        started = time.monotonic()
        granted_since: float | None = None
        try:
            while True:
                self.fd = self.store.try_slot(SLOTS_DIR, self.max_captures)
                if self.fd is not None:
                    return None
                why = stop()
                if why:
                    return why
                state = self._state(name)
                if state == "granted":
                    granted_since = granted_since or time.monotonic()
                    if time.monotonic() - granted_since >= GRANT_WAIT_S:
                        self._remove(GRANTED + name)  # the freed slot went elsewhere: ask again
                        state, granted_since = None, None
                if state is None:
                    self._register(name)
                time.sleep(POLL_S)
        finally:
            self.waited_s = time.monotonic() - started
            self._remove(name)
            self._remove(GRANTED + name)

    def _state(self, name: str) -> str | None:
        dfd = self.store.state_dir_fd(WAIT_DIR)
        try:
            for state, entry in (("waiting", name), ("granted", GRANTED + name)):
                try:
                    os.stat(entry, dir_fd=dfd, follow_symlinks=False)
                    return state
                except FileNotFoundError:
                    continue
            return None
        finally:
            os.close(dfd)

    def _register(self, name: str) -> None:
        dfd = self.store.state_dir_fd(WAIT_DIR)
        try:
            os.close(fs.create_file_at(dfd, name))
        except FileExistsError:
            pass
        finally:
            os.close(dfd)

    def _remove(self, name: str) -> None:
        dfd = self.store.state_dir_fd(WAIT_DIR)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)

    # -- a running capture -----------------------------------------------------
    def claim_waiter(self) -> str | None:
        """Claim one live waiting trigger (at most once a second); return its name or None.

        The claim is a rename, so of several idle captures exactly one yields
        to each waiter. Registrations of dead processes are removed.
        """
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + CHECK_INTERVAL_S
        dfd = self.store.state_dir_fd(WAIT_DIR)
        try:
            for name in sorted(os.listdir(dfd)):
                if name.startswith((GRANTED, ".")):
                    continue
                pid_text = name.split("-", 1)[0]
                if not pid_text.isdigit() or int(pid_text) == os.getpid():
                    continue
                if not pid_alive(int(pid_text)):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dfd)
                    continue
                try:
                    os.rename(name, GRANTED + name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except OSError:
                    continue  # another capture claimed it first
                self.yielded_to = name
                return name
            return None
        finally:
            os.close(dfd)

    def release(self) -> None:
        """Give the slot up now (every descriptor of the lock, the runner's copy included)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)

