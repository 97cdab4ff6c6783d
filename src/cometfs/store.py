"""Async facade over the blocking REST client, used by the tree and the reader.

Runs on the trio thread; every client call goes to a worker thread through one
CapacityLimiter. Lists that can change (workspaces, artifacts, versions, aliases) sit in
TTL caches; what an immutable version holds (its details, asset list, bytes) is cached
without expiry. Concurrent identical calls share one request (single-flight).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol, TypeVar

import trio
from cachetools import LRUCache, TTLCache

from cometfs.errors import TransientError
from cometfs.model import Artifact, ArtifactVersion, Asset, AssetKey

T = TypeVar("T")

# Chunks (1 MiB each) a stream may have received ahead of the reader; part of the reader's
# per-stream allowance in its memory budget.
_STREAM_CHUNKS_QUEUED = 2


class RestClient(Protocol):
    """The slice of cometfs.client.CometClient this facade needs (blocking calls)."""

    def workspaces(self) -> list[str]: ...
    def artifacts(self, workspace: str, artifact_type: str | None = None) -> list[Artifact]: ...
    def artifact(self, workspace: str, name: str) -> Artifact: ...
    def artifact_version(
        self, workspace: str, name: str, *, version: str | None = None, alias: str | None = None
    ) -> ArtifactVersion: ...
    def assets(self, workspace: str, name: str, version: str) -> list[Asset]: ...
    def experiment_metadata(self, experiment_key: str) -> dict[str, Any]: ...
    def read_range(
        self, asset_id: str, version_id: str, start: int, end: int, *,
        expected_size: int | None = None,
    ) -> bytes: ...
    def stream(
        self, asset_id: str, version_id: str, *, chunk_size: int = ...,
        expected_size: int | None = None,
    ) -> Any: ...


class _SingleFlight:
    """Lets concurrent callers of the same key share one computation and its outcome."""

    def __init__(self) -> None:
        self._running: dict[Hashable, _Flight] = {}

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        flight = self._running.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result
        flight = self._running[key] = _Flight()
        try:
            flight.result = await compute()
            return flight.result
        except Exception as exc:
            flight.error = exc
            raise
        except BaseException:  # cancelled: waiters must not take a missing result for one
            flight.error = TransientError("a shared request was interrupted")
            raise
        finally:
            del self._running[key]
            flight.done.set()


class _Flight:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: Exception | None = None


class Store:
    """Cached, single-flight async access to one Comet server."""

    def __init__(
        self,
        client: RestClient,
        *,
        metadata_ttl: float = 30.0,
        max_threads: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._limiter = trio.CapacityLimiter(max_threads)
        # A stream holds its thread for a whole download; its own limiter keeps long
        # downloads from starving listings and range reads.
        self._stream_limiter = trio.CapacityLimiter(max(1, max_threads // 2))
        self._mutable: TTLCache[Hashable, Any] = TTLCache(
            maxsize=4096, ttl=metadata_ttl, timer=clock
        )
        self._immutable: LRUCache[Hashable, Any] = LRUCache(maxsize=4096)
        self._flights = _SingleFlight()

    async def _call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(
            lambda: func(*args, **kwargs), limiter=self._limiter
        )

    async def _cached(
        self, cache: LRUCache[Hashable, Any] | TTLCache[Hashable, Any], key: Hashable,
        func: Callable[..., T], *args: Any, **kwargs: Any,
    ) -> T:
        if key in cache:
            hit: T = cache[key]
            return hit

        async def compute() -> T:
            result = await self._call(func, *args, **kwargs)
            cache[key] = result
            return result

        shared: T = await self._flights.run(key, compute)
        return shared

    # -- metadata that can change: TTL caches --------------------------------------------

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
            self._mutable, ("alias", workspace, name, alias),
            self._client.artifact_version, workspace, name, alias=alias,
        )

    # -- what a version holds never changes: no expiry -------------------------------------

    async def version(self, workspace: str, name: str, version: str) -> ArtifactVersion:
        return await self._cached(
            self._immutable, ("version", workspace, name, version),
            self._client.artifact_version, workspace, name, version=version,
        )

    async def assets(self, workspace: str, name: str, version: str) -> list[Asset]:
        return await self._cached(
            self._immutable, ("assets", workspace, name, version),
            self._client.assets, workspace, name, version,
        )

    async def experiment(self, experiment_key: str) -> dict[str, Any]:
        return await self._cached(
            self._immutable, ("experiment", experiment_key),
            self._client.experiment_metadata, experiment_key,
        )

    # -- bytes: the reader's ByteSource -----------------------------------------------------

    async def fetch_range(self, key: AssetKey, start: int, end: int) -> bytes:
        return await self._call(
            self._client.read_range, key.asset_id, key.version_id, start, end,
            expected_size=key.size,
        )

    async def stream(self, key: AssetKey, sink: Callable[[bytes], Awaitable[None]]) -> None:
        token = trio.lowlevel.current_trio_token()
        # A few chunks in a bounded channel let the worker receive the next chunk while the
        # trio thread cuts the last one into blocks; a full channel is the reader's
        # backpressure. Handing a chunk over is a cheap synchronous hop unless it is full.
        send, receive = trio.open_memory_channel[bytes](_STREAM_CHUNKS_QUEUED)

        def pump() -> None:
            try:
                with self._client.stream(
                    key.asset_id, key.version_id, expected_size=key.size
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
