"""Engine: the mount's read path behind a synchronous API, for `comet://` and `cometfs download`.

An Engine owns one trio event loop running in a daemon thread; in that loop lives the object
graph `build_read_path` wires for the mount too (Store, AssetReader with its DiskCache, Tree),
so there is one implementation of listing, reading and caching, not a second client. Public
methods may be called from any thread except the loop's own; each blocks until the loop has
answered (`trio.from_thread.run`), so several threads can read at once and share the reader's
single-flight fetches and caches.

Paths follow the mount's grammar: WORKSPACE/ARTIFACT/VERSION_OR_ALIAS/ASSET_PATH, `.comet/`
files included. An alias (a symlink in the artifact directory to a sibling version) is
followed; a remote asset (a symlink to its URI) is reported as a link and never read.

An Engine belongs to the process that created it: a forked child has no loop thread, so every
call checks the pid and raises EngineForked there; callers build a new Engine in the child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from cometfs import __version__
from cometfs.client import CometClient
from cometfs.config import DEFAULT_CACHE_SIZE, DEFAULT_METADATA_TTL, Config
from cometfs.errors import CometFSError, NotFound
from cometfs.reader import AssetReader, ReadHandle
from cometfs.readpath import ReadPath, build_read_path, default_cache_dir
from cometfs.tree import AssetFile, Directory, Node, Symlink, VirtualFile

log = logging.getLogger(__name__)

T = TypeVar("T")

# Large reads are cut into pieces so one call never asks the reader for more than a fraction
# of its memory budget; consecutive pieces on one handle grow its readahead window.
READ_PIECE = 8 << 20
START_TIMEOUT = 30.0
# An alias symlink sits right below its artifact directory: WS/ARTIFACT/ALIAS.
_ALIAS_DEPTH = 2


class EngineForked(CometFSError):
    """An Engine was used in a process forked after it was made; build a new one there."""


class EngineClosed(CometFSError):
    """The Engine was closed."""


class NotAFile(CometFSError):
    """A read of a directory, or of a remote asset whose bytes are not on the server."""


@dataclass(frozen=True)
class Entry:
    """One path as a listing shows it. `type` is "file", "directory" or "other" (a remote
    asset's link); `link` is a symlink's target: an alias's version or a remote asset's URI."""

    path: str
    type: str
    size: int
    mtime_ns: int
    link: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(eq=False)
class OpenFile:
    """A file opened for reading: its entry plus the reader state of sequential reads."""

    entry: Entry
    _node: Node
    _handle: ReadHandle | None


def split_path(path: str) -> list[str]:
    """'ws/art/1.0.0/a/b.csv' (slashes at either end ignored) -> components; '..' refused."""
    parts = [part for part in path.split("/") if part and part != "."]
    if ".." in parts:
        raise NotFound(f"{path!r}: '..' is not allowed")
    return parts


class Engine:
    """The read path on a private trio loop; see the module doc."""

    def __init__(
        self,
        config: Config,
        *,
        cache_dir: Path | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        metadata_ttl: float = DEFAULT_METADATA_TTL,
    ) -> None:
        self.config = config
        self.cache_dir = Path(cache_dir or default_cache_dir(config.server_url))
        self._pid = os.getpid()
        self._client = CometClient(config.server_url, config.require_key())
        self._cache_size = cache_size
        self._ttl = metadata_ttl
        self._started_at = time.time()
        self._graph: ReadPath | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._closed = False
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run_loop, name="cometfs-engine", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise CometFSError("the cometfs engine did not start in time")
        if self._startup_error is not None:
            self._client.close()
            raise self._startup_error

    def __repr__(self) -> str:
        return f"<Engine {self.config.server_url} cache={self.cache_dir}>"

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lifecycle ----------------------------------------------------------------------------

    def _run_loop(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # handed to the constructor or logged; the thread ends
            if not self._started.is_set():
                self._startup_error = exc
            else:
                log.exception("cometfs engine loop ended")
        finally:
            self._started.set()

    async def _serve(self) -> None:
        graph = build_read_path(
            self._client,
            self.cache_dir,
            self._cache_size,
            metadata_ttl=self._ttl,
            workspaces=self.config.workspaces,
            status=self._status,
            mount_time_ns=int(self._started_at * 1e9),
        )
        async with graph.reader, trio.open_nursery() as nursery:
            # As the mount does: the first byte read then finds its connection open.
            nursery.start_soon(self._client.preconnect)
            self._graph = graph
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._started.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def _status(self, reader: AssetReader) -> Callable[[], dict[str, Any]]:
        def status() -> dict[str, Any]:
            return {
                "cometfs_version": __version__,
                "server": self.config.server_url,
                "workspaces": list(self.config.workspaces),
                "byte_mode": self._client.byte_mode,
                "requests": self._client.counters(),
                "cache": reader.stats(),
                "metadata_ttl": self._ttl,
                "pid": os.getpid(),
            }

        return status

    def close(self) -> None:
        """Stop the loop (cancelling background reads) and close the HTTP session."""
        if self._closed or os.getpid() != self._pid:
            return
        self._closed = True
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(START_TIMEOUT)
        self._client.close()

    @property
    def usable(self) -> bool:
        """False after close() or in a forked child: such an Engine must be rebuilt."""
        return not self._closed and os.getpid() == self._pid and self._thread.is_alive()

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if os.getpid() != self._pid:
            raise EngineForked("this Engine was made before fork(); build a new one")
        if self._closed or self._token is None:
            raise EngineClosed("the Engine is closed")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    @property
    def _tree_graph(self) -> ReadPath:
        assert self._graph is not None
        return self._graph

    # -- sync API -----------------------------------------------------------------------------

    def info(self, path: str) -> Entry:
        """What `path` is; raises NotFound."""
        return self._call(self._info, path)

    def listdir(self, path: str) -> list[Entry]:
        """The entries of a directory, sorted by name; aliases show as directories."""
        return self._call(self._listdir, path)

    def walk(self, path: str) -> list[Entry]:
        """Every file and link below a directory (not directories), depth first, sorted."""
        return self._call(self._walk, path)

    def read(self, path: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file, short only at its end."""
        opened = self.open(path)
        return self.pread(opened, start, end)

    def open(self, path: str) -> OpenFile:
        """Open a file for reads; keep the OpenFile for sequential reads (readahead)."""
        return self._call(self._open, path)

    def pread(self, opened: OpenFile, start: int, end: int) -> bytes:
        return self._call(self._pread, opened, start, end)

    def stats(self) -> dict[str, Any]:
        """Reader counters and requests sent, as in status.json."""
        return self._call(self._stats)

    # -- on the loop --------------------------------------------------------------------------

    async def _resolve(self, path: str) -> tuple[str, Node]:
        tree = self._tree_graph.tree
        parts = split_path(path)
        node: Node = tree.root
        for depth, name in enumerate(parts):
            if not isinstance(node, Directory):
                raise NotFound(f"{path!r}: {'/'.join(parts[:depth])!r} is not a directory")
            parent = node
            node = await tree.lookup(parent, name)
            if depth == _ALIAS_DEPTH:
                node = await self._follow_alias(parent, node)
        return "/".join(parts), node

    async def _follow_alias(self, artifact_dir: Directory, node: Node) -> Node:
        # Only a sibling version name counts; anything else is not ours to follow.
        if (
            isinstance(node, Symlink)
            and node.target
            and "/" not in node.target
            and node.target not in (".", "..")
        ):
            return await self._tree_graph.tree.lookup(artifact_dir, node.target)
        return node

    async def _entry(self, path: str, node: Node, link: str | None = None) -> Entry:
        if isinstance(node, Directory):
            return Entry(path, "directory", 0, node.mtime_ns, link)
        if isinstance(node, Symlink):
            return Entry(path, "other", 0, node.mtime_ns, node.target)
        attributes = await self._tree_graph.tree.attributes(node)
        return Entry(path, "file", attributes.size, node.mtime_ns, link)

    async def _info(self, path: str) -> Entry:
        tree = self._tree_graph.tree
        parts = split_path(path)
        clean, node = await self._resolve(path)
        link = None
        if len(parts) == _ALIAS_DEPTH + 1:
            parent_path = "/".join(parts[:-1])
            _, parent = await self._resolve(parent_path)
            assert isinstance(parent, Directory)
            raw = await tree.lookup(parent, parts[-1])
            if isinstance(raw, Symlink):
                link = raw.target
        return await self._entry(clean, node, link)

    async def _listdir(self, path: str) -> list[Entry]:
        tree = self._tree_graph.tree
        clean, node = await self._resolve(path)
        if not isinstance(node, Directory):
            raise NotADirectoryError(f"{clean!r} is not a directory")
        depth = len(split_path(clean))
        entries = []
        for name, child in sorted((await tree.children(node)).items()):
            child_path = f"{clean}/{name}" if clean else name
            link = None
            if depth == _ALIAS_DEPTH and isinstance(child, Symlink):
                link = child.target
                # An alias racing a deleted version: show the dangling link.
                with contextlib.suppress(NotFound):
                    child = await self._follow_alias(node, child)
            entries.append(await self._entry(child_path, child, link))
        return entries

    async def _walk(self, path: str) -> list[Entry]:
        found: list[Entry] = []
        for entry in await self._listdir(path):
            if entry.type == "directory":
                if entry.link is None:  # aliases repeat their version: walked once, there
                    found.extend(await self._walk(entry.path))
            else:
                found.append(entry)
        return found

    async def _open(self, path: str) -> OpenFile:
        clean, node = await self._resolve(path)
        entry = await self._entry(clean, node)
        if isinstance(node, AssetFile):
            return OpenFile(entry, node, self._tree_graph.reader.open(node.key))
        if isinstance(node, VirtualFile):
            return OpenFile(entry, node, None)
        if isinstance(node, Symlink):
            raise NotAFile(f"{clean!r} is a remote asset: its bytes are at {node.target}")
        raise IsADirectoryError(f"{clean!r} is a directory")

    async def _pread(self, opened: OpenFile, start: int, end: int) -> bytes:
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        node = opened._node
        if isinstance(node, VirtualFile):
            return (await self._tree_graph.tree.content(node))[start:end]
        assert isinstance(node, AssetFile) and opened._handle is not None
        end = min(end, node.asset.size)
        reader = self._tree_graph.reader
        pieces = []
        offset = start
        while offset < end:
            piece = await reader.read(opened._handle, offset, min(READ_PIECE, end - offset))
            if not piece:
                break
            pieces.append(piece)
            offset += len(piece)
        return b"".join(pieces)

    async def _stats(self) -> dict[str, Any]:
        return {
            "requests": self._client.counters(),
            "cache": self._tree_graph.reader.stats(),
            "byte_mode": self._client.byte_mode,
        }


__all__ = ["Engine", "EngineClosed", "EngineForked", "Entry", "NotAFile", "OpenFile", "split_path"]
