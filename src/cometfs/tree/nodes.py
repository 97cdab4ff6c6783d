"""The tree's nodes and the inode table that interns them.

Runs on the trio thread; pure bookkeeping, no I/O, no FUSE.

Inodes come from a counter and are never reused. A node is identified by what it stands
for (say ("version", ws, artifact, "1.0.0")); while a node is known, the same identity maps
to the same inode, so refreshed listings keep the inodes the kernel already knows. A moved
alias gets a new inode, because its identity includes its target.

The table is bounded by what the kernel holds and what loaded listings hold: lookups are
counted, and when the kernel forgets a node (or a refreshed listing drops one the kernel
never saw) it leaves the table, together with what only its own listing held. A released
node that is still reachable through a listing is registered again, under its old inode,
as soon as it is handed to the kernel again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from cachetools import LRUCache

from cometfs.errors import NotFound
from cometfs.model import Asset, AssetKey

ROOT_INODE = 1
# Released nodes a racing request may still name (a readdir reply crossing a forget).
RECENTLY_RELEASED = 4096

Entries = list[tuple[str, "Node"]]


@dataclass(eq=False)
class Node:
    inode: int
    mtime_ns: int
    immutable: bool
    identity: Hashable = field(default=None, kw_only=True)


@dataclass(eq=False)
class Directory(Node):
    """A directory whose children come from `load`; `ttl` None means it never changes."""

    load: Callable[[], Awaitable[Entries]]
    resolve: Callable[[str], Awaitable[Node | None]] | None = None
    ttl: float | None = None
    children: dict[str, Node] | None = None
    loaded_at: float = 0.0


@dataclass(eq=False)
class AssetFile(Node):
    """An asset's bytes. `following` are the next assets of its directory in listing order,
    which lets the reader fetch ahead when a reader walks the directory."""

    asset: Asset
    key: AssetKey
    following: tuple[AssetKey, ...] = ()


@dataclass(eq=False)
class VirtualFile(Node):
    """Rendered JSON or text, rendered again for every open unless immutable.

    Whatever is not immutable is served with direct_io and the document fixed per open
    handle: the kernel's st_size may come from an earlier render, and with the page cache a
    read would be cut to that size (a torn document); direct_io reads end where the handle's
    own document ends. `live` files (status.json) also report a zero attribute timeout.
    """

    render: Callable[[], Awaitable[bytes]]
    live: bool = False
    cached: bytes | None = None


@dataclass(eq=False)
class Symlink(Node):
    target: str


@dataclass(frozen=True)
class Attributes:
    """What stat(2) shows for a node; fs.py turns it into pyfuse3's EntryAttributes."""

    inode: int
    mode: int
    size: int
    nlink: int
    mtime_ns: int
    timeout: float

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512


class InodeTable:
    """Interns nodes by identity, counts the kernel's references and releases the rest."""

    def __init__(self) -> None:
        self._nodes: dict[int, Node] = {}
        self._by_identity: dict[Hashable, Node] = {}
        self._lookups: dict[int, int] = {}
        self._released: LRUCache[int, Node] = LRUCache(maxsize=RECENTLY_RELEASED)
        self._next_inode = ROOT_INODE

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def identity_count(self) -> int:
        return len(self._by_identity)

    def held(self, node: Node) -> bool:
        """Whether the kernel holds a reference to `node`."""
        return self._lookups.get(node.inode, 0) > 0

    def intern(self, identity: Hashable, make: Callable[[int], Node]) -> Node:
        node = self._by_identity.get(identity)
        if node is None:
            node = make(self._next_inode)
            node.identity = identity
            self._next_inode += 1
            self._nodes[node.inode] = node
            self._by_identity[identity] = node
        return node

    def register(self, node: Node) -> None:
        """Make a node the kernel is about to see findable by inode again."""
        if node.inode not in self._nodes:
            self._nodes[node.inode] = node
            self._by_identity.setdefault(node.identity, node)
            self._released.pop(node.inode, None)

    def release(self, node: Node) -> None:
        """Drop a node the kernel no longer holds, and what only its listing held."""
        pending = [node]
        while pending:
            current = pending.pop()
            if current.inode == ROOT_INODE or self.held(current):
                continue
            if self._nodes.pop(current.inode, None) is None:
                continue
            if self._by_identity.get(current.identity) is current:
                del self._by_identity[current.identity]
            self._released[current.inode] = current
            if isinstance(current, Directory) and current.children is not None:
                pending.extend(current.children.values())
                current.children = None
            if isinstance(current, VirtualFile):
                current.cached = None

    def forget(self, inode: int, nlookup: int) -> None:
        """The kernel dropped `nlookup` references to `inode` (FUSE forget)."""
        count = self._lookups.get(inode, 0) - nlookup
        if count > 0:
            self._lookups[inode] = count
            return
        self._lookups.pop(inode, None)
        node = self._nodes.get(inode)
        if node is not None:
            self.release(node)

    def remember(self, node: Node) -> None:
        """The kernel took one more reference to `node` (a lookup or readdirplus entry)."""
        self.register(node)
        self._lookups[node.inode] = self._lookups.get(node.inode, 0) + 1

    def node(self, inode: int) -> Node:
        found = self._nodes.get(inode)
        if found is None:
            found = self._released.get(inode)
            if found is None:
                raise NotFound(f"no inode {inode}")
            self.register(found)
        return found

    # -- node factories: one interned node of each kind --------------------------------------

    def directory(
        self,
        identity: Hashable,
        mtime_ns: int,
        load: Callable[[], Awaitable[Entries]],
        *,
        resolve: Callable[[str], Awaitable[Node | None]] | None = None,
        ttl: float | None = None,
    ) -> Directory:
        node = self.intern(
            identity,
            lambda ino: Directory(ino, mtime_ns, ttl is None, load, resolve=resolve, ttl=ttl),
        )
        assert isinstance(node, Directory)
        return node

    def fixed_dir(
        self, identity: Hashable, mtime_ns: int, entries: dict[str, Node] | Entries
    ) -> Directory:
        """A directory whose entries never change (a file inside may still re-render).

        Its listing is filled at once, so releasing it releases what it holds."""
        items = sorted(
            entries.items() if isinstance(entries, dict) else entries, key=lambda e: e[0]
        )

        async def load() -> Entries:
            return list(items)

        node = self.directory(identity, mtime_ns, load)
        if node.children is None:
            node.children = dict(items)
        return node

    def virtual(
        self,
        identity: Hashable,
        mtime_ns: int,
        render: Callable[[], Awaitable[bytes]],
        *,
        immutable: bool,
        live: bool = False,
    ) -> VirtualFile:
        node = self.intern(
            identity, lambda ino: VirtualFile(ino, mtime_ns, immutable, render, live=live)
        )
        assert isinstance(node, VirtualFile)
        return node

    def symlink(
        self, identity: tuple[Hashable, ...], mtime_ns: int, target: str, immutable: bool
    ) -> Node:
        # The target is part of the identity: a moved alias is a new inode, so the kernel
        # never serves the old target from its cache.
        return self.intern(
            (*identity, target), lambda ino: Symlink(ino, mtime_ns, immutable, target)
        )

    def asset_file(self, identity: Hashable, mtime_ns: int, asset: Asset, version_id: str) -> Node:
        key = AssetKey(version_id, asset.asset_id, asset.size)
        return self.intern(identity, lambda ino: AssetFile(ino, mtime_ns, True, asset, key))
