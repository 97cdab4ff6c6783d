"""One version directory: where each asset is placed, and the files of its `.comet/`.

Runs on the trio thread. Builds the version's whole subtree eagerly from one asset listing
(interned in the InodeTable); the `.comet/` files are a table of (name, render, immutable)
over one VersionInputs object, rendered on open.

Hostile listings stay local: an asset with a `problem`, or a remote link that is not a URI
(see names.remote_link_refusal), is skipped, logged once and listed in `.comet/` with its
reason, and the rest of the version stays readable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cometfs.errors import NotFound
from cometfs.model import ArtifactVersion, Asset
from cometfs.names import MappedPath, map_asset_paths, remote_link_refusal
from cometfs.store import Store
from cometfs.tree.nodes import AssetFile, Directory, Entries, InodeTable, Node
from cometfs.tree.render import (
    assets_doc,
    logged_artifact,
    path_map_doc,
    render_json,
    tags_doc,
)

META_DIR = ".comet"
# How many of a directory's next assets an open file names for cross-file readahead.
FOLLOWING = 16

WarnOnce = Callable[..., None]


def ms_to_ns(ms: int | None, default_ns: int) -> int:
    return ms * 1_000_000 if ms else default_ns


def link_following(entries: Mapping[str, Node]) -> None:
    """Give each asset file of one directory the keys of the assets after it (name order)."""
    files = [entries[name] for name in sorted(entries) if isinstance(entries[name], AssetFile)]
    keys = [node.key for node in files if isinstance(node, AssetFile)]
    for index, node in enumerate(files):
        if isinstance(node, AssetFile):
            node.following = tuple(keys[index + 1 : index + 1 + FOLLOWING])


@dataclass(frozen=True)
class VersionInputs:
    """Everything a version's `.comet/` files are rendered from."""

    store: Store
    ws: str
    name: str
    details: ArtifactVersion
    assets: Sequence[Asset]
    mapped: Sequence[MappedPath]
    skipped: Mapping[int, str]

    async def current(self) -> ArtifactVersion:
        """The version's details: immutable ones from artifacts/version, and aliases, tags
        and metadata (which Comet lets users edit) from the TTL-cached artifact listing."""
        version = self.details.version
        fixed = await self.store.version(self.ws, self.name, version)
        artifact = await self.store.artifact(self.ws, self.name)
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


async def _artifact_json(v: VersionInputs) -> bytes:
    return render_json(logged_artifact(await v.current()))


async def _metadata_json(v: VersionInputs) -> bytes:
    return render_json(dict((await v.current()).metadata))


async def _tags_json(v: VersionInputs) -> bytes:
    return render_json(tags_doc(await v.current()))


async def _aliases_json(v: VersionInputs) -> bytes:
    return render_json(sorted((await v.current()).aliases))


async def _assets_json(v: VersionInputs) -> bytes:
    return render_json(assets_doc(v.details, v.assets, v.mapped, v.skipped))


async def _path_map_json(v: VersionInputs) -> bytes:
    return render_json(path_map_doc(v.assets, v.mapped, v.skipped))


async def _source(v: VersionInputs) -> bytes:
    return f"{v.ws}/{v.name}:{v.details.version}\n".encode("utf-8", "backslashreplace")


async def _source_experiment_json(v: VersionInputs) -> bytes:
    key = v.details.source_experiment_key
    if not key:
        return render_json(None)
    experiment: Any
    try:
        experiment = await v.store.experiment(key)
    except NotFound:
        experiment = None
    return render_json(experiment)


# The files of a version's `.comet/`: name, renderer, and whether the document can never
# change (the mutable ones follow aliases, tags and metadata edited in Comet).
VERSION_FILES: tuple[tuple[str, Callable[[VersionInputs], Awaitable[bytes]], bool], ...] = (
    ("artifact.json", _artifact_json, False),
    ("metadata.json", _metadata_json, False),
    ("tags.json", _tags_json, False),
    ("aliases.json", _aliases_json, False),
    ("assets.json", _assets_json, True),
    ("path-map.json", _path_map_json, True),
    ("source", _source, True),
    ("source_experiment.json", _source_experiment_json, True),
)


def _bind(
    render: Callable[[VersionInputs], Awaitable[bytes]], inputs: VersionInputs
) -> Callable[[], Awaitable[bytes]]:
    async def bound() -> bytes:
        return await render(inputs)

    return bound


def version_meta(table: InodeTable, inputs: VersionInputs, mtime: int) -> Directory:
    """The version's `.comet/` directory."""
    base = ("version-meta", inputs.ws, inputs.name, inputs.details.version)
    return table.fixed_dir(
        base,
        mtime,
        [
            (file, table.virtual((*base, file), mtime, _bind(render, inputs), immutable=fixed))
            for file, render, fixed in VERSION_FILES
        ],
    )


def _problems(assets: Sequence[Asset]) -> dict[int, str]:
    """Assets skipped before placement: listed with a problem, or an unusable remote link."""
    skipped: dict[int, str] = {}
    for index, asset in enumerate(assets):
        if asset.problem is not None:
            skipped[index] = asset.problem
        elif asset.remote:
            refusal = remote_link_refusal(asset.link)
            if refusal is not None:
                skipped[index] = refusal
    return skipped


def version_entries(
    table: InodeTable,
    store: Store,
    warn_once: WarnOnce,
    now_ns: int,
    ws: str,
    name: str,
    details: ArtifactVersion,
    assets: list[Asset],
) -> Entries:
    """The version directory's listing: `.comet/` and the assets under their mapped paths."""
    mtime = ms_to_ns(details.created_ms, now_ns)
    base: tuple[Hashable, ...] = ("in-version", ws, name, details.version)
    where = f"{ws}/{name}:{details.version}"
    skipped = _problems(assets)
    shown = [i for i in range(len(assets)) if i not in skipped]
    placed = map_asset_paths(
        [assets[i].logical_path for i in shown], [assets[i].asset_id for i in shown]
    )
    mapped = (
        placed
        if not skipped
        else [MappedPath(shown[m.index], m.logical_path, m.path, m.reason) for m in placed]
    )

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
        dirs[parts[:-1]][parts[-1]] = table.asset_file(
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
        dirs[parts[:-1]][parts[-1]] = table.symlink(
            (*base, "remote", asset.asset_id), mtime, link, immutable=True
        )
    for entries in dirs.values():
        link_following(entries)
    # Deepest first, so each directory's listing is complete when it is filled.
    for prefix in sorted(dirs, key=len, reverse=True):
        if prefix:
            dirs[prefix[:-1]][prefix[-1]] = table.fixed_dir(
                (*base, "dir", prefix), mtime, dirs[prefix]
            )
    if len(skipped) > len(assets) - len(mapped):  # a remote link was refused above
        mapped = [m for m in mapped if m.index not in skipped]
    for index, reason in skipped.items():
        warn_once(
            ("asset", where, assets[index].asset_id),
            "skipping asset %r of %s: %s",
            assets[index].logical_path,
            where,
            reason,
        )

    inputs = VersionInputs(store, ws, name, details, assets, mapped, skipped)
    meta = version_meta(table, inputs, mtime)
    return [(META_DIR, meta), *sorted(dirs[()].items(), key=lambda entry: entry[0])]
