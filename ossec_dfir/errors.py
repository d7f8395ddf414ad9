"""The error tree of ossec-dfir: one base class, structured attributes."""
from __future__ import annotations

# Exit codes, documented in README.md ("Exit codes").
EXIT_COMPLETE = 0
EXIT_PARTIAL = 1
EXIT_BAD_INPUT = 2
EXIT_STORE = 3
EXIT_FAILED = 4


class DfirError(Exception):
    """Base class of every error raised by ossec-dfir."""

    exit_code = EXIT_FAILED

    def __init__(self, msg: str = "") -> None:
        super().__init__(msg)
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


class BadRequest(DfirError):
    """An invocation (argv or Wazuh JSON) that is refused; nothing runs."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class ConfigError(DfirError):
    """A configuration that does not validate; carries every problem found."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: list[str], path: str | None = None) -> None:
        self.problems = list(problems)
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(self.problems))


class StoreError(DfirError):
    """The evidence store cannot be used (unsafe root, I/O error, link)."""

    exit_code = EXIT_STORE

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{reason}: {path}" if path else reason)


class ReserveReached(StoreError):
    """Writing more would cross the free-space reserve of the evidence store."""

    def __init__(self, free_bytes: int, reserve_bytes: int, path: str | None = None) -> None:
        self.free_bytes = free_bytes
        self.reserve_bytes = reserve_bytes
        super().__init__(
            f"free space {free_bytes} bytes would fall below the reserve of "
            f"{reserve_bytes} bytes", path)


class LimitReached(DfirError):
    """A collector limit (bytes, files, records) was reached; evidence is partial."""

    def __init__(self, limit: str, value: int | float, collector: str | None = None) -> None:
        self.limit = limit
        self.value = value
        self.collector = collector
        super().__init__(f"limit {limit}={value} reached")


class CollectorError(DfirError):
    """A collector failed as a whole (the runner records it and goes on)."""

    def __init__(self, collector: str, reason: str) -> None:
        self.collector = collector
        self.reason = reason
        super().__init__(f"{collector}: {reason}")


class Skipped(DfirError):
    """A collector cannot run on this host; the reason is recorded as skipped."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InstallError(DfirError):
    """An install or uninstall step that was refused or whose check failed (changes undone)."""

    def __init__(self, reason: str, exit_code: int = EXIT_FAILED) -> None:
        self.reason = reason
        self.exit_code = exit_code
        super().__init__(reason)


class RegexTimeout(DfirError):
    """A content regex did not finish on one input within its time bound."""


class ShipError(DfirError):
    """Evidence could not be shipped to (or fetched from) a remote target."""

    def __init__(self, reason: str, where: str | None = None) -> None:
        self.reason = reason
        self.where = where
        super().__init__(f"{reason}: {where}" if where else reason)


class EvidenceChanged(ShipError):
    """A local evidence file is gone or no longer matches its manifest entry: not shipped."""
