"""Micro-benchmark of the disk cache's write and read paths on 1 MiB blocks.

    python scripts/bench_disk.py [--blocks N] [--dir DIR]

Prints MB/s for DiskCache.put and .get, and for the raw layouts the cache could use (one
file per block written to a temporary name and renamed, one file per asset written with
pwrite), with each checksum available. Files land in page cache (no fsync), as in the cache.
Runs on the main thread only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from cometfs.model import AssetKey
from cometfs.reader.disk import DiskCache

BLOCK = 1 << 20
TRAILER = struct.Struct(">4sI")


def _checksums() -> dict[str, Callable[[bytes], int]]:
    found: dict[str, Callable[[bytes], int]] = {"zlib.crc32": zlib.crc32}
    try:
        from isal import isal_zlib

        found["isal.crc32"] = isal_zlib.crc32
    except ImportError:
        pass
    try:
        import crc32c

        found["crc32c"] = crc32c.crc32c
    except ImportError:
        pass
    return found


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:8.0f} MB/s"


def _timed(
    fn: Callable[[], None], repeat: int = 3, setup: Callable[[], None] | None = None
) -> float:
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_checksums(data: bytes) -> None:
    for name, crc in _checksums().items():

        def run(crc: Callable[[bytes], int] = crc) -> None:
            for _ in range(200):
                crc(data)

        seconds = _timed(run)
        print(f"checksum {name:28s} {_rate(200 * len(data), seconds)}")


def bench_layouts(base: Path, blocks: list[bytes]) -> None:
    total = sum(len(b) for b in blocks)
    crc = _checksums().get("isal.crc32", zlib.crc32)

    def fresh() -> None:
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir()

    def old_per_block() -> None:
        # What the cache did before: concatenate, temp file, rename, mkdir per block.
        root = base / "old"
        for i, data in enumerate(blocks):
            path = root / "asset" / f"{i}.blk"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{i}.tmp")
            with open(tmp, "wb") as file:
                file.write(data + TRAILER.pack(b"CFB1", crc(data)))
            os.replace(tmp, path)

    def writev_per_block() -> None:
        root = base / "writev" / "asset"
        root.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(blocks):
            tmp = root / f".{i}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.writev(fd, [data, TRAILER.pack(b"CFB2", crc(data))])
            finally:
                os.close(fd)
            os.replace(tmp, root / f"{i}.blk")

    def pwrite_per_asset() -> None:
        path = base / "pwrite.asset"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            for i, data in enumerate(blocks):
                os.pwritev(fd, [data, TRAILER.pack(b"CFB2", crc(data))], i * (BLOCK + 8))
        finally:
            os.close(fd)

    for name, fn in [
        ("old: concat+temp+rename+mkdir", old_per_block),
        ("writev+temp+rename per block", writev_per_block),
        ("pwritev into one file per asset", pwrite_per_asset),
    ]:
        print(f"write {name:32s} {_rate(total, _timed(fn, setup=fresh))}")
    shutil.rmtree(base, ignore_errors=True)


def bench_cache(base: Path, blocks: list[bytes]) -> None:
    total = sum(len(b) for b in blocks)
    key = AssetKey("bench-version", "bench-asset", total)

    caches: list[DiskCache] = []

    def fresh() -> None:
        shutil.rmtree(base, ignore_errors=True)
        caches[:] = [DiskCache(base, 4 * total, block_size=BLOCK)]

    def put_all() -> None:
        for i, data in enumerate(blocks):
            caches[0].put(key, i, data)

    print(f"DiskCache.put 1 MiB               {_rate(total, _timed(put_all, setup=fresh))}")
    cache = DiskCache(base, 4 * total, block_size=BLOCK)

    def get_all() -> None:
        for i in range(len(blocks)):
            if cache.get(key, i, BLOCK) is None:
                raise SystemExit(f"block {i} missing")

    print(f"DiskCache.get 1 MiB               {_rate(total, _timed(get_all))}")
    shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    blocks = [os.urandom(BLOCK) for _ in range(args.blocks)]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp) / "bench"
        bench_checksums(blocks[0])
        bench_layouts(base, blocks)
        bench_cache(base, blocks)


if __name__ == "__main__":
    main()
