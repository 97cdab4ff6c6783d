"""Measure the reader's data path with in-memory fake sources (no network, no FUSE).

Prints CPU-s per GiB for a cold sequential read (fast source), bytes fetched per byte read
for 1,000 random 4 KiB reads of a cold 1 GiB asset, and small-file opens/s in a directory
walk with 25 ms per fetch. With `--rss range|stream` it instead streams 4 GiB through the
Store facade (a fake client giving a fresh buffer per answer, as an HTTP client does) and the
reader with default settings, and prints the process's peak RSS.
Runs on one trio thread (plus the store's workers); usage:
    python scripts/profile_reader.py [--rss range|stream]
"""

from __future__ import annotations

import contextlib
import random
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any, cast

import trio

from cometfs.errors import RangeNotSupported
from cometfs.model import AssetKey
from cometfs.reader import AssetReader
from cometfs.store import RestClient, Store

GIB = 1 << 30
_BLOB = b""  # 64 MiB of random bytes, made on first use (not for --rss)


class Source:
    """Serves slices of one 64 MiB buffer repeated; optional delay per fetch."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.fetched = 0
        self.cpu = 0.0  # CPU spent making the fake's answers, not the reader's

    async def fetch_range(self, key: AssetKey, start: int, end: int) -> bytearray:
        if self.delay:
            await trio.sleep(self.delay)
        self.fetched += end - start
        began = time.process_time()
        global _BLOB
        if not _BLOB:
            _BLOB = random.Random(1).randbytes(64 << 20)
        out = bytearray(end - start)  # a fresh buffer, as an HTTP client gives
        position = start
        while position < end:
            offset = position % len(_BLOB)
            n = min(end - position, len(_BLOB) - offset)
            out[position - start : position - start + n] = _BLOB[offset : offset + n]
            position += n
        self.cpu += time.process_time() - began
        return out

    stream_ahead = 0  # never streams

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


async def small_file_cpu() -> None:
    source = Source()
    files = [AssetKey("v", f"c{n}", 4096 + 61 * (n % 1000)) for n in range(5000)]
    async with AssetReader(source, None) as reader:
        start = time.process_time()
        for n, key in enumerate(files):
            handle = reader.open(key, following=files[n + 1 : n + 17])
            await reader.read(handle, 0, 128 << 10)
        cpu = time.process_time() - start - source.cpu
    print(f"5000 small files, in-memory source: {cpu / len(files) * 1e6:.0f} us CPU per file")


class Client:
    """The two byte calls of the REST client, answered from memory (streams on worker
    threads, as the real client's)."""

    def __init__(self, ranges: bool) -> None:
        self.ranges = ranges

    async def read_range(
        self, asset_id: str, version_id: str, start: int, end: int, **_: Any
    ) -> Any:
        if not self.ranges:
            raise RangeNotSupported("this fake server ignores Range")
        return bytearray(end - start)

    @contextlib.contextmanager
    def stream(self, asset_id: str, version_id: str, **kwargs: Any) -> Iterator[Iterator[Any]]:
        size = kwargs["expected_size"]
        yield (bytearray(min(1 << 20, size - at)) for at in range(0, size, 1 << 20))


async def peak_rss(mode: str) -> None:
    # Only the byte calls are ever made here, so the fake implements just those.
    store = Store(cast(RestClient, Client(ranges=mode == "range")))
    key = AssetKey("v", "big", 4 * GIB)
    async with AssetReader(store, None) as reader:
        handle = reader.open(key)
        position = 0
        while position < key.size:
            position += len(await reader.read(handle, position, 128 << 10))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    print(f"streaming 4 GiB ({mode}), default settings: peak RSS {peak} MiB")


def main() -> None:
    if sys.argv[1:2] == ["--rss"]:
        trio.run(peak_rss, sys.argv[2])
        return
    for fn in (sequential, random_reads, small_files, small_file_cpu):
        trio.run(fn)


if __name__ == "__main__":
    main()
