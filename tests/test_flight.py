"""SingleFlight: one computation per key, shared outcome, cancelled callers only stop waiting."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from cometfs.flight import SingleFlight


def test_concurrent_callers_share_one_computation_and_its_error() -> None:
    flights = SingleFlight()
    calls = 0
    gate = trio.Event()

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    async def failing() -> int:
        raise ValueError("boom")

    async def main() -> None:
        results: list[int] = []

        async def call() -> None:
            results.append(await flights.run("k", compute))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert results == [42] * 5 and calls == 1
        with pytest.raises(ValueError, match="boom"):
            await flights.run("bad", failing)

    trio.run(main)


def test_a_cancelled_caller_stops_waiting_and_the_others_get_the_answer() -> None:
    flights = SingleFlight()
    gate = trio.Event()

    async def compute() -> str:
        await gate.wait()
        return "shared"

    async def main() -> None:
        got: list[str] = []

        async def waiter() -> None:
            got.append(await flights.run("k", compute))

        with trio.CancelScope() as first:
            first.deadline = trio.current_time() + 0.01
            await flights.run("k", compute)
        assert first.cancelled_caught
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert got == ["shared"]

    trio.run(main)
