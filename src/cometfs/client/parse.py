"""Turn decoded Comet REST JSON into model objects, checking the contract on the way.

Pure functions (no I/O, no state), so they are safe on any thread; the client calls them on
its worker threads. A body that breaks the contract of comet-rest-api.md raises
ProtocolError naming the endpoint (`where`) and the field. The rule for what is required:
every key the comet_ml SDK itself needs (E6, E7) plus what a model object cannot do without;
anything else may be missing or null. `metadata` follows the SDK: a JSON string, an object
or null is accepted, and unreadable metadata is logged and dropped rather than fatal.

One bad entry never fails a whole listing:
- version strings (`latestVersion`, `version`, `artifactVersion`) are kept as sent, strict
  semver or not: the tree decides what to show;
- an asset whose entry is unusable (a `fileSize` that is not an integer in [0, 2**63), or
  another field of the wrong type) but which still has a string `assetId` and `fileName`
  comes back with `problem` set (and size 0), logged once at WARNING; the tree skips it and
  lists it. An entry that cannot even name itself still fails the listing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from cometfs.errors import ProtocolError
from cometfs.model import Artifact, ArtifactVersion, Asset
from cometfs.wire import Endpoint, Field

log = logging.getLogger(__name__)

# Sizes must fit a signed 64-bit st_size.
MAX_SIZE = 1 << 63
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def parse_server_version(body: Any, where: str = Endpoint.IS_ALIVE) -> str:
    """E1: the backend version string (not necessarily strict semver, so not checked)."""
    return _str(_object(body, where), Field.VERSION, where)


def parse_account_details(body: Any, where: str = Endpoint.ACCOUNT_DETAILS) -> dict[str, Any]:
    """E2: the whole object; only `userName` and `defaultWorkspaceName` are documented."""
    return dict(_object(body, where))


def parse_workspaces(body: Any, where: str = Endpoint.WORKSPACES) -> list[str]:
    """E3: the workspace names."""
    return list(_str_list(_object(body, where), Field.WORKSPACE_NAMES, where))


def parse_artifact_list(
    body: Any, workspace: str, where: str = Endpoint.ARTIFACT_LIST
) -> list[Artifact]:
    """E4: the workspace's artifacts, without versions."""
    items = _object_list(_object(body, where), Field.ARTIFACTS, where)
    return [_artifact(item, workspace, f"{where} artifacts[{i}]") for i, item in enumerate(items)]


def parse_artifact_details(body: Any, workspace: str, where: str = Endpoint.ARTIFACT) -> Artifact:
    """E5: one artifact with every version; each version carries the artifact's type and tags."""
    obj = _object(body, where)
    artifact = _artifact(obj, workspace, where)
    versions = tuple(
        _listed_version(item, artifact, f"{where} versions[{i}]")
        for i, item in enumerate(_object_list(obj, Field.VERSIONS, where))
    )
    return dataclasses.replace(artifact, versions=versions)


def parse_artifact_version(body: Any, where: str = Endpoint.VERSION) -> ArtifactVersion:
    """E6: one version with every LoggedArtifact property."""
    obj = _object(body, where)
    parent = _object(obj.get(Field.ARTIFACT), f"{where} artifact")
    version = _str(obj, Field.ARTIFACT_VERSION, where)
    return ArtifactVersion(
        version_id=_str(obj, Field.VERSION_ID, where),
        artifact_id=_str(parent, Field.ARTIFACT_ID, f"{where} artifact"),
        workspace=_str(parent, Field.WORKSPACE_NAME, f"{where} artifact"),
        name=_str(parent, Field.ARTIFACT_NAME, f"{where} artifact"),
        artifact_type=_str(parent, Field.ARTIFACT_TYPE, f"{where} artifact"),
        version=version,
        aliases=_str_list(obj, Field.ALIAS, where),
        artifact_tags=_str_list(parent, Field.TAGS, f"{where} artifact"),
        version_tags=_str_list(obj, Field.TAGS, where),
        size=_int(obj, Field.SIZE, where),
        source_experiment_key=_opt_str(obj, Field.EXPERIMENT_KEY, where, required=True),
        metadata=parse_metadata(obj.get(Field.METADATA), f"{where} version {version}") or {},
        created_ms=_opt_int(obj, Field.ADDED, where),
        state=_opt_str(obj, Field.STATE, where),
        owner=_opt_str(obj, Field.OWNER, where),
    )


def parse_assets(body: Any, where: str = Endpoint.VERSION_FILES) -> list[Asset]:
    """E7: every file of a version, remote ones included; unusable entries come back with
    `problem` set (see the module docstring)."""
    items = _object_list(_object(body, where), Field.FILES, where)
    return [_asset_or_problem(item, f"{where} files[{i}]") for i, item in enumerate(items)]


def parse_experiment_metadata(
    body: Any, where: str = Endpoint.EXPERIMENT_METADATA
) -> dict[str, Any]:
    """E9: the whole object; the SDK reads every field with .get, so none is required."""
    return dict(_object(body, where))


def parse_metadata(value: Any, where: str) -> dict[str, Any] | None:
    """A metadata field: a JSON-encoded object, an object, or null/"" (→ None).

    Like the SDK, anything unreadable is logged at WARNING and treated as absent, so one bad
    metadata string does not hide a whole version.
    """
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            return decoded
    log.warning("%s: cannot decode metadata, ignoring it", where)
    return None


def parse_error_body(text: str) -> tuple[str | None, int | None]:
    """An error body {"msg", "code", "sdk_error_code"} → (msg, sdk_error_code); tolerant."""
    try:
        body = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    msg = body.get(Field.MSG)
    code = body.get(Field.SDK_ERROR_CODE)
    return (
        msg if isinstance(msg, str) else None,
        code if isinstance(code, int) and not isinstance(code, bool) else None,
    )


def parse_content_range(value: str | None, where: str) -> tuple[int, int, int | None]:
    """`bytes FIRST-LAST/TOTAL` → (start, end exclusive, total or None for `*`)."""
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    if match is None:
        raise ProtocolError(f"{where}: bad Content-Range {value!r}")
    first, last = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if last < first or (total is not None and last >= total):
        raise ProtocolError(f"{where}: inconsistent Content-Range {value!r}")
    return first, last + 1, total


def _artifact(obj: Mapping[str, Any], workspace: str, where: str) -> Artifact:
    latest = _opt_str(obj, Field.LATEST_VERSION, where)
    return Artifact(
        artifact_id=_str(obj, Field.ARTIFACT_ID, where),
        workspace=workspace,
        name=_str(obj, Field.NAME, where),
        artifact_type=_str(obj, Field.TYPE, where),
        description=_opt_str(obj, Field.DESCRIPTION, where),
        tags=_str_list(obj, Field.TAGS, where),
        latest_version=latest,
        is_public=_bool(obj, Field.IS_PUBLIC, where, default=False),
        size=_int(obj, Field.SIZE, where),
    )


def _listed_version(obj: Mapping[str, Any], artifact: Artifact, where: str) -> ArtifactVersion:
    version = _str(obj, Field.VERSION, where)
    return ArtifactVersion(
        version_id=_str(obj, Field.VERSION_ID, where),
        artifact_id=artifact.artifact_id,
        workspace=artifact.workspace,
        name=artifact.name,
        artifact_type=artifact.artifact_type,
        version=version,
        aliases=_str_list(obj, Field.ALIAS, where),
        artifact_tags=artifact.tags,
        version_tags=_str_list(obj, Field.TAGS, where),
        size=_int(obj, Field.SIZE, where),
        # artifacts/get does not normally carry it; artifacts/version always does.
        source_experiment_key=_opt_str(obj, Field.EXPERIMENT_KEY, where),
        metadata=parse_metadata(obj.get(Field.METADATA), f"{where} version {version}") or {},
        created_ms=_opt_int(obj, Field.ADDED, where),
        state=_opt_str(obj, Field.STATE, where),
        owner=_opt_str(obj, Field.OWNER, where),
    )


def _asset_or_problem(obj: Mapping[str, Any], where: str) -> Asset:
    try:
        return _asset(obj, where)
    except ProtocolError as exc:
        asset_id, path = obj.get(Field.ASSET_ID), obj.get(Field.FILE_NAME)
        version_id = obj.get(Field.VERSION_ID)
        if not isinstance(asset_id, str) or not isinstance(path, str):
            raise
        log.warning("%s: skipping asset %s (%r): %s", where, asset_id, path, exc)
        return Asset(
            asset_id=asset_id,
            artifact_version_id=version_id if isinstance(version_id, str) else "",
            logical_path=path,
            size=0,
            remote=False,
            link=None,
            asset_type="",
            problem=str(exc),
        )


def _asset(obj: Mapping[str, Any], where: str) -> Asset:
    link = _opt_str(obj, Field.LINK, where, required=True)
    path = _str(obj, Field.FILE_NAME, where)
    return Asset(
        asset_id=_str(obj, Field.ASSET_ID, where),
        artifact_version_id=_str(obj, Field.VERSION_ID, where),
        logical_path=path,
        size=_size(obj, Field.FILE_SIZE, where),
        # The SDK falls back to `link is not None` when `remote` is missing.
        remote=_bool(obj, Field.REMOTE, where, default=link is not None),
        link=link,
        asset_type=_str(obj, Field.TYPE, where),
        metadata=parse_metadata(_required(obj, Field.METADATA, where), f"{where} {path!r}"),
    )


def _required(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{where}: field {key!r} is missing")
    return obj[key]


def _wrong_type(key: str, expected: str, value: Any, where: str) -> ProtocolError:
    return ProtocolError(f"{where}: field {key!r} should be {expected}, not {type(value).__name__}")


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{where}: expected a JSON object, not {type(value).__name__}")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = _required(obj, key, where)
    if not isinstance(value, str):
        raise _wrong_type(key, "a string", value, where)
    return value


def _opt_str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = _required(obj, key, where) if required else obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _wrong_type(key, "a string or null", value, where)
    return value


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = _required(obj, key, where)
    # bool is an int subclass; `true` is never a size.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _wrong_type(key, "a non-negative integer", value, where)
    return value


def _size(obj: Mapping[str, Any], key: str, where: str) -> int:
    # st_size is a signed 64-bit field: a larger size would overflow inside pyfuse3.
    value = _int(obj, key, where)
    if value >= MAX_SIZE:
        raise ProtocolError(f"{where}: field {key!r} is {value}, over 2**63 - 1")
    return value


def _opt_int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    return None if obj.get(key) is None else _int(obj, key, where)


def _bool(obj: Mapping[str, Any], key: str, where: str, *, default: bool) -> bool:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        # The SDK tests `remote is True`: a 1 or "true" would silently mean "not remote".
        raise _wrong_type(key, "a boolean", value, where)
    return value


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = _required(obj, key, where)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _wrong_type(key, "a list of strings", value, where)
    return tuple(value)


def _object_list(obj: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    value = _required(obj, key, where)
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise _wrong_type(key, "a list of objects", value, where)
    return value
