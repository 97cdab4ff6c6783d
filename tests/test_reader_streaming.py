"""Stream mode on its own: the StreamLoader fills the reader's slots from one whole stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from cometfs.errors import ProtocolError, StaleError, TransientError
from cometfs.model import AssetKey
from cometfs.reader.memory import MemoryCache
from cometfs.reader.pieces import WHOLE, Buffer, Piece, Slot, SlotTable
from cometfs.reader.streaming import StreamLoader

BLOCK = 64
SPAN = 16


class ChunkSource:
    """Streams `data` in chunks of `chunk` bytes; counts the streams started. The first
    `breaks` streams raise `error` once `break_at` bytes have gone to the sink."""

    stream_ahead = 0  # the sink gets each chunk as it is made

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data = data
        self.chunk = chunk
        self.streams = 0
        self.breaks = 0
        self.break_at = 0
        self.error: Exception = TransientError("connection lost while reading")

    async def fetch_range(self, key: AssetKey, start: int, end: int) -> Buffer:
        raise AssertionError("stream mode never fetches ranges")

    async def stream(self, key: AssetKey, sink: Callable[[Buffer], Awaitable[None]]) -> None:
        self.streams += 1
        for start in range(0, len(self.data), self.chunk):
            if self.streams <= self.breaks and start >= self.break_at:
                raise self.error
            await sink(self.data[start : start + self.chunk])


async def _load(
    source: ChunkSource, key: AssetKey, pieces: list[tuple[Piece, int, int]]
) -> tuple[list[Slot], dict[str, int], MemoryCache, SlotTable]:
    memory = MemoryCache(1 << 20)
    table = SlotTable(memory)
    counts = {"streams": 0, "bytes_streamed": 0, "stream_errors": 0, "streams_restarted": 0}
    async with trio.open_nursery() as nursery:

        def spawn(fn: Callable[..., Awaitable[None]], *args: object) -> None:
            nursery.start_soon(fn, *args)

        loader = StreamLoader(
            source,
            table,
            memory,
            None,
            block_size=BLOCK,
            span=SPAN,
            counts=counts,
            spawn=spawn,
            disk_trouble=lambda action, exc: None,
        )
        slots = {piece: table.add(piece, start, end) for piece, start, end in pieces}
        loader.load(key, slots)
        assert loader.active == 1
    assert loader.active == 0
    return list(slots.values()), counts, memory, table


def test_one_stream_fills_blocks_and_cuts_chunks() -> None:
    data = bytes(range(200))
    key = AssetKey("v", "a", len(data))
    source = ChunkSource(data, 7)  # chunks never line up with blocks

    async def main() -> None:
        pieces = [((key, 0, WHOLE), 0, 64), ((key, 3, WHOLE), 192, 200), ((key, 2, 1), 144, 160)]
        slots, counts, memory, table = await _load(source, key, pieces)
        got = [bytes(await slot.wait()) for slot in slots]
        assert got == [data[0:64], data[192:200], data[144:160]]
        assert counts == {
            "streams": 1,
            "bytes_streamed": 200,
            "stream_errors": 0,
            "streams_restarted": 0,
        }
        assert len(table) == 0 and memory.reserved == 0
        assert bytes(memory.get((key, 1, WHOLE)) or b"") == data[64:128]

    trio.run(main)
    assert source.streams == 1


def test_a_short_stream_fails_the_blocks_it_never_reached() -> None:
    key = AssetKey("v", "a", 200)
    source = ChunkSource(bytes(100), 50)

    async def main() -> None:
        pieces = [((key, 0, WHOLE), 0, 64), ((key, 3, WHOLE), 192, 200)]
        slots, counts, _, table = await _load(source, key, pieces)
        assert bytes(await slots[0].wait()) == bytes(64)
        try:
            await slots[1].wait()
        except ProtocolError as exc:
            assert "ended after 100 of 200 bytes" in str(exc)
        else:
            raise AssertionError("the unreached block must fail")
        assert counts["stream_errors"] == 1 and len(table) == 0

    trio.run(main)


# Broken before the first byte, and after a block has landed.
@pytest.mark.parametrize("break_at", [0, 70])
def test_a_broken_stream_is_started_again_for_its_waiters(break_at: int) -> None:
    data = bytes(range(200))
    key = AssetKey("v", "a", len(data))
    source = ChunkSource(data, 10)
    source.breaks, source.break_at = 2, break_at

    async def main() -> None:
        pieces = [((key, 0, WHOLE), 0, 64), ((key, 3, WHOLE), 192, 200)]
        slots, counts, memory, table = await _load(source, key, pieces)
        assert [bytes(await slot.wait()) for slot in slots] == [data[0:64], data[192:200]]
        assert counts["streams_restarted"] == 2 and counts["stream_errors"] == 0
        assert len(table) == 0 and memory.reserved == 0

    trio.run(main)
    assert source.streams == 3


def test_a_stream_that_keeps_breaking_fails_its_waiters_after_two_restarts() -> None:
    key = AssetKey("v", "a", 200)
    source = ChunkSource(bytes(200), 10)
    source.breaks, source.break_at = 99, 100

    async def main() -> None:
        pieces = [((key, 0, WHOLE), 0, 64), ((key, 3, WHOLE), 192, 200)]
        slots, counts, _, table = await _load(source, key, pieces)
        assert bytes(await slots[0].wait()) == bytes(64)
        with pytest.raises(TransientError) as failed:
            await slots[1].wait()
        assert failed.value is source.error
        assert counts["streams_restarted"] == 2 and counts["stream_errors"] == 1
        assert len(table) == 0

    trio.run(main)
    assert source.streams == 3


def test_a_stream_whose_bytes_changed_is_not_started_again() -> None:
    key = AssetKey("v", "a", 200)
    source = ChunkSource(bytes(200), 10)
    source.breaks, source.break_at = 1, 100
    source.error = StaleError("the body does not match its SHA-256 ETag")

    async def main() -> None:
        pieces = [((key, 3, WHOLE), 192, 200)]
        slots, counts, _, _ = await _load(source, key, pieces)
        with pytest.raises(StaleError):
            await slots[0].wait()
        assert counts["streams_restarted"] == 0

    trio.run(main)
    assert source.streams == 1
