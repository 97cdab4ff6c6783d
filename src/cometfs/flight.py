"""Single-flight: concurrent callers of the same key share one computation and its outcome.

Runs on the trio thread; knows nothing of FUSE or HTTP. Used by the store facade so that
many lookups of one listing cost one request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import trio

from cometfs.errors import TransientError


class SingleFlight:
    """Lets concurrent callers of the same key share one computation and its outcome.

    The computation runs in a task of its own, not in the first caller's: a caller that is
    cancelled (its reader was killed, its FUSE request hit its deadline) stops waiting at
    once, and the others still get the shared answer.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, _Flight] = {}

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        flight = self._running.get(key)
        if flight is None:
            flight = self._running[key] = _Flight()
            trio.lowlevel.spawn_system_task(self._fly, key, flight, compute)
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error.with_traceback(None)
        return flight.result

    async def _fly(
        self, key: Hashable, flight: _Flight, compute: Callable[[], Awaitable[Any]]
    ) -> None:
        try:
            flight.result = await compute()
        except Exception as exc:
            flight.error = exc
        except BaseException:  # shut down: waiters must not take a missing result for one
            flight.error = TransientError("a shared request was interrupted")
            raise
        finally:
            del self._running[key]
            flight.done.set()


class _Flight:
    """One shared computation: set `done` once exactly one of result/error is final."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: Exception | None = None
