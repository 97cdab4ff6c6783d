"""The server's endpoints called as plain functions (no socket), and its route table."""

from __future__ import annotations

import pytest

from cometfs.server import ApiKey, ArtifactStore, AssetSource, VersionSpec
from cometfs.server import endpoints as ep
from cometfs.server.endpoints import (
    BlobResponse,
    HttpError,
    JsonResponse,
    RedirectResponse,
    Request,
    Response,
)
from cometfs.wire import ENDPOINTS, REST_PATHS, REST_PREFIX, Endpoint, Field

ALL = ApiKey("all-key-123456")
ONLY_WS2 = ApiKey("ws2-key-123456", frozenset({"ws2"}))


class Signer:
    """Tokens that are the blob id backwards: enough to see the endpoints use the signer."""

    def blob_token(self, sha256: str, now: float | None = None) -> str:
        return sha256[::-1]

    def check_blob_token(self, token: str) -> str | None:
        return token[::-1] if len(token) == 64 else None


@pytest.fixture
def filled(store: ArtifactStore) -> ArtifactStore:
    store.add_version(
        VersionSpec("ws1", "data", [AssetSource("a.bin", data=b"one")], aliases=["prod"])
    )
    store.add_version(
        VersionSpec(
            "ws1",
            "data",
            [AssetSource("a.bin", data=b"two")],
            remotes={"r.csv": "s3://bucket/r.csv"},
        )
    )
    store.add_version(VersionSpec("ws2", "other", [AssetSource("o", data=b"o")]))
    return store


def call(
    store: ArtifactStore,
    path: str,
    params: dict[str, str] | None = None,
    *,
    key: ApiKey | None = ALL,
    redirect: bool = False,
) -> Response:
    request = Request(
        path=path,
        params=params or {},
        store=store,
        signer=Signer(),
        key=key,
        host="127.0.0.1:9",
        redirect=redirect,
    )
    return ep.route(path).endpoint(request)


def body(response: Response) -> dict[str, object]:
    assert isinstance(response, JsonResponse) and response.status == 200
    assert isinstance(response.body, dict)
    return response.body


def asset_id(store: ArtifactStore, ws: str, name: str, version: str, path: str) -> str:
    art = store.snapshot().artifact(ws, name)
    assert art is not None
    ver = art.find_version(version)
    assert ver is not None
    return next(a.asset_id for a in ver.assets if a.file_name == path)


def test_route_table_covers_every_wire_endpoint_once() -> None:
    routed = {ep.route(REST_PREFIX + path).name for path in REST_PATHS.values()}
    assert routed == set(REST_PATHS)
    assert all(ep.route(REST_PREFIX + p).needs_key for p in REST_PATHS.values())
    assert ep.route("/clientlib/isAlive/ver").name == Endpoint.IS_ALIVE
    assert not ep.route("/clientlib/isAlive/ver").needs_key
    assert ep.route("/blob/abc").name == Endpoint.BLOB
    assert ep.route(REST_PREFIX + "nope").name == Endpoint.UNKNOWN
    assert ep.route(REST_PREFIX + "nope").needs_key  # probing without a key learns nothing
    assert not ep.route("/elsewhere").needs_key
    names = {ep.route(REST_PREFIX + p).name for p in REST_PATHS.values()}
    assert names | {Endpoint.IS_ALIVE, Endpoint.BLOB, Endpoint.UNKNOWN} == ENDPOINTS


def test_an_authed_endpoint_without_a_key_is_401(filled: ArtifactStore) -> None:
    with pytest.raises(HttpError) as err:
        call(filled, REST_PREFIX + "workspaces", key=None)
    assert (err.value.status, err.value.sdk_error_code) == (401, ep.SDK_BAD_KEY)


def test_workspaces_follow_the_key(filled: ArtifactStore) -> None:
    path = REST_PREFIX + "workspaces"
    assert body(call(filled, path))[Field.WORKSPACE_NAMES] == ["ws1", "ws2"]
    assert body(call(filled, path, key=ONLY_WS2))[Field.WORKSPACE_NAMES] == ["ws2"]
    with pytest.raises(HttpError) as err:
        call(filled, REST_PREFIX + "artifacts/get-all", {"workspace": "ws1"}, key=ONLY_WS2)
    assert (err.value.status, err.value.sdk_error_code) == (404, ep.SDK_NO_WORKSPACE)


def test_version_by_alias_version_or_alias_and_latest(filled: ArtifactStore) -> None:
    path = REST_PREFIX + "artifacts/version"
    common = {"workspace": "ws1", "artifactName": "data"}
    assert body(call(filled, path, {"alias": "prod", **common}))[Field.ARTIFACT_VERSION] == "1.0.0"
    assert (
        body(call(filled, path, {"versionOrAlias": "latest", **common}))[Field.ARTIFACT_VERSION]
        == "2.0.0"
    )
    assert body(call(filled, path, common))[Field.ALIAS] == ["Latest"]
    with pytest.raises(HttpError) as err:
        call(filled, path, {"version": "9.0.0", **common})
    assert (err.value.status, err.value.sdk_error_code) == (400, ep.SDK_NO_VERSION)


def test_get_asset_answers_a_blob_a_redirect_or_an_error(filled: ArtifactStore) -> None:
    path = REST_PREFIX + "experiment/asset/get-asset"
    aid = asset_id(filled, "ws1", "data", "2.0.0", "a.bin")
    blob = call(filled, path, {"assetId": aid})
    assert isinstance(blob, BlobResponse) and blob.path.read_bytes() == b"two"
    redirect = call(filled, path, {"assetId": aid, "allow301": "true"}, redirect=True)
    assert isinstance(redirect, RedirectResponse)
    token = redirect.location.rpartition("/")[2]
    assert redirect.location == f"http://127.0.0.1:9/blob/{token}"
    followed = call(filled, "/blob/" + token, key=None)
    assert isinstance(followed, BlobResponse) and followed.sha256 == blob.sha256
    with pytest.raises(HttpError) as err:
        call(filled, "/blob/forged", key=None)
    assert err.value.status == 403
    remote = asset_id(filled, "ws1", "data", "2.0.0", "r.csv")
    with pytest.raises(HttpError) as err:
        call(filled, path, {"assetId": remote})
    assert err.value.status == 400
    hidden = asset_id(filled, "ws2", "other", "1.0.0", "o")
    with pytest.raises(HttpError) as err:
        call(filled, path, {"assetId": hidden}, key=ApiKey("ws1-key-123456", frozenset({"ws1"})))
    assert err.value.status == 404


def test_unknown_paths_are_404(filled: ArtifactStore) -> None:
    with pytest.raises(HttpError) as err:
        call(filled, REST_PREFIX + "nope")
    assert err.value.status == 404
