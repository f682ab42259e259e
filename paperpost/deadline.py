"""Reading one server answer (an SMTP reply, an IMAP command's answer) within a deadline and
a size: a server that sends a line now and then (a tarpit), or a byte at a time, each within
the read timeout, or one that streams lines as fast as they are read, cannot hold a run or
fill its memory. Every wait on the socket is bounded by what is left of the deadline, and the
read timeout is restored afterwards (what is left of one answer's deadline is no timeout for
the next command)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True)
class Cuts:
    """What the caller says when it cuts an answer."""

    too_large: str  # the answer went on past its size (an OSError)
    too_late: str  # ... past its deadline (a TimeoutError)
    idle: str | None = None  # one wait ran out before the deadline; None: the socket's own error


class BoundedReader:
    """A buffered socket file's reader for one answer, ending at ``ends`` (time.monotonic())
    or after ``max_bytes``. ``expired`` once it has cut the answer: the connection is then in
    no known state."""

    def __init__(
        self,
        file: BinaryIO,
        sock: socket.socket,
        *,
        read_timeout: float,
        ends: float,
        max_bytes: int,
        cuts: Cuts,
    ) -> None:
        self.file = file
        self.sock = sock
        self.read_timeout = read_timeout
        self.ends = ends
        self.max_bytes = max_bytes
        self.cuts = cuts
        self.count = 0  # bytes of the answer read so far
        self.expired = False

    def _wait(self, read: Callable[[int], bytes], size: int) -> bytes:
        """One read from the socket (``read``: the file's peek or read1), waiting at most for
        what is left of the deadline."""
        if self.count > self.max_bytes:
            self.expired = True
            raise OSError(self.cuts.too_large)
        left = self.ends - time.monotonic()
        if left > 0:
            self.sock.settimeout(min(self.read_timeout, left))
            try:
                return read(size)
            except TimeoutError:
                if time.monotonic() < self.ends:
                    self.expired = True
                    if self.cuts.idle is None:
                        raise
                    raise TimeoutError(self.cuts.idle) from None
            finally:  # what is left of this answer's deadline is no timeout for the next one
                self.sock.settimeout(self.read_timeout)
        self.expired = True
        raise TimeoutError(self.cuts.too_late)

    def readline(self, limit: int = -1) -> bytes:
        """One line (at most ``limit`` bytes if that is >= 0); short if the server closed."""
        line = bytearray()
        while not line.endswith(b"\n") and (limit < 0 or len(line) < limit):
            buffered = self._wait(self.file.peek, 1)  # type: ignore[attr-defined]
            if not buffered:
                break  # the server closed the connection: the caller's library reports it
            end = buffered.find(b"\n")
            take = len(buffered) if end < 0 else end + 1
            piece = self.file.read(take if limit < 0 else min(take, limit - len(line)))
            self.count += len(piece)
            line += piece
        return bytes(line)

    def read(self, size: int) -> bytes:
        """``size`` bytes; fewer if the server closed."""
        data = bytearray()
        while len(data) < size:
            chunk = self._wait(self.file.read1, size - len(data))  # type: ignore[attr-defined]
            if not chunk:
                break
            self.count += len(chunk)
            data += chunk
        return bytes(data)

    def close(self) -> None:
        self.file.close()
