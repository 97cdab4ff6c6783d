"""The async Store facade: one request for concurrent identical calls, TTLs for what can
change, no expiry for what a version holds, failures shared but never cached."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import trio
import trio.testing

from cometfs.errors import NotFound
from cometfs.model import Artifact, AssetKey
from cometfs.store import Store


class FakeClient:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail

    def workspaces(self) -> list[str]:
        self._call("workspaces")
        return ["ws"]

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


def test_a_failure_reaches_every_waiter_and_is_not_cached() -> None:
    client = FakeClient()
    store = Store(client, clock=Clock())  # type: ignore[arg-type]
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
        assert await store.workspaces() == ["ws"]
        assert client.calls["workspaces"] == 2

    trio.run(main)


def test_stream_hands_chunks_to_the_sink_on_the_trio_thread() -> None:
    client = FakeClient()
    store = Store(client, clock=Clock())  # type: ignore[arg-type]
    trio_thread = []
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        trio_thread.append(threading.get_ident())
        chunks.append(chunk)

    async def main() -> None:
        await store.stream(AssetKey("v", "a", 4), sink)

    trio.run(main)
    assert chunks == [b"ab", b"cd"]
    assert set(trio_thread) == {threading.get_ident()}

