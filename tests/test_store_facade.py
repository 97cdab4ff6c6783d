"""The async Store facade: one request for concurrent identical calls, TTLs for what can
change, no expiry for what a version holds, failures shared and cached briefly (NotFound for
the TTL), stale listings served through an outage, bytes on their own threads."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from cometfs.errors import ApiError, NotFound, ProtocolError, TransientError, Unauthorized
from cometfs.model import Artifact, AssetKey
from cometfs.store import Store


class FakeClient:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None
        self.listing = ["ws"]

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail

    def workspaces(self) -> list[str]:
        self._call("workspaces")
        return list(self.listing)

    def artifacts(self, workspace: str, artifact_type: str | None = None) -> list[Artifact]:
        self._call("artifacts")
        return []

    def assets(self, workspace: str, name: str, version: str) -> list[Any]:
        self._call("assets")
        return []

    def stream(self, asset_id: str, version_id: str, **_: Any) -> Any:
        self._call("stream")
        owner = threading.get_ident()

        class Chunks:
            def __enter__(self) -> Any:
                return iter([b"ab", b"cd"])

            def __exit__(self, *exc: object) -> None:
                assert threading.get_ident() == owner

        return Chunks()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_identical_calls_make_one_request() -> None:
    client = FakeClient()
    store = Store(client, clock=Clock())  # type: ignore[arg-type]

    async def main() -> None:
        client.gate.clear()
        results: list[list[str]] = []
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(lambda: _append(results, store.workspaces()))
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            client.gate.set()
        assert results == [["ws"]] * 5

    trio.run(main)
    assert client.calls["workspaces"] == 1


async def _append(results: list[Any], awaitable: Any) -> None:
    results.append(await awaitable)


def test_mutable_lists_expire_after_the_ttl_and_version_contents_do_not() -> None:
    client = FakeClient()
    clock = Clock()
    store = Store(client, metadata_ttl=30, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        await store.artifacts("ws")
        await store.assets("ws", "a", "1.0.0")
        clock.now = 29
        await store.artifacts("ws")
        await store.assets("ws", "a", "1.0.0")
        assert client.calls == Counter({"artifacts": 1, "assets": 1})
        clock.now = 31
        await store.artifacts("ws")
        await store.assets("ws", "a", "1.0.0")
        assert client.calls == Counter({"artifacts": 2, "assets": 1})

    trio.run(main)


def test_a_failure_reaches_every_waiter_and_not_found_is_cached_for_the_ttl() -> None:
    client = FakeClient()
    clock = Clock()
    store = Store(client, clock=clock)  # type: ignore[arg-type]
    client.fail = NotFound("gone")

    async def main() -> None:
        client.gate.clear()
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await store.workspaces()
            except NotFound as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            client.gate.set()
        assert len(errors) == 3 and client.calls["workspaces"] == 1
        client.fail = None
        with pytest.raises(NotFound):
            await store.workspaces()  # the answer stands for the metadata TTL
        assert client.calls["workspaces"] == 1
        clock.now = 30.0
        assert await store.workspaces() == ["ws"]
        assert client.calls["workspaces"] == 2

    trio.run(main)


def test_stream_hands_chunks_to_the_sink_on_the_trio_thread() -> None:
    client = FakeClient()
    store = Store(client, clock=Clock())  # type: ignore[arg-type]
    trio_thread = []
    chunks: list[bytes] = []

    async def sink(chunk: bytearray | memoryview) -> None:
        trio_thread.append(threading.get_ident())
        chunks.append(bytes(chunk))

    async def main() -> None:
        await store.stream(AssetKey("v", "a", 4), sink)

    trio.run(main)
    assert chunks == [b"ab", b"cd"]
    assert set(trio_thread) == {threading.get_ident()}


def test_two_hundred_lookups_of_a_missing_name_cost_one_request() -> None:
    client = FakeClient()
    client.fail = NotFound("no such workspace")
    store = Store(client, clock=Clock())  # type: ignore[arg-type]

    async def main() -> None:
        for _ in range(200):
            with pytest.raises(NotFound):
                await store.artifacts("missing")

    trio.run(main)
    assert client.calls["artifacts"] == 1
    assert store.stats()["errors_cached"] == 199


@pytest.mark.parametrize(
    "outage",
    [
        TransientError("connection refused"),
        ProtocolError("not JSON"),
        ApiError("bad gateway", status=502),
    ],
)
def test_an_expired_listing_is_served_stale_through_an_outage(
    outage: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    client = FakeClient()
    clock = Clock()
    store = Store(client, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        assert await store.workspaces() == ["ws"]
        client.fail = outage
        for step in range(5):
            clock.now = 30.0 + step * 10
            assert await store.workspaces() == ["ws"]
        client.fail = None
        client.listing = ["ws", "new"]
        clock.now = 100.0
        assert await store.workspaces() == ["ws", "new"]

    with caplog.at_level(logging.WARNING, logger="cometfs.store"):
        trio.run(main)
    assert store.stats()["stale_served"] == 5
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


@pytest.mark.parametrize("answer", [NotFound("deleted"), Unauthorized("key revoked")])
def test_not_found_and_unauthorized_are_answers_not_outages(answer: Exception) -> None:
    client = FakeClient()
    clock = Clock()
    store = Store(client, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        await store.workspaces()
        client.fail = answer
        clock.now = 31.0
        with pytest.raises(type(answer)):
            await store.workspaces()

    trio.run(main)
    assert store.stats()["stale_served"] == 0


def test_a_dead_server_is_asked_again_only_after_the_error_ttl() -> None:
    client = FakeClient()
    client.fail = TransientError("down")
    clock = Clock()
    store = Store(client, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        for step in range(42):
            clock.now = step * 0.04  # 42 lookups in under 2 s
            with pytest.raises(TransientError):
                await store.workspaces()
        assert client.calls["workspaces"] == 1
        clock.now = 2.5
        with pytest.raises(TransientError):
            await store.workspaces()
        assert client.calls["workspaces"] == 2

    trio.run(main)


def test_a_hit_read_as_it_expires_is_not_a_key_error() -> None:
    """`if key in cache: cache[key]` on a TTLCache raised KeyError when the clock crossed
    the expiry between the two calls; one .get cannot."""
    client = FakeClient()
    script: list[float] = []

    def clock() -> float:
        return script.pop(0) if script else 30.001

    store = Store(client, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        script.extend([0.0] * 8)
        assert await store.workspaces() == ["ws"]
        script.clear()
        script.append(29.999)  # the check sees a fresh entry, a second read would not
        assert await store.workspaces() == ["ws"]

    trio.run(main)


class BlockingBytes(FakeClient):
    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()
        self.started = 0

    async def read_range(self, *_: Any, **__: Any) -> bytes:
        self.started += 1
        await self.release.wait()
        return b"x"


def test_listings_never_wait_behind_byte_fetches() -> None:
    client = BlockingBytes()
    store = Store(client, clock=Clock(), max_threads=2)  # type: ignore[arg-type]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(2):  # as many as the listing limiter has threads
                nursery.start_soon(store.fetch_range, AssetKey("v", "a", 1), 0, 1)
            await trio.testing.wait_all_tasks_blocked()
            assert client.started == 2
            try:
                with trio.fail_after(5):
                    assert await store.workspaces() == ["ws"]
            finally:
                client.release.set()

    trio.run(main)


def test_range_reads_run_many_more_at_once_than_listings() -> None:
    # With 25 ms per request a walk over small files is bound by round trips: the store
    # lets far more range reads wait on the network at once than it has listing threads
    # (the reader bounds them, at 32 by default).
    client = BlockingBytes()
    store = Store(client, clock=Clock())  # type: ignore[arg-type]
    wanted = 24

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(wanted):
                nursery.start_soon(store.fetch_range, AssetKey("v", "a", 1), 0, 1)
            await trio.testing.wait_all_tasks_blocked()
            try:
                assert client.started == wanted
            finally:
                client.release.set()

    trio.run(main)
