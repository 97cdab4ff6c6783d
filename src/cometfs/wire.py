"""The Comet REST wire format as both sides spell it: endpoint names, paths and JSON fields.

The client (client/api.py, client/parse.py) and the local server (server/render.py,
server/endpoints.py, server/faults.py) both import these names, so renaming a field or an
endpoint on one side cannot silently break the other. Imports nothing from either side (the
server stays out of the mount's import graph). Constants only; safe on any thread.

Endpoint names are those of comet-rest-api.md, except `get-asset` (experiment/asset/get-asset)
and `blob` (the target of a get-asset redirect); they name requests in the client's counters,
the server's request log and fault rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

REST_PREFIX: Final = "/api/rest/v2/"
IS_ALIVE_PATH: Final = "/clientlib/isAlive/ver"
BLOB_PREFIX: Final = "/blob/"


class Endpoint:
    """Endpoint names."""

    IS_ALIVE: Final = "isAlive"
    ACCOUNT_DETAILS: Final = "account-details"
    WORKSPACES: Final = "workspaces"
    ARTIFACT_LIST: Final = "artifacts/get-all"
    ARTIFACT: Final = "artifacts/get"
    VERSION: Final = "artifacts/version"
    VERSION_FILES: Final = "artifacts/version/files"
    GET_ASSET: Final = "get-asset"
    EXPERIMENT_METADATA: Final = "experiment/metadata"
    BLOB: Final = "blob"
    # Anything else the server is asked for (it answers 404).
    UNKNOWN: Final = "unknown"


# Endpoint name -> its path below REST_PREFIX, for the endpoints that take the API key.
REST_PATHS: Final[Mapping[str, str]] = {
    Endpoint.ACCOUNT_DETAILS: "account-details",
    Endpoint.WORKSPACES: "workspaces",
    Endpoint.ARTIFACT_LIST: "artifacts/get-all",
    Endpoint.ARTIFACT: "artifacts/get",
    Endpoint.VERSION: "artifacts/version",
    Endpoint.VERSION_FILES: "artifacts/version/files",
    Endpoint.GET_ASSET: "experiment/asset/get-asset",
    Endpoint.EXPERIMENT_METADATA: "experiment/metadata",
}

ENDPOINTS: Final = frozenset(
    {
        Endpoint.IS_ALIVE,
        *REST_PATHS,
        Endpoint.BLOB,
        Endpoint.UNKNOWN,
    }
)


class Field:
    """JSON field names of the bodies (E1-E9 and the error body), camelCase as Comet sends them."""

    # E1-E3
    VERSION: Final = "version"  # E1's backend version; also a listed version's version string
    USER_NAME: Final = "userName"
    DEFAULT_WORKSPACE: Final = "defaultWorkspaceName"
    WORKSPACE_NAMES: Final = "workspaceNames"
    # E4/E5 artifacts
    ARTIFACTS: Final = "artifacts"
    ARTIFACT_ID: Final = "artifactId"
    PROJECT: Final = "project"
    TYPE: Final = "type"
    NAME: Final = "name"
    DESCRIPTION: Final = "description"
    LATEST_VERSION: Final = "latestVersion"
    TAGS: Final = "tags"
    IS_PUBLIC: Final = "isPublic"
    EMOJI: Final = "emoji"
    SIZE: Final = "sizeInBytes"
    VERSIONS: Final = "versions"
    # E5/E6 versions
    VERSION_ID: Final = "artifactVersionId"
    OWNER: Final = "owner"
    METADATA: Final = "metadata"
    CREATED_FROM: Final = "createdFrom"
    STATE: Final = "state"
    ADDED: Final = "added"
    ALIAS: Final = "alias"
    ARTIFACT_VERSION: Final = "artifactVersion"
    NOTE: Final = "note"
    EXPERIMENT_KEY: Final = "experimentKey"
    # E6's nested artifact object
    ARTIFACT: Final = "artifact"
    ARTIFACT_NAME: Final = "artifactName"
    PROJECT_ID: Final = "projectId"
    WORKSPACE_ID: Final = "workspaceId"
    WORKSPACE_NAME: Final = "workspaceName"
    ARTIFACT_TYPE: Final = "artifactType"
    S3_FILE_SIZE: Final = "s3FileSize"
    # E7 files
    FILES: Final = "files"
    ASSET_ID: Final = "assetId"
    FILE_NAME: Final = "fileName"
    FILE_SIZE: Final = "fileSize"
    LINK: Final = "link"
    DIR: Final = "dir"
    REMOTE: Final = "remote"
    # error bodies
    MSG: Final = "msg"
    CODE: Final = "code"
    SDK_ERROR_CODE: Final = "sdk_error_code"
