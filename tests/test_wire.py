"""The wire format round trip: every body the server renders parses back on the client side.

A field renamed on one side only makes the parse fail (required fields) or lose a value
(optional ones); both show up here, without a socket.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cometfs.client import parse
from cometfs.server import ArtifactStore, AssetSource, VersionSpec, render
from cometfs.server.store import ArtifactRec
from cometfs.wire import ENDPOINTS, REST_PATHS, Endpoint

EXP = "0123456789abcdef0123456789abcdef"


def wire(body: Any) -> Any:
    """What the client decodes: the body through JSON text."""
    return json.loads(json.dumps(body))


@pytest.fixture
def art(store: ArtifactStore) -> ArtifactRec:
    store.add_version(
        VersionSpec(
            "ws",
            "data",
            [AssetSource("a.bin", data=b"one")],
            aliases=["prod"],
            version_tags=["v1"],
            experiment_key=EXP,
            created_ms=1_700_000_000_000,
        )
    )
    store.add_version(
        VersionSpec(
            "ws",
            "data",
            [AssetSource("dir/m.txt", data=b"meta", metadata={"k": [1, "x"]}, asset_type="text")],
            tags=["t"],
            version_tags=["v2"],
            metadata={"n": 2},
            description="desc",
            remotes={"r.csv": "s3://bucket/r.csv"},
            created_ms=1_700_000_001_000,
        )
    )
    found = store.snapshot().artifact("ws", "data")
    assert found is not None
    return found


def test_e1_to_e3_round_trip() -> None:
    assert parse.parse_server_version(wire(render.server_version("3.40.0"))) == "3.40.0"
    assert parse.parse_account_details(wire(render.account_details("me", "ws"))) == {
        "userName": "me",
        "defaultWorkspaceName": "ws",
    }
    assert parse.parse_workspaces(wire(render.workspaces(["a", "b"]))) == ["a", "b"]


def test_e4_and_e5_round_trip(art: ArtifactRec) -> None:
    [listed] = parse.parse_artifact_list(wire(render.artifact_list([art])), "ws")
    details = parse.parse_artifact_details(wire(render.artifact_details(art)), "ws")
    assert art.latest is not None
    for got in (listed, details):
        assert (
            got.artifact_id,
            got.name,
            got.artifact_type,
            got.description,
            got.tags,
            got.latest_version,
            got.size,
        ) == (art.artifact_id, "data", "dataset", "desc", ("t",), "2.0.0", art.latest.size)
    v1, v2 = details.versions
    assert (v1.version, v1.aliases, v1.version_tags, v1.metadata, v1.created_ms) == (
        "1.0.0",
        ("prod",),
        ("v1",),
        {},
        1_700_000_000_000,
    )
    assert (v2.version, v2.aliases, v2.version_tags, v2.metadata, v2.state, v2.owner) == (
        "2.0.0",
        ("Latest",),
        ("v2",),
        {"n": 2},
        "CLOSED",
        "local",
    )
    assert v2.version_id == art.versions[1].version_id


def test_e6_round_trip(art: ArtifactRec) -> None:
    ver = art.versions[0]
    got = parse.parse_artifact_version(wire(render.version_details(art, ver)))
    assert (
        got.version_id,
        got.artifact_id,
        got.workspace,
        got.name,
        got.artifact_type,
        got.version,
        got.aliases,
        got.artifact_tags,
        got.version_tags,
        got.size,
        got.source_experiment_key,
        got.metadata,
        got.created_ms,
    ) == (
        ver.version_id,
        art.artifact_id,
        "ws",
        "data",
        "dataset",
        "1.0.0",
        ("prod",),
        ("t",),
        ("v1",),
        3,
        EXP,
        {},
        1_700_000_000_000,
    )


def test_e7_round_trip(art: ArtifactRec) -> None:
    ver = art.versions[1]
    local, remote = parse.parse_assets(wire(render.version_files(art, ver)))
    assert (
        local.asset_id,
        local.artifact_version_id,
        local.logical_path,
        local.size,
        local.remote,
        local.link,
        local.asset_type,
        local.metadata,
        local.problem,
    ) == (
        ver.assets[0].asset_id,
        ver.version_id,
        "dir/m.txt",
        4,
        False,
        None,
        "text",
        {"k": [1, "x"]},
        None,
    )
    assert (remote.logical_path, remote.remote, remote.link, remote.size) == (
        "r.csv",
        True,
        "s3://bucket/r.csv",
        0,
    )


def test_e9_and_error_round_trip(store: ArtifactStore, art: ArtifactRec) -> None:
    record = store.snapshot().experiments[EXP]
    got = parse.parse_experiment_metadata(wire(render.experiment_metadata(record)))
    assert got["experimentKey"] == EXP and got["workspaceName"] == "ws"
    text = json.dumps(render.error_body("No artifact version found", 400, 624523))
    assert parse.parse_error_body(text) == ("No artifact version found", 624523)


def test_endpoint_names_are_one_list() -> None:
    from cometfs.client import api
    from cometfs.server import faults

    # vars(): faults imports the list for its own use without re-exporting it.
    assert vars(faults)["ENDPOINTS"] is ENDPOINTS
    assert (api.ASSET, api.BLOB) == (Endpoint.GET_ASSET, Endpoint.BLOB)
    assert REST_PATHS[Endpoint.GET_ASSET] == "experiment/asset/get-asset"
