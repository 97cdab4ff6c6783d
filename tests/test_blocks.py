"""Block arithmetic and the readahead window (pure code, no trio)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cometfs.reader.blocks import (
    Readahead,
    block_bounds,
    block_count,
    block_length,
    blocks_covering,
    consecutive_runs,
)

MIB = 1 << 20


@pytest.mark.parametrize(
    ("size", "block", "count"),
    [(0, 10, 0), (1, 10, 1), (10, 10, 1), (11, 10, 2), (100, 10, 10), (5, 1, 5)],
)
def test_block_count(size: int, block: int, count: int) -> None:
    assert block_count(size, block) == count


def test_last_block_is_short() -> None:
    assert block_bounds(0, 10, 25) == (0, 10)
    assert block_bounds(2, 10, 25) == (20, 25)
    assert block_length(2, 10, 25) == 5


@given(
    start=st.integers(0, 10_000),
    length=st.integers(0, 10_000),
    block=st.integers(1, 3000),
)
def test_blocks_covering_is_the_minimal_cover(start: int, length: int, block: int) -> None:
    end = start + length
    covered = blocks_covering(start, end, block)
    if length == 0:
        assert len(covered) == 0
        return
    assert covered.start * block <= start < (covered.start + 1) * block
    assert (covered.stop - 1) * block < end <= covered.stop * block


@given(
    indexes=st.sets(st.integers(0, 200), max_size=60),
    max_len=st.integers(1, 20),
)
def test_consecutive_runs_partition_the_indexes(indexes: set[int], max_len: int) -> None:
    runs = consecutive_runs(indexes, max_len)
    flattened = [index for run in runs for index in run]
    assert flattened == sorted(indexes)
    assert all(1 <= len(run) <= max_len for run in runs)
    # Adjacent runs are split only at gaps or at the length cap.
    for left, right in itertools.pairwise(runs):
        assert right.start > left.stop or len(left) == max_len


def test_consecutive_runs_rejects_zero_length() -> None:
    with pytest.raises(ValueError):
        consecutive_runs([1], 0)


def test_window_is_twice_the_sequential_run_between_min_and_max() -> None:
    ra = Readahead(min_bytes=1 * MIB, max_bytes=8 * MIB)
    offset = 0
    windows = []
    for _ in range(6):
        ra.on_read(offset, offset + MIB, 1 << 40)
        windows.append(ra.window)
        offset += MIB
    assert windows == [2 * MIB, 4 * MIB, 6 * MIB, 8 * MIB, 8 * MIB, 8 * MIB]


def test_small_sequential_reads_keep_the_minimum_window() -> None:
    """The window follows bytes read, not the number of requests the kernel split them into."""
    ra = Readahead(min_bytes=1 * MIB, max_bytes=8 * MIB)
    for i in range(8):
        ra.on_read(i * 4096, (i + 1) * 4096, 1 << 40)
    assert ra.window == 1 * MIB


def test_sequential_run_after_a_seek_starts_small() -> None:
    ra = Readahead(min_bytes=1 * MIB, max_bytes=32 * MIB)
    for i in range(32):
        ra.on_read(i * MIB, (i + 1) * MIB, 1 << 40)
    assert ra.window == 32 * MIB
    base = 500 * MIB
    chunk = 128 * 1024
    for i in range(8):  # one 1 MiB read, as the kernel delivers it
        ra.on_read(base + i * chunk, base + (i + 1) * chunk, 1 << 40)
    assert ra.window == 2 * MIB


def test_far_seek_resets_the_window_and_prefetches_nothing() -> None:
    ra = Readahead(min_bytes=1 * MIB, max_bytes=8 * MIB)
    for i in range(4):
        ra.on_read(i * 4096, (i + 1) * 4096, 1 << 40)
    start, stop = ra.on_read(500 * MIB, 500 * MIB + 4096, 1 << 40)
    assert ra.window == 0
    assert start >= stop


def test_near_out_of_order_read_keeps_the_window() -> None:
    ra = Readahead(min_bytes=1 * MIB, max_bytes=8 * MIB)
    for i in range(3):
        ra.on_read(i * 4096, (i + 1) * 4096, 1 << 40)
    window = ra.window
    ra.on_read(5 * 4096, 6 * 4096, 1 << 40)  # kernel delivered a later read first
    assert ra.window == window


def test_first_read_at_offset_zero_counts_as_sequential() -> None:
    ra = Readahead(min_bytes=1 * MIB, max_bytes=8 * MIB)
    start, stop = ra.on_read(0, 4096, 1 << 40)
    assert (start, stop) == (4096, 4096 + MIB)


def test_first_read_elsewhere_prefetches_nothing() -> None:
    ra = Readahead(min_bytes=1 * MIB, max_bytes=8 * MIB)
    start, stop = ra.on_read(100 * MIB, 100 * MIB + 4096, 1 << 40)
    assert start >= stop


def test_prefetch_never_passes_the_end_of_the_asset() -> None:
    ra = Readahead(min_bytes=1 * MIB, max_bytes=8 * MIB)
    start, stop = ra.on_read(0, 4096, 10_000)
    assert (start, stop) == (4096, 10_000)


def test_prefetch_waits_until_half_the_window_is_consumed() -> None:
    """Each prefetch covers at least half a window, not one block per read."""
    ra = Readahead(min_bytes=MIB, max_bytes=MIB)
    read = 64 * 1024
    ranges = []
    for i in range(64):
        start, stop = ra.on_read(i * read, (i + 1) * read, 1 << 40)
        if start < stop:
            ranges.append((start, stop))
    assert all(stop - start >= MIB // 2 for start, stop in ranges[1:])
    # Prefetched ranges never overlap.
    for (_, stop), (start, _) in itertools.pairwise(ranges):
        assert start >= stop


@given(
    reads=st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(1, 1 << 20)), max_size=40),
    min_bytes=st.integers(0, 4 * MIB),
    extra=st.integers(0, 32 * MIB),
)
def test_window_stays_within_bounds(
    reads: list[tuple[int, int]], min_bytes: int, extra: int
) -> None:
    ra = Readahead(min_bytes=min_bytes, max_bytes=min_bytes + extra)
    size = 1 << 31
    for offset, length in reads:
        start, stop = ra.on_read(offset, offset + length, size)
        assert ra.window == 0 or min_bytes <= ra.window <= min_bytes + extra
        if start < stop:
            assert start >= offset + length
            assert stop - (offset + length) <= ra.window


def test_readahead_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Readahead(min_bytes=2, max_bytes=1)
