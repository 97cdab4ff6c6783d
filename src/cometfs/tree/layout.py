"""What each directory level above a version contains: root, workspace, artifact.

Runs on the trio thread. Each level is a Directory interned in the InodeTable whose `load`
asks the async Store for a listing and whose `resolve` finds an entry a listing does not
show (a workspace not listed, an alias or version named directly). A version's own
contents are built by tree.version.

A version that is not strict semver is skipped, logged once and listed in the artifact's
`.comet/artifact.json` with its reason; the rest of the artifact stays readable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from cachetools import LRUCache

from cometfs.errors import NotFound
from cometfs.model import ArtifactVersion
from cometfs.names import file_name, name_of
from cometfs.store import Store
from cometfs.tree.nodes import Directory, Entries, InodeTable, Node
from cometfs.tree.render import (
    artifact_summary,
    artifacts_listing,
    is_version,
    render_json,
    split_versions,
)
from cometfs.tree.version import META_DIR, ms_to_ns, version_entries

log = logging.getLogger(__name__)


class Layout:
    """The rules of the root, workspace and artifact levels, over one InodeTable."""

    def __init__(
        self,
        table: InodeTable,
        store: Store,
        *,
        metadata_ttl: float,
        workspaces: Iterable[str],
        status: Callable[[], Mapping[str, Any]],
        now_ns: int,
    ) -> None:
        self._table = table
        self._store = store
        self._ttl = metadata_ttl
        self._only_workspaces = tuple(workspaces)
        self._status = status
        self._now_ns = now_ns
        self._warned: LRUCache[Hashable, bool] = LRUCache(maxsize=4096)

    def warn_once(self, key: Hashable, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned[key] = True
            log.warning(message, *args)

    # -- root: workspaces ------------------------------------------------------------------

    def root(self) -> Directory:
        return self._table.directory(
            ("root",),
            self._now_ns,
            self._load_root,
            resolve=self._resolve_workspace,
            ttl=self._ttl,
        )

    async def _load_root(self) -> Entries:
        workspaces = list(self._only_workspaces) or await self._store.workspaces()
        entries: Entries = [(META_DIR, self._root_meta())]
        for ws in sorted(workspaces):
            entries.append((file_name(ws), self._workspace_dir(ws)))
        return entries

    def _root_meta(self) -> Directory:
        async def render_status() -> bytes:
            # The listing counters (stale listings served, cached errors) come with the rest.
            metadata = {**self._store.stats(), "inodes": len(self._table)}
            return render_json({**self._status(), "metadata": metadata})

        status = self._table.virtual(
            ("status",), self._now_ns, render_status, immutable=False, live=True
        )
        return self._table.fixed_dir(("root-meta",), self._now_ns, [("status.json", status)])

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
        async def load() -> Entries:
            artifacts = await self._store.artifacts(ws)
            entries: Entries = [(META_DIR, self._workspace_meta(ws))]
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

        return self._table.directory(
            ("workspace", ws), self._now_ns, load, resolve=resolve, ttl=self._ttl
        )

    def _workspace_meta(self, ws: str) -> Directory:
        async def render() -> bytes:
            return render_json(artifacts_listing(await self._store.artifacts(ws)))

        listing = self._table.virtual(("artifacts.json", ws), self._now_ns, render, immutable=False)
        return self._table.fixed_dir(
            ("workspace-meta", ws), self._now_ns, [("artifacts.json", listing)]
        )

    # -- artifact: versions and aliases -----------------------------------------------------

    def _artifact_dir(self, ws: str, name: str) -> Directory:
        async def load() -> Entries:
            artifact = await self._store.artifact(ws, name)
            entries: Entries = [(META_DIR, self._artifact_meta(ws, name))]
            versions, skipped = split_versions(artifact.versions)
            for bad in skipped:
                self.warn_once(
                    ("version", ws, name, bad["version"]),
                    "skipping version %r of %s/%s: %s",
                    bad["version"],
                    ws,
                    name,
                    bad["reason"],
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
            if is_version(entry):
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
            if not is_version(version.version):
                return None
            return self._alias_link(ws, name, alias, version)

        return self._table.directory(
            ("artifact", ws, name), self._now_ns, load, resolve=resolve, ttl=self._ttl
        )

    def _alias_link(self, ws: str, name: str, alias: str, version: ArtifactVersion) -> Node:
        return self._table.symlink(
            ("alias", ws, name, alias),
            ms_to_ns(version.created_ms, self._now_ns),
            file_name(version.version),
            immutable=False,
        )

    def _artifact_meta(self, ws: str, name: str) -> Directory:
        async def render() -> bytes:
            return render_json(artifact_summary(await self._store.artifact(ws, name)))

        details = self._table.virtual(
            ("artifact.json", ws, name), self._now_ns, render, immutable=False
        )
        return self._table.fixed_dir(
            ("artifact-meta", ws, name), self._now_ns, [("artifact.json", details)]
        )

    # -- version: built by tree.version ---------------------------------------------------

    def _version_dir(self, ws: str, name: str, listed: ArtifactVersion) -> Directory:
        version = listed.version

        async def load() -> Entries:
            details = await self._store.version(ws, name, version)
            assets = await self._store.assets(ws, name, version)
            return version_entries(
                self._table, self._store, self.warn_once, self._now_ns, ws, name, details, assets
            )

        mtime = ms_to_ns(listed.created_ms, self._now_ns)
        return self._table.directory(("version", ws, name, version), mtime, load)
