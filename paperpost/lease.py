"""Who holds the run lease: the owner a run writes into the ``locks`` row, and what another
run can tell from it.

An owner is ``host:pid:start:taken:id``: the host name, the process id, the process's start
time in clock ticks since boot (``/proc/<pid>/stat``), when the lease was taken (Unix
seconds) and a random id. A process id alone proves nothing: a container's entrypoint is
PID 1 again after a restart, under the same host name, and outside a container PID 1 (init)
always exists. So a holder on this host is alive only while a process with its id still has
its start time. Owners written before session 6 (``host:pid:id``) are judged by the process id
alone, except that this process's own id is never theirs.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

HOST_CHARS = 40  # the owner column holds 100 characters
UNKNOWN = "-"  # a start time that cannot be read (no /proc)


@dataclass(frozen=True, slots=True)
class Holder:
    host: str
    pid: int
    start: str  # clock ticks since boot; UNKNOWN, or "" in an owner from before session 6
    taken: float | None  # when the lease was taken (None before session 6)


def _host() -> str:
    return socket.gethostname()[:HOST_CHARS]


def _start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot; None when there is no
    such process, UNKNOWN when this system cannot tell (no /proc)."""
    if not Path("/proc/self/stat").exists():
        return UNKNOWN
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return UNKNOWN
    return stat.rpartition(")")[2].split()[19]  # field 22; the name (field 2) may hold spaces


def new_owner() -> str:
    """The owner string for a run of this process taking the lease now."""
    pid = os.getpid()
    return f"{_host()}:{pid}:{_start(pid) or UNKNOWN}:{int(time.time())}:{uuid4().hex[:16]}"


def parse(owner: str) -> Holder | None:
    parts = owner.split(":")
    if len(parts) == 5 and parts[1].isdigit() and parts[3].isdigit():
        return Holder(parts[0], int(parts[1]), parts[2], float(parts[3]))
    if len(parts) == 3 and parts[1].isdigit():  # before session 6
        return Holder(parts[0], int(parts[1]), "", None)
    return None


def dead_here(owner: str) -> bool:
    """True when the owner is a process of this host that has exited (its id gone, or taken
    by a process that started at another time)."""
    holder = parse(owner)
    if holder is None or holder.host != _host():
        return False
    if holder.start and holder.start != UNKNOWN:
        start = _start(holder.pid)
        if start != UNKNOWN:
            return start != holder.start
    elif not holder.start and holder.pid == os.getpid():
        return True  # an old owner with this process's id: an earlier life of this container
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def held(owner: str, expires_at: float, ttl_seconds: float) -> str:
    """The exit-5 message: who holds the lease, since when, until when, and how to clear it."""
    holder = parse(owner)
    if holder is None:
        who = f"the owner {owner!r}"
    else:
        who = f"process {holder.pid} on host {holder.host}"
    since = (
        f"since {_when(holder.taken)}"
        if holder and holder.taken is not None
        else f"last renewed {_when(expires_at - ttl_seconds)}"
    )
    here = holder is not None and holder.host == _host()
    return (
        f"Another run holds the lease: {who}, {since}, until {_when(expires_at)} unless it "
        "renews it; nothing done. "
        + (
            "That process is alive on this host; wait for it to finish. "
            if here
            else "A run on another host (or a container with another host name) cannot be "
            "checked from here. "
        )
        + f"If that run is gone for good, clear the lease with: paperpost unlock '{owner}'"
    )
