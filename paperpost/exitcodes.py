"""Exit codes of ``paperpost run``, agreed for every command that runs the job (README)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum

# how the pause reason of a run whose outbox could not be written begins (paperpost.delivery)
OUTBOX_UNWRITABLE = "paused: the outbox cannot be written"
# ... and of a run that found another run holding its lease (paperpost.delivery)
LEASE_LOST = "paused: another run took this run's lease"


class ExitCode(IntEnum):
    OK = 0  # done, including "nothing to send"
    INTERNAL = 1  # unexpected internal error
    USAGE = 2  # usage or configuration error
    SOURCES_FAILED = 3  # every source failed
    PAUSED = 4  # run paused: server-wide delivery failure or error rate
    LOCKED = 5  # another run holds the lock
    DELIVERY_FAILED = 6  # at least one delivery failed permanently
    DATABASE = 7  # database error: locked, corrupt, read-only, unreachable
    FILESYSTEM = 8  # file-system error: outbox or state not writable


def for_summary(summary: Mapping[str, object]) -> ExitCode:
    """The exit code for a finished run's summary (``RunSummary.to_json()``).

    The most urgent wins: locked (also a run whose lease another run took), an outbox that
    cannot be written, paused, every source failed, a permanent failure.
    """
    if summary["status"] == "locked":
        return ExitCode.LOCKED
    if summary["status"] == "paused" and str(summary["message"]).startswith(LEASE_LOST):
        return ExitCode.LOCKED
    if summary["status"] == "paused" and str(summary["message"]).startswith(OUTBOX_UNWRITABLE):
        return ExitCode.FILESYSTEM
    if summary["status"] == "paused":
        return ExitCode.PAUSED
    sources = summary["sources"]
    assert isinstance(sources, list)
    if sources and all(s["status"] in {"failed", "invalid"} for s in sources):
        return ExitCode.SOURCES_FAILED
    if summary["digests_failed"]:
        return ExitCode.DELIVERY_FAILED
    return ExitCode.OK
