"""Async facade over the blocking REST client, used by the tree and the reader.

Runs on the trio thread. Range reads run there too (the client's read_range is async);
every other client call goes to a worker thread. Listings and streams have separate
CapacityLimiters, so a burst of downloads never makes an `ls` wait.
Lists that can change (workspaces, artifacts, versions, aliases) are fresh for the metadata
TTL; what never changes (a version's details and asset list, an experiment's metadata) is
cached without expiry. Concurrent identical calls share one request (cometfs.flight).

Failures are remembered too, so that a dead server or a missing name is not asked again on
every lookup: NotFound for the metadata TTL (200 stats of a missing name cost one request),
any other error for ERROR_TTL. When an expired listing cannot be refreshed because of an
outage (TransientError, ProtocolError, RateLimited, an ApiError with a 5xx status), the
stale copy is served instead (stale-if-error), logged once per listing and counted in
stats(); once a refresh has failed so, a lookup waits at most STALE_GRACE for the next one
(which runs on in its own task) before the stale copy answers it. NotFound and
Unauthorized are answers, not outages, and are never masked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio
from cachetools import LRUCache

from cometfs.client.buffers import Buffer
from cometfs.config import DEFAULT_METADATA_TTL
from cometfs.errors import (
    ApiError,
    NotFound,
    ProtocolError,
    RateLimited,
    TransientError,
    Unauthorized,
)
from cometfs.flight import SingleFlight
from cometfs.model import Artifact, ArtifactVersion, Asset, AssetKey

log = logging.getLogger(__name__)

T = TypeVar("T")

ERROR_TTL = 2.0
# Once a refresh of a listing has failed for an outage, later refreshes run on in their own
# task and a lookup waits at most this long for one before it is answered from the stale
# copy: otherwise every lookup past the error TTL would block for a whole --timeout.
STALE_GRACE = 0.25
CACHE_ENTRIES = 4096
# A stream is received in chunks of 2 MiB, each its own mapping in one huge page: 1 MiB
# heap bytearrays were zeroed and faulted in 4 KiB pages under the GIL, and freed in any
# order they left the heap fragmented (the --no-range soak peaked ~130 MiB above what the
# reader counted). A chunk is two blocks, so a cached block holds at most 1 MiB beside it.
# One chunk waits for the reader while the worker fills the next; both count in the
# reader's per-stream allowance (`Store.stream_ahead`).
STREAM_CHUNK = 2 << 20
_STREAM_CHUNKS_QUEUED = 1


class RestClient(Protocol):
    """The slice of cometfs.client.CometClient this facade needs (blocking calls, but for
    read_range)."""

    def workspaces(self) -> list[str]: ...
    def artifacts(self, workspace: str, artifact_type: str | None = None) -> list[Artifact]: ...
    def artifact(self, workspace: str, name: str) -> Artifact: ...
    def artifact_version(
        self, workspace: str, name: str, *, version: str | None = None, alias: str | None = None
    ) -> ArtifactVersion: ...
    def assets(self, workspace: str, name: str, version: str) -> list[Asset]: ...
    def experiment_metadata(self, experiment_key: str) -> dict[str, Any]: ...
    async def read_range(
        self,
        asset_id: str,
        version_id: str,
        start: int,
        end: int,
        *,
        expected_size: int | None = None,
    ) -> bytes | Buffer: ...
    def stream(
        self,
        asset_id: str,
        version_id: str,
        *,
        chunk_size: int = ...,
        expected_size: int | None = None,
    ) -> Any: ...


def is_outage(exc: BaseException) -> bool:
    """True for failures that say nothing about the data (the server or network is unwell)."""
    if isinstance(exc, NotFound | Unauthorized):
        return False
    if isinstance(exc, TransientError | ProtocolError | RateLimited):
        return True
    return isinstance(exc, ApiError) and exc.status is not None and exc.status >= 500


@dataclass
class _Entry:
    """A cached answer (value or error) and when it was obtained."""

    at: float
    value: Any = None
    error: Exception | None = None


_MISSING = _Entry(at=float("-inf"))


class Store:
    """Cached, single-flight async access to one Comet server."""

    # The chunks a stream queues for the reader, and the one its worker is filling.
    stream_ahead = (_STREAM_CHUNKS_QUEUED + 1) * STREAM_CHUNK

    def __init__(
        self,
        client: RestClient,
        *,
        metadata_ttl: float = DEFAULT_METADATA_TTL,
        max_threads: int = 8,
        clock: Callable[[], float] = time.monotonic,
        error_ttl: float = ERROR_TTL,
    ) -> None:
        self._client = client
        self._ttl = metadata_ttl
        self._error_ttl = min(error_ttl, metadata_ttl)
        self._clock = clock
        self._limiter = trio.CapacityLimiter(max_threads)
        # Whole-asset streams hold a thread for as long as a download takes, and a listing
        # must never queue behind them. Range reads need no thread; the reader bounds how
        # many are in flight.
        self._stream_limiter = trio.CapacityLimiter(max(1, max_threads // 2))
        # Values stay past their TTL (evicted only by size) so an outage can serve them stale.
        self._mutable: LRUCache[Hashable, _Entry] = LRUCache(maxsize=CACHE_ENTRIES)
        self._immutable: LRUCache[Hashable, _Entry] = LRUCache(maxsize=CACHE_ENTRIES)
        # The last error per key, kept apart so a failed refresh never evicts a stale value.
        self._errors: LRUCache[Hashable, _Entry] = LRUCache(maxsize=CACHE_ENTRIES)
        self._warned: LRUCache[Hashable, bool] = LRUCache(maxsize=CACHE_ENTRIES)
        self._flights = SingleFlight()
        self._stale_served = 0
        self._errors_cached = 0

    def stats(self) -> dict[str, int]:
        """Counters for status.json: stale listings served and cached errors answered."""
        return {"stale_served": self._stale_served, "errors_cached": self._errors_cached}

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(lambda: func(*args, **kwargs), limiter=self._limiter)

    def _serve_stale(self, key: tuple[Any, ...], entry: _Entry, exc: Exception) -> Any:
        self._stale_served += 1
        if key not in self._warned:
            self._warned[key] = True
            log.warning("serving a stale listing %r: refresh failed: %s", key[0], exc)
        return entry.value

    async def _cached(
        self,
        cache: LRUCache[Hashable, _Entry],
        key: tuple[Any, ...],
        func: Callable[..., T],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        # .get, never `in` then `[]`: nothing can expire between the test and the read.
        now = self._clock()
        entry = cache.get(key, _MISSING)
        ttl = self._ttl if cache is self._mutable else float("inf")
        if entry is not _MISSING and now - entry.at < ttl:
            hit: T = entry.value
            return hit
        error = self._errors.get(key, _MISSING)
        if error.error is not None:
            error_ttl = self._ttl if isinstance(error.error, NotFound) else self._error_ttl
            if now - error.at < error_ttl:
                if entry is not _MISSING and is_outage(error.error):
                    stale: T = self._serve_stale(key, entry, error.error)
                    return stale
                self._errors_cached += 1
                # A fresh traceback per raise: re-raising one object would grow its chain.
                raise error.error.with_traceback(None)

        async def compute() -> T:
            try:
                result = await self._call(func, *args, **kwargs)
            except Exception as exc:
                self._errors[key] = _Entry(self._clock(), error=exc)
                if entry is not _MISSING and is_outage(exc):
                    stale_value: T = self._serve_stale(key, entry, exc)
                    return stale_value
                raise
            cache[key] = _Entry(self._clock(), value=result)
            self._errors.pop(key, None)
            if self._warned.pop(key, None):
                log.info("listing %r refreshed again", key[0])
            return result

        if entry is not _MISSING and error.error is not None and is_outage(error.error):
            with trio.move_on_after(STALE_GRACE):
                refreshed: T = await self._flights.run(key, compute)
                return refreshed
            waited: T = self._serve_stale(key, entry, error.error)
            return waited
        shared: T = await self._flights.run(key, compute)
        return shared

    # -- metadata that can change: fresh for the metadata TTL ------------------------------

    async def workspaces(self) -> list[str]:
        return await self._cached(self._mutable, ("workspaces",), self._client.workspaces)

    async def artifacts(self, workspace: str) -> list[Artifact]:
        return await self._cached(
            self._mutable, ("artifacts", workspace), self._client.artifacts, workspace
        )

    async def artifact(self, workspace: str, name: str) -> Artifact:
        return await self._cached(
            self._mutable, ("artifact", workspace, name), self._client.artifact, workspace, name
        )

    async def resolve_alias(self, workspace: str, name: str, alias: str) -> ArtifactVersion:
        return await self._cached(
            self._mutable,
            ("alias", workspace, name, alias),
            self._client.artifact_version,
            workspace,
            name,
            alias=alias,
        )

    # -- what a version holds never changes: no expiry -------------------------------------

    async def version(self, workspace: str, name: str, version: str) -> ArtifactVersion:
        return await self._cached(
            self._immutable,
            ("version", workspace, name, version),
            self._client.artifact_version,
            workspace,
            name,
            version=version,
        )

    async def assets(self, workspace: str, name: str, version: str) -> list[Asset]:
        return await self._cached(
            self._immutable,
            ("assets", workspace, name, version),
            self._client.assets,
            workspace,
            name,
            version,
        )

    async def experiment(self, experiment_key: str) -> dict[str, Any]:
        return await self._cached(
            self._immutable,
            ("experiment", experiment_key),
            self._client.experiment_metadata,
            experiment_key,
        )

    # -- bytes: the reader's ByteSource -----------------------------------------------------

    async def fetch_range(self, key: AssetKey, start: int, end: int) -> bytes | Buffer:
        return await self._client.read_range(
            key.asset_id, key.version_id, start, end, expected_size=key.size
        )

    async def stream(self, key: AssetKey, sink: Callable[[Buffer], Awaitable[None]]) -> None:
        token = trio.lowlevel.current_trio_token()
        # A few chunks in a bounded channel let the worker receive the next chunk while the
        # trio thread cuts the last one into blocks; a full channel is the reader's
        # backpressure. Handing a chunk over is a cheap synchronous hop unless it is full.
        send, receive = trio.open_memory_channel[Buffer](_STREAM_CHUNKS_QUEUED)

        def pump() -> None:
            try:
                with self._client.stream(
                    key.asset_id, key.version_id, chunk_size=STREAM_CHUNK, expected_size=key.size
                ) as chunks:
                    for chunk in chunks:
                        try:
                            trio.from_thread.run_sync(send.send_nowait, chunk, trio_token=token)
                        except trio.WouldBlock:
                            trio.from_thread.run(send.send, chunk, trio_token=token)
            finally:
                trio.from_thread.run_sync(send.close, trio_token=token)

        # Errors are collected rather than raised inside the nursery, so callers see the
        # client's own exception (NotFound, TransientError...), not an ExceptionGroup.
        errors: list[Exception] = []

        async def run_pump() -> None:
            try:
                await trio.to_thread.run_sync(pump, limiter=self._stream_limiter)
            except Exception as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_pump)
            # Leaving early (the sink failed, or cancellation) closes the channel, which
            # stops the worker at its next chunk.
            async with receive:
                try:
                    async for chunk in receive:
                        await sink(chunk)
                except Exception as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]
