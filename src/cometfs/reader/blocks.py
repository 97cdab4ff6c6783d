"""Block arithmetic and the per-handle readahead window; pure functions and plain state.

An asset is cut into fixed-size blocks (the last one short); every cache and every fetch works
in whole blocks. `Readahead` decides, per open file, how far beyond a read to prefetch. No I/O
and no locking here: everything is called from the trio thread (or from tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def block_count(asset_size: int, block_size: int) -> int:
    """Number of blocks an asset of `asset_size` bytes is cut into (0 for an empty asset)."""
    return -(-asset_size // block_size)


def block_bounds(index: int, block_size: int, asset_size: int) -> tuple[int, int]:
    """Byte range [start, end) of block `index`; the last block ends at the asset's end."""
    start = index * block_size
    return start, min(start + block_size, asset_size)


def block_length(index: int, block_size: int, asset_size: int) -> int:
    start, end = block_bounds(index, block_size, asset_size)
    return end - start


def blocks_covering(start: int, end: int, block_size: int) -> range:
    """Indexes of the blocks that overlap the byte range [start, end); empty if end <= start."""
    if end <= start:
        return range(0)
    return range(start // block_size, (end - 1) // block_size + 1)


def consecutive_runs(indexes: Iterable[int], max_len: int) -> list[range]:
    """Group sorted block indexes into runs of consecutive indexes, each at most `max_len` long.

    One run becomes one ranged request, so `max_len` bounds the bytes a single fetch holds.
    """
    if max_len < 1:
        raise ValueError("max_len must be at least 1")
    runs: list[range] = []
    first = prev = None
    for index in sorted(indexes):
        if first is not None and prev is not None and index == prev + 1 and index - first < max_len:
            prev = index
            continue
        if first is not None and prev is not None:
            runs.append(range(first, prev + 1))
        first = prev = index
    if first is not None and prev is not None:
        runs.append(range(first, prev + 1))
    return runs


@dataclass
class Readahead:
    """Sequential-read detection for one open file.

    A read that starts where the previous one ended makes the window twice the length of the
    sequential run so far (at least min, at most max), as the kernel's own readahead does: the
    window follows the bytes really read, not the number of requests they came in, so a 1 MiB
    read that the kernel cuts into 128 KiB requests prefetches about 2 MiB, not 32. A read
    within one window of that point keeps the window, because the kernel may deliver
    concurrent sequential reads slightly out of order; anything further is a seek and drops
    the window to zero, so random access fetches only the blocks it touches. A fresh handle
    counts a read at offset 0 as sequential, which is how `cat` and `cp` start.

    Prefetching is triggered only when less than half a window is already requested ahead of
    the reader, so each prefetch covers at least half a window instead of a block per read.
    """

    min_bytes: int
    max_bytes: int
    window: int = 0
    next_offset: int = 0
    ahead_end: int = 0
    run_start: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.min_bytes <= self.max_bytes:
            raise ValueError("need 0 <= min_bytes <= max_bytes")

    def on_read(self, offset: int, end: int, asset_size: int) -> tuple[int, int]:
        """Record a read of [offset, end) and return the byte range [start, stop) to prefetch.

        The range is empty (start >= stop) when nothing should be prefetched.
        """
        self._update_window(offset, end)
        self.next_offset = end
        self.ahead_end = max(self.ahead_end, end)
        if self.window == 0 or self.ahead_end - end >= self.window // 2:
            return end, end
        start = self.ahead_end
        stop = min(asset_size, end + self.window)
        self.ahead_end = max(self.ahead_end, stop)
        return start, stop

    def _update_window(self, offset: int, end: int) -> None:
        if offset == self.next_offset:
            run = end - self.run_start
            self.window = min(self.max_bytes, max(self.min_bytes, 2 * run))
        elif abs(offset - self.next_offset) > self.window:
            self.window = 0
            self.ahead_end = 0
            self.run_start = offset


def aligned_span(start: int, end: int, align: int, limit: int) -> tuple[int, int]:
    """[start, end) widened to multiples of `align`, clipped to [0, limit)."""
    return start - start % align, min(limit, -(-end // align) * align)


def coalesce(spans: Iterable[tuple[int, int]], max_bytes: int) -> list[list[int]]:
    """Group sorted, non-overlapping [start, end) spans into runs of abutting spans.

    Returns the positions (in the given order) of each run's spans. A run grows past
    `max_bytes` only when its first span alone is that large, so one fetch stays bounded.
    """
    runs: list[list[int]] = []
    run_start = prev_end = -1
    for position, (start, end) in enumerate(spans):
        if runs and start == prev_end and end - run_start <= max_bytes:
            runs[-1].append(position)
        else:
            runs.append([position])
            run_start = start
        prev_end = end
    return runs
