"""The local server over raw HTTP: shapes, auth, scoping, Range, redirects, faults, the log."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cometfs.server import (
    ApiKey,
    ArtifactStore,
    AssetSource,
    CometServer,
    FaultPlan,
    FaultRule,
    VersionSpec,
    parse_api_key,
    parse_faults,
)
from cometfs.server.app import parse_range
from cometfs.testing import wait_until

REST = "/api/rest/v2/"
BLOB = random.Random(42).randbytes(1 << 20)
EXP_KEY = "0123456789abcdef0123456789abcdef"


@dataclass
class World:
    store: ArtifactStore
    asset_id: str  # ws1/data 2.0.0 blob.bin
    remote_id: str
    version_id: str
    other_asset_id: str  # ws2/secret
    other_artifact_id: str


@pytest.fixture
def world(store: ArtifactStore) -> World:
    store.add_version(
        VersionSpec(
            "ws1",
            "data",
            [AssetSource("blob.bin", data=b"old")],
            aliases=["prod"],
            version_tags=["v1"],
            experiment_key=EXP_KEY,
        )
    )
    store.add_version(
        VersionSpec(
            "ws1",
            "data",
            [
                AssetSource("blob.bin", data=BLOB),
                AssetSource("dir/m.txt", data=b"m", metadata={"k": 1}),
                AssetSource("empty", data=b""),
            ],
            aliases=["staging"],
            tags=["tagA"],
            version_tags=["v2"],
            metadata={"n": 2},
            remotes={"r.csv": "https://example.invalid/r.csv"},
            description="d",
        )
    )
    store.add_version(
        VersionSpec("ws1", "my data+set", [AssetSource("x", data=b"x")], artifact_type="model")
    )
    store.add_version(VersionSpec("ws2", "secret", [AssetSource("s", data=b"top secret")]))
    snap = store.snapshot()
    ver = snap.artifacts["ws1"]["data"].versions[1]
    by_name = {a.file_name: a for a in ver.assets}
    secret = snap.artifacts["ws2"]["secret"]
    return World(
        store,
        by_name["blob.bin"].asset_id,
        by_name["r.csv"].asset_id,
        ver.version_id,
        secret.versions[0].assets[0].asset_id,
        secret.artifact_id,
    )


def get(srv: CometServer, path: str, key: str | None, **kwargs: Any) -> requests.Response:
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = key
    return requests.get(srv.url + path, headers=headers, timeout=30, **kwargs)


def asset_params(asset_id: str, **extra: Any) -> dict[str, Any]:
    return {"assetId": asset_id, "allow301": False, "experimentKey": "", **extra}


def assert_json(r: requests.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    return r.json()


def assert_error(r: requests.Response, status: int, sdk_code: int | None) -> None:
    body = assert_json(r, status)
    assert body["code"] == status and body["sdk_error_code"] == sdk_code and body["msg"]


# ---- basics and shapes --------------------------------------------------------------------


def test_is_alive_needs_no_key(server: CometServer) -> None:
    assert assert_json(get(server, "/clientlib/isAlive/ver", None)) == {"version": "3.40.0"}


def test_unknown_paths_and_methods(server: CometServer, api_key: str) -> None:
    assert_error(get(server, "/nope", api_key), 404, None)
    assert_error(get(server, REST + "nope", api_key), 404, None)
    assert_error(get(server, REST + "nope", None), 401, 90212)
    r = requests.post(
        server.url + REST + "write/artifacts/details",
        json={"a": 1},
        headers={"Authorization": api_key},
        timeout=10,
    )
    assert_error(r, 405, None)


def test_requires_a_key() -> None:
    with pytest.raises(ValueError, match="at least one API key"):
        CometServer(ArtifactStore.__new__(ArtifactStore), api_keys=[])


def test_auth(world: World, make_server: Callable[..., CometServer], api_key: str) -> None:
    srv = make_server()
    for path in ("workspaces", "account-details", "artifacts/get-all?workspace=ws1"):
        assert_error(get(srv, REST + path, None), 401, 90212)
        assert_error(get(srv, REST + path, "wrong-key"), 401, 90212)
        assert get(srv, REST + path, api_key).status_code == 200
        # The enhanced form KEY*base64 is accepted by its prefix.
        assert get(srv, REST + path, api_key + "*eyJiYXNlVXJsIjoieCJ9").status_code == 200
    r = get(srv, REST + "experiment/asset/get-asset", None, params=asset_params(world.asset_id))
    assert_error(r, 401, 90212)


def test_json_shapes(world: World, server: CometServer, api_key: str) -> None:
    assert assert_json(get(server, REST + "workspaces", api_key)) == {
        "workspaceNames": ["ws1", "ws2"]
    }
    acct = assert_json(get(server, REST + "account-details", api_key))
    assert acct["defaultWorkspaceName"] == "ws1" and acct["userName"]

    arts = assert_json(
        get(server, REST + "artifacts/get-all", api_key, params={"workspace": "ws1"})
    )["artifacts"]
    assert [a["name"] for a in arts] == ["data", "my data+set"]
    data = arts[0]
    assert data["latestVersion"] == "2.0.0" and data["tags"] == ["tagA"]
    assert data["sizeInBytes"] == len(BLOB) + 1 and data["type"] == "dataset"
    models = assert_json(
        get(
            server,
            REST + "artifacts/get-all",
            api_key,
            params={"workspace": "ws1", "type": "model"},
        )
    )["artifacts"]
    assert [a["name"] for a in models] == ["my data+set"]

    details = assert_json(
        get(
            server,
            REST + "artifacts/get",
            api_key,
            params={"workspace": "ws1", "artifactName": "data"},
        )
    )
    assert details["description"] == "d"
    v1, v2 = details["versions"]
    assert (v1["version"], v1["alias"], v1["tags"], v1["metadata"]) == (
        "1.0.0",
        ["prod"],
        ["v1"],
        None,
    )
    assert (v2["version"], v2["alias"], v2["tags"]) == ("2.0.0", ["Latest", "staging"], ["v2"])
    assert json.loads(v2["metadata"]) == {"n": 2}
    assert v2["state"] == "CLOSED" and isinstance(v2["added"], int)
    by_id = assert_json(
        get(server, REST + "artifacts/get", api_key, params={"artifact_id": details["artifactId"]})
    )
    assert by_id == details

    ver = assert_json(
        get(
            server,
            REST + "artifacts/version",
            api_key,
            params={"workspace": "ws1", "artifactName": "data", "alias": "latest"},
        )
    )
    assert ver["artifactVersion"] == "2.0.0" and ver["artifactVersionId"] == world.version_id
    assert json.loads(ver["metadata"]) == {"n": 2}
    assert ver["alias"] == ["Latest", "staging"] and ver["tags"] == ["v2"]
    assert ver["sizeInBytes"] == len(BLOB) + 1
    assert len(ver["experimentKey"]) == 32
    assert ver["artifact"]["artifactName"] == "data"
    assert ver["artifact"]["workspaceName"] == "ws1"
    assert ver["artifact"]["artifactType"] == "dataset" and ver["artifact"]["tags"] == ["tagA"]

    files = assert_json(
        get(
            server,
            REST + "artifacts/version/files",
            api_key,
            params={"workspace": "ws1", "artifactName": "data", "version": "2.0.0"},
        )
    )["files"]
    keys = {
        "artifactId",
        "artifactVersionId",
        "assetId",
        "fileName",
        "fileSize",
        "link",
        "dir",
        "type",
        "metadata",
        "remote",
    }
    assert all(set(f) == keys for f in files)
    by_name = {f["fileName"]: f for f in files}
    assert set(by_name) == {"blob.bin", "dir/m.txt", "empty", "r.csv"}
    assert by_name["blob.bin"]["fileSize"] == len(BLOB)
    assert by_name["blob.bin"]["remote"] is False and by_name["blob.bin"]["metadata"] is None
    assert json.loads(by_name["dir/m.txt"]["metadata"]) == {"k": 1}
    assert by_name["r.csv"]["remote"] is True
    assert by_name["r.csv"]["link"] == "https://example.invalid/r.csv"
    assert by_name["r.csv"]["fileSize"] == 0
    assert all(f["artifactVersionId"] == world.version_id for f in files)

    exp = assert_json(
        get(server, REST + "experiment/metadata", api_key, params={"experimentKey": EXP_KEY})
    )
    assert exp["experimentKey"] == EXP_KEY and exp["workspaceName"] == "ws1"
    assert exp["running"] is False
    assert_error(
        get(server, REST + "experiment/metadata", api_key, params={"experimentKey": "f" * 32}),
        404,
        None,
    )


def test_version_resolution_order(world: World, server: CometServer, api_key: str) -> None:
    def resolve(**params: str) -> str:
        r = get(
            server,
            REST + "artifacts/version",
            api_key,
            params={"workspace": "ws1", "artifactName": "data", **params},
        )
        return str(assert_json(r)["artifactVersion"])

    assert resolve() == "2.0.0"
    assert resolve(alias="LaTeSt") == "2.0.0"
    assert resolve(alias="prod") == "1.0.0"
    assert resolve(version="1.0.0", alias="staging") == "1.0.0"
    assert resolve(versionId=world.version_id, version="1.0.0") == "2.0.0"
    assert resolve(alias="prod", versionOrAlias="2.0.0") == "1.0.0"
    assert resolve(versionOrAlias="1.0.0") == "1.0.0"
    assert resolve(versionOrAlias="staging") == "2.0.0"
    assert resolve(experimentKey="", consumerExperimentKey="") == "2.0.0"
    # No workspace: taken from the experiment, or the default workspace.
    r = get(
        server,
        REST + "artifacts/version",
        api_key,
        params={"artifactName": "data", "experimentKey": EXP_KEY, "versionOrAlias": "prod"},
    )
    assert assert_json(r)["artifactVersion"] == "1.0.0"
    art_id = assert_json(
        get(
            server,
            REST + "artifacts/version",
            api_key,
            params={"workspace": "ws1", "artifactName": "data"},
        )
    )["artifact"]["artifactId"]
    r = get(
        server,
        REST + "artifacts/version",
        api_key,
        params={"artifactId": art_id, "versionOrAlias": "prod"},
    )
    assert assert_json(r)["artifactVersion"] == "1.0.0"
    for bad in (
        {"version": "9.9.9"},
        {"alias": "nope"},
        {"versionOrAlias": "nope"},
        {"versionId": "nope"},
    ):
        r = get(
            server,
            REST + "artifacts/version",
            api_key,
            params={"workspace": "ws1", "artifactName": "data", **bad},
        )
        assert_error(r, 400, 624523)
    r = get(
        server,
        REST + "artifacts/version",
        api_key,
        params={"workspace": "ws1", "artifactName": "nope", "alias": "latest"},
    )
    assert_error(r, 400, 624523)
    assert_error(
        get(
            server,
            REST + "artifacts/get",
            api_key,
            params={"workspace": "ws1", "artifactName": "nope"},
        ),
        400,
        624523,
    )
    assert_error(
        get(
            server,
            REST + "artifacts/version/files",
            api_key,
            params={"workspace": "ws1", "artifactName": "data", "version": "3.0.0"},
        ),
        400,
        624523,
    )
    assert_error(
        get(server, REST + "artifacts/get-all", api_key, params={"workspace": "nope"}), 404, 90219
    )


def test_artifact_name_is_unquoted_twice(world: World, server: CometServer, api_key: str) -> None:
    # What the SDK sends for "my data+set": quote(name, safe="") then requests encodes again.
    r = get(
        server,
        REST + "artifacts/version?workspace=ws1&alias=latest&artifactName=my%2520data%252Bset",
        api_key,
    )
    assert assert_json(r)["artifact"]["artifactName"] == "my data+set"


def test_new_commits_are_visible_to_a_running_server(
    world: World, server: CometServer, api_key: str
) -> None:
    params = {"workspace": "ws1", "artifactName": "data"}
    assert (
        assert_json(get(server, REST + "artifacts/version", api_key, params=params))[
            "artifactVersion"
        ]
        == "2.0.0"
    )
    ArtifactStore(world.store.root).add_version(
        VersionSpec("ws1", "data", [AssetSource("n", data=b"n")])
    )
    assert (
        assert_json(get(server, REST + "artifacts/version", api_key, params=params))[
            "artifactVersion"
        ]
        == "3.0.0"
    )


# ---- workspace scoping --------------------------------------------------------------------


def test_key_scoping(world: World, make_server: Callable[..., CometServer]) -> None:
    srv = make_server(api_keys=[parse_api_key("scoped:ws1,empty-ws"), ApiKey("admin", None)])
    assert assert_json(get(srv, REST + "workspaces", "scoped")) == {
        "workspaceNames": ["empty-ws", "ws1"]
    }
    assert assert_json(get(srv, REST + "workspaces", "admin")) == {"workspaceNames": ["ws1", "ws2"]}
    assert assert_json(
        get(srv, REST + "artifacts/get-all", "scoped", params={"workspace": "empty-ws"})
    ) == {"artifacts": []}
    # ws2 exists, but for the scoped key it behaves exactly like a missing workspace.
    for ws in ("ws2", "missing-ws"):
        assert_error(
            get(srv, REST + "artifacts/get-all", "scoped", params={"workspace": ws}), 404, 90219
        )
    assert_error(
        get(
            srv,
            REST + "artifacts/get",
            "scoped",
            params={"workspace": "ws2", "artifactName": "secret"},
        ),
        400,
        624523,
    )
    assert_error(
        get(srv, REST + "artifacts/get", "scoped", params={"artifact_id": world.other_artifact_id}),
        400,
        624523,
    )
    assert_error(
        get(
            srv,
            REST + "artifacts/version",
            "scoped",
            params={"artifactId": world.other_artifact_id},
        ),
        400,
        624523,
    )
    assert_error(
        get(
            srv,
            REST + "artifacts/version/files",
            "scoped",
            params={"workspace": "ws2", "artifactName": "secret"},
        ),
        400,
        624523,
    )
    assert_error(
        get(
            srv,
            REST + "experiment/asset/get-asset",
            "scoped",
            params=asset_params(world.other_asset_id),
        ),
        404,
        None,
    )
    r = get(
        srv, REST + "experiment/asset/get-asset", "admin", params=asset_params(world.other_asset_id)
    )
    assert r.status_code == 200 and r.content == b"top secret"
    secret_exp = world.store.snapshot().artifacts["ws2"]["secret"].versions[0].experiment_key
    assert_error(
        get(srv, REST + "experiment/metadata", "scoped", params={"experimentKey": secret_exp}),
        404,
        None,
    )
    assert (
        get(
            srv, REST + "experiment/metadata", "admin", params={"experimentKey": secret_exp}
        ).status_code
        == 200
    )


def test_parse_api_key() -> None:
    assert parse_api_key("abc") == ApiKey("abc", None)
    assert parse_api_key("abc:w1, w2") == ApiKey("abc", frozenset({"w1", "w2"}))
    for bad in ("", ":ws", "abc:", "abc: , ", "abc:a/b"):
        with pytest.raises(ValueError):
            parse_api_key(bad)
    assert "abc" not in repr(parse_api_key("abc:w1"))


# ---- bytes, Range, redirects --------------------------------------------------------------


def test_get_asset_bytes(world: World, server: CometServer, api_key: str) -> None:
    r = get(
        server,
        REST + "experiment/asset/get-asset",
        api_key,
        params=asset_params(world.asset_id, artifactVersionId=world.version_id),
    )
    assert r.status_code == 200 and r.content == BLOB
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Length"] == str(len(BLOB))
    assert r.headers["Accept-Ranges"] == "bytes"
    # artifactVersionId is optional, but when given it must match.
    r = get(
        server, REST + "experiment/asset/get-asset", api_key, params={"assetId": world.asset_id}
    )
    assert r.content == BLOB
    assert_error(
        get(
            server,
            REST + "experiment/asset/get-asset",
            api_key,
            params=asset_params(world.asset_id, artifactVersionId="x"),
        ),
        404,
        None,
    )
    assert_error(
        get(server, REST + "experiment/asset/get-asset", api_key, params=asset_params("0" * 32)),
        404,
        None,
    )
    assert_error(
        get(
            server,
            REST + "experiment/asset/get-asset",
            api_key,
            params=asset_params(world.remote_id),
        ),
        400,
        None,
    )
    head = requests.head(
        server.url + REST + "experiment/asset/get-asset",
        params=asset_params(world.asset_id),
        headers={"Authorization": api_key},
        timeout=10,
    )
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(BLOB))
    assert head.content == b""


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=1000000-", 1000000, len(BLOB) - 1),
        ("bytes=-10", len(BLOB) - 10, len(BLOB) - 1),
        ("bytes=-99999999", 0, len(BLOB) - 1),
        ("bytes=5-99999999", 5, len(BLOB) - 1),
        ("BYTES = 7-8", 7, 8),
    ],
)
def test_range_windows(
    world: World, server: CometServer, api_key: str, header: str, first: int, last: int
) -> None:
    r = get(
        server,
        REST + "experiment/asset/get-asset",
        api_key,
        params=asset_params(world.asset_id),
        headers={"Range": header},
    )
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {first}-{last}/{len(BLOB)}"
    assert r.headers["Content-Length"] == str(last - first + 1)
    assert r.content == BLOB[first : last + 1]


@pytest.mark.parametrize("header", ["bytes=1048576-", "bytes=2000000-2000010", "bytes=-0"])
def test_range_unsatisfiable(world: World, server: CometServer, api_key: str, header: str) -> None:
    r = get(
        server,
        REST + "experiment/asset/get-asset",
        api_key,
        params=asset_params(world.asset_id),
        headers={"Range": header},
    )
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(BLOB)}"


@pytest.mark.parametrize(
    "header", ["bytes=0-1,5-6", "bytes=9-3", "items=0-1", "bytes=x-y", "bytes=-", "garbage"]
)
def test_range_ignored_when_malformed(
    world: World, server: CometServer, api_key: str, header: str
) -> None:
    r = get(
        server,
        REST + "experiment/asset/get-asset",
        api_key,
        params=asset_params(world.asset_id),
        headers={"Range": header},
    )
    assert r.status_code == 200 and r.content == BLOB


def test_parse_range_empty_file() -> None:
    assert parse_range("bytes=0-", 0) == (-1, -1)
    assert parse_range("bytes=-5", 0) == (-1, -1)
    assert parse_range("bytes=0-", 1) == (0, 0)


def test_no_range_server(
    world: World, make_server: Callable[..., CometServer], api_key: str
) -> None:
    srv = make_server(ranges=False)
    r = get(
        srv,
        REST + "experiment/asset/get-asset",
        api_key,
        params=asset_params(world.asset_id),
        headers={"Range": "bytes=10-19"},
    )
    assert r.status_code == 200 and r.content == BLOB
    assert "Accept-Ranges" not in r.headers and "Content-Range" not in r.headers


def test_redirect_flow(world: World, make_server: Callable[..., CometServer], api_key: str) -> None:
    srv = make_server(redirect=True)
    path = REST + "experiment/asset/get-asset"
    r = get(
        srv,
        path,
        api_key,
        params=asset_params(world.asset_id, allow301=True),
        allow_redirects=False,
    )
    assert r.status_code == 302
    location = r.headers["Location"]
    assert location.startswith(srv.url + "/blob/")
    # The blob URL needs no key and always honours Range.
    blob = requests.get(location, timeout=10)
    assert blob.status_code == 200 and blob.content == BLOB
    part = requests.get(location, headers={"Range": "bytes=10-19"}, timeout=10)
    assert part.status_code == 206 and part.content == BLOB[10:20]
    # Followed automatically, as the SDK's session would.
    assert (
        get(srv, path, api_key, params=asset_params(world.asset_id, allow301="true")).content
        == BLOB
    )
    # allow301=False still gets the bytes directly.
    direct = get(srv, path, api_key, params=asset_params(world.asset_id), allow_redirects=False)
    assert direct.status_code == 200 and direct.content == BLOB
    # Forged, tampered and expired tokens are refused.
    token = location.rsplit("/", 1)[1]
    tampered = token[:-1] + ("0" if token[-1] != "0" else "1")
    sha = token.split(".")[0]
    expired = srv.blob_token(sha, now=time.time() - 2 * srv.redirect_ttl)
    for bad in (tampered, "nope", expired, "a" * 64 + ".99999999999." + "b" * 64):
        assert_error(requests.get(srv.url + "/blob/" + bad, timeout=10), 403, None)
    # A token from another server (another secret) is refused too.
    other = make_server(redirect=True)
    assert requests.get(other.url + "/blob/" + token, timeout=10).status_code == 403
    assert srv.request_log.count("blob", 200) >= 2


def test_parallel_downloads(world: World, server: CometServer, api_key: str) -> None:
    def fetch(i: int) -> bytes:
        headers = {"Range": f"bytes={i * 1000}-"} if i % 2 else {}
        r = get(
            server,
            REST + "experiment/asset/get-asset",
            api_key,
            params=asset_params(world.asset_id),
            headers=headers,
        )
        assert r.status_code == (206 if i % 2 else 200)
        return r.content

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(fetch, range(32)))
    for i, body in enumerate(results):
        assert body == (BLOB[i * 1000 :] if i % 2 else BLOB)


def test_a_stalled_download_does_not_block_others(
    store: ArtifactStore, server: CometServer, api_key: str
) -> None:
    big = bytes(64 << 20)  # far more than the socket buffers hold
    store.add_version(VersionSpec("ws", "big", [AssetSource("big", data=big)]))
    asset_id = store.snapshot().artifacts["ws"]["big"].versions[0].assets[0].asset_id
    stalled = get(
        server,
        REST + "experiment/asset/get-asset",
        api_key,
        params=asset_params(asset_id),
        stream=True,
    )
    try:
        assert stalled.status_code == 200
        # The stalled response's handler thread is blocked in sendfile; others still run.
        r = get(server, REST + "workspaces", api_key)
        assert assert_json(r) == {"workspaceNames": ["ws"]}
        assert len(stalled.raw.read(1 << 20)) == 1 << 20
    finally:
        stalled.close()


# ---- faults -------------------------------------------------------------------------------


def test_parse_faults() -> None:
    plan = parse_faults(
        "get-asset=500*2; artifacts/version=delay:1.5;get-asset=truncate*1;*=reset@0.25;"
        "workspaces=429:3*1;seed=9;"
    )
    rules = plan.rules
    assert [(r.endpoint, r.kind, r.status, r.seconds, r.count, r.probability) for r in rules] == [
        ("get-asset", "status", 500, 0.0, 2, 1.0),
        ("artifacts/version", "delay", None, 1.5, None, 1.0),
        ("get-asset", "truncate", None, 0.0, 1, 1.0),
        ("*", "reset", None, 0.0, None, 0.25),
        ("workspaces", "status", 429, 0.0, 1, 1.0),
    ]
    assert rules[4].retry_after == 3.0
    assert parse_faults("x=429".replace("x", "blob")).rules[0].retry_after == 1.0
    for bad, msg in [
        ("get-asset", "ENDPOINT=KIND"),
        ("nope=500", "unknown endpoint"),
        ("get-asset=boom", "unknown kind"),
        ("get-asset=999", "100-599"),
        ("get-asset=delay", "seconds"),
        ("get-asset=delay:x", "number"),
        ("get-asset=500*x", "whole number"),
        ("get-asset=500@2", r"\[0, 1\]"),
        ("get-asset=reset:1", "no argument"),
        ("seed=x", "seed"),
        ("get-asset=delay:-1", ">= 0"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_faults(bad)


def test_fault_status_with_count(
    world: World, make_server: Callable[..., CometServer], api_key: str
) -> None:
    srv = make_server(faults=parse_faults("get-asset=503*2;workspaces=429:7*1"))
    path = REST + "experiment/asset/get-asset"
    for _ in range(2):
        assert_error(get(srv, path, api_key, params=asset_params(world.asset_id)), 503, None)
    assert get(srv, path, api_key, params=asset_params(world.asset_id)).content == BLOB
    r = get(srv, REST + "workspaces", api_key)
    assert_error(r, 429, None)
    assert r.headers["Retry-After"] == "7"
    assert get(srv, REST + "workspaces", api_key).status_code == 200
    assert [r.fired for r in srv.faults.rules] == [2, 1]


def test_fault_delay(world: World, server: CometServer, api_key: str) -> None:
    server.faults.add(FaultRule("workspaces", "delay", seconds=0.4, count=1))
    t0 = time.monotonic()
    assert get(server, REST + "workspaces", api_key).status_code == 200
    assert time.monotonic() - t0 >= 0.4
    t0 = time.monotonic()
    assert get(server, REST + "workspaces", api_key).status_code == 200
    assert time.monotonic() - t0 < 0.4


def test_fault_truncate(world: World, server: CometServer, api_key: str) -> None:
    server.faults.add(FaultRule("get-asset", "truncate", count=1))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(
            "GET",
            REST + "experiment/asset/get-asset?assetId=" + world.asset_id,
            headers={"Authorization": api_key},
        )
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["Content-Length"] == str(len(BLOB))
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert info.value.partial == BLOB[: len(BLOB) // 2]
    finally:
        conn.close()
    # Truncation of a JSON answer too, through the normal requests path.
    server.faults.add(FaultRule("workspaces", "truncate", count=1))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(server, REST + "workspaces", api_key)
    assert (
        get(
            server,
            REST + "experiment/asset/get-asset",
            api_key,
            params=asset_params(world.asset_id),
        ).content
        == BLOB
    )

    # An entry gets its byte count once the server has finished the answer, which may be a
    # moment after the client has read the last byte.
    def finished() -> list[dict[str, object]]:
        return [e for e in server.request_log.entries("get-asset") if e["duration_ms"] is not None]

    assert wait_until(lambda: len(finished()) == 2, 10)
    entries = finished()
    assert entries[0]["bytes"] == len(BLOB) // 2 and entries[1]["bytes"] == len(BLOB)


def test_fault_reset(world: World, server: CometServer, api_key: str) -> None:
    server.faults.add(FaultRule("*", "reset", count=1))
    with pytest.raises(requests.exceptions.ConnectionError):
        get(server, REST + "workspaces", api_key)
    assert get(server, REST + "workspaces", api_key).status_code == 200
    assert [e["status"] for e in server.request_log.entries("workspaces")] == [None, 200]


def test_fault_probability_is_seeded(
    world: World, make_server: Callable[..., CometServer], api_key: str
) -> None:
    def run() -> list[int]:
        srv = make_server(faults=parse_faults("workspaces=500@0.5;seed=3"))
        return [get(srv, REST + "workspaces", api_key).status_code for _ in range(20)]

    first = run()
    assert first == run()
    assert 0 < first.count(500) < 20


def test_faults_change_at_runtime(world: World, server: CometServer, api_key: str) -> None:
    assert get(server, REST + "workspaces", api_key).status_code == 200
    rule = server.faults.add(FaultRule("workspaces", "status", status=401))
    assert_error(get(server, REST + "workspaces", api_key), 401, None)
    assert (
        get(server, REST + "artifacts/get-all", api_key, params={"workspace": "ws1"}).status_code
        == 200
    )
    assert rule.fired == 1 and rule.count is None
    server.faults.clear()
    assert get(server, REST + "workspaces", api_key).status_code == 200
    plan = FaultPlan([FaultRule("isAlive", "status", status=500, count=0)])
    assert plan.pick("isAlive") == (0.0, None)


# ---- the request log ----------------------------------------------------------------------


def test_request_log(
    world: World, make_server: Callable[..., CometServer], api_key: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "requests.jsonl"
    srv = make_server(request_log_path=log_path)
    get(srv, "/clientlib/isAlive/ver", api_key)
    get(
        srv,
        REST + "artifacts/version",
        api_key,
        params={"workspace": "ws1", "artifactName": "data"},
    )
    get(
        srv,
        REST + "experiment/asset/get-asset",
        api_key,
        params=asset_params(world.asset_id),
        headers={"Range": "bytes=0-9"},
    )
    get(srv, REST + "workspaces", "wrong")
    log = srv.request_log
    assert [e["endpoint"] for e in log] == [
        "isAlive",
        "artifacts/version",
        "get-asset",
        "workspaces",
    ]
    asset = log.entries("get-asset")[0]
    assert asset["status"] == 206 and asset["bytes"] == 10 and asset["range"] == "bytes=0-9"
    assert asset["params"]["assetId"] == world.asset_id
    assert asset["path"] == REST + "experiment/asset/get-asset"
    assert log.count(status=401) == 1 and log.count("artifacts/version", 200) == 1
    # The file holds the same entries, one JSON object per line. A line is written when its
    # handler finishes, which may be after the client has its answer, and in any order.
    wait_until(lambda: len(log_path.read_text().splitlines()) >= len(log), 10, 0.01)
    lines = log_path.read_text().splitlines()
    assert sorted(json.loads(line)["endpoint"] for line in lines) == sorted(
        e["endpoint"] for e in log
    )
    for text in (json.dumps(list(log)), log_path.read_text()):
        assert api_key not in text and "wrong" not in text
        assert "Authorization" not in text
    log.clear()
    assert len(log) == 0


def test_log_entry_exists_when_the_client_has_its_answer(server: CometServer, api_key: str) -> None:
    # No waiting: the entry is recorded before the response's first byte leaves.
    for i in range(50):
        get(server, REST + "workspaces", api_key)
        assert server.request_log.count("workspaces") == i + 1


def test_close_is_prompt_with_idle_keepalive(
    world: World, make_server: Callable[..., CometServer], api_key: str
) -> None:
    srv = make_server()
    session = requests.Session()
    assert (
        session.get(
            srv.url + REST + "workspaces", headers={"Authorization": api_key}, timeout=10
        ).status_code
        == 200
    )
    done = threading.Event()

    def closer() -> None:
        srv.close()
        done.set()

    threading.Thread(target=closer, daemon=True).start()
    assert done.wait(10), "close() hung on an idle keep-alive connection"
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(srv.url + REST + "workspaces", headers={"Authorization": api_key}, timeout=10)
    session.close()


# ---- serve_forever --------------------------------------------------------------------------


def test_serve_forever_in_a_subprocess(tmp_path: Path, api_key: str) -> None:
    import signal
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from cometfs.server import *; "
        "serve_forever(Path(sys.argv[1]), host='127.0.0.1', port=0, "
        "api_keys=[parse_api_key(sys.argv[2])], demo=True, ranges=True, redirect=False, "
        "faults=parse_faults('experiment/metadata=418'))"
    )
    root = tmp_path / "served"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(root), api_key + ":demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server is listening (or exits)
        prefix = "cometfs serve: listening on http://127.0.0.1:"
        assert line.startswith(prefix) and line.endswith(f" (store {root})\n"), line
        url = line[len("cometfs serve: listening on ") :].split(" ")[0]
        r = requests.get(
            url + REST + "artifacts/get-all",
            params={"workspace": "demo"},
            headers={"Authorization": api_key},
            timeout=10,
        )
        names = [a["name"] for a in assert_json(r)["artifacts"]]
        assert names == ["mnist-mini", "tiny-net", "titanic"]
        r = requests.get(
            url + REST + "experiment/metadata",
            params={"experimentKey": "x"},
            headers={"Authorization": api_key},
            timeout=10,
        )
        assert r.status_code == 418
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert out == "" and api_key not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # The demo persisted in the store directory.
    snap = ArtifactStore(root).snapshot()
    assert [v.version for v in snap.artifacts["demo"]["mnist-mini"].versions] == ["1.0.0", "2.0.0"]


def test_malformed_request_gets_a_json_error(server: CometServer) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 501")
    assert b"Content-Type: application/json\r\n" in head
    assert json.loads(body)["code"] == 501


def test_request_log_is_bounded(
    world: World, make_server: Callable[..., CometServer], api_key: str
) -> None:
    srv = make_server(request_log_max=3)
    for _ in range(5):
        get(srv, REST + "workspaces", api_key)
    get(srv, "/clientlib/isAlive/ver", None)
    assert [e["endpoint"] for e in srv.request_log] == ["workspaces", "workspaces", "isAlive"]


def test_make_server_takes_store_by_keyword(
    make_server: Callable[..., CometServer], tmp_path: Path, api_key: str
) -> None:
    other = ArtifactStore(tmp_path / "other-store")
    other.add_version(VersionSpec("kw", "a", [AssetSource("x", data=b"x")]))
    srv = make_server(store=other)
    assert assert_json(get(srv, REST + "workspaces", api_key)) == {"workspaceNames": ["kw"]}
