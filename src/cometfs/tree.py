"""The virtual directory tree: inodes, lazy directories and rendered JSON files.

Runs on the trio thread. Knows nothing of FUSE or HTTP: it asks the async Store for
listings and hands the FUSE adapter plain nodes and attributes.

Inodes come from a counter and are never reused. A node is identified by what it stands
for (say ("version", ws, artifact, "1.0.0")); while a node is known, the same identity maps
to the same inode, so refreshed listings keep the inodes the kernel already knows. A moved
alias gets a new inode, because its identity includes its target.

The inode table is bounded by what the kernel holds and what loaded listings hold: lookups
are counted, and when the kernel forgets a node (or a refreshed listing drops one the kernel
never saw) it leaves the table, together with what only its own listing held. A released
node that is still reachable through a listing is registered again, under its old inode,
as soon as it is handed to the kernel again.

Hostile listings stay local: a version that is not strict semver, an asset with a `problem`,
or a remote link that is not a URI (see names.remote_link_refusal) is skipped, logged once
and listed in `.comet/` with its reason, and the rest of the artifact stays readable.
"""

from __future__ import annotations

import json
import logging
import stat
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import semantic_version
from cachetools import LRUCache

from cometfs.errors import CometFSError, NotFound
from cometfs.model import Artifact, ArtifactVersion, Asset, AssetKey
from cometfs.names import (
    MappedPath,
    file_name,
    map_asset_paths,
    name_of,
    remote_link_refusal,
)
from cometfs.store import Store, is_outage

log = logging.getLogger(__name__)

ROOT_INODE = 1
META_DIR = ".comet"
IMMUTABLE_TIMEOUT = 24 * 3600.0
# Released nodes a racing request may still name (a readdir reply crossing a forget).
RECENTLY_RELEASED = 4096


@dataclass(eq=False)
class Node:
    inode: int
    mtime_ns: int
    immutable: bool
    identity: Hashable = field(default=None, kw_only=True)


@dataclass(eq=False)
class Directory(Node):
    """A directory whose children come from `load`; `ttl` None means it never changes."""

    load: Callable[[], Awaitable[list[tuple[str, Node]]]]
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


def render_json(value: Any) -> bytes:
    """The one JSON style of every virtual file: sorted, indented, newline-terminated.

    A lone surrogate from a listing is written as its JSON escape (backslashreplace gives
    exactly `\\ud800`), so the document stays valid UTF-8 and reads back the same."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return text.encode("utf-8", "backslashreplace")


# How many of a directory's next assets an open file names for cross-file readahead.
FOLLOWING = 16


def _link_following(entries: Mapping[str, Node]) -> None:
    """Give each asset file of one directory the keys of the assets after it (name order)."""
    files = [entries[name] for name in sorted(entries) if isinstance(entries[name], AssetFile)]
    keys = [node.key for node in files if isinstance(node, AssetFile)]
    for index, node in enumerate(files):
        if isinstance(node, AssetFile):
            node.following = tuple(keys[index + 1 : index + 1 + FOLLOWING])


def _ms_to_ns(ms: int | None, default_ns: int) -> int:
    return ms * 1_000_000 if ms else default_ns


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _is_version(name: str) -> bool:
    try:
        semantic_version.Version(name)
    except ValueError:
        return False
    return True


def _semver_key(version: ArtifactVersion) -> semantic_version.Version:
    return semantic_version.Version(version.version)


def split_versions(
    versions: Iterable[ArtifactVersion],
) -> tuple[list[ArtifactVersion], list[dict[str, str]]]:
    """The listing's strict-semver versions in semver order (first of duplicates wins), and
    what was skipped with its reason."""
    valid: dict[str, ArtifactVersion] = {}
    skipped: list[dict[str, str]] = []
    for version in versions:
        if not isinstance(version.version, str) or not _is_version(version.version):
            skipped.append({"version": str(version.version), "reason": "not a semver version"})
        elif version.version in valid:
            skipped.append({"version": version.version, "reason": "duplicate version"})
        else:
            valid[version.version] = version
    return sorted(valid.values(), key=_semver_key), skipped


def logged_artifact(version: ArtifactVersion) -> dict[str, Any]:
    """Every LoggedArtifact property, under the SDK's names."""
    return {
        "workspace": version.workspace,
        "name": version.name,
        "artifact_type": version.artifact_type,
        "version": version.version,
        "aliases": sorted(version.aliases),
        "artifact_tags": sorted(version.artifact_tags),
        "version_tags": sorted(version.version_tags),
        "size": version.size,
        "source_experiment_key": version.source_experiment_key,
        "metadata": dict(version.metadata),
    }


def logged_asset(asset: Asset, version: ArtifactVersion, path: str | None) -> dict[str, Any]:
    """Every LoggedArtifactAsset property, plus where the asset appears in the mount (None:
    it is not shown, see path-map.json)."""
    return {
        "logical_path": asset.logical_path,
        "path": path,
        "size": asset.size,
        "id": asset.asset_id,
        "asset_type": asset.asset_type,
        "metadata": dict(asset.metadata) if asset.metadata is not None else None,
        "remote": asset.remote,
        "link": asset.link,
        "artifact_id": version.artifact_id,
        "artifact_version_id": asset.artifact_version_id,
        "source_experiment_key": version.source_experiment_key,
    }


class Tree:
    """Inode table plus the rules for what each directory level contains."""

    def __init__(
        self,
        store: Store,
        *,
        metadata_ttl: float = 30.0,
        workspaces: Iterable[str] = (),
        status: Callable[[], Mapping[str, Any]] = dict,
        clock: Callable[[], float] = time.monotonic,
        mount_time_ns: int | None = None,
    ) -> None:
        self._store = store
        self._ttl = metadata_ttl
        self._only_workspaces = tuple(workspaces)
        self._status = status
        self._clock = clock
        self._now_ns = mount_time_ns if mount_time_ns is not None else time.time_ns()
        self._nodes: dict[int, Node] = {}
        self._by_identity: dict[Hashable, Node] = {}
        self._lookups: dict[int, int] = {}
        self._released: LRUCache[int, Node] = LRUCache(maxsize=RECENTLY_RELEASED)
        self._warned: LRUCache[Hashable, bool] = LRUCache(maxsize=4096)
        self._next_inode = ROOT_INODE
        self.root = self._directory(
            ("root",), self._now_ns, self._load_root, resolve=self._resolve_workspace,
            ttl=metadata_ttl,
        )
        assert self.root.inode == ROOT_INODE

    # -- inode table -----------------------------------------------------------------------

    def _intern(self, identity: Hashable, make: Callable[[int], Node]) -> Node:
        node = self._by_identity.get(identity)
        if node is None:
            node = make(self._next_inode)
            node.identity = identity
            self._next_inode += 1
            self._nodes[node.inode] = node
            self._by_identity[identity] = node
        return node

    def _register(self, node: Node) -> None:
        """Make a node the kernel is about to see findable by inode again."""
        if node.inode not in self._nodes:
            self._nodes[node.inode] = node
            self._by_identity.setdefault(node.identity, node)
            self._released.pop(node.inode, None)

    def _release(self, node: Node) -> None:
        """Drop a node the kernel no longer holds, and what only its listing held."""
        pending = [node]
        while pending:
            current = pending.pop()
            if current.inode == ROOT_INODE or self._lookups.get(current.inode, 0) > 0:
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
            self._release(node)

    def remember(self, node: Node) -> None:
        """The kernel took one more reference to `node` (a lookup or readdirplus entry)."""
        self._register(node)
        self._lookups[node.inode] = self._lookups.get(node.inode, 0) + 1

    def _directory(
        self,
        identity: Hashable,
        mtime_ns: int,
        load: Callable[[], Awaitable[list[tuple[str, Node]]]],
        *,
        resolve: Callable[[str], Awaitable[Node | None]] | None = None,
        ttl: float | None = None,
    ) -> Directory:
        node = self._intern(
            identity,
            lambda ino: Directory(ino, mtime_ns, ttl is None, load, resolve=resolve, ttl=ttl),
        )
        assert isinstance(node, Directory)
        return node

    def _virtual(
        self,
        identity: Hashable,
        mtime_ns: int,
        render: Callable[[], Awaitable[bytes]],
        *,
        immutable: bool,
        live: bool = False,
    ) -> VirtualFile:
        node = self._intern(
            identity, lambda ino: VirtualFile(ino, mtime_ns, immutable, render, live=live)
        )
        assert isinstance(node, VirtualFile)
        return node

    def _symlink(
        self, identity: tuple[Hashable, ...], mtime_ns: int, target: str, immutable: bool
    ) -> Node:
        # The target is part of the identity: a moved alias is a new inode, so the kernel
        # never serves the old target from its cache.
        return self._intern(
            (*identity, target), lambda ino: Symlink(ino, mtime_ns, immutable, target)
        )

    def node(self, inode: int) -> Node:
        found = self._nodes.get(inode)
        if found is None:
            found = self._released.get(inode)
            if found is None:
                raise NotFound(f"no inode {inode}")
            self._register(found)
        return found

    @property
    def inode_count(self) -> int:
        return len(self._nodes)

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
                self._warn_once(("stale", directory.inode), "serving a stale listing: %s", exc)
                return old
            directory.children = loaded
            directory.loaded_at = now
            if old is not None:
                # What a refresh dropped (a moved alias, say) and the kernel never took.
                kept = {id(node) for node in loaded.values()}
                for node in old.values():
                    if id(node) not in kept and self._lookups.get(node.inode, 0) <= 0:
                        self._release(node)
            return loaded
        return old

    def _warn_once(self, key: Hashable, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned[key] = True
            log.warning(message, *args)

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
        self._register(node)
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

    # -- root: workspaces ------------------------------------------------------------------

    async def _workspace_names(self) -> list[str]:
        return list(self._only_workspaces) or await self._store.workspaces()

    async def _load_root(self) -> list[tuple[str, Node]]:
        entries: list[tuple[str, Node]] = [(META_DIR, self._root_meta())]
        for ws in sorted(await self._workspace_names()):
            entries.append((file_name(ws), self._workspace_dir(ws)))
        return entries

    def _root_meta(self) -> Directory:
        async def render_status() -> bytes:
            # The listing counters (stale listings served, cached errors) come with the rest.
            metadata = {**self._store.stats(), "inodes": self.inode_count}
            return render_json({**self._status(), "metadata": metadata})

        status = self._virtual(
            ("status",), self._now_ns, render_status, immutable=False, live=True
        )
        return self._fixed_dir(("root-meta",), self._now_ns, [("status.json", status)])

    async def _resolve_workspace(self, name: str) -> Node | None:
        ws = name_of(name)
        if ws is None or (self._only_workspaces and ws not in self._only_workspaces):
            return None
        try:
            await self._store.artifacts(ws)
        except NotFound:
            return None
        return self._workspace_dir(ws)

    # -- workspace: artifacts ----------------------------------------------------------------

    def _workspace_dir(self, ws: str) -> Directory:
        async def load() -> list[tuple[str, Node]]:
            artifacts = await self._store.artifacts(ws)
            entries: list[tuple[str, Node]] = [(META_DIR, self._workspace_meta(ws))]
            for artifact in sorted(artifacts, key=lambda a: a.name):
                entries.append((file_name(artifact.name), self._artifact_dir(ws, artifact.name)))
            return entries

        async def resolve(name: str) -> Node | None:
            artifact = name_of(name)
            if artifact is None:
                return None
            try:
                await self._store.artifact(ws, artifact)
            except NotFound:
                return None
            return self._artifact_dir(ws, artifact)

        return self._directory(
            ("workspace", ws), self._now_ns, load, resolve=resolve, ttl=self._ttl
        )

    def _workspace_meta(self, ws: str) -> Directory:
        async def render() -> bytes:
            artifacts = await self._store.artifacts(ws)
            return render_json(
                [
                    {
                        "name": a.name,
                        "artifact_type": a.artifact_type,
                        "latest_version": a.latest_version,
                        "artifact_tags": sorted(a.tags),
                        "description": a.description,
                        "size": a.size,
                    }
                    for a in sorted(artifacts, key=lambda a: a.name)
                ]
            )

        listing = self._virtual(("artifacts.json", ws), self._now_ns, render, immutable=False)
        return self._fixed_dir(("workspace-meta", ws), self._now_ns, [("artifacts.json", listing)])

    # -- artifact: versions and aliases -----------------------------------------------------

    def _artifact_dir(self, ws: str, name: str) -> Directory:
        async def load() -> list[tuple[str, Node]]:
            artifact = await self._store.artifact(ws, name)
            entries: list[tuple[str, Node]] = [(META_DIR, self._artifact_meta(ws, name))]
            versions, skipped = split_versions(artifact.versions)
            for bad in skipped:
                self._warn_once(
                    ("version", ws, name, bad["version"]), "skipping version %r of %s/%s: %s",
                    bad["version"], ws, name, bad["reason"],
                )
            for version in versions:
                entries.append((file_name(version.version), self._version_dir(ws, name, version)))
            taken = {entry[0] for entry in entries}
            if versions:
                latest = versions[-1]
                entries.append(("latest", self._alias_link(ws, name, "latest", latest)))
                taken.add("latest")
            for version in versions:
                for alias in sorted(version.aliases):
                    link_name = file_name(alias)
                    if alias.lower() == "latest" or link_name in taken:
                        continue  # `latest` is always ours; a version name beats an alias
                    taken.add(link_name)
                    entries.append((link_name, self._alias_link(ws, name, alias, version)))
            return entries

        async def resolve(entry: str) -> Node | None:
            if _is_version(entry):
                try:
                    found = await self._store.version(ws, name, entry)
                except NotFound:
                    return None
                return self._version_dir(ws, name, found)
            alias = name_of(entry)
            if alias is None:
                return None
            try:
                version = await self._store.resolve_alias(ws, name, alias)
            except NotFound:
                return None
            if not _is_version(version.version):
                return None
            return self._alias_link(ws, name, alias, version)

        return self._directory(
            ("artifact", ws, name), self._now_ns, load, resolve=resolve, ttl=self._ttl
        )

    def _alias_link(self, ws: str, name: str, alias: str, version: ArtifactVersion) -> Node:
        return self._symlink(
            ("alias", ws, name, alias),
            _ms_to_ns(version.created_ms, self._now_ns),
            file_name(version.version),
            immutable=False,
        )

    def _artifact_meta(self, ws: str, name: str) -> Directory:
        async def render() -> bytes:
            return render_json(self._artifact_summary(await self._store.artifact(ws, name)))

        details = self._virtual(("artifact.json", ws, name), self._now_ns, render, immutable=False)
        return self._fixed_dir(
            ("artifact-meta", ws, name), self._now_ns, [("artifact.json", details)]
        )

    @staticmethod
    def _artifact_summary(artifact: Artifact) -> dict[str, Any]:
        versions, skipped = split_versions(artifact.versions)
        return {
            "workspace": artifact.workspace,
            "name": artifact.name,
            "artifact_type": artifact.artifact_type,
            "description": artifact.description,
            "artifact_tags": sorted(artifact.tags),
            "latest_version": artifact.latest_version,
            "size": artifact.size,
            "versions": [
                {
                    "version": v.version,
                    "aliases": sorted(v.aliases),
                    "version_tags": sorted(v.version_tags),
                    "size": v.size,
                    "created_at": _iso(v.created_ms),
                }
                for v in versions
            ],
            "skipped": skipped,
        }

    # -- version: assets and .comet --------------------------------------------------------

    async def _current(self, ws: str, name: str, version: str) -> ArtifactVersion:
        """A version's details: immutable ones from artifacts/version, and aliases, tags and
        metadata (which Comet lets users edit) from the TTL-cached artifact listing."""
        fixed = await self._store.version(ws, name, version)
        artifact = await self._store.artifact(ws, name)
        for listed in artifact.versions:
            if listed.version == version:
                return replace(
                    fixed,
                    aliases=listed.aliases,
                    version_tags=listed.version_tags,
                    artifact_tags=artifact.tags,
                    metadata=listed.metadata,
                )
        return fixed

    def _version_dir(self, ws: str, name: str, listed: ArtifactVersion) -> Directory:
        version = listed.version

        async def load() -> list[tuple[str, Node]]:
            details = await self._store.version(ws, name, version)
            assets = await self._store.assets(ws, name, version)
            return self._version_entries(ws, name, details, assets)

        mtime = _ms_to_ns(listed.created_ms, self._now_ns)
        return self._directory(("version", ws, name, version), mtime, load)

    def _version_entries(
        self, ws: str, name: str, details: ArtifactVersion, assets: list[Asset]
    ) -> list[tuple[str, Node]]:
        mtime = _ms_to_ns(details.created_ms, self._now_ns)
        base = ("in-version", ws, name, details.version)
        where = f"{ws}/{name}:{details.version}"
        skipped: dict[int, str] = {}
        for index, asset in enumerate(assets):
            if asset.problem is not None:
                skipped[index] = asset.problem
            elif asset.remote:
                refusal = remote_link_refusal(asset.link)
                if refusal is not None:
                    skipped[index] = refusal
        shown = [i for i in range(len(assets)) if i not in skipped]
        placed = map_asset_paths(
            [assets[i].logical_path for i in shown], [assets[i].asset_id for i in shown]
        )
        mapped = placed if not skipped else [
            MappedPath(shown[m.index], m.logical_path, m.path, m.reason) for m in placed
        ]

        # Nested directories are built eagerly from the one asset listing; remote links are
        # placed once every real entry is, so none can name one (see remote_link_refusal).
        dirs: dict[tuple[str, ...], dict[str, Node]] = {(): {}}
        names: dict[tuple[str, ...], set[str]] = {(): set()}
        remotes: list[tuple[tuple[str, ...], MappedPath]] = []
        for mapping in mapped:
            parts = tuple(mapping.path.split("/"))
            for depth in range(1, len(parts)):
                prefix = parts[:depth]
                if prefix not in dirs:
                    dirs[prefix] = {}
                    names[prefix] = set()
                    names[prefix[:-1]].add(prefix[-1])
            names[parts[:-1]].add(parts[-1])
            asset = assets[mapping.index]
            if asset.remote:
                remotes.append((parts, mapping))
                continue
            dirs[parts[:-1]][parts[-1]] = self._asset_file(
                (*base, "asset", asset.asset_id, mapping.path), mtime, asset, details.version_id
            )
        for parts, mapping in remotes:
            asset = assets[mapping.index]
            link = asset.link or ""
            refusal = remote_link_refusal(link, "/".join(parts[:-1]))
            if refusal is None and link.split("/", 1)[0] in names[parts[:-1]]:
                refusal = "remote link would resolve to an entry of the version"
            if refusal is not None:
                skipped[mapping.index] = refusal
                continue
            dirs[parts[:-1]][parts[-1]] = self._symlink(
                (*base, "remote", asset.asset_id), mtime, link, immutable=True
            )
        for entries in dirs.values():
            _link_following(entries)
        # Deepest first, so each directory's listing is complete when it is filled.
        for prefix in sorted(dirs, key=len, reverse=True):
            if prefix:
                dirs[prefix[:-1]][prefix[-1]] = self._fixed_dir(
                    (*base, "dir", prefix), mtime, dirs[prefix]
                )
        if len(skipped) > len(assets) - len(mapped):  # a remote link was refused above
            mapped = [m for m in mapped if m.index not in skipped]
        for index, reason in skipped.items():
            self._warn_once(
                ("asset", where, assets[index].asset_id), "skipping asset %r of %s: %s",
                assets[index].logical_path, where, reason,
            )

        meta = self._version_meta(ws, name, details, assets, mapped, skipped, mtime)
        return [(META_DIR, meta), *sorted(dirs[()].items(), key=lambda entry: entry[0])]

    def _asset_file(self, identity: Hashable, mtime_ns: int, asset: Asset, version_id: str) -> Node:
        key = AssetKey(version_id, asset.asset_id, asset.size)
        return self._intern(identity, lambda ino: AssetFile(ino, mtime_ns, True, asset, key))

    def _fixed_dir(
        self,
        identity: Hashable,
        mtime_ns: int,
        entries: dict[str, Node] | list[tuple[str, Node]],
    ) -> Directory:
        """A directory whose entries never change (a file inside may still re-render).

        Its listing is filled at once, so releasing it releases what it holds."""

        async def load() -> list[tuple[str, Node]]:
            items = entries.items() if isinstance(entries, dict) else entries
            return sorted(items, key=lambda entry: entry[0])

        node = self._directory(identity, mtime_ns, load)
        if node.children is None:
            items = entries.items() if isinstance(entries, dict) else entries
            node.children = dict(sorted(items, key=lambda entry: entry[0]))
        return node

    def _version_meta(
        self,
        ws: str,
        name: str,
        details: ArtifactVersion,
        assets: list[Asset],
        mapped: list[MappedPath],
        skipped: Mapping[int, str],
        mtime: int,
    ) -> Directory:
        version = details.version
        base = ("version-meta", ws, name, version)

        async def artifact_json() -> bytes:
            return render_json(logged_artifact(await self._current(ws, name, version)))

        async def metadata_json() -> bytes:
            return render_json(dict((await self._current(ws, name, version)).metadata))

        async def tags_json() -> bytes:
            current = await self._current(ws, name, version)
            return render_json({
                "artifact_tags": sorted(current.artifact_tags),
                "version_tags": sorted(current.version_tags),
            })

        async def aliases_json() -> bytes:
            return render_json(sorted((await self._current(ws, name, version)).aliases))

        # Skipped assets (path null) come last in both files: nothing in a listing is hidden.
        not_shown = sorted(skipped, key=lambda i: (assets[i].logical_path, assets[i].asset_id))

        async def assets_json() -> bytes:
            return render_json([
                *(logged_asset(assets[m.index], details, m.path)
                  for m in sorted(mapped, key=lambda m: m.path)),
                *(logged_asset(assets[i], details, None) for i in not_shown),
            ])

        async def path_map_json() -> bytes:
            return render_json([
                *({"logical_path": m.logical_path, "path": m.path,
                   "id": assets[m.index].asset_id, "reason": m.reason}
                  for m in sorted(mapped, key=lambda m: m.path) if m.reason is not None),
                *({"logical_path": assets[i].logical_path, "path": None,
                   "id": assets[i].asset_id, "reason": skipped[i]} for i in not_shown),
            ])

        async def source() -> bytes:
            return f"{ws}/{name}:{version}\n".encode("utf-8", "backslashreplace")

        async def source_experiment_json() -> bytes:
            key = details.source_experiment_key
            if not key:
                return render_json(None)
            try:
                return render_json(await self._store.experiment(key))
            except NotFound:
                return render_json(None)

        files: list[tuple[str, Callable[[], Awaitable[bytes]], bool]] = [
            ("artifact.json", artifact_json, False),
            ("metadata.json", metadata_json, False),
            ("tags.json", tags_json, False),
            ("aliases.json", aliases_json, False),
            ("assets.json", assets_json, True),
            ("path-map.json", path_map_json, True),
            ("source", source, True),
            ("source_experiment.json", source_experiment_json, True),
        ]
        return self._fixed_dir(base, mtime, [
            (file_name, self._virtual((*base, file_name), mtime, render, immutable=fixed))
            for file_name, render, fixed in files
        ])


__all__ = [
    "ROOT_INODE",
    "AssetFile",
    "Attributes",
    "Directory",
    "Node",
    "Symlink",
    "Tree",
    "VirtualFile",
    "logged_artifact",
    "logged_asset",
    "render_json",
]
