"""Deadlines and abandonment for FUSE requests, so no reader hangs in D state.

Runs on the trio thread. pyfuse3 does not pass FUSE_INTERRUPT on, and the kernel waits
uninterruptibly for the answer to a request the daemon has already received, even when
the process that asked was killed. So every handler runs under a `Guard`:

* a total deadline: no answer takes longer than `deadline` seconds (the HTTP client has
  its own, shorter one; this is the backstop for everything else);
* abandonment: a watcher looks every `poll` seconds at the requests that have waited at
  least that long and cancels those whose process has a fatal signal pending (the kernel
  turns SIGKILL, and any signal whose default action is to terminate, into a pending
  SIGKILL on every thread of the process) or has gone. The handler then answers EINTR
  and the killed reader can exit.

Work shared with other readers (a block fetch, a listing) is not cancelled: only this
request's wait for it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import trio

log = logging.getLogger(__name__)

_SIGKILL_BIT = 1 << (9 - 1)


def fatal_signal_pending(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether `pid` (a thread or process id) is dying: gone, a zombie, or SIGKILL pending."""
    try:
        text = (proc / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "State" and value.strip()[:1] in ("Z", "X"):
            return True
        if key in ("SigPnd", "ShdPnd"):
            try:
                if int(value.strip(), 16) & _SIGKILL_BIT:
                    return True
            except ValueError:
                continue
    return False


class Abandoned(Exception):
    """The process that sent the request is dying; answer EINTR and move on."""


class DeadlineExceeded(Exception):
    """The request took longer than its deadline."""


@dataclass(eq=False)
class _Request:
    pid: int
    scope: trio.CancelScope
    started: float
    abandoned: bool = False


class Guard:
    """Tracks in-flight FUSE requests; cancels them at their deadline or when abandoned."""

    def __init__(
        self,
        *,
        deadline: float,
        poll: float = 0.5,
        is_dying: Callable[[int], bool] = fatal_signal_pending,
    ) -> None:
        self.deadline = deadline
        self._poll = poll
        self._is_dying = is_dying
        self._active: set[_Request] = set()
        self.abandoned = 0
        self.timed_out = 0

    def request(self, pid: int | None) -> _Guarded:
        """Run the body under this request's deadline; raise Abandoned or DeadlineExceeded.

        `pid` None (unknown) still gets the deadline, but is never taken for abandoned.
        """
        return _Guarded(self, pid)

    async def watch(self) -> None:
        """Run for the life of the mount: cancel requests whose process is dying."""
        while True:
            await trio.sleep(self._poll)
            cutoff = trio.current_time() - self._poll
            waiting = [r for r in self._active if r.started <= cutoff and not r.abandoned]
            # Many readers of one process share one look at /proc.
            dying: dict[int, bool] = {}
            for request in waiting:
                if request.pid not in dying:
                    dying[request.pid] = self._is_dying(request.pid)
                if dying[request.pid]:
                    log.info("process %d is being killed: abandoning its request", request.pid)
                    request.abandoned = True
                    request.scope.cancel()


class _Guarded:
    """The context manager `Guard.request` returns: a class, not a generator, because it
    wraps every FUSE request on the trio thread and a generator costs twice as much."""

    __slots__ = ("_entry", "_guard", "_pid")

    def __init__(self, guard: Guard, pid: int | None) -> None:
        self._guard = guard
        self._pid = pid

    def __enter__(self) -> None:
        guard = self._guard
        now = trio.current_time()
        deadline = now + guard.deadline if math.isfinite(guard.deadline) else math.inf
        entry = self._entry = _Request(self._pid or 0, trio.CancelScope(deadline=deadline), now)
        entry.scope.__enter__()
        if self._pid:
            guard._active.add(entry)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        guard, entry = self._guard, self._entry
        guard._active.discard(entry)
        swallowed = entry.scope.__exit__(exc_type, exc, tb)
        if exc_type is not None and not swallowed:
            return  # the body's own error goes on unchanged
        # The scope swallows only its own cancellation, which is one of these two.
        if entry.abandoned:
            guard.abandoned += 1
            raise Abandoned(f"process {self._pid} is gone or being killed")
        if entry.scope.cancelled_caught:
            guard.timed_out += 1
            raise DeadlineExceeded(f"no answer within {guard.deadline:g}s")
