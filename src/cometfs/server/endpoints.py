"""The local server's endpoints as plain functions, and the one route table that names them.

An endpoint takes a `Request` and returns a `Response` (a JSON body, a blob to send, or a
redirect) or raises `HttpError`; none touches a socket, so tests call them directly. `route`
maps a request path to its `Route` (endpoint name, function, whether it needs an API key)
through `ROUTES`; app.py's handler does the plumbing around it (auth, faults, the request
log, writing bytes). Called on handler threads; they only read the store's snapshot.

The answers for behaviour the real backend does not document are listed in app.py's docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from cometfs.server import render
from cometfs.server.auth import ApiKey
from cometfs.server.store import OWNER, ArtifactRec, ArtifactStore, Snapshot, VersionRec
from cometfs.wire import BLOB_PREFIX, IS_ALIVE_PATH, REST_PATHS, REST_PREFIX, Endpoint

BACKEND_VERSION = "3.40.0"
SDK_NO_VERSION = 624523
SDK_NO_WORKSPACE = 90219
SDK_BAD_KEY = 90212


class HttpError(Exception):
    """Raised by endpoint code; becomes a JSON error answer."""

    def __init__(
        self,
        status: int,
        msg: str,
        sdk_error_code: int | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.sdk_error_code = sdk_error_code
        self.headers = list(headers)


class BlobSigner(Protocol):
    """Issues and checks the signed /blob/<token> URLs of redirects (CometServer is one)."""

    def blob_token(self, sha256: str, now: float | None = None) -> str: ...

    def check_blob_token(self, token: str) -> str | None: ...


@dataclass(frozen=True)
class Request:
    """What an endpoint may know of one request and of the server answering it.

    `key` is the caller's key, None when the route needs none; `host` is the Host to put in
    a redirect; `ranges` and `redirect` are the server's byte-serving modes.
    """

    path: str
    params: Mapping[str, str]
    store: ArtifactStore
    signer: BlobSigner
    key: ApiKey | None = None
    host: str = ""
    ranges: bool = True
    redirect: bool = False

    @property
    def caller(self) -> ApiKey:
        """The authenticated key; 401 when there is none."""
        if self.key is None:
            raise HttpError(401, "Invalid or missing API key", SDK_BAD_KEY)
        return self.key


@dataclass(frozen=True)
class JsonResponse:
    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BlobResponse:
    """Send a stored blob; `ranges` says whether a Range header is honoured."""

    path: Path
    sha256: str
    ranges: bool


@dataclass(frozen=True)
class RedirectResponse:
    location: str


Response = JsonResponse | BlobResponse | RedirectResponse
EndpointFn = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    name: str
    endpoint: EndpointFn
    needs_key: bool


def _ok(body: Any) -> JsonResponse:
    return JsonResponse(200, body)


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes")


# ---- endpoints ---------------------------------------------------------------------------


def is_alive(req: Request) -> Response:
    return _ok(render.server_version(BACKEND_VERSION))


def account_details(req: Request) -> Response:
    return _ok(render.account_details(OWNER, _default_workspace(req.caller, req.store.snapshot())))


def workspaces(req: Request) -> Response:
    return _ok(render.workspaces(_visible_workspaces(req.caller, req.store.snapshot())))


def artifact_list(req: Request) -> Response:
    key, snap = req.caller, req.store.snapshot()
    ws = req.params.get("workspace")
    if not ws:
        raise HttpError(400, "workspace is required")
    if ws not in _visible_workspaces(key, snap):
        raise HttpError(404, "Workspace not found", SDK_NO_WORKSPACE)
    wanted = req.params.get("type")
    arts = sorted(snap.artifacts.get(ws, {}).values(), key=lambda a: a.name)
    return _ok(render.artifact_list([a for a in arts if not wanted or a.artifact_type == wanted]))


def artifact(req: Request) -> Response:
    p = req.params
    art = _find_artifact(
        req.caller,
        req.store.snapshot(),
        p.get("artifact_id"),
        p.get("workspace"),
        p.get("artifactName"),
    )
    return _ok(render.artifact_details(art))


def version(req: Request) -> Response:
    key, snap, p = req.caller, req.store.snapshot(), req.params
    ws = p.get("workspace")
    if not ws and p.get("experimentKey"):
        exp = snap.experiments.get(p["experimentKey"])
        ws = exp["workspaceName"] if exp else None
    art = _find_artifact(
        key, snap, p.get("artifactId"), ws or None, p.get("artifactName"), default_ws=True
    )
    ver: VersionRec | None
    if p.get("versionId"):
        ver = next((v for v in art.versions if v.version_id == p["versionId"]), None)
    elif p.get("version"):
        ver = art.find_version(p["version"])
    elif p.get("alias"):
        ver = art.find_alias(p["alias"])
    elif p.get("versionOrAlias"):
        voa = p["versionOrAlias"]
        ver = art.find_version(voa) or art.find_alias(voa)
    else:
        ver = art.latest
    if ver is None:
        raise HttpError(400, "No artifact version found", SDK_NO_VERSION)
    return _ok(render.version_details(art, ver))


def version_files(req: Request) -> Response:
    p = req.params
    art = _find_artifact(
        req.caller,
        req.store.snapshot(),
        p.get("artifact_id"),
        p.get("workspace"),
        p.get("artifactName"),
    )
    if p.get("version"):
        ver = art.find_version(p["version"])
    elif p.get("alias"):
        ver = art.find_alias(p["alias"])
    else:
        ver = art.latest
    if ver is None:
        raise HttpError(400, "No artifact version found", SDK_NO_VERSION)
    return _ok(render.version_files(art, ver))


def experiment_metadata(req: Request) -> Response:
    key = req.caller
    exp = req.store.snapshot().experiments.get(req.params.get("experimentKey") or "")
    if exp is None or not key.sees(str(exp.get("workspaceName"))):
        raise HttpError(404, "Experiment not found")
    return _ok(render.experiment_metadata(exp))


def get_asset(req: Request) -> Response:
    key, snap = req.caller, req.store.snapshot()
    found = snap.by_asset_id.get(req.params.get("assetId") or "")
    if found is None or not key.sees(found[0].workspace):
        raise HttpError(404, "Asset not found")
    _, ver, asset = found
    wanted_vid = req.params.get("artifactVersionId")
    if wanted_vid and wanted_vid != ver.version_id:
        raise HttpError(404, "Asset not found in that artifact version")
    if asset.remote or asset.sha256 is None:
        raise HttpError(400, f"Asset {asset.file_name!r} is a remote asset; fetch it from its link")
    if req.redirect and _truthy(req.params.get("allow301")):
        token = req.signer.blob_token(asset.sha256)
        return RedirectResponse(f"http://{req.host}{BLOB_PREFIX}{token}")
    return BlobResponse(snap.blob_path(asset.sha256), asset.sha256, req.ranges)


def blob(req: Request) -> Response:
    sha = req.signer.check_blob_token(req.path[len(BLOB_PREFIX) :])
    if sha is None:
        raise HttpError(403, "invalid or expired blob token")
    return BlobResponse(req.store.snapshot().blob_path(sha), sha, ranges=True)


def unknown(req: Request) -> Response:
    raise HttpError(404, f"no such endpoint: {req.path}")


# ---- routing -----------------------------------------------------------------------------

# Path below REST_PREFIX -> route. Every REST endpoint needs a key, an unknown one too (so
# probing for endpoints without a key learns nothing).
ROUTES: Mapping[str, Route] = {
    REST_PATHS[name]: Route(name, fn, needs_key=True)
    for name, fn in (
        (Endpoint.ACCOUNT_DETAILS, account_details),
        (Endpoint.WORKSPACES, workspaces),
        (Endpoint.ARTIFACT_LIST, artifact_list),
        (Endpoint.ARTIFACT, artifact),
        (Endpoint.VERSION, version),
        (Endpoint.VERSION_FILES, version_files),
        (Endpoint.GET_ASSET, get_asset),
        (Endpoint.EXPERIMENT_METADATA, experiment_metadata),
    )
}
IS_ALIVE_ROUTE = Route(Endpoint.IS_ALIVE, is_alive, needs_key=False)
BLOB_ROUTE = Route(Endpoint.BLOB, blob, needs_key=False)
UNKNOWN_REST_ROUTE = Route(Endpoint.UNKNOWN, unknown, needs_key=True)
UNKNOWN_ROUTE = Route(Endpoint.UNKNOWN, unknown, needs_key=False)


def route(path: str) -> Route:
    """The route of a request path (without its query)."""
    if path == IS_ALIVE_PATH:
        return IS_ALIVE_ROUTE
    if path.startswith(BLOB_PREFIX):
        return BLOB_ROUTE
    if path.startswith(REST_PREFIX):
        return ROUTES.get(path[len(REST_PREFIX) :], UNKNOWN_REST_ROUTE)
    return UNKNOWN_ROUTE


# ---- helpers -----------------------------------------------------------------------------


def _visible_workspaces(key: ApiKey, snap: Snapshot) -> list[str]:
    if key.workspaces is None:
        return snap.workspaces()
    return sorted(key.workspaces)


def _default_workspace(key: ApiKey, snap: Snapshot) -> str | None:
    visible = _visible_workspaces(key, snap)
    return visible[0] if visible else None


def _find_artifact(
    key: ApiKey,
    snap: Snapshot,
    artifact_id: str | None,
    workspace: str | None,
    quoted_name: str | None,
    *,
    default_ws: bool = False,
) -> ArtifactRec:
    """Resolve an artifact by id or by (workspace, name); 400/624523 when not visible."""
    art: ArtifactRec | None = None
    if artifact_id:
        art = snap.by_artifact_id.get(artifact_id)
        if art is not None and workspace and art.workspace != workspace:
            art = None
    elif quoted_name:
        # The SDK (>= 3.56) quotes the name itself before requests encodes it again.
        name = unquote(quoted_name)
        if not workspace and default_ws:
            workspace = _default_workspace(key, snap)
        if workspace:
            art = snap.artifact(workspace, name)
    else:
        raise HttpError(400, "artifactName (with workspace) or an artifact id is required")
    if art is None or not key.sees(art.workspace):
        raise HttpError(400, "Artifact not found", SDK_NO_VERSION)
    return art
