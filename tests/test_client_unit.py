"""Unit tests of the REST client without a server: JSON parsing (the spec's own examples and
malformed variants), status mapping, the retry policy and argument checks."""

from __future__ import annotations

import copy
import http.client
import json
import logging
import socket
from typing import Any

import pytest

from cometfs.client import CometClient
from cometfs.client import parse as p
from cometfs.client.http import Http, Retryable, is_json
from cometfs.errors import (
    ApiError,
    NotFinalized,
    NotFound,
    ProtocolError,
    RateLimited,
    TransientError,
    Unauthorized,
)
from cometfs.model import Artifact, ArtifactVersion, Asset
from cometfs.testing import read_range_blocking

KEY = "SECRETKEY1234567890abcdef"

# The examples of comet-rest-api.md, verbatim.
E4 = {
    "artifacts": [
        {
            "artifactId": "6194e719-f596-48e7-8cca-8530c16dd007",
            "project": None,
            "type": "dataset",
            "name": "my-dataset",
            "description": "a test dataset",
            "latestVersion": "2.0.0",
            "tags": ["tagA"],
            "isPublic": False,
            "emoji": None,
            "sizeInBytes": 1024012,
        }
    ]
}
E5 = {
    "artifactId": "6194e719-f596-48e7-8cca-8530c16dd007",
    "project": "demo-artifacts",
    "type": "dataset",
    "name": "demo-artifact",
    "description": None,
    "latestVersion": "2.0.0",
    "tags": [],
    "isPublic": False,
    "emoji": None,
    "sizeInBytes": 21113,
    "versions": [
        {
            "artifactVersionId": "a8286090-c637-4270-99ab-25b18676a035",
            "version": "1.0.0",
            "owner": "lothiraldan",
            "metadata": None,
            "createdFrom": None,
            "sizeInBytes": 0,
            "state": None,
            "added": 1621948911721,
            "alias": ["current-production"],
            "tags": ["production"],
        },
        {
            "artifactVersionId": "bf778c64-a97c-4bff-9752-7fa6bfebbe2e",
            "version": "2.0.0",
            "owner": "lothiraldan",
            "metadata": None,
            "createdFrom": None,
            "sizeInBytes": 21113,
            "state": None,
            "added": 1621948972987,
            "alias": ["Latest"],
            "tags": ["staging"],
        },
    ],
}
E6 = {
    "artifactVersionId": "bf778c64-a97c-4bff-9752-7fa6bfebbe2e",
    "artifactVersion": "2.0.0",
    "owner": "alice",
    "createdFrom": None,
    "sizeInBytes": 1024012,
    "metadata": '{"source": "unit", "n": 2}',
    "note": None,
    "added": 1621948972987,
    "state": "CLOSED",
    "tags": ["v2tag"],
    "alias": ["Latest", "staging"],
    "experimentKey": "0123456789abcdef0123456789abcdef",
    "artifact": {
        "artifactId": "6194e719-f596-48e7-8cca-8530c16dd007",
        "artifactName": "my-dataset",
        "projectId": None,
        "workspaceId": "ws-id",
        "workspaceName": "my-ws",
        "experimentKey": "0123456789abcdef0123456789abcdef",
        "description": "a test dataset",
        "version": None,
        "metadata": None,
        "artifactType": "dataset",
        "isPublic": False,
        "owner": "alice",
        "s3FileSize": None,
        "emoji": None,
        "tags": ["tagA", "tagB"],
    },
}
E7 = {
    "files": [
        {
            "artifactId": "6194e719-f596-48e7-8cca-8530c16dd007",
            "artifactVersionId": "bf778c64-a97c-4bff-9752-7fa6bfebbe2e",
            "assetId": "6aa914ffbee94e11b69445383d7732f4",
            "fileName": "data/hello.txt",
            "fileSize": 12,
            "link": None,
            "dir": None,
            "type": "asset",
            "metadata": '{"k": "1"}',
            "remote": False,
        },
        {
            "artifactId": "6194e719-f596-48e7-8cca-8530c16dd007",
            "artifactVersionId": "bf778c64-a97c-4bff-9752-7fa6bfebbe2e",
            "assetId": "dea243de41714a48961f725dbbe4d214",
            "fileName": "remote/file.csv",
            "fileSize": 0,
            "link": "s3://bucket/dir/file.csv",
            "dir": None,
            "type": "asset",
            "metadata": None,
            "remote": True,
        },
    ]
}
E9 = {
    "experimentKey": "0123",
    "experimentName": None,
    "projectId": "p1",
    "projectName": "proj",
    "workspaceName": "my-ws",
    "archived": False,
    "durationMillis": 7,
    "startTimeMillis": 1586174757596,
    "endTimeMillis": 1586174765277,
    "running": False,
    "fileName": None,
    "filePath": None,
    "optimizationId": None,
    "throttle": False,
}


def changed(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `body` with the dotted `path` set to `value` (or deleted for DELETE)."""
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key: Any = int(last) if isinstance(target, list) else last
    if value is DELETE:
        del target[key]
    else:
        target[key] = value
    return body


DELETE = object()


# E1-E3, E9


def test_small_endpoints() -> None:
    assert p.parse_server_version({"version": "3.40.0", "extra": 1}) == "3.40.0"
    assert p.parse_account_details({"userName": "alice", "defaultWorkspaceName": "ws"}) == {
        "userName": "alice",
        "defaultWorkspaceName": "ws",
    }
    assert p.parse_workspaces({"workspaceNames": ["my-ws", "team-ws"]}) == ["my-ws", "team-ws"]
    assert p.parse_experiment_metadata(E9) == E9


@pytest.mark.parametrize(
    ("parser", "body"),
    [
        (p.parse_server_version, {}),
        (p.parse_server_version, {"version": 3}),
        (p.parse_server_version, ["3.40.0"]),
        (p.parse_workspaces, {"workspaceNames": None}),
        (p.parse_workspaces, {"workspaceNames": ["a", 1]}),
        (p.parse_account_details, "alice"),
        (p.parse_experiment_metadata, None),
    ],
)
def test_small_endpoints_malformed(parser: Any, body: Any) -> None:
    with pytest.raises(ProtocolError):
        parser(body)


# E4, E5


def test_artifact_list_spec_example() -> None:
    assert p.parse_artifact_list(E4, "my-ws") == [
        Artifact(
            artifact_id="6194e719-f596-48e7-8cca-8530c16dd007",
            workspace="my-ws",
            name="my-dataset",
            artifact_type="dataset",
            description="a test dataset",
            tags=("tagA",),
            latest_version="2.0.0",
            is_public=False,
            size=1024012,
        )
    ]
    assert p.parse_artifact_list({"artifacts": []}, "my-ws") == []


def test_artifact_details_spec_example() -> None:
    artifact = p.parse_artifact_details(E5, "my-ws")
    assert (artifact.name, artifact.artifact_type, artifact.size) == (
        "demo-artifact",
        "dataset",
        21113,
    )
    assert (artifact.latest_version, artifact.description) == ("2.0.0", None)
    first, second = artifact.versions
    assert first == ArtifactVersion(
        version_id="a8286090-c637-4270-99ab-25b18676a035",
        artifact_id="6194e719-f596-48e7-8cca-8530c16dd007",
        workspace="my-ws",
        name="demo-artifact",
        artifact_type="dataset",
        version="1.0.0",
        aliases=("current-production",),
        artifact_tags=(),
        version_tags=("production",),
        size=0,
        source_experiment_key=None,
        metadata={},
        created_ms=1621948911721,
        state=None,
        owner="lothiraldan",
    )
    assert (second.version, second.aliases) == ("2.0.0", ("Latest",))
    assert (second.artifact_tags, second.version_tags) == ((), ("staging",))


def test_artifact_details_versions_take_the_parents_tags_and_metadata_string() -> None:
    body = changed(E5, "tags", ["a", "b"])
    body = changed(body, "versions.0.metadata", '{"x": [1, 2]}')
    body = changed(body, "versions.0.experimentKey", "exp1")
    version = p.parse_artifact_details(body, "ws").versions[0]
    assert version.artifact_tags == ("a", "b")
    assert version.metadata == {"x": [1, 2]}
    assert version.source_experiment_key == "exp1"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("artifactId", DELETE),
        ("name", DELETE),
        ("type", None),
        ("tags", None),
        ("sizeInBytes", "12"),
        ("isPublic", "false"),
        ("versions", DELETE),
        ("versions", None),
        ("versions.0", "1.0.0"),
        ("versions.0.artifactVersionId", DELETE),
        ("versions.1.alias", None),
        ("versions.1.tags", DELETE),
        ("versions.1.sizeInBytes", -1),
        ("versions.1.added", "yesterday"),
    ],
)
def test_artifact_details_malformed(path: str, value: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_artifact_details(changed(E5, path, value), "ws")
    assert info.value.args[0].startswith("artifacts/get")


def test_artifact_list_item_malformed_names_the_item() -> None:
    with pytest.raises(ProtocolError, match=r"artifacts\[0\].*'name'"):
        p.parse_artifact_list(changed(E4, "artifacts.0.name", DELETE), "ws")
    with pytest.raises(ProtocolError):
        p.parse_artifact_list({"artifacts": None}, "ws")


# E6


def test_artifact_version_spec_example() -> None:
    assert p.parse_artifact_version(E6) == ArtifactVersion(
        version_id="bf778c64-a97c-4bff-9752-7fa6bfebbe2e",
        artifact_id="6194e719-f596-48e7-8cca-8530c16dd007",
        workspace="my-ws",
        name="my-dataset",
        artifact_type="dataset",
        version="2.0.0",
        aliases=("Latest", "staging"),
        artifact_tags=("tagA", "tagB"),
        version_tags=("v2tag",),
        size=1024012,
        source_experiment_key="0123456789abcdef0123456789abcdef",
        metadata={"source": "unit", "n": 2},
        created_ms=1621948972987,
        state="CLOSED",
        owner="alice",
    )


@pytest.mark.parametrize(
    "version", ["1.0.0", "0.0.1", "10.20.30", "1.0.0-rc.1", "1.0.0+build.5", "1.0.0-a.1+b"]
)
def test_artifact_version_accepts_strict_semver(version: str) -> None:
    assert p.parse_artifact_version(changed(E6, "artifactVersion", version)).version == version


@pytest.mark.parametrize(
    ("path", "value"),
    [
        # Every key the SDK needs is required.
        ("artifactVersionId", DELETE),
        ("artifactVersion", DELETE),
        ("alias", DELETE),
        ("tags", DELETE),
        ("sizeInBytes", DELETE),
        ("experimentKey", DELETE),
        ("artifact", DELETE),
        ("artifact.artifactId", DELETE),
        ("artifact.artifactName", DELETE),
        ("artifact.artifactType", DELETE),
        ("artifact.tags", DELETE),
        ("artifact.workspaceName", DELETE),
        # Wrong types and values.
        ("artifactVersion", 2),
        ("alias", None),
        ("alias", "Latest"),
        ("tags", [1]),
        ("artifact.tags", None),
        ("sizeInBytes", True),
        ("sizeInBytes", 1.5),
        ("experimentKey", 5),
        ("artifact", "my-dataset"),
        ("state", 3),
    ],
)
def test_artifact_version_malformed(path: str, value: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        p.parse_artifact_version(changed(E6, path, value), "artifacts/version for ws/x:latest")
    assert "artifacts/version for ws/x:latest" in str(info.value)


def test_artifact_version_optional_fields() -> None:
    body = {k: v for k, v in E6.items() if k not in ("owner", "state", "added", "metadata")}
    version = p.parse_artifact_version(changed(body, "experimentKey", None))
    assert (version.owner, version.state, version.created_ms) == (None, None, None)
    assert version.source_experiment_key is None
    assert version.metadata == {}


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, {}),
        ("", {}),
        ("{}", {}),
        ('{"a": {"b": [1, null]}}', {"a": {"b": [1, None]}}),
        ({"already": "an object"}, {"already": "an object"}),
    ],
)
def test_artifact_version_metadata(metadata: Any, expected: dict[str, Any]) -> None:
    assert p.parse_artifact_version(changed(E6, "metadata", metadata)).metadata == expected


@pytest.mark.parametrize("metadata", ["{not json", "[1, 2]", '"text"', 5, ["a"]])
def test_artifact_version_bad_metadata_warns_and_is_empty(
    metadata: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cometfs.client"):
        version = p.parse_artifact_version(changed(E6, "metadata", metadata))
    assert version.metadata == {}
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "2.0.0" in caplog.records[0].getMessage()


# E7


def test_assets_spec_example() -> None:
    assert p.parse_assets(E7) == [
        Asset(
            asset_id="6aa914ffbee94e11b69445383d7732f4",
            artifact_version_id="bf778c64-a97c-4bff-9752-7fa6bfebbe2e",
            logical_path="data/hello.txt",
            size=12,
            remote=False,
            link=None,
            asset_type="asset",
            metadata={"k": "1"},
        ),
        Asset(
            asset_id="dea243de41714a48961f725dbbe4d214",
            artifact_version_id="bf778c64-a97c-4bff-9752-7fa6bfebbe2e",
            logical_path="remote/file.csv",
            size=0,
            remote=True,
            link="s3://bucket/dir/file.csv",
            asset_type="asset",
            metadata=None,
        ),
    ]


def test_assets_remote_missing_falls_back_to_link() -> None:
    body = changed(changed(E7, "files.0.remote", DELETE), "files.1.remote", DELETE)
    assert [a.remote for a in p.parse_assets(body)] == [False, True]


def test_assets_metadata_object_and_unreadable(caplog: pytest.LogCaptureFixture) -> None:
    body = changed(E7, "files.1.metadata", {"synced": False})
    body = changed(body, "files.0.metadata", "{oops")
    with caplog.at_level(logging.WARNING, logger="cometfs.client"):
        first, second = p.parse_assets(body)
    assert (first.metadata, second.metadata) == (None, {"synced": False})
    assert len(caplog.records) == 1 and "data/hello.txt" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("files", DELETE),
        ("files", {}),
        ("files.0.assetId", DELETE),
        ("files.0.assetId", 5),
        ("files.0.fileName", DELETE),
        ("files.0.fileName", None),
    ],
)
def test_assets_malformed(path: str, value: Any) -> None:
    with pytest.raises(ProtocolError, match="files"):
        p.parse_assets(changed(E7, path, value))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("files.0.fileSize", DELETE),
        ("files.0.fileSize", -5),
        ("files.0.fileSize", -1),
        ("files.0.fileSize", "12"),
        ("files.0.fileSize", True),
        ("files.0.fileSize", 1.5),
        ("files.0.fileSize", None),
        ("files.0.fileSize", 2**63),
        ("files.0.fileSize", 2**64 + 7),
        ("files.0.artifactVersionId", DELETE),
        ("files.0.link", DELETE),
        ("files.0.type", DELETE),
        ("files.0.metadata", DELETE),
        ("files.1.remote", "true"),
        ("files.1.remote", 1),
        ("files.1.link", 7),
    ],
)
def test_assets_bad_entry_is_reported_not_fatal(
    path: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good = p.parse_assets(E7)
    bad_index = int(path.split(".")[1])
    assets = p.parse_assets(changed(E7, path, value), "files for ws/x:1.0.0")
    assert len(assets) == len(good)
    for i, (asset, expected) in enumerate(zip(assets, good, strict=True)):
        if i != bad_index:
            assert asset == expected
            continue
        assert asset.problem is not None and path.split(".")[-1] in asset.problem
        assert asset.size == 0
        assert (asset.asset_id, asset.logical_path) == (expected.asset_id, expected.logical_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert good[bad_index].asset_id in warnings[0]
    assert good[bad_index].logical_path in warnings[0]


def test_assets_largest_size_is_accepted() -> None:
    assets = p.parse_assets(changed(E7, "files.0.fileSize", 2**63 - 1))
    assert assets[0].size == 2**63 - 1 and assets[0].problem is None


@pytest.mark.parametrize("version", ["2.0", "v1", "01.0.0", "1.0", "latest"])
def test_non_semver_version_strings_are_kept_raw(version: str) -> None:
    listed = p.parse_artifact_list(changed(E4, "artifacts.0.latestVersion", version), "ws")
    assert listed[0].latest_version == version
    details = p.parse_artifact_details(changed(E5, "versions.0.version", version), "ws")
    assert details.versions[0].version == version
    assert p.parse_artifact_version(changed(E6, "artifactVersion", version)).version == version


# Small helpers


def test_parse_error_body() -> None:
    body = json.dumps({"msg": "No artifact version found", "code": 400, "sdk_error_code": 624523})
    assert p.parse_error_body(body) == ("No artifact version found", 624523)
    assert p.parse_error_body('{"msg": "x"}') == ("x", None)
    assert p.parse_error_body('{"msg": 1, "sdk_error_code": "624523"}') == (None, None)
    assert p.parse_error_body("<html>oops</html>") == (None, None)
    assert p.parse_error_body("[1]") == (None, None)
    assert p.parse_error_body("") == (None, None)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes 0-0/1", (0, 1, 1)),
        ("bytes 10-19/100", (10, 20, 100)),
        ("bytes 10-19/*", (10, 20, None)),
        (" bytes  5-5/6 ", (5, 6, 6)),
    ],
)
def test_parse_content_range(header: str, expected: tuple[int, int, int | None]) -> None:
    assert p.parse_content_range(header, "w") == expected


@pytest.mark.parametrize(
    "header",
    [None, "", "bytes */100", "bytes 5-4/100", "bytes 0-100/100", "items 0-1/2", "bytes 0-1", "x"],
)
def test_parse_content_range_malformed(header: str | None) -> None:
    with pytest.raises(ProtocolError):
        p.parse_content_range(header, "w")


# Http: status mapping and the retry policy


def make_http(sleeps: list[float] | None = None, *, retries: int = 4, jitter: float = 0.5) -> Http:
    return Http(
        KEY,
        connect_timeout=1.0,
        read_timeout=1.0,
        retries=retries,
        backoff=0.25,
        max_backoff=8.0,
        sleep=(sleeps if sleeps is not None else []).append,
        jitter=lambda: jitter,
    )


def response(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    """An answer as http.client parses it off a socket, the whole of it already sent."""
    fields = {"Content-Length": str(len(body)), **(headers or {})}
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(f"HTTP/1.1 {status} X\r\n{head}\r\n".encode() + body)
    with ours:  # the answer keeps the socket open until it is closed itself
        answer = http.client.HTTPResponse(ours)
        answer.begin()
    return answer


def error_body(msg: str, sdk_error_code: int | None = None) -> bytes:
    return json.dumps({"msg": msg, "code": 400, "sdk_error_code": sdk_error_code}).encode()


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, b"", Unauthorized),
        (403, error_body("no access"), Unauthorized),
        (404, b"not json", NotFound),
        (400, error_body("No artifact found", 624522), NotFound),
        (400, error_body("No artifact version found", 624523), NotFound),
        (400, error_body("bad request"), ApiError),
        (400, error_body("not closed", 90402), NotFinalized),
        (404, error_body("closed with an error", 90403), NotFinalized),
        (400, error_body("immutable", 90401), ApiError),
        (409, b"", ApiError),
        (501, b"", ApiError),
        (302, b"", ApiError),
    ],
)
def test_check_status_maps_errors(status: int, body: bytes, error: type[ApiError]) -> None:
    with pytest.raises(error) as info:
        make_http().check_status(response(status, body), "artifacts/get for ws/art")
    assert type(info.value) is error
    assert info.value.status == status
    assert str(info.value).startswith("artifacts/get for ws/art: ")


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_check_status_retryable(status: int) -> None:
    with pytest.raises(Retryable) as info:
        make_http().check_status(response(status, headers={"Retry-After": "3"}), "w")
    expected = RateLimited if status == 429 else TransientError
    assert type(info.value.error) is expected
    assert info.value.retry_after == (3.0 if status in (429, 503) else None)


def test_check_status_passes_2xx_and_keeps_the_server_message() -> None:
    http = make_http()
    http.check_status(response(200), "w")
    http.check_status(response(206), "w")
    with pytest.raises(ApiError, match="w: HTTP 400: bad thing"):
        http.check_status(response(400, error_body("bad thing")), "w")


def test_check_status_never_echoes_the_key() -> None:
    with pytest.raises(ApiError) as info:
        make_http().check_status(response(400, error_body(f"key {KEY} is odd")), "w")
    assert KEY not in str(info.value) and "***" in str(info.value)
    with pytest.raises(Unauthorized) as unauthorized:
        make_http().check_status(response(401, error_body(f"bad key {KEY}")), "w")
    assert KEY not in str(unauthorized.value)


def test_retry_backoff_is_exponential_jittered_and_capped() -> None:
    sleeps: list[float] = []
    attempts = []

    def attempt() -> None:
        attempts.append(1)
        raise Retryable(TransientError("w: server error (HTTP 500)", status=500))

    with pytest.raises(TransientError) as info:
        make_http(sleeps, retries=6).call(attempt, "w")
    assert info.value.status == 500 and info.value.__cause__ is None
    assert len(attempts) == 7
    # min(8, 0.25 * 2**n) * jitter (0.5)
    assert sleeps == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0]


def test_retry_honours_retry_after_capped_by_max_backoff() -> None:
    sleeps: list[float] = []
    delays = iter([2.0, 30.0, 0.0])

    def attempt() -> str:
        delay = next(delays, None)
        if delay is None:
            return "ok"
        raise Retryable(RateLimited("w: rate limited", retry_after=delay), retry_after=delay)

    http = make_http(sleeps)
    assert http.call(attempt, "w") == "ok"
    assert sleeps == [2.0, 8.0, 0.0]
    assert http.counters()["retries"] == 3


def test_retry_gives_up_with_the_last_error() -> None:
    def attempt() -> None:
        raise Retryable(RateLimited("w: rate limited", retry_after=1.0), retry_after=1.0)

    with pytest.raises(RateLimited) as info:
        make_http(retries=2).call(attempt, "w")
    assert info.value.retry_after == 1.0


def test_no_retry_for_other_errors() -> None:
    sleeps: list[float] = []
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise NotFound("w: HTTP 404", status=404)

    with pytest.raises(NotFound):
        make_http(sleeps).call(attempt, "w")
    assert calls == [1] and sleeps == []


def test_retries_zero_means_one_attempt() -> None:
    def attempt() -> None:
        raise Retryable(TransientError("w: cannot reach the server"))

    with pytest.raises(TransientError):
        make_http(retries=0).call(attempt, "w")


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("text/plain", False),
        ("application/jsonl", False),
        (None, False),
    ],
)
def test_is_json(content_type: str | None, ok: bool) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert is_json(response(200, b"{}", headers)) is ok


# CometClient without a server


def test_client_checks_range_arguments() -> None:
    client = CometClient("http://127.0.0.1:9", KEY)
    for start, end in [(5, 5), (6, 5), (-1, 3)]:
        with pytest.raises(ValueError):
            read_range_blocking(client, "a", "v", start, end)
    with pytest.raises(ValueError):
        read_range_blocking(client, "a", "v", 0, 11, expected_size=10)
    assert client.counters() == {}


def test_client_unusable_url_is_an_api_error_without_retry() -> None:
    sleeps: list[float] = []
    client = CometClient("http://:80", KEY, sleep=sleeps.append)
    with pytest.raises(ApiError, match=r"^workspaces: request failed \(InvalidURL\)$"):
        client.workspaces()
    assert sleeps == [] and client.counters() == {"workspaces": 1}


def test_client_connection_refused_is_transient_after_retries() -> None:
    sleeps: list[float] = []
    client = CometClient("http://127.0.0.1:1", KEY, retries=2, sleep=sleeps.append)
    with pytest.raises(TransientError, match="cannot reach the server"):
        client.server_version()
    assert len(sleeps) == 2 and client.counters() == {"isAlive": 3, "retries": 2}


def test_client_repr_hides_the_key() -> None:
    client = CometClient("http://127.0.0.1:9/", KEY)
    assert KEY not in repr(client) and KEY not in repr(client._http)
    assert client.byte_mode == "unknown"
    assert "http://127.0.0.1:9 " in repr(client)
