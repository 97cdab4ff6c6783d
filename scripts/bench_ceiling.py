#!/usr/bin/env python3
"""The ceiling of a Python FUSE file system on this machine, for the small-files rows.

A minimal pyfuse3 + trio file system that serves the benchmark's small files from memory:
no network, no cache, no bookkeeping, just lookup, getattr, open, read and release, as
cometfs answers them. What it reaches with the same 8 reader threads bounds what any
file system written on pyfuse3 can reach here, whatever its data path does.

    python scripts/bench_ceiling.py MOUNTPOINT --files 1000 --seed 6

Unmounts and exits on SIGTERM or SIGINT. The file tree and bytes are those of bench.py's
"small" artifact (d00/f0000.bin, ...); `CeilingMount` runs it for the benchmark.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import signal
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import pyfuse3
import trio

from bench_peers import ChildMount
from benchlib import PYTHON, Cleanup

TIMEOUT = 300.0


def small_files(count: int, seed: int) -> dict[str, bytes]:
    """The same paths and bytes as bench.py's small artifact."""
    rng = random.Random(seed)
    per_dir = 100
    return {
        f"d{i // per_dir:02d}/f{i:04d}.bin": rng.randbytes(rng.randint(4 << 10, 64 << 10))
        for i in range(count)
    }


class MemoryFS(pyfuse3.Operations):
    """Read-only directories and files from a {path: bytes} map; inodes given in path order."""

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self.data: dict[int, bytes] = {}
        self.children: dict[int, dict[bytes, int]] = {pyfuse3.ROOT_INODE: {}}
        next_inode = pyfuse3.ROOT_INODE + 1
        for path in sorted(files):
            parent = pyfuse3.ROOT_INODE
            *dirs, name = path.split("/")
            for part in dirs:
                entries = self.children[parent]
                if part.encode() not in entries:
                    entries[part.encode()] = next_inode
                    self.children[next_inode] = {}
                    next_inode += 1
                parent = entries[part.encode()]
            self.children[parent][name.encode()] = next_inode
            self.data[next_inode] = files[path]
            next_inode += 1

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.entry_timeout = entry.attr_timeout = TIMEOUT
        if inode in self.data:
            entry.st_mode = stat.S_IFREG | 0o444
            entry.st_size = len(self.data[inode])
        else:
            entry.st_mode = stat.S_IFDIR | 0o555
        entry.st_blksize = 128 * 1024
        return entry

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        inode = self.children.get(parent_inode, {}).get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode not in self.data:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return memoryview(self.data[fh])[off : off + size]  # type: ignore[return-value]

    async def release(self, fh: int) -> None:
        return None

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = list(self.children[fh].items())
        for n, (name, inode) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self._attrs(inode), n):
                return

    async def releasedir(self, fh: int) -> None:
        return None


async def _serve() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("mountpoint")
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=6)
    args = ap.parse_args(argv)
    fs = MemoryFS(small_files(args.files, args.seed))
    pyfuse3.init(fs, args.mountpoint, {*pyfuse3.default_options, "fsname=ceiling", "ro"})
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=os.path.ismount(args.mountpoint))
    return 0


class CeilingMount(ChildMount):
    """The minimal file system mounted at `path` in a child process, for the benchmark."""

    def __init__(self, path: Path, files: int, seed: int, log_file: Path, cleanup: Cleanup):
        argv = [PYTHON, __file__, str(path), "--files", str(files), "--seed", str(seed)]
        super().__init__("ceiling file system", path, argv, log_file, cleanup)


if __name__ == "__main__":
    sys.exit(main())
