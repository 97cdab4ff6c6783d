#!/usr/bin/env python3
"""The ceiling of a Python FUSE file system on this machine, for the small-files rows.

A minimal pyfuse3 + trio file system that serves the benchmark's small files from memory:
no network, no cache, no bookkeeping, just lookup, getattr, open, read and release, as
cometfs answers them. What it reaches with the same 8 reader threads bounds what any
file system written on pyfuse3 can reach here, whatever its data path does.

With `--urls MANIFEST` (JSON: path -> get-asset URL, the key in COMET_API_KEY) each file's
bytes are fetched instead, whole, by its first read: one GET on a raw keep-alive
http.client connection per worker thread, nothing checked or cached. That bounds any
network-backed file system written on pyfuse3 against the same server.

    python scripts/bench_ceiling.py MOUNTPOINT --files 1000 --seed 6 [--urls FILE]

Unmounts and exits on SIGTERM or SIGINT. The file tree and bytes are those of bench.py's
"small" artifact (d00/f0000.bin, ...); `CeilingMount` runs it for the benchmark.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import os
import random
import signal
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

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

    def __init__(
        self, files: dict[str, bytes], fetch: Callable[[str], bytes] | None = None
    ) -> None:
        super().__init__()
        self.fetch = fetch
        self.path: dict[int, str] = {}
        self.fetched: dict[int, bytes] = {}
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
            self.path[next_inode] = path
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
        data = self.data[fh]
        if self.fetch is not None:
            if fh not in self.fetched:
                got = await trio.to_thread.run_sync(self.fetch, self.path[fh])
                if len(got) != len(data):
                    raise pyfuse3.FUSEError(errno.EIO)
                self.fetched[fh] = got
            data = self.fetched[fh]
        return memoryview(data)[off : off + size]  # type: ignore[return-value]

    async def release(self, fh: int) -> None:
        self.fetched.pop(fh, None)

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


def fetcher(manifest: Path, key: str) -> Callable[[str], bytes]:
    """GET a file's URL from the manifest on this thread's own keep-alive connection."""
    urls: dict[str, str] = json.loads(manifest.read_text())
    local = threading.local()

    def fetch(path: str) -> bytes:
        url = urlsplit(urls[path])
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(
                url.hostname or "", url.port, timeout=60
            )
        connection.request("GET", f"{url.path}?{url.query}", headers={"Authorization": key})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(errno.EIO, f"GET {path}: HTTP {response.status}")
        return body

    return fetch


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("mountpoint")
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--urls", type=Path, help="fetch each file from its URL in this JSON")
    args = ap.parse_args(argv)
    fetch = fetcher(args.urls, os.environ["COMET_API_KEY"]) if args.urls else None
    fs = MemoryFS(small_files(args.files, args.seed), fetch)
    pyfuse3.init(fs, args.mountpoint, {*pyfuse3.default_options, "fsname=ceiling", "ro"})
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=os.path.ismount(args.mountpoint))
    return 0


class CeilingMount(ChildMount):
    """The minimal file system mounted at `path` in a child process, for the benchmark."""

    def __init__(
        self,
        path: Path,
        files: int,
        seed: int,
        log_file: Path,
        cleanup: Cleanup,
        *,
        urls: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        argv = [PYTHON, __file__, str(path), "--files", str(files), "--seed", str(seed)]
        if urls is not None:
            argv += ["--urls", str(urls)]
        super().__init__("ceiling file system", path, argv, log_file, cleanup, env=env)


if __name__ == "__main__":
    sys.exit(main())
