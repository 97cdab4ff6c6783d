"""The Tree facade: the queries the FUSE adapter and the Engine make of the virtual tree.

Runs on the trio thread. Knows nothing of FUSE or HTTP: it owns the InodeTable, lets the
Layout build the levels, reloads a directory's listing when its TTL has run out (keeping
the old one through an outage) and computes the attributes stat(2) shows.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cometfs.config import DEFAULT_METADATA_TTL
from cometfs.errors import CometFSError, NotFound
from cometfs.store import Store, is_outage
from cometfs.tree.layout import Layout
from cometfs.tree.nodes import (
    ROOT_INODE,
    AssetFile,
    Attributes,
    Directory,
    InodeTable,
    Node,
    Symlink,
    VirtualFile,
)

IMMUTABLE_TIMEOUT = 24 * 3600.0


class Tree:
    """The virtual tree as plain nodes: lookups, listings, contents and attributes."""

    def __init__(
        self,
        store: Store,
        *,
        metadata_ttl: float = DEFAULT_METADATA_TTL,
        workspaces: Iterable[str] = (),
        status: Callable[[], Mapping[str, Any]] = dict,
        clock: Callable[[], float] = time.monotonic,
        mount_time_ns: int | None = None,
    ) -> None:
        self._ttl = metadata_ttl
        self._clock = clock
        self._table = InodeTable()
        self._layout = Layout(
            self._table,
            store,
            metadata_ttl=metadata_ttl,
            workspaces=workspaces,
            status=status,
            now_ns=mount_time_ns if mount_time_ns is not None else time.time_ns(),
        )
        self.root = self._layout.root()
        assert self.root.inode == ROOT_INODE

    # -- the kernel's references -------------------------------------------------------------

    def forget(self, inode: int, nlookup: int) -> None:
        """The kernel dropped `nlookup` references to `inode` (FUSE forget)."""
        self._table.forget(inode, nlookup)

    def remember(self, node: Node) -> None:
        """The kernel took one more reference to `node` (a lookup or readdirplus entry)."""
        self._table.remember(node)

    def node(self, inode: int) -> Node:
        return self._table.node(inode)

    @property
    def inode_count(self) -> int:
        return len(self._table)

    @property
    def identity_count(self) -> int:
        return self._table.identity_count

    # -- queries used by the FUSE adapter ----------------------------------------------------

    async def children(self, directory: Directory) -> dict[str, Node]:
        """The directory's listing, reloaded when its TTL has run out (kept through an
        outage: a failed refresh of a listing we have is answered from it)."""
        now = self._clock()
        old = directory.children
        stale = directory.ttl is not None and now - directory.loaded_at >= directory.ttl
        if old is None or stale:
            try:
                loaded = dict(await directory.load())
            except CometFSError as exc:
                if old is None or not is_outage(exc):
                    raise
                self._layout.warn_once(
                    ("stale", directory.inode), "serving a stale listing: %s", exc
                )
                return old
            directory.children = loaded
            directory.loaded_at = now
            if old is not None:
                # What a refresh dropped (a moved alias, say) and the kernel never took.
                kept = {id(node) for node in loaded.values()}
                for node in old.values():
                    if id(node) not in kept and not self._table.held(node):
                        self._table.release(node)
            return loaded
        return old

    async def lookup(self, parent: Node, name: str) -> Node:
        if not isinstance(parent, Directory):
            raise NotFound(f"{name!r}: parent is not a directory")
        children = await self.children(parent)
        found = children.get(name)
        if found is None and parent.resolve is not None:
            found = await parent.resolve(name)
        if found is None:
            raise NotFound(f"{name!r} not found")
        self.remember(found)
        return found

    async def content(self, node: VirtualFile) -> bytes:
        if node.cached is not None:
            return node.cached
        data = await node.render()
        if node.immutable:
            node.cached = data
        return data

    async def attributes(self, node: Node) -> Attributes:
        self._table.register(node)
        timeout = IMMUTABLE_TIMEOUT if node.immutable else self._ttl
        if isinstance(node, Directory):
            return Attributes(node.inode, stat.S_IFDIR | 0o555, 0, 2, node.mtime_ns, timeout)
        if isinstance(node, Symlink):
            size = len(node.target.encode())
            return Attributes(node.inode, stat.S_IFLNK | 0o777, size, 1, node.mtime_ns, timeout)
        if isinstance(node, AssetFile):
            size = node.asset.size
        elif isinstance(node, VirtualFile):
            size = len(await self.content(node))
            if node.live:
                timeout = 0.0
        else:
            raise TypeError(f"unknown node {node!r}")
        return Attributes(node.inode, stat.S_IFREG | 0o444, size, 1, node.mtime_ns, timeout)
