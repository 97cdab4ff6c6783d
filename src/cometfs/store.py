"""Async facade over the blocking REST client, used by the tree and the reader.

Runs on the trio thread; every client call goes to a worker thread through one
CapacityLimiter. Lists that can change (workspaces, artifacts, versions, aliases) sit in
TTL caches; what an immutable version holds (its details, asset list, bytes) is cached
without expiry. Concurrent identical calls share one request (single-flight).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol, TypeVar

import trio
from cachetools import LRUCache, TTLCache

from cometfs.model import Artifact, ArtifactVersion, Asset, AssetKey

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    """Lets concurrent callers of the same key wait on one computation."""

    def __init__(self) -> None:
        self._running: dict[Hashable, trio.Event] = {}

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T | None:
        """Run compute() unless another task already is; then wait and return None."""
        event = self._running.get(key)
        if event is not None:
            await event.wait()
            return None
        event = self._running[key] = trio.Event()
        try:
            return await compute()
        finally:
            del self._running[key]
            event.set()


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
        # Bounded: each pass either returns or waits for a flight that filled the cache or
        # failed; a failure is not cached, so the next pass makes its own request.
        for _ in range(3):
            if key in cache:
                value: T = cache[key]
                return value

            async def compute() -> T:
                result = await self._call(func, *args, **kwargs)
                cache[key] = result
                return result

            computed = await self._flights.run(key, compute)
            if computed is not None:
                return computed
        return await self._call(func, *args, **kwargs)

    def invalidate(self) -> None:
        """Forget every list that can change (used after a failed lookup)."""
        self._mutable.clear()

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

    async def stream(self, key: AssetKey, sink: Callable[[bytes], None]) -> None:
        token = trio.lowlevel.current_trio_token()

        def pump() -> None:
            with self._client.stream(
                key.asset_id, key.version_id, expected_size=key.size
            ) as chunks:
                for chunk in chunks:
                    trio.from_thread.run_sync(sink, chunk, trio_token=token)

        await trio.to_thread.run_sync(pump, limiter=self._limiter)
