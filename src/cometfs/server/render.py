"""JSON bodies of the REST endpoints E2-E9, built from store records (see comet-rest-api.md).

Pure functions; called on handler threads. The quirks that matter to the comet_ml SDK live
here: metadata fields are JSON *strings* or null, lists are never null, the highest version
carries the automatic alias "Latest", and `remote` is a real boolean.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cometfs.server.store import ArtifactRec, AssetRec, VersionRec

LATEST_ALIAS = "Latest"


def json_string(value: Mapping[str, Any] | None, *, empty_is_null: bool) -> str | None:
    """Encode metadata the way the backend does: a JSON string, or null."""
    if value is None or (empty_is_null and not value):
        return None
    return json.dumps(dict(value), sort_keys=True)


def version_aliases(art: ArtifactRec, ver: VersionRec) -> list[str]:
    aliases = list(ver.aliases)
    if art.latest is not None and art.latest.version_id == ver.version_id:
        aliases.insert(0, LATEST_ALIAS)
    return aliases


def artifact_summary(art: ArtifactRec) -> dict[str, Any]:
    """One E4 item; E5 adds `versions`. sizeInBytes is the latest version's size."""
    latest = art.latest
    return {
        "artifactId": art.artifact_id,
        "project": None,
        "type": art.artifact_type,
        "name": art.name,
        "description": art.description,
        "latestVersion": latest.version if latest else None,
        "tags": list(art.tags),
        "isPublic": False,
        "emoji": None,
        "sizeInBytes": latest.size if latest else 0,
    }


def artifact_details(art: ArtifactRec) -> dict[str, Any]:
    """E5 artifacts/get."""
    body = artifact_summary(art)
    body["versions"] = [
        {
            "artifactVersionId": v.version_id,
            "version": v.version,
            "owner": v.owner,
            "metadata": json_string(v.metadata, empty_is_null=True),
            "createdFrom": None,
            "sizeInBytes": v.size,
            "state": v.state,
            "added": v.added_ms,
            "alias": version_aliases(art, v),
            "tags": list(v.tags),
        }
        for v in art.versions
    ]
    return body


def version_details(art: ArtifactRec, ver: VersionRec) -> dict[str, Any]:
    """E6 artifacts/version."""
    first = art.versions[0] if art.versions else ver
    return {
        "artifactVersionId": ver.version_id,
        "artifactVersion": ver.version,
        "owner": ver.owner,
        "createdFrom": None,
        "sizeInBytes": ver.size,
        "metadata": json_string(ver.metadata, empty_is_null=True),
        "note": None,
        "added": ver.added_ms,
        "state": ver.state,
        "tags": list(ver.tags),
        "alias": version_aliases(art, ver),
        "experimentKey": ver.experiment_key,
        "artifact": {
            "artifactId": art.artifact_id,
            "artifactName": art.name,
            "projectId": None,
            "workspaceId": art.workspace_id,
            "workspaceName": art.workspace,
            "experimentKey": first.experiment_key,
            "description": art.description,
            "version": None,
            "metadata": None,
            "artifactType": art.artifact_type,
            "isPublic": False,
            "owner": ver.owner,
            "s3FileSize": None,
            "emoji": None,
            "tags": list(art.tags),
        },
    }


def file_entry(art: ArtifactRec, ver: VersionRec, asset: AssetRec) -> dict[str, Any]:
    return {
        "artifactId": art.artifact_id,
        "artifactVersionId": ver.version_id,
        "assetId": asset.asset_id,
        "fileName": asset.file_name,
        "fileSize": asset.file_size,
        "link": asset.link,
        "dir": None,
        "type": asset.asset_type,
        "metadata": json_string(asset.metadata, empty_is_null=False),
        "remote": bool(asset.remote),
    }


def version_files(art: ArtifactRec, ver: VersionRec) -> dict[str, Any]:
    """E7 artifacts/version/files: every asset, remote ones included, no pagination."""
    return {"files": [file_entry(art, ver, a) for a in ver.assets]}


def error_body(msg: str, code: int, sdk_error_code: int | None) -> dict[str, Any]:
    return {"msg": msg, "code": code, "sdk_error_code": sdk_error_code}
