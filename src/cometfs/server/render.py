"""JSON bodies of the REST endpoints E1-E9 and of errors, built from store records (see
comet-rest-api.md), with the field names of cometfs.wire (which client/parse.py reads).

Pure functions; called on handler threads. The quirks that matter to the comet_ml SDK live
here: metadata fields are JSON *strings* or null, lists are never null, the highest version
carries the automatic alias "Latest", and `remote` is a real boolean.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cometfs.server.store import ArtifactRec, AssetRec, VersionRec
from cometfs.wire import Field

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


def server_version(version: str) -> dict[str, Any]:
    """E1 isAlive/ver."""
    return {Field.VERSION: version}


def account_details(user_name: str, default_workspace: str | None) -> dict[str, Any]:
    """E2 account-details."""
    return {Field.USER_NAME: user_name, Field.DEFAULT_WORKSPACE: default_workspace}


def workspaces(names: list[str]) -> dict[str, Any]:
    """E3 workspaces."""
    return {Field.WORKSPACE_NAMES: list(names)}


def artifact_list(arts: list[ArtifactRec]) -> dict[str, Any]:
    """E4 artifacts/get-all."""
    return {Field.ARTIFACTS: [artifact_summary(a) for a in arts]}


def artifact_summary(art: ArtifactRec) -> dict[str, Any]:
    """One E4 item; E5 adds `versions`. sizeInBytes is the latest version's size."""
    latest = art.latest
    return {
        Field.ARTIFACT_ID: art.artifact_id,
        Field.PROJECT: None,
        Field.TYPE: art.artifact_type,
        Field.NAME: art.name,
        Field.DESCRIPTION: art.description,
        Field.LATEST_VERSION: latest.version if latest else None,
        Field.TAGS: list(art.tags),
        Field.IS_PUBLIC: False,
        Field.EMOJI: None,
        Field.SIZE: latest.size if latest else 0,
    }


def artifact_details(art: ArtifactRec) -> dict[str, Any]:
    """E5 artifacts/get."""
    body = artifact_summary(art)
    body[Field.VERSIONS] = [
        {
            Field.VERSION_ID: v.version_id,
            Field.VERSION: v.version,
            Field.OWNER: v.owner,
            Field.METADATA: json_string(v.metadata, empty_is_null=True),
            Field.CREATED_FROM: None,
            Field.SIZE: v.size,
            Field.STATE: v.state,
            Field.ADDED: v.added_ms,
            Field.ALIAS: version_aliases(art, v),
            Field.TAGS: list(v.tags),
        }
        for v in art.versions
    ]
    return body


def version_details(art: ArtifactRec, ver: VersionRec) -> dict[str, Any]:
    """E6 artifacts/version."""
    first = art.versions[0] if art.versions else ver
    return {
        Field.VERSION_ID: ver.version_id,
        Field.ARTIFACT_VERSION: ver.version,
        Field.OWNER: ver.owner,
        Field.CREATED_FROM: None,
        Field.SIZE: ver.size,
        Field.METADATA: json_string(ver.metadata, empty_is_null=True),
        Field.NOTE: None,
        Field.ADDED: ver.added_ms,
        Field.STATE: ver.state,
        Field.TAGS: list(ver.tags),
        Field.ALIAS: version_aliases(art, ver),
        Field.EXPERIMENT_KEY: ver.experiment_key,
        Field.ARTIFACT: {
            Field.ARTIFACT_ID: art.artifact_id,
            Field.ARTIFACT_NAME: art.name,
            Field.PROJECT_ID: None,
            Field.WORKSPACE_ID: art.workspace_id,
            Field.WORKSPACE_NAME: art.workspace,
            Field.EXPERIMENT_KEY: first.experiment_key,
            Field.DESCRIPTION: art.description,
            Field.VERSION: None,
            Field.METADATA: None,
            Field.ARTIFACT_TYPE: art.artifact_type,
            Field.IS_PUBLIC: False,
            Field.OWNER: ver.owner,
            Field.S3_FILE_SIZE: None,
            Field.EMOJI: None,
            Field.TAGS: list(art.tags),
        },
    }


def file_entry(art: ArtifactRec, ver: VersionRec, asset: AssetRec) -> dict[str, Any]:
    return {
        Field.ARTIFACT_ID: art.artifact_id,
        Field.VERSION_ID: ver.version_id,
        Field.ASSET_ID: asset.asset_id,
        Field.FILE_NAME: asset.file_name,
        Field.FILE_SIZE: asset.file_size,
        Field.LINK: asset.link,
        Field.DIR: None,
        Field.TYPE: asset.asset_type,
        Field.METADATA: json_string(asset.metadata, empty_is_null=False),
        Field.REMOTE: bool(asset.remote),
    }


def version_files(art: ArtifactRec, ver: VersionRec) -> dict[str, Any]:
    """E7 artifacts/version/files: every asset, remote ones included, no pagination."""
    return {Field.FILES: [file_entry(art, ver, a) for a in ver.assets]}


def experiment_metadata(record: Mapping[str, Any]) -> dict[str, Any]:
    """E9 experiment/metadata: the stored record as it is (the store writes wire fields)."""
    return dict(record)


def error_body(msg: str, code: int, sdk_error_code: int | None) -> dict[str, Any]:
    return {Field.MSG: msg, Field.CODE: code, Field.SDK_ERROR_CODE: sdk_error_code}
