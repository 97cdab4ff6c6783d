"""AssetReader against a counting fake ByteSource: bytes, fetch counts, sharing, caches, streams."""

from __future__ import annotations

import itertools
import logging
import random
import tempfile
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cometfs.errors import (
    NotFound,
    ProtocolError,
    RangeNotSupported,
    StaleError,
    TransientError,
    Unauthorized,
)
from cometfs.reader import AssetKey, AssetReader, DiskCache
from cometfs.reader.disk import _Geometry

KIB = 1 << 10
MIB = 1 << 20
T = TypeVar("T")

# A cheap, position-dependent byte pattern for large fake assets: a prime period never lines
# up with a power-of-two block, so bytes from a wrong offset do not compare equal.
_PERIOD = 1_000_003
_PATTERN = random.Random(20240601).randbytes(_PERIOD)


def pattern(start: int, end: int) -> bytes:
    out = bytearray()
    position = start
    while position < end:  # at most (end - start) / _PERIOD + 1 rounds
        offset = position % _PERIOD
        piece = _PATTERN[offset : offset + (end - position)]
        out += piece
        position += len(piece)
    return bytes(out)


class Gate:
    """Lets a fake stream deliver bytes only up to a limit the test raises step by step."""

    def __init__(self) -> None:
        self.limit = 0
        self._changed = trio.Event()

    def allow(self, limit: int) -> None:
        self.limit = max(self.limit, limit)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, position: int) -> None:
        while self.limit < position:
            await self._changed.wait()


class FakeSource:
    """A counting ByteSource over in-memory (or generated) bytes.

    Records every fetch_range (key, start, end) and stream call; can ignore Range (raise
    RangeNotSupported), fail chosen calls, hold fetches behind an event, stream in odd chunk
    sizes behind a Gate, fail a stream midway, or answer with the wrong length.
    """

    stream_ahead = 0  # the sink gets each chunk as it is made

    def __init__(
        self,
        *,
        ignore_range: bool = False,
        chunk_sizes: Sequence[int] = (7 * KIB + 3,),
    ) -> None:
        self.assets: dict[AssetKey, Callable[[int, int], bytes]] = {}
        self.ignore_range = ignore_range
        self.chunk_sizes = chunk_sizes
        self.range_calls: list[tuple[AssetKey, int, int]] = []
        self.stream_calls: list[AssetKey] = []
        self.fail_calls: dict[int, BaseException] = {}  # 1-based fetch_range call number
        self.fetch_gate: trio.Event | None = None
        self.stream_gate: Gate | None = None
        self.stream_error: tuple[int, BaseException] | None = None  # (after byte, error)
        self.length_error = 0  # added to the length of every answer
        self.streams_finished = 0
        self.active = 0
        self.max_active = 0
        self.probe: Callable[[], None] | None = None

    def add(self, key: AssetKey, data: bytes | None = None) -> AssetKey:
        if data is None:
            self.assets[key] = pattern
        else:
            assert len(data) == key.size
            self.assets[key] = lambda start, end: data[start:end]
        return key

    @property
    def bytes_requested(self) -> int:
        return sum(end - start for _, start, end in self.range_calls)

    async def fetch_range(self, key: AssetKey, start: int, end: int) -> bytes:
        assert 0 <= start < end <= key.size, (start, end)
        self.range_calls.append((key, start, end))
        call = len(self.range_calls)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.probe is not None:
                self.probe()
            if self.fetch_gate is not None:
                await self.fetch_gate.wait()
            await trio.lowlevel.checkpoint()
            if call in self.fail_calls:
                raise self.fail_calls[call]
            if self.ignore_range:
                raise RangeNotSupported("server answered 200 to a Range request")
            data = self.assets[key](start, end)
            if self.length_error > 0:
                return data + b"\0" * self.length_error
            return data[: len(data) + self.length_error]
        finally:
            self.active -= 1

    async def stream(self, key: AssetKey, sink: Callable[[bytes], Awaitable[None]]) -> None:
        self.stream_calls.append(key)
        data = self.assets[key]
        size = key.size + max(0, self.length_error)
        position = 0
        chunks = itertools.cycle(self.chunk_sizes)
        while position < size + min(0, self.length_error):
            n = min(next(chunks), size + min(0, self.length_error) - position)
            if self.stream_gate is not None:
                await self.stream_gate.wait_for(position + n)
            if self.stream_error is not None and position + n > self.stream_error[0]:
                raise self.stream_error[1]
            chunk = data(position, min(position + n, key.size))
            await sink(chunk + b"\0" * (n - len(chunk)))
            position += n
            await trio.lowlevel.checkpoint()
        self.streams_finished += 1


def run(fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 20) -> T:
    async def main() -> T:
        with trio.fail_after(timeout):
            return await fn(*args)

    return trio.run(main)


async def read_all(reader: AssetReader, key: AssetKey, chunk: int) -> bytes:
    handle = reader.open(key)
    out = bytearray()
    for _ in range(key.size // chunk + 2):
        data = await reader.read(handle, len(out), chunk)
        if not data:
            break
        out += data
    return bytes(out)


async def read_at(reader: AssetReader, key: AssetKey, offset: int, size: int) -> bytes | memoryview:
    return await reader.read(reader.open(key), offset, size)


# -- exact bytes ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 3000),
    # (disk cache?, block size): tiny blocks only without disk, where they cost no file I/O.
    disk_and_block=st.one_of(
        st.tuples(st.just(False), st.sampled_from([1, 7, 64, 100, 1000, 4096])),
        st.tuples(st.just(True), st.sampled_from([100, 1000, 4096])),
    ),
    memory_budget=st.sampled_from([0, 50, 1000, 10_000, 1 << 30]),
    reads=st.lists(st.tuples(st.integers(0, 3100), st.integers(0, 800)), min_size=1, max_size=12),
    ignore_range=st.booleans(),
    concurrent=st.booleans(),
    chunk=st.integers(1, 900),
    seed=st.integers(0, 2**32 - 1),
)
def test_reads_return_exactly_the_source_bytes(
    size: int,
    disk_and_block: tuple[bool, int],
    memory_budget: int,
    reads: list[tuple[int, int]],
    ignore_range: bool,
    concurrent: bool,
    chunk: int,
    seed: int,
) -> None:
    use_disk, block_size = disk_and_block
    data = random.Random(seed).randbytes(size)
    source = FakeSource(ignore_range=ignore_range, chunk_sizes=(chunk, 1, chunk * 2))
    key = source.add(AssetKey("v", "a", size), data)

    async def scenario(disk: DiskCache | None) -> None:
        results: dict[int, bytes | memoryview] = {}
        reader = AssetReader(
            source,
            disk,
            block_size=block_size,
            memory_budget=memory_budget,
            min_readahead=block_size,
            max_readahead=8 * block_size,
        )
        async with reader:
            handle = reader.open(key)

            async def one(n: int, offset: int, length: int) -> None:
                results[n] = await reader.read(handle, offset, length)

            if concurrent:
                async with trio.open_nursery() as nursery:
                    for n, (offset, length) in enumerate(reads):
                        nursery.start_soon(one, n, offset, length)
            else:
                for n, (offset, length) in enumerate(reads):
                    await one(n, offset, length)
            await reader.wait_idle()
            assert reader.stats()["memory_bytes"] <= memory_budget
            assert reader.stats()["memory_reserved"] == 0
        for n, (offset, length) in enumerate(reads):
            assert results[n] == data[offset : offset + length], (n, offset, length)

    with tempfile.TemporaryDirectory() as tmp:
        disk = DiskCache(Path(tmp), 1 << 30, block_size=block_size) if use_disk else None
        run(scenario, disk)
    if size == 0 or all(offset >= size or length == 0 for offset, length in reads):
        assert source.range_calls == [] and source.stream_calls == []


def test_empty_asset_zero_size_and_past_eof_reads_fetch_nothing() -> None:
    source = FakeSource()
    empty = source.add(AssetKey("v", "empty", 0), b"")
    small = source.add(AssetKey("v", "small", 10), b"0123456789")

    async def scenario() -> None:
        async with AssetReader(source, None, block_size=4) as reader:
            assert await read_at(reader, empty, 0, 100) == b""
            assert await read_at(reader, empty, 5, 1) == b""
            assert await read_at(reader, small, 10, 5) == b""
            assert await read_at(reader, small, 99, 5) == b""
            assert await read_at(reader, small, 3, 0) == b""
            assert source.range_calls == []
            assert await read_at(reader, small, 8, 100) == b"89"  # short only at EOF
            with pytest.raises(ValueError):
                await read_at(reader, small, -1, 1)

    run(scenario)


def test_large_reads_of_a_generated_asset() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "big", 10 * MIB + 12345))

    async def scenario() -> None:
        async with AssetReader(source, None, block_size=MIB) as reader:
            handle = reader.open(key)
            for offset, size in [(0, 3 * MIB + 5), (7 * MIB - 1, 2 * MIB), (10 * MIB, MIB)]:
                got = await reader.read(handle, offset, size)
                assert got == pattern(offset, min(offset + size, key.size))

    run(scenario)


# -- readahead and fetch counts -------------------------------------------------------------------


def test_sequential_read_grows_the_window_and_fetches_each_byte_once() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "seq", 64 * MIB))

    async def scenario() -> None:
        async with AssetReader(source, None) as reader:
            handle = reader.open(key)
            offset = 0
            for _ in range(key.size // (128 * KIB)):
                data = await reader.read(handle, offset, 128 * KIB)
                assert data == pattern(offset, offset + 128 * KIB)
                offset += len(data)
            assert await reader.read(handle, offset, 128 * KIB) == b""
            await reader.wait_idle()

    run(scenario)
    # The first read's own chunks are also fetched on their own, ahead of its block.
    head = (key, 0, 128 * KIB)
    assert source.range_calls.count(head) == 1
    ranges = sorted(
        (start, end) for call in source.range_calls if call != head for _, start, end in [call]
    )
    # Disjoint and covering the asset exactly: nothing else fetched twice, nothing skipped.
    assert [start for start, _ in ranges] == [0] + [end for _, end in ranges[:-1]]
    assert ranges[-1][1] == key.size
    assert source.bytes_requested == key.size + 128 * KIB
    # The window grows with the run: small fetches first, then half the 32 MiB window each.
    sizes = [end - start for start, end in ranges]
    assert len(sizes) <= 12, sizes
    assert sizes[0] <= 2 * MIB
    assert sizes[1:-1] == sorted(sizes[1:-1]), sizes  # never shrinks while the run goes on
    assert max(sizes) >= 16 * MIB, sizes


def test_far_seek_in_a_huge_asset_fetches_a_bounded_amount() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "huge", 256 * MIB))

    async def scenario() -> None:
        async with AssetReader(source, None) as reader:
            handle = reader.open(key)
            offset = 128 * MIB + 12345
            assert await reader.read(handle, offset, MIB) == pattern(offset, offset + MIB)
            await reader.wait_idle()
            assert source.bytes_requested <= 2 * MIB

            # Read sequentially for a while (the window grows), then seek far away.
            position = 0
            for _ in range(64):
                position += len(await reader.read(handle, position, 128 * KIB))
            await reader.wait_idle()
            before = source.bytes_requested
            offset = 200 * MIB + 777
            assert await reader.read(handle, offset, MIB) == pattern(offset, offset + MIB)
            await reader.wait_idle()
            assert source.bytes_requested - before <= 2 * MIB

    run(scenario)


def test_parallel_fetches_are_bounded() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "par", 64 * MIB))

    async def scenario() -> None:
        source.fetch_gate = trio.Event()
        # No readahead: the read at offset 0 would add a fetch of its own.
        reader = AssetReader(source, None, max_parallel_fetches=2, min_readahead=0, max_readahead=0)
        async with reader, trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(read_at, reader, key, n * 10 * MIB, 1000)
            await trio.testing.wait_all_tasks_blocked()
            assert source.active == 2
            source.fetch_gate.set()
        assert source.max_active == 2
        assert len(source.range_calls) == 6

    run(scenario)


def test_a_first_read_waits_only_for_its_own_chunk() -> None:
    # Time to first byte: the read's own 32 KiB chunk is fetched on its own and first, so
    # neither its 1 MiB block nor the window the read starts holds the answer back; the
    # block and the readahead still come, right behind it.
    class SlowBlocks(FakeSource):
        def __init__(self) -> None:
            super().__init__()
            self.gate = trio.Event()

        async def fetch_range(self, key: AssetKey, start: int, end: int) -> bytes:
            if end - start > 32 * KIB:
                await self.gate.wait()
            return await super().fetch_range(key, start, end)

    source = SlowBlocks()
    key = source.add(AssetKey("v", "ttfb", 8 * MIB))

    async def scenario() -> None:
        async with AssetReader(source, None) as reader:
            handle = reader.open(key)
            with trio.fail_after(5):
                assert await reader.read(handle, 0, 4 * KIB) == pattern(0, 4 * KIB)
            assert [(s, e) for _, s, e in source.range_calls] == [(0, 32 * KIB)]
            source.gate.set()
            await reader.wait_idle()
        assert sorted((s, e) for _, s, e in source.range_calls)[:3] == [
            (0, 32 * KIB),
            (0, MIB),
            (MIB, 2 * MIB),
        ]

    run(scenario)


def test_later_handles_and_cached_blocks_fetch_no_head() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "once", 8 * MIB))

    async def scenario() -> None:
        async with AssetReader(source, None) as reader:
            handle = reader.open(key)
            await reader.read(handle, 0, 4 * KIB)
            await reader.read(handle, 4 * KIB, 4 * KIB)  # same handle, no longer fresh
            await reader.wait_idle()
            await reader.read(reader.open(key), 0, 4 * KIB)  # block 0 is in memory
            await reader.wait_idle()

    run(scenario)
    assert [call for call in source.range_calls if call[2] - call[1] <= 32 * KIB] == [
        (key, 0, 32 * KIB)
    ]


def test_by_default_small_files_are_fetched_far_more_than_eight_at_once() -> None:
    # Readers of 24 small files each wait one round trip; a default cap of 8 made a
    # DataLoader over a 25 ms WAN wait three round trips instead of one.
    source = FakeSource()
    keys = [source.add(AssetKey("v", f"small{n}", 10_000)) for n in range(24)]

    async def scenario() -> None:
        source.fetch_gate = trio.Event()
        async with AssetReader(source, None) as reader, trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(read_at, reader, key, 0, 1000)
            await trio.testing.wait_all_tasks_blocked()
            assert source.active == len(keys)
            source.fetch_gate.set()

    run(scenario)


# -- single flight and errors ---------------------------------------------------------------------


def test_concurrent_readers_of_one_block_share_one_fetch() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "shared", 4 * MIB))
    results: list[tuple[int, bytes | memoryview]] = []

    async def reader_task(reader: AssetReader, offset: int) -> None:
        results.append((offset, await read_at(reader, key, offset, 1000)))

    async def scenario() -> None:
        source.fetch_gate = trio.Event()
        async with AssetReader(source, None) as reader:
            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(reader_task, reader, 2 * MIB + 100 + n * 1000)
                await trio.testing.wait_all_tasks_blocked()
                assert len(source.range_calls) == 1
                source.fetch_gate.set()
            assert reader.stats()["shared_waits"] == 9

    run(scenario)
    assert len(source.range_calls) == 1
    assert len(results) == 10
    for offset, data in results:
        assert data == pattern(offset, offset + 1000)


def test_failed_fetch_wakes_every_waiter_with_the_error_and_is_not_cached() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "flaky", 4 * MIB))
    error = TransientError("server had a bad day")
    source.fail_calls[1] = error
    caught: list[BaseException] = []

    async def reader_task(reader: AssetReader) -> None:
        try:
            await read_at(reader, key, MIB, 100)
        except TransientError as exc:
            caught.append(exc)

    async def scenario() -> None:
        source.fetch_gate = trio.Event()
        async with AssetReader(source, None) as reader:
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(reader_task, reader)
                await trio.testing.wait_all_tasks_blocked()
                source.fetch_gate.set()
            assert len(caught) == 5 and all(exc is error for exc in caught)
            assert reader.stats()["memory_bytes"] == 0
            assert await read_at(reader, key, MIB, 100) == pattern(MIB, MIB + 100)
            assert reader.stats()["fetch_errors"] == 1

    run(scenario)
    assert len(source.range_calls) == 2


@pytest.mark.parametrize(
    "error",
    [
        NotFound("no such asset", status=404),
        Unauthorized("key revoked", status=401),
        StaleError("bytes changed"),
        TransientError("retries exhausted"),
        ProtocolError("bad body"),
        OSError("something unexpected"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_source_errors_propagate_unchanged_and_the_next_read_retries(error: Exception) -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "err", 100 * KIB))
    source.fail_calls[1] = error

    async def scenario() -> None:
        # No readahead: a prefetch is a load of its own and could take the failing call.
        async with AssetReader(
            source, None, block_size=16 * KIB, min_readahead=0, max_readahead=0
        ) as reader:
            handle = reader.open(key)
            with pytest.raises(type(error)) as excinfo:
                await reader.read(handle, 0, 1000)
            assert excinfo.value is error
            assert await reader.read(handle, 0, 1000) == pattern(0, 1000)

    run(scenario)


@pytest.mark.parametrize("length_error", [-1, 1])
def test_wrong_length_from_the_source_is_a_protocol_error(length_error: int) -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "short", 100 * KIB))
    source.length_error = length_error

    async def scenario() -> None:
        async with AssetReader(source, None, block_size=16 * KIB) as reader:
            with pytest.raises(ProtocolError):
                await read_at(reader, key, 0, 1000)
            source.length_error = 0
            assert await read_at(reader, key, 0, 1000) == pattern(0, 1000)

    run(scenario)


# -- memory budget --------------------------------------------------------------------------------


def test_memory_budget_holds_for_cached_and_in_flight_blocks() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "mem", 32 * MIB))
    budget = 4 * MIB
    read_size = 128 * KIB
    block = 256 * KIB
    peaks: list[int] = []

    async def scenario() -> None:
        async with AssetReader(source, None, block_size=block, memory_budget=budget) as reader:

            def probe() -> None:
                stats = reader.stats()
                peaks.append(stats["memory_bytes"] + stats["memory_reserved"])

            source.probe = probe
            data = await read_all(reader, key, read_size)
            assert data == pattern(0, key.size)
            rng = random.Random(5)
            for _ in range(50):
                offset = rng.randrange(key.size)
                got = await read_at(reader, key, offset, read_size)
                assert got == pattern(offset, min(key.size, offset + read_size))
                assert reader.stats()["memory_bytes"] <= budget
            await reader.wait_idle()
            stats = reader.stats()
            assert stats["memory_bytes"] <= budget
            assert stats["memory_reserved"] == 0

    run(scenario)
    # In flight may exceed the budget only by what one read itself needs.
    assert max(peaks) <= budget + 2 * block


def test_budget_smaller_than_one_read_still_works_without_caching() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "tiny", 100 * KIB))

    async def scenario() -> None:
        async with AssetReader(source, None, block_size=4 * KIB, memory_budget=1000) as reader:
            for _ in range(2):
                assert await read_at(reader, key, 10, 20_000) == pattern(10, 20_010)
            await reader.wait_idle()
            assert reader.stats()["memory_bytes"] == 0

    run(scenario)
    assert source.bytes_requested == 2 * 20 * KIB  # nothing cached, nothing prefetched


# -- disk cache -----------------------------------------------------------------------------------


def test_remount_serves_rereads_from_disk_with_zero_source_calls(tmp_path: Path) -> None:
    key = AssetKey("v", "persist", 3 * MIB + 17)

    async def first() -> None:
        source = FakeSource()
        source.add(key)
        disk = DiskCache(tmp_path, 64 * MIB, block_size=256 * KIB)
        async with AssetReader(source, disk, block_size=256 * KIB) as reader:
            assert await read_all(reader, key, 100 * KIB) == pattern(0, key.size)
            await reader.wait_idle()

    async def second() -> None:
        source = FakeSource()
        source.add(key)
        disk = DiskCache(tmp_path, 64 * MIB, block_size=256 * KIB)
        async with AssetReader(source, disk, block_size=256 * KIB) as reader:
            assert await read_all(reader, key, 100 * KIB) == pattern(0, key.size)
            assert await read_at(reader, key, MIB + 5, 300) == pattern(MIB + 5, MIB + 305)
            assert reader.stats()["hits_disk"] == 13
        assert source.range_calls == [] and source.stream_calls == []

    run(first)
    run(second)


def test_corrupt_or_truncated_disk_blocks_are_refetched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    block = 64 * KIB
    key = AssetKey("v", "damaged", 10 * block)
    source = FakeSource()
    source.add(key)

    async def fill() -> None:
        disk = DiskCache(tmp_path, 64 * MIB, block_size=block)
        async with AssetReader(source, disk, block_size=block) as reader:
            await read_all(reader, key, block)
            await reader.wait_idle()

    run(fill)
    (asset_file,) = (tmp_path / "v3").iterdir()
    geometry = _Geometry(key.size, block)
    raw = bytearray(asset_file.read_bytes())
    raw[geometry.data(3) + 100] ^= 0xFF  # a flipped bit
    raw[geometry.data(5) + block // 2 : geometry.data(6)] = bytes(block // 2)  # a torn write
    asset_file.write_bytes(raw)
    source.range_calls.clear()

    async def reread() -> None:
        disk = DiskCache(tmp_path, 64 * MIB, block_size=block)
        async with AssetReader(source, disk, block_size=block, min_readahead=0) as reader:
            assert await read_all(reader, key, block) == pattern(0, key.size)
            await reader.wait_idle()

    with caplog.at_level(logging.WARNING):
        run(reread)
    assert sorted((start, end) for _, start, end in source.range_calls) == [
        (3 * block, 4 * block),
        (5 * block, 6 * block),
    ]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    # The refetched blocks were written back intact.
    disk = DiskCache(tmp_path, 64 * MIB, block_size=block)
    assert disk.get(key, 3, block) == pattern(3 * block, 4 * block)
    assert disk.get(key, 5, block) == pattern(5 * block, 6 * block)


def test_disk_cache_usage_stays_within_capacity_through_the_reader(tmp_path: Path) -> None:
    block = 64 * KIB
    source = FakeSource()
    keys = [source.add(AssetKey("v", f"a{n}", 20 * block)) for n in range(3)]

    async def scenario() -> None:
        disk = DiskCache(tmp_path, 15 * (block + 8), block_size=block)
        async with AssetReader(source, disk, block_size=block) as reader:
            for key in keys:
                assert await read_all(reader, key, block) == pattern(0, key.size)
                await reader.wait_idle()
                assert disk.usage() <= disk.capacity
            stats = reader.stats()
            assert stats["disk_bytes"] == disk.usage()
            assert stats["disk_capacity"] == disk.capacity

    run(scenario)


class BrokenDisk(DiskCache):
    def put_many(
        self, blocks: Sequence[tuple[AssetKey, int, bytes | bytearray | memoryview]]
    ) -> list[OSError]:
        return [OSError(28, "No space left on device") for _ in blocks]


def test_disk_write_failures_do_not_fail_reads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "nospace", 10 * 64 * KIB))

    async def scenario() -> None:
        disk = BrokenDisk(tmp_path, MIB, block_size=64 * KIB)
        async with AssetReader(
            source, disk, block_size=64 * KIB, min_readahead=0, max_readahead=0
        ) as reader:
            assert await read_all(reader, key, 64 * KIB) == pattern(0, key.size)
            await reader.wait_idle()
            assert reader.stats()["disk_errors"] == 10  # one per single-block fetch

    with caplog.at_level(logging.WARNING):
        run(scenario)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_reader_rejects_a_disk_cache_with_another_block_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AssetReader(FakeSource(), DiskCache(tmp_path, MIB, block_size=4096), block_size=8192)


# -- stream mode ----------------------------------------------------------------------------------

STREAM_BLOCK = 64 * KIB


def stream_reader(source: FakeSource, disk: DiskCache | None = None) -> AssetReader:
    return AssetReader(source, disk, block_size=STREAM_BLOCK)


def test_stream_mode_answers_a_read_as_soon_as_the_stream_passes_it() -> None:
    source = FakeSource(ignore_range=True, chunk_sizes=(5000, 333))
    key = source.add(AssetKey("v", "streamed", 16 * STREAM_BLOCK + 99))
    offset = 4 * STREAM_BLOCK + 1234
    answered = trio.Event()
    results: list[bytes | memoryview] = []

    async def reader_task(reader: AssetReader) -> None:
        results.append(await read_at(reader, key, offset, 1000))
        answered.set()

    async def scenario() -> None:
        source.stream_gate = gate = Gate()
        async with stream_reader(source) as reader:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader_task, reader)
                await trio.testing.wait_all_tasks_blocked()
                assert not answered.is_set()
                gate.allow(5 * STREAM_BLOCK - 1)  # just short of the block holding `offset`
                await trio.testing.wait_all_tasks_blocked()
                assert not answered.is_set()
                gate.allow(5 * STREAM_BLOCK + 4000)
                await answered.wait()
                assert source.streams_finished == 0  # answered mid-stream
                gate.allow(key.size)
            await reader.wait_idle()
            assert source.streams_finished == 1
            # The whole asset is cached now: any read is answered without the network.
            assert await read_at(reader, key, 12 * STREAM_BLOCK, 5000) == pattern(
                12 * STREAM_BLOCK, 12 * STREAM_BLOCK + 5000
            )
            assert reader.stats()["range_unsupported"] == 1

    run(scenario)
    assert results == [pattern(offset, offset + 1000)]
    assert len(source.range_calls) == 1  # the attempt that taught us Range is ignored
    assert source.stream_calls == [key]


def test_one_stream_per_asset_for_concurrent_readers() -> None:
    source = FakeSource(ignore_range=True)
    first = source.add(AssetKey("v", "s1", 20 * STREAM_BLOCK))
    second = source.add(AssetKey("v", "s2", 10 * STREAM_BLOCK + 5))
    results: dict[tuple[str, int], bytes | memoryview] = {}

    async def reader_task(reader: AssetReader, key: AssetKey, offset: int) -> None:
        results[(key.asset_id, offset)] = await read_at(reader, key, offset, 3000)

    async def scenario() -> None:
        source.stream_gate = gate = Gate()
        async with stream_reader(source) as reader, trio.open_nursery() as nursery:
            for offset in (0, 5 * STREAM_BLOCK, 19 * STREAM_BLOCK, 7 * STREAM_BLOCK):
                nursery.start_soon(reader_task, reader, first, offset)
            await trio.testing.wait_all_tasks_blocked()
            # Range is known to be ignored now: the second asset goes straight to stream().
            for offset in (100, 9 * STREAM_BLOCK):
                nursery.start_soon(reader_task, reader, second, offset)
            await trio.testing.wait_all_tasks_blocked()
            gate.allow(first.size)

    run(scenario)
    assert sorted(source.stream_calls, key=lambda k: k.asset_id) == [first, second]
    assert all(key is first for key, _, _ in source.range_calls)
    for (asset_id, offset), data in results.items():
        key = first if asset_id == "s1" else second
        assert data == pattern(offset, min(key.size, offset + 3000))


def test_stream_failure_midway_reaches_waiters_and_keeps_landed_blocks() -> None:
    source = FakeSource(ignore_range=True, chunk_sizes=(10_000,))
    key = source.add(AssetKey("v", "broken", 10 * STREAM_BLOCK))
    error = TransientError("connection reset")
    source.stream_error = (3 * STREAM_BLOCK + 25_000, error)
    outcomes: dict[int, bytes | memoryview | BaseException] = {}

    async def reader_task(reader: AssetReader, offset: int) -> None:
        try:
            outcomes[offset] = await read_at(reader, key, offset, 100)
        except TransientError as exc:
            outcomes[offset] = exc

    async def scenario() -> None:
        async with stream_reader(source) as reader:
            async with trio.open_nursery() as nursery:
                for offset in (10, 2 * STREAM_BLOCK, 6 * STREAM_BLOCK, 9 * STREAM_BLOCK):
                    nursery.start_soon(reader_task, reader, offset)
            assert outcomes[10] == pattern(10, 110)
            assert outcomes[2 * STREAM_BLOCK] == pattern(2 * STREAM_BLOCK, 2 * STREAM_BLOCK + 100)
            assert outcomes[6 * STREAM_BLOCK] is error
            assert outcomes[9 * STREAM_BLOCK] is error
            calls = len(source.stream_calls)
            # Blocks that landed before the failure stay valid and cached.
            assert await read_at(reader, key, 100, 3 * STREAM_BLOCK - 200) == pattern(
                100, 3 * STREAM_BLOCK - 100
            )
            assert len(source.stream_calls) == calls
            # The failure is not cached: the next read streams again.
            source.stream_error = None
            assert await read_at(reader, key, 6 * STREAM_BLOCK, 100) == pattern(
                6 * STREAM_BLOCK, 6 * STREAM_BLOCK + 100
            )
            assert len(source.stream_calls) == calls + 1
            assert reader.stats()["stream_errors"] == 1

    run(scenario)


def test_short_stream_is_a_protocol_error_and_keeps_the_landed_prefix(tmp_path: Path) -> None:
    source = FakeSource(ignore_range=True)
    key = source.add(AssetKey("v", "short", 4 * STREAM_BLOCK + 10))
    source.length_error = -1

    async def scenario() -> None:
        disk = DiskCache(tmp_path, 64 * MIB, block_size=STREAM_BLOCK)
        async with stream_reader(source, disk) as reader:
            with pytest.raises(ProtocolError):
                await read_at(reader, key, key.size - 5, 5)
            await reader.wait_idle()
            assert reader.stats()["memory_blocks"] == 4
            assert len(disk) == 4

    run(scenario)


def test_overlong_stream_is_a_protocol_error_and_drops_what_landed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeSource(ignore_range=True)
    key = source.add(AssetKey("v", "long", 4 * STREAM_BLOCK + 10))
    source.length_error = 1  # the body does not match the listing: nothing of it is trusted

    async def scenario() -> None:
        disk = DiskCache(tmp_path, 64 * MIB, block_size=STREAM_BLOCK)
        async with stream_reader(source, disk) as reader:
            with pytest.raises(ProtocolError):
                await read_at(reader, key, key.size - 5, 5)
            await reader.wait_idle()
            assert reader.stats()["memory_blocks"] == 0
            assert len(disk) == 0 and disk.usage() == 0

    with caplog.at_level(logging.WARNING):
        run(scenario)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_streamed_blocks_land_on_disk_for_the_next_mount(tmp_path: Path) -> None:
    key = AssetKey("v", "stream-disk", 8 * STREAM_BLOCK + 3)

    async def first() -> None:
        source = FakeSource(ignore_range=True)
        source.add(key)
        disk = DiskCache(tmp_path, 64 * MIB, block_size=STREAM_BLOCK)
        async with stream_reader(source, disk) as reader:
            assert await read_at(reader, key, 0, 10) == pattern(0, 10)
            await reader.wait_idle()
        assert len(source.stream_calls) == 1

    async def second() -> None:
        source = FakeSource(ignore_range=True)
        source.add(key)
        disk = DiskCache(tmp_path, 64 * MIB, block_size=STREAM_BLOCK)
        async with stream_reader(source, disk) as reader:
            assert await read_all(reader, key, 50_000) == pattern(0, key.size)
        assert source.range_calls == [] and source.stream_calls == []

    run(first)
    run(second)


# -- lifecycle ------------------------------------------------------------------------------------


def test_read_outside_the_context_manager_is_an_error() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "x", 10), b"0123456789")
    reader = AssetReader(source, None)
    with pytest.raises(RuntimeError):
        run(read_at, reader, key, 0, 5)


def test_exceptions_in_the_body_propagate_unwrapped() -> None:
    async def scenario() -> None:
        async with AssetReader(FakeSource(), None):
            raise KeyError("from the body")

    with pytest.raises(KeyError):
        run(scenario)


def test_leaving_the_reader_fails_pending_reads_instead_of_hanging() -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "hang", MIB))
    caught: list[BaseException] = []

    async def reader_task(reader: AssetReader) -> None:
        try:
            await read_at(reader, key, 0, 10)
        except TransientError as exc:
            caught.append(exc)

    async def scenario() -> None:
        source.fetch_gate = trio.Event()  # never set: the fetch hangs
        async with trio.open_nursery() as outer, AssetReader(source, None) as reader:
            outer.start_soon(reader_task, reader)
            await trio.testing.wait_all_tasks_blocked()

    run(scenario)
    assert len(caught) == 1


class SlowDisk(DiskCache):
    """A disk cache whose writes wait until the test opens `gate` (a threading.Event)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def put_many(
        self, blocks: Sequence[tuple[AssetKey, int, bytes | bytearray | memoryview]]
    ) -> list[OSError]:
        assert self.gate.wait(20)
        return super().put_many(blocks)


def test_stream_waits_for_a_slow_disk_instead_of_buffering(tmp_path: Path) -> None:
    block = 64 * KIB
    source = FakeSource(ignore_range=True)
    key = source.add(AssetKey("v", "slowdisk", 64 * block))

    async def scenario() -> None:
        disk = SlowDisk(tmp_path, 64 * MIB, block_size=block)
        async with AssetReader(source, disk, block_size=block) as reader:
            handle = reader.open(key)
            first = await reader.read(handle, 0, block)
            assert first == pattern(0, block)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            # The disk is stuck: the stream may run only a bounded queue ahead of it.
            assert reader.stats()["bytes_streamed"] <= 12 * block
            # Reserved: the first read's readahead window (1 MiB) plus the bounded queue.
            assert reader.stats()["memory_reserved"] <= MIB + 12 * block
            disk.gate.set()
            assert await read_all(reader, key, block) == pattern(0, key.size)
            await reader.wait_idle()
        assert len(source.stream_calls) == 1

    run(scenario)


class CountingDisk(DiskCache):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gets = 0

    def get_many(self, key: AssetKey, lengths: dict[int, int]) -> dict[int, bytes]:
        self.gets += len(lengths)
        return super().get_many(key, lengths)


def test_cold_blocks_skip_the_disk_and_cached_ones_use_it(tmp_path: Path) -> None:
    source = FakeSource()
    key = source.add(AssetKey("v", "index", 8 * 64 * KIB))

    async def read_twice() -> tuple[int, int]:
        disk = CountingDisk(tmp_path, 64 * MIB, block_size=64 * KIB)
        disk.scan()  # until the cache is indexed, holds() sends every block to get()
        async with AssetReader(source, disk, block_size=64 * KIB) as reader:
            assert await read_all(reader, key, 64 * KIB) == pattern(0, key.size)
            await reader.wait_idle()
        cold = disk.gets
        disk = CountingDisk(tmp_path, 64 * MIB, block_size=64 * KIB)
        disk.scan()
        async with AssetReader(source, disk, block_size=64 * KIB) as reader:
            assert await read_all(reader, key, 64 * KIB) == pattern(0, key.size)
        return cold, disk.gets

    cold_gets, warm_gets = run(read_twice)
    assert cold_gets == 0
    assert warm_gets == 8
