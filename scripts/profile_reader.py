"""Measure the reader's data path with in-memory fake sources (no network, no FUSE).

Prints CPU-s per GiB for a cold sequential read (fast source), bytes fetched per byte read
for 1,000 random 4 KiB reads of a cold 1 GiB asset, and small-file opens/s in a directory
walk with 25 ms per fetch. Runs on one trio thread; usage: python scripts/profile_reader.py
"""

from __future__ import annotations

import random
import time

import trio

from cometfs.model import AssetKey
from cometfs.reader import AssetReader

GIB = 1 << 30
_BLOB = bytes(random.Random(1).randbytes(64 << 20))


class Source:
    """Serves slices of one 64 MiB buffer repeated; optional delay per fetch."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.fetched = 0
        self.cpu = 0.0  # CPU spent making the fake's answers, not the reader's

    async def fetch_range(self, key: AssetKey, start: int, end: int) -> bytes:
        if self.delay:
            await trio.sleep(self.delay)
        self.fetched += end - start
        began = time.process_time()
        out = bytearray(end - start)  # a fresh buffer, as an HTTP client gives
        position = start
        while position < end:
            offset = position % len(_BLOB)
            n = min(end - position, len(_BLOB) - offset)
            out[position - start : position - start + n] = _BLOB[offset : offset + n]
            position += n
        self.cpu += time.process_time() - began
        return out

    async def stream(self, key: AssetKey, sink: object) -> None:
        raise NotImplementedError


async def sequential() -> None:
    source = Source()
    key = AssetKey("v", "seq", GIB)
    async with AssetReader(source, None) as reader:
        handle = reader.open(key)
        start = time.process_time()
        position = 0
        while position < key.size:
            position += len(await reader.read(handle, position, 128 << 10))
        cpu = time.process_time() - start - source.cpu
    print(f"cold sequential 1 GiB, 128 KiB reads: {cpu:.2f} CPU-s/GiB in the reader")


async def random_reads() -> None:
    source = Source()
    key = AssetKey("v", "rnd", GIB)
    rng = random.Random(7)
    async with AssetReader(source, None) as reader:
        for _ in range(1000):
            offset = rng.randrange(key.size - 4096)
            await reader.read(reader.open(key), offset, 4096)
    print(f"1000 random 4 KiB reads: {source.fetched / (1000 * 4096):.1f} bytes fetched per byte")


async def small_files() -> None:
    source = Source(delay=0.025)
    files = [AssetKey("v", f"f{n}", 4096 + 61 * n) for n in range(200)]
    async with AssetReader(source, None) as reader:
        start = time.monotonic()
        for n, key in enumerate(files):
            handle = reader.open(key, following=files[n + 1 :])
            await reader.read(handle, 0, 128 << 10)
        elapsed = time.monotonic() - start
    print(f"200 small files, 25 ms per fetch, one reader: {len(files) / elapsed:.0f} opens/s")


def main() -> None:
    for fn in (sequential, random_reads, small_files):
        trio.run(fn)


if __name__ == "__main__":
    main()
