"""Frozen value objects shared by every layer: what the REST client returns and the tree renders.

Field names follow the comet_ml SDK's LoggedArtifact / LoggedArtifactAsset properties so a
user's mental model carries over. Pure data; safe on any thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ArtifactVersion:
    """One artifact version with every LoggedArtifact property.

    `source_experiment_key` is None when the listing it came from (artifacts/get) does not
    carry it; artifacts/version always does.
    """

    version_id: str
    artifact_id: str
    workspace: str
    name: str
    artifact_type: str
    version: str
    aliases: tuple[str, ...]
    artifact_tags: tuple[str, ...]
    version_tags: tuple[str, ...]
    size: int
    source_experiment_key: str | None
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    created_ms: int | None = None
    state: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class Artifact:
    """An artifact; `versions` is filled only by the details call (artifacts/get)."""

    artifact_id: str
    workspace: str
    name: str
    artifact_type: str
    description: str | None
    tags: tuple[str, ...]
    latest_version: str | None
    is_public: bool
    size: int
    versions: tuple[ArtifactVersion, ...] = ()


@dataclass(frozen=True)
class Asset:
    """One file of a version. Remote assets have `remote=True`, a `link` and no bytes here.

    `problem` is set (and `size` is 0) when the listing's entry is unusable, e.g. a fileSize
    that is not a non-negative 64-bit integer: the tree skips such an asset and lists it in
    the version's `.comet/` files instead of failing the whole version.
    """

    asset_id: str
    artifact_version_id: str
    logical_path: str
    size: int
    remote: bool
    link: str | None
    asset_type: str
    metadata: Mapping[str, Any] | None = field(default=None, hash=False)
    problem: str | None = None


@dataclass(frozen=True)
class AssetKey:
    """Names immutable bytes: an asset of one artifact version, with its expected size."""

    version_id: str
    asset_id: str
    size: int
