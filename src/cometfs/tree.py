"""The virtual directory tree: inodes, lazy directories and rendered JSON files.

Runs on the trio thread. Knows nothing of FUSE or HTTP: it asks the async Store for
listings and hands the FUSE adapter plain nodes and attributes.

Inodes come from a counter and are never reused. A node is identified by what it stands
for (say ("version", ws, artifact, "1.0.0")); the same identity always maps to the same
inode, so refreshed listings keep the inodes the kernel already knows. A moved alias gets a
new inode, because its identity includes its target.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import semantic_version

from cometfs.errors import NotFound
from cometfs.model import Artifact, ArtifactVersion, Asset, AssetKey
from cometfs.names import MappedPath, escape_name, map_asset_paths, unescape_name
from cometfs.store import Store

ROOT_INODE = 1
META_DIR = ".comet"
IMMUTABLE_TIMEOUT = 24 * 3600.0


@dataclass(eq=False)
class Node:
    inode: int
    mtime_ns: int
    immutable: bool


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
    asset: Asset
    key: AssetKey


@dataclass(eq=False)
class VirtualFile(Node):
    """Rendered JSON or text. `live` files change on every read (served with direct_io)."""

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
    """The one JSON style of every virtual file: sorted, indented, newline-terminated."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


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


def logged_asset(asset: Asset, version: ArtifactVersion, path: str) -> dict[str, Any]:
    """Every LoggedArtifactAsset property, plus where the asset appears in the mount."""
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
            self._next_inode += 1
            self._nodes[node.inode] = node
            self._by_identity[identity] = node
        return node

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
        try:
            return self._nodes[inode]
        except KeyError:
            raise NotFound(f"no inode {inode}") from None

    @property
    def inode_count(self) -> int:
        return len(self._nodes)

    # -- queries used by the FUSE adapter ----------------------------------------------------

    async def children(self, directory: Directory) -> dict[str, Node]:
        """The directory's listing, reloaded when its TTL has run out."""
        now = self._clock()
        stale = directory.ttl is not None and now - directory.loaded_at >= directory.ttl
        if directory.children is None or stale:
            directory.children = dict(await directory.load())
            directory.loaded_at = now
        return directory.children

    async def lookup(self, parent: Node, name: str) -> Node:
        if not isinstance(parent, Directory):
            raise NotFound(f"{name!r}: parent is not a directory")
        children = await self.children(parent)
        found = children.get(name)
        if found is None and parent.resolve is not None:
            found = await parent.resolve(name)
        if found is None:
            raise NotFound(f"{name!r} not found")
        return found

    async def content(self, node: VirtualFile) -> bytes:
        if node.cached is not None:
            return node.cached
        data = await node.render()
        if node.immutable:
            node.cached = data
        return data

    async def attributes(self, node: Node) -> Attributes:
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
            entries.append((escape_name(ws), self._workspace_dir(ws)))
        return entries

    def _root_meta(self) -> Directory:
        async def render_status() -> bytes:
            return render_json(dict(self._status()))

        status = self._virtual(
            ("status",), self._now_ns, render_status, immutable=False, live=True
        )
        return self._fixed_dir(("root-meta",), self._now_ns, [("status.json", status)])

    async def _resolve_workspace(self, name: str) -> Node | None:
        ws = unescape_name(name)
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
                entries.append((escape_name(artifact.name), self._artifact_dir(ws, artifact.name)))
            return entries

        async def resolve(name: str) -> Node | None:
            artifact = unescape_name(name)
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
            versions = sorted(artifact.versions, key=_semver_key)
            for version in versions:
                entries.append((version.version, self._version_dir(ws, name, version)))
            taken = {entry[0] for entry in entries}
            if versions:
                latest = versions[-1]
                entries.append(("latest", self._alias_link(ws, name, "latest", latest)))
                taken.add("latest")
            for version in versions:
                for alias in sorted(version.aliases):
                    link_name = escape_name(alias)
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
            alias = unescape_name(entry)
            if alias is None:
                return None
            try:
                version = await self._store.resolve_alias(ws, name, alias)
            except NotFound:
                return None
            return self._alias_link(ws, name, alias, version)

        return self._directory(
            ("artifact", ws, name), self._now_ns, load, resolve=resolve, ttl=self._ttl
        )

    def _alias_link(self, ws: str, name: str, alias: str, version: ArtifactVersion) -> Node:
        return self._symlink(
            ("alias", ws, name, alias),
            _ms_to_ns(version.created_ms, self._now_ns),
            version.version,
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
                for v in sorted(artifact.versions, key=_semver_key)
            ],
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
        mapped = map_asset_paths([a.logical_path for a in assets], [a.asset_id for a in assets])

        # Nested directories are built eagerly from the one asset listing.
        dirs: dict[tuple[str, ...], dict[str, Node]] = {(): {}}
        for mapping in mapped:
            parts = tuple(mapping.path.split("/"))
            for depth in range(1, len(parts)):
                prefix = parts[:depth]
                if prefix not in dirs:
                    dirs[prefix] = {}
                    dirs[prefix[:-1]][prefix[-1]] = self._fixed_dir(
                        (*base, "dir", prefix), mtime, dirs[prefix]
                    )
            asset = assets[mapping.index]
            leaf: Node
            if asset.remote:
                leaf = self._symlink((*base, "remote", asset.asset_id), mtime,
                                     asset.link or "", immutable=True)
            else:
                leaf = self._asset_file((*base, "asset", asset.asset_id, mapping.path),
                                        mtime, asset, details.version_id)
            dirs[parts[:-1]][parts[-1]] = leaf

        meta = self._version_meta(ws, name, details, assets, mapped, mtime)
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
        """A directory whose entries never change (a file inside may still re-render)."""

        async def load() -> list[tuple[str, Node]]:
            items = entries.items() if isinstance(entries, dict) else entries
            return sorted(items, key=lambda entry: entry[0])

        return self._directory(identity, mtime_ns, load)

    def _version_meta(
        self,
        ws: str,
        name: str,
        details: ArtifactVersion,
        assets: list[Asset],
        mapped: list[MappedPath],
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

        async def assets_json() -> bytes:
            return render_json([
                logged_asset(assets[m.index], details, m.path)
                for m in sorted(mapped, key=lambda m: m.path)
            ])

        async def path_map_json() -> bytes:
            return render_json([
                {"logical_path": m.logical_path, "path": m.path, "id": assets[m.index].asset_id,
                 "reason": m.reason}
                for m in sorted(mapped, key=lambda m: m.path)
                if m.reason is not None
            ])

        async def source() -> bytes:
            return f"{ws}/{name}:{version}\n".encode()

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
