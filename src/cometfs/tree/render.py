"""The JSON documents of `.comet/`, as plain functions of model objects.

Pure and synchronous (any thread): the layout fetches what a document needs from the Store
and hands it here, so every document is unit-testable without a Store or a mount.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import semantic_version

from cometfs.model import Artifact, ArtifactVersion, Asset
from cometfs.names import MappedPath


def render_json(value: Any) -> bytes:
    """The one JSON style of every virtual file: sorted, indented, newline-terminated.

    A lone surrogate from a listing is written as its JSON escape (backslashreplace gives
    exactly `\\ud800`), so the document stays valid UTF-8 and reads back the same."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return text.encode("utf-8", "backslashreplace")


def iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def is_version(name: str) -> bool:
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
        if not isinstance(version.version, str) or not is_version(version.version):
            skipped.append({"version": str(version.version), "reason": "not a semver version"})
        elif version.version in valid:
            skipped.append({"version": version.version, "reason": "duplicate version"})
        else:
            valid[version.version] = version
    return sorted(valid.values(), key=_semver_key), skipped


def artifacts_listing(artifacts: Iterable[Artifact]) -> list[dict[str, Any]]:
    """A workspace's `.comet/artifacts.json`."""
    return [
        {
            "name": a.name,
            "artifact_type": a.artifact_type,
            "latest_version": a.latest_version,
            "artifact_tags": sorted(a.tags),
            "description": a.description,
            "size": a.size,
            "is_public": a.is_public,
        }
        for a in sorted(artifacts, key=lambda a: a.name)
    ]


def artifact_summary(artifact: Artifact) -> dict[str, Any]:
    """An artifact's `.comet/artifact.json`: its details and its (valid and skipped) versions."""
    versions, skipped = split_versions(artifact.versions)
    return {
        "workspace": artifact.workspace,
        "name": artifact.name,
        "artifact_type": artifact.artifact_type,
        "description": artifact.description,
        "artifact_tags": sorted(artifact.tags),
        "latest_version": artifact.latest_version,
        "size": artifact.size,
        "is_public": artifact.is_public,
        "versions": [
            {
                "version": v.version,
                "aliases": sorted(v.aliases),
                "version_tags": sorted(v.version_tags),
                "size": v.size,
                "created_at": iso(v.created_ms),
                "state": v.state,
                "owner": v.owner,
            }
            for v in versions
        ],
        "skipped": skipped,
    }


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


def tags_doc(version: ArtifactVersion) -> dict[str, list[str]]:
    """A version's `.comet/tags.json`."""
    return {
        "artifact_tags": sorted(version.artifact_tags),
        "version_tags": sorted(version.version_tags),
    }


def _not_shown(assets: Sequence[Asset], skipped: Mapping[int, str]) -> list[int]:
    # Skipped assets (path null) come last in assets.json and path-map.json: nothing in a
    # listing is hidden.
    return sorted(skipped, key=lambda i: (assets[i].logical_path, assets[i].asset_id))


def assets_doc(
    details: ArtifactVersion,
    assets: Sequence[Asset],
    mapped: Sequence[MappedPath],
    skipped: Mapping[int, str],
) -> list[dict[str, Any]]:
    """A version's `.comet/assets.json`: shown assets by path, then the skipped ones."""
    return [
        *(
            logged_asset(assets[m.index], details, m.path)
            for m in sorted(mapped, key=lambda m: m.path)
        ),
        *(logged_asset(assets[i], details, None) for i in _not_shown(assets, skipped)),
    ]


def path_map_doc(
    assets: Sequence[Asset], mapped: Sequence[MappedPath], skipped: Mapping[int, str]
) -> list[dict[str, Any]]:
    """A version's `.comet/path-map.json`: every asset not shown under its logical path."""
    return [
        *(
            {
                "logical_path": m.logical_path,
                "path": m.path,
                "id": assets[m.index].asset_id,
                "reason": m.reason,
            }
            for m in sorted(mapped, key=lambda m: m.path)
            if m.reason is not None
        ),
        *(
            {
                "logical_path": assets[i].logical_path,
                "path": None,
                "id": assets[i].asset_id,
                "reason": skipped[i],
            }
            for i in _not_shown(assets, skipped)
        ),
    ]
