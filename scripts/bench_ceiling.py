#!/usr/bin/env python3
"""The ceilings of a Python FUSE file system on this machine, for the small-file and
sequential rows.

A minimal pyfuse3 + trio file system that serves the benchmark's small files from memory:
no network, no cache, no bookkeeping, just lookup, getattr, open, read and release, as
cometfs answers them. What it reaches with the same 8 reader threads bounds what any
file system written on pyfuse3 can reach here, whatever its data path does.

With `--urls MANIFEST` (JSON: path -> get-asset URL, the key in COMET_API_KEY) each file's
bytes are fetched instead, whole, by its first read: one GET per file on the trio thread
itself, over cometfs's own keep-alive transport (client/async_transport.py, the cheapest GET
measured here: no worker-thread hop), nothing checked or cached. That bounds any
network-backed file system written on pyfuse3 against the same server.

With `--url URL --size N` it serves one file, big.bin, of N bytes fetched ahead of a
sequential reader: `--window` ranged GETs of `--chunk` MiB in flight, one keep-alive
connection per worker thread, each body received straight into its own buffer
(`readinto`) and handed to the kernel as a view; with `--stream`, one GET's body read in
order instead, `--window` chunks ahead. Nothing checked, cached or bounded beyond that.
It bounds the cold sequential rows.

    python scripts/bench_ceiling.py MOUNTPOINT --files 1000 --seed 6 [--urls FILE]
    python scripts/bench_ceiling.py MOUNTPOINT --url URL --size N [--stream]

Unmounts and exits on SIGTERM or SIGINT. The small file tree and bytes are those of
bench.py's "small" artifact (d00/f0000.bin, ...); `CeilingMount` runs it for the benchmark.
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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import pyfuse3
import trio

from bench_peers import ChildMount
from benchlib import PYTHON, Cleanup
from cometfs.client.async_transport import AsyncTransport
from cometfs.mount import raise_readahead

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
        self,
        files: dict[str, bytes],
        fetch: Callable[[str], Awaitable[bytes | bytearray]] | None = None,
    ) -> None:
        super().__init__()
        self.fetch = fetch
        self.nursery: trio.Nursery | None = None
        self.path: dict[int, str] = {}
        self.fetched: dict[int, bytes | bytearray] = {}
        self.data: dict[int, bytes] = {}
        self.size: dict[int, int] = {}
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
            self.size[next_inode] = len(files[path])
            self.path[next_inode] = path
            next_inode += 1

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = inode
        entry.entry_timeout = entry.attr_timeout = TIMEOUT
        if inode in self.size:
            entry.st_mode = stat.S_IFREG | 0o444
            entry.st_size = self.size[inode]
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
        if inode not in self.size:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        data: bytes | bytearray = self.data[fh]
        if self.fetch is not None:
            if fh not in self.fetched:
                got = await self.fetch(self.path[fh])
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


class SequentialFS(MemoryFS):
    """One file, big.bin, of `size` bytes at `url`, fetched in `chunk`-byte pieces up to
    `window` pieces ahead of the furthest read: ranged GETs in parallel, or with `stream`
    the pieces of one GET's body in order. A piece is dropped once reads have passed it."""

    def __init__(
        self, url: str, key: str, size: int, *, stream: bool, chunk: int, window: int
    ) -> None:
        super().__init__({"big.bin": b""})
        self.size[pyfuse3.ROOT_INODE + 1] = size
        self.url = urlsplit(url)
        self.key = key
        self.total = size
        self.stream = stream
        self.chunk = chunk
        self.count = -(-size // chunk)  # pieces in the file
        self.window = window
        self.pieces: dict[int, bytearray] = {}
        self.ready: dict[int, trio.Event] = {}
        self.furthest = 0
        self.moved = trio.Event()
        self.local = threading.local()

    def _get(self, headers: dict[str, str]) -> http.client.HTTPResponse:
        return get(self.local, self.url, self.key, headers)

    def _receive(self, response: http.client.HTTPResponse, index: int) -> bytearray:
        piece = bytearray(min(self.chunk, self.total - index * self.chunk))
        view, got = memoryview(piece), 0
        while got < len(piece):
            n = response.readinto(view[got:])
            if not n:
                raise OSError(errno.EIO, f"GET big.bin: body ended at piece {index}")
            got += n
        return piece

    def _get_piece(self, index: int) -> bytearray:
        start = index * self.chunk
        end = min(start + self.chunk, self.total) - 1
        response = self._get({"Range": f"bytes={start}-{end}"})
        if response.status != 206:
            raise OSError(errno.EIO, "GET big.bin: the server ignored Range")
        piece = self._receive(response, index)
        response.read()  # nothing left: frees the connection for the next request
        return piece

    async def _fetch_piece(self, index: int) -> None:
        self.pieces[index] = await trio.to_thread.run_sync(self._get_piece, index)
        self.ready[index].set()

    async def _pump(self) -> None:
        response = await trio.to_thread.run_sync(self._get, {})
        for index in range(self.count):
            while index >= self.furthest + self.window:
                self.moved = trio.Event()
                await self.moved.wait()
            self.pieces[index] = await trio.to_thread.run_sync(self._receive, response, index)
            self.ready[index].set()

    def _ahead(self, first: int) -> None:
        assert self.nursery is not None
        last = min(first + self.window, self.count)
        if self.stream:
            if not self.ready:
                self.ready = {i: trio.Event() for i in range(self.count)}
                self.nursery.start_soon(self._pump)
            return
        for index in range(first, last):
            if index not in self.ready:
                self.ready[index] = trio.Event()
                self.nursery.start_soon(self._fetch_piece, index)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        end = min(off + size, self.total)
        if off >= end:
            return b""
        first, last = off // self.chunk, (end - 1) // self.chunk
        if first > self.furthest:
            self.furthest = first
            self.moved.set()
        self._ahead(first)
        views = []
        for index in range(first, last + 1):
            await self.ready[index].wait()
            base = index * self.chunk
            piece = memoryview(self.pieces[index])
            views.append(piece[max(off, base) - base : min(end, base + self.chunk) - base])
        for index in [i for i in self.pieces if i < first - 1]:
            del self.pieces[index]
        return views[0] if len(views) == 1 else b"".join(views)  # type: ignore[return-value]


async def _serve(fs: MemoryFS, mountpoint: Path) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            fs.nursery = nursery
            nursery.start_soon(pyfuse3.main)
            # As cometfs does; in a thread, since it stats the mount point that pyfuse3.main
            # answers.
            nursery.start_soon(trio.to_thread.run_sync, raise_readahead, mountpoint)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def get(
    local: threading.local, url: SplitResult, key: str, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    """GET `url` on this thread's own keep-alive connection; EIO unless 200 or 206."""
    connection = getattr(local, "connection", None)
    if connection is None:
        connection = local.connection = http.client.HTTPConnection(
            url.hostname or "", url.port, timeout=60
        )
    target = f"{url.path}?{url.query}"
    connection.request("GET", target, headers={"Authorization": key, **(headers or {})})
    response = connection.getresponse()
    if response.status not in (200, 206):
        response.read()
        raise OSError(errno.EIO, f"GET {url.path}: HTTP {response.status}")
    return response


def fetcher(manifest: Path, key: str) -> Callable[[str], Awaitable[bytearray]]:
    """Fetch a file whole from its URL in the manifest, on the trio thread."""
    urls = json.loads(manifest.read_text())
    transport = AsyncTransport(pool_size=32)

    async def fetch(path: str) -> bytearray:
        response = await transport.request(
            urls[path], {"Authorization": key}, connect_timeout=TIMEOUT, read_timeout=TIMEOUT
        )
        try:
            if response.status not in (200, 206):
                raise OSError(errno.EIO, f"GET {path}: HTTP {response.status}")
            body = bytearray(int(response.headers.get("Content-Length", "0")))
            view, got = memoryview(body), 0
            while got < len(body):
                n = await response.read_some(view[got:])
                if not n:
                    raise OSError(errno.EIO, f"GET {path}: body cut short")
                got += n
            return body
        finally:
            response.release()

    return fetch


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("mountpoint")
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--urls", type=Path, help="fetch each file from its URL in this JSON")
    ap.add_argument("--url", help="serve one file, big.bin, fetched from this URL")
    ap.add_argument("--size", type=int, help="big.bin's size in bytes")
    ap.add_argument("--stream", action="store_true", help="one GET, read in order")
    ap.add_argument("--chunk", type=int, default=4, help="MiB per piece (default 4)")
    ap.add_argument("--window", type=int, default=8, help="pieces ahead (default 8)")
    args = ap.parse_args(argv)
    key = os.environ.get("COMET_API_KEY", "")
    fs: MemoryFS
    if args.url:
        if not args.size:
            ap.error("--url needs --size")
        fs = SequentialFS(
            args.url,
            key,
            args.size,
            stream=args.stream,
            chunk=args.chunk << 20,
            window=args.window,
        )
    else:
        fs = MemoryFS(
            small_files(args.files, args.seed), fetcher(args.urls, key) if args.urls else None
        )
    pyfuse3.init(fs, args.mountpoint, {*pyfuse3.default_options, "fsname=ceiling", "ro"})
    try:
        trio.run(_serve, fs, Path(args.mountpoint))
    finally:
        pyfuse3.close(unmount=os.path.ismount(args.mountpoint))
    return 0


class CeilingMount(ChildMount):
    """The minimal file system mounted at `path` in a child process, for the benchmark;
    `options` are main()'s, after the mount point."""

    def __init__(
        self,
        path: Path,
        options: Sequence[str],
        log_file: Path,
        cleanup: Cleanup,
        *,
        env: dict[str, str] | None = None,
    ) -> None:
        argv = [PYTHON, __file__, str(path), *options]
        super().__init__("ceiling file system", path, argv, log_file, cleanup, env=env)


if __name__ == "__main__":
    sys.exit(main())
