"""CometClient against the real local server (cometfs.server): every endpoint, the three
byte modes of get-asset, retries, error mapping and keeping the API key secret."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

import cometfs
from cometfs.client import CometClient
from cometfs.client.async_transport import AsyncTransport
from cometfs.client.transport import Transport
from cometfs.errors import (
    NotFound,
    ProtocolError,
    RangeNotSupported,
    RateLimited,
    StaleError,
    TransientError,
    Unauthorized,
)
from cometfs.model import Asset
from cometfs.server import (
    ArtifactStore,
    AssetSource,
    CometServer,
    FaultRule,
    VersionSpec,
    parse_faults,
)
from cometfs.testing import read_range_blocking

MiB = 1 << 20
WS = "ml-team"
ODD_NAME = "my data+set"
BIG = random.Random(7).randbytes(3 * MiB + 12345)
HELLO = b"hello, comet!\n"
METADATA = {"source": "unit", "n": 2, "nested": {"list": [1, None, "x"]}}

# Server settings for the three behaviours of get-asset the client must handle. The
# redirect server does not honour Range itself: only its blob URLs do, as with S3.
BYTE_MODES = {
    "range": {"ranges": True, "redirect": False},
    "no-range": {"ranges": False, "redirect": False},
    "redirect": {"ranges": False, "redirect": True},
}
DETECTED = {"range": "range", "no-range": "stream", "redirect": "redirect"}


@pytest.fixture(autouse=True)
def no_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail on any WARNING or ERROR record: none of these tests expects one."""
    yield
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems


@dataclass
class World:
    """What the tests put into the store, to compare the client's answers with."""

    store: ArtifactStore
    images_v1: str
    images_v2: str


@pytest.fixture
def world(store: ArtifactStore) -> World:
    v1 = store.add_version(
        VersionSpec(
            WS,
            "images",
            [
                AssetSource("data/big.bin", data=BIG),
                AssetSource("hello.txt", data=HELLO, metadata={"k": "1"}),
            ],
            version="1.0.0",
            aliases=["production"],
            tags=["vision"],
            version_tags=["v1"],
            metadata=METADATA,
            description="class folders",
            experiment_key="exp0001",
            created_ms=1_700_000_000_000,
        )
    )
    v2 = store.add_version(
        VersionSpec(
            WS,
            "images",
            [AssetSource("hello.txt", data=b"v2\n")],
            version="2.0.0",
            aliases=["staging"],
            tags=["extra"],
            version_tags=["v2"],
            remotes={"remote/r.csv": "https://example.invalid/r.csv"},
        )
    )
    store.add_version(
        VersionSpec(WS, "weights", [AssetSource("w.bin", data=bytes(10))], artifact_type="model")
    )
    store.add_version(
        VersionSpec(WS, ODD_NAME, [AssetSource("a b+c.txt", data=b"odd")], version="0.1.0")
    )
    store.add_version(VersionSpec("other-ws", "solo", [AssetSource("x", data=b"x")]))
    return World(store, v1, v2)


@dataclass
class Setup:
    server: CometServer
    client: CometClient
    sleeps: list[float]

    def count(self, endpoint: str, status: int | None = None) -> int:
        return self.server.request_log.count(endpoint, status)


@pytest.fixture
def connect(
    world: World, make_server: Callable[..., CometServer], api_key: str
) -> Iterator[Callable[..., Setup]]:
    """Start a server (kwargs go to CometServer) and a client whose sleeps are recorded."""
    clients: list[CometClient] = []

    def connect(*, key: str = api_key, retries: int = 4, **server_kwargs: Any) -> Setup:
        server = make_server(**server_kwargs)
        sleeps: list[float] = []
        client = CometClient(
            server.url, key, retries=retries, sleep=sleeps.append, jitter=lambda: 1.0
        )
        clients.append(client)
        return Setup(server, client, sleeps)

    yield connect
    for client in clients:
        client.close()


@pytest.fixture(params=sorted(BYTE_MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def setup(connect: Callable[..., Setup], mode: str) -> Setup:
    return connect(**BYTE_MODES[mode])


def big_asset(client: CometClient) -> Asset:
    assets = client.assets(WS, "images", "1.0.0")
    return next(a for a in assets if a.logical_path == "data/big.bin")


# -- JSON endpoints --------------------------------------------------------------------


def test_small_endpoints(connect: Callable[..., Setup]) -> None:
    client = connect().client
    assert client.server_version() == "3.40.0"
    assert client.workspaces() == ["ml-team", "other-ws"]
    details = client.account_details()
    assert details["defaultWorkspaceName"] == "ml-team" and "userName" in details


def test_artifacts_listing(connect: Callable[..., Setup]) -> None:
    client = connect().client
    artifacts = {a.name: a for a in client.artifacts(WS)}
    assert sorted(artifacts) == sorted(["images", "weights", ODD_NAME])
    images = artifacts["images"]
    assert (images.workspace, images.artifact_type, images.description) == (
        WS,
        "dataset",
        "class folders",
    )
    assert (images.tags, images.latest_version, images.versions) == (
        ("vision", "extra"),
        "2.0.0",
        (),
    )
    assert [a.name for a in client.artifacts(WS, artifact_type="model")] == ["weights"]
    assert client.artifacts(WS, artifact_type="nothing") == []


def test_artifact_details_with_versions(connect: Callable[..., Setup], world: World) -> None:
    artifact = connect().client.artifact(WS, "images")
    assert (artifact.name, artifact.latest_version, artifact.tags) == (
        "images",
        "2.0.0",
        ("vision", "extra"),
    )
    v1, v2 = artifact.versions
    assert (v1.version, v1.aliases, v1.version_tags) == ("1.0.0", ("production",), ("v1",))
    assert (v2.version, v2.aliases, v2.version_tags) == ("2.0.0", ("Latest", "staging"), ("v2",))
    assert v1.metadata == METADATA and v2.metadata == {}
    assert v1.size == len(BIG) + len(HELLO)
    assert v1.created_ms == 1_700_000_000_000
    for v in (v1, v2):
        assert (v.workspace, v.name, v.artifact_type) == (WS, "images", "dataset")
        assert (v.artifact_id, v.artifact_tags) == (artifact.artifact_id, artifact.tags)
        assert v.source_experiment_key is None  # artifacts/get does not carry it


def test_artifact_version_by_alias_version_and_default(connect: Callable[..., Setup]) -> None:
    setup = connect()
    client = setup.client
    latest = client.artifact_version(WS, "images")
    assert setup.server.request_log[-1]["params"]["alias"] == "latest"
    assert latest.version == "2.0.0"
    v1 = client.artifact_version(WS, "images", alias="production")
    assert client.artifact_version(WS, "images", version="1.0.0") == v1
    # As in the SDK, an explicit version wins over an alias.
    assert client.artifact_version(WS, "images", version="1.0.0", alias="staging") == v1
    assert "alias" not in setup.server.request_log[-1]["params"]
    assert (v1.workspace, v1.name, v1.artifact_type, v1.version) == (
        WS,
        "images",
        "dataset",
        "1.0.0",
    )
    assert (v1.aliases, v1.version_tags, v1.artifact_tags) == (
        ("production",),
        ("v1",),
        ("vision", "extra"),
    )
    assert (v1.metadata, v1.source_experiment_key, v1.state) == (METADATA, "exp0001", "CLOSED")
    assert v1.size == len(BIG) + len(HELLO)
    listed = client.artifact(WS, "images").versions[0]
    assert (listed.version_id, listed.artifact_id) == (v1.version_id, v1.artifact_id)


def test_assets(connect: Callable[..., Setup]) -> None:
    client = connect().client
    version = client.artifact_version(WS, "images", version="2.0.0")
    assets = {a.logical_path: a for a in client.assets(WS, "images", "2.0.0")}
    assert sorted(assets) == ["hello.txt", "remote/r.csv"]
    hello, remote = assets["hello.txt"], assets["remote/r.csv"]
    assert (hello.size, hello.remote, hello.link, hello.asset_type) == (3, False, None, "asset")
    assert (remote.size, remote.remote, remote.link) == (0, True, "https://example.invalid/r.csv")
    assert {a.artifact_version_id for a in assets.values()} == {version.version_id}
    v1_assets = {a.logical_path: a for a in client.assets(WS, "images", "1.0.0")}
    assert v1_assets["hello.txt"].metadata == {"k": "1"}
    assert v1_assets["data/big.bin"].size == len(BIG)


def test_experiment_metadata(connect: Callable[..., Setup]) -> None:
    client = connect().client
    key = client.artifact_version(WS, "images", version="1.0.0").source_experiment_key
    assert key == "exp0001"
    metadata = client.experiment_metadata(key)
    assert (metadata["experimentKey"], metadata["workspaceName"]) == (key, WS)


def test_name_with_space_and_plus(connect: Callable[..., Setup]) -> None:
    setup = connect()
    client = setup.client
    assert client.artifact(WS, ODD_NAME).name == ODD_NAME
    version = client.artifact_version(WS, ODD_NAME)
    assert (version.name, version.version) == (ODD_NAME, "0.1.0")
    # The name went out quoted twice, exactly as the SDK sends it.
    assert setup.server.request_log[-1]["params"]["artifactName"] == "my%20data%2Bset"
    (asset,) = client.assets(WS, ODD_NAME, "0.1.0")
    assert asset.logical_path == "a b+c.txt"
    assert (
        bytes(read_range_blocking(client, asset.asset_id, asset.artifact_version_id, 0, 3))
        == b"odd"
    )


# -- errors ----------------------------------------------------------------------------


def test_not_found(connect: Callable[..., Setup]) -> None:
    setup = connect()
    client = setup.client
    calls: list[Callable[[], object]] = [
        lambda: client.artifact(WS, "nope"),
        lambda: client.artifact_version(WS, "nope"),
        lambda: client.artifact_version(WS, "images", version="9.9.9"),
        lambda: client.artifact_version(WS, "images", alias="no-such-alias"),
        lambda: client.assets(WS, "images", "9.9.9"),
        lambda: client.artifacts("no-such-ws"),
        lambda: client.experiment_metadata("no-such-experiment"),
        lambda: read_range_blocking(client, "0" * 32, "no-such-version", 0, 1),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            call()
    assert setup.sleeps == []  # never retried


def test_wrong_key_is_unauthorized(connect: Callable[..., Setup], world: World) -> None:
    setup = connect(key="wrong-key-123456")
    with pytest.raises(Unauthorized) as info:
        setup.client.workspaces()
    assert info.value.status == 401
    assert "wrong-key-123456" not in str(info.value)
    with pytest.raises(Unauthorized):
        setup.client.artifact_version(WS, "images")
    with pytest.raises(Unauthorized):
        read_range_blocking(setup.client, "a" * 32, world.images_v1, 0, 10)
    assert setup.count("workspaces") == 1 and setup.sleeps == []


def test_key_restricted_to_a_workspace(
    make_server: Callable[..., CometServer], world: World
) -> None:
    from cometfs.server import ApiKey

    server = make_server(api_keys=[ApiKey("team-key-0001", frozenset({"other-ws"}))])
    client = CometClient(server.url, "team-key-0001", sleep=lambda _: None)
    try:
        assert client.workspaces() == ["other-ws"]
        with pytest.raises(NotFound):
            client.artifact(WS, "images")
    finally:
        client.close()


def test_json_endpoint_retries_500_then_succeeds(connect: Callable[..., Setup]) -> None:
    setup = connect(faults=parse_faults("artifacts/version=500*2"))
    assert setup.client.artifact_version(WS, "images").version == "2.0.0"
    assert setup.count("artifacts/version") == 3
    assert setup.sleeps == [0.25, 0.5]  # backoff * 2**attempt, jitter 1.0
    assert setup.client.counters()["retries"] == 2


def test_json_endpoint_429_honours_retry_after(connect: Callable[..., Setup]) -> None:
    setup = connect(faults=parse_faults("workspaces=429:3*1"))
    assert setup.client.workspaces() == ["ml-team", "other-ws"]
    assert setup.sleeps == [3.0]


def test_retry_after_is_capped_and_rate_limit_surfaces(connect: Callable[..., Setup]) -> None:
    setup = connect(retries=2, faults=parse_faults("workspaces=429:60"))
    with pytest.raises(RateLimited) as info:
        setup.client.workspaces()
    assert info.value.retry_after == 60.0
    assert setup.sleeps == [8.0, 8.0]  # max_backoff
    assert setup.count("workspaces") == 3


def test_5xx_and_connection_resets_surface_as_transient(connect: Callable[..., Setup]) -> None:
    setup = connect(retries=2, faults=parse_faults("artifacts/get=503;workspaces=reset"))
    with pytest.raises(TransientError) as info:
        setup.client.artifact(WS, "images")
    assert info.value.status == 503
    with pytest.raises(TransientError):
        setup.client.workspaces()
    assert setup.count("artifacts/get") == 3
    # Three attempts; the first went on the connection the 503s left in the pool, and a
    # reset there is taken for a stale keep-alive connection: sent again once, at once.
    assert setup.count("workspaces") == 4
    assert setup.sleeps == [0.25, 0.5, 0.25, 0.5]


def test_truncated_json_body_is_retried(connect: Callable[..., Setup]) -> None:
    setup = connect(faults=parse_faults("artifacts/version/files=truncate*1"))
    assert len(setup.client.assets(WS, "images", "1.0.0")) == 2
    assert setup.count("artifacts/version/files") == 2


# -- bytes, in all three modes -----------------------------------------------------------


def windows(size: int) -> list[tuple[int, int]]:
    return [
        (0, 1),
        (size - 1, size),
        (1, 2),
        (0, 4096),
        (4095, 4097),
        (12345, 67890),
        (MiB - 1, MiB + 1),
        (MiB, 2 * MiB),
        (size - 100_000, size),
        (7, size - 7),
    ]


def test_read_range_exact_bytes(setup: Setup, mode: str) -> None:
    client = setup.client
    asset = big_asset(client)
    assert client.byte_mode == "unknown"
    # The whole asset is fine in every mode, even from a server that ignores Range.
    assert (
        bytes(read_range_blocking(client, asset.asset_id, asset.artifact_version_id, 0, len(BIG)))
        == BIG
    )
    for start, end in windows(len(BIG)):
        if mode == "no-range":
            with pytest.raises(RangeNotSupported):
                read_range_blocking(client, asset.asset_id, asset.artifact_version_id, start, end)
            continue
        data = read_range_blocking(
            client, asset.asset_id, asset.artifact_version_id, start, end, expected_size=len(BIG)
        )
        assert bytes(data) == BIG[start:end], (start, end)
    assert client.byte_mode == DETECTED[mode]
    assert client.counters()["bytes_received"] >= len(BIG)


def test_no_range_server_is_detected_once(connect: Callable[..., Setup]) -> None:
    setup = connect(**BYTE_MODES["no-range"])
    asset = big_asset(setup.client)
    with pytest.raises(RangeNotSupported):
        read_range_blocking(setup.client, asset.asset_id, asset.artifact_version_id, 10, 20)
    assert setup.client.byte_mode == "stream"
    sent = setup.count("get-asset")
    # From now on no request is made; the caller streams instead.
    with pytest.raises(RangeNotSupported):
        read_range_blocking(setup.client, asset.asset_id, asset.artifact_version_id, 0, len(BIG))
    assert setup.count("get-asset") == sent == 1
    # The 200 was closed unread, not downloaded: far fewer bytes than the asset arrived.
    assert setup.client.counters().get("bytes_received", 0) < len(BIG)


def test_range_request_params_per_mode(setup: Setup, mode: str) -> None:
    asset = big_asset(setup.client)
    read_range_blocking(setup.client, asset.asset_id, asset.artifact_version_id, 0, len(BIG))
    first = setup.server.request_log.entries("get-asset")[0]
    assert first["params"]["allow301"] == "True"
    assert first["params"]["experimentKey"] == ""
    assert first["params"]["artifactVersionId"] == asset.artifact_version_id
    assert first["range"] == f"bytes=0-{len(BIG) - 1}"
    if mode == "redirect":
        (blob,) = setup.server.request_log.entries("blob")
        assert blob["range"] == first["range"] and blob["status"] == 206


def test_redirect_blob_url_is_reused_and_reresolved(connect: Callable[..., Setup]) -> None:
    setup = connect(**BYTE_MODES["redirect"])
    client = setup.client
    asset = big_asset(client)

    def read(start: int, end: int) -> bytes:
        return bytes(
            read_range_blocking(client, asset.asset_id, asset.artifact_version_id, start, end)
        )

    assert read(0, 10) == BIG[:10]
    assert read(10, 20) == BIG[10:20]
    assert (setup.count("get-asset"), setup.count("blob")) == (1, 2)
    # A blob URL that stops working is resolved again, once, without a retry.
    setup.server.faults.add(FaultRule("blob", "status", status=403, count=1))
    assert read(20, 30) == BIG[20:30]
    assert (setup.count("get-asset"), setup.count("blob")) == (2, 4)
    assert setup.sleeps == []


def test_key_goes_only_to_the_api(
    connect: Callable[..., Setup], monkeypatch: pytest.MonkeyPatch, api_key: str
) -> None:
    sent: list[tuple[str, str | None, str | None]] = []
    real_request = Transport.request
    real_async_request = AsyncTransport.request

    def note(url: str, headers: Mapping[str, str]) -> None:
        sent.append((urlsplit(url).path, headers.get("Authorization"), headers.get("User-Agent")))

    def spy(self: Transport, url: str, headers: Mapping[str, str], **kwargs: Any) -> Any:
        note(url, headers)
        return real_request(self, url, headers, **kwargs)

    async def async_spy(
        self: AsyncTransport, url: str, headers: Mapping[str, str], **kwargs: Any
    ) -> Any:
        note(url, headers)
        return await real_async_request(self, url, headers, **kwargs)

    monkeypatch.setattr(Transport, "request", spy)
    monkeypatch.setattr(AsyncTransport, "request", async_spy)
    setup = connect(**BYTE_MODES["redirect"])
    asset = big_asset(setup.client)
    read_range_blocking(setup.client, asset.asset_id, asset.artifact_version_id, 0, 10)
    assert [path.split("/")[1] for path, _, _ in sent] == ["api", "api", "blob"]
    assert [key for _, key, _ in sent] == [api_key, api_key, None]
    assert {agent for _, _, agent in sent} == {f"cometfs/{cometfs.__version__}"}


def test_redirect_target_failing_is_transient(connect: Callable[..., Setup]) -> None:
    # Tokens that are already expired when handed out: every blob GET answers 403.
    setup = connect(retries=2, redirect_ttl=-10.0, **BYTE_MODES["redirect"])
    asset = big_asset(setup.client)
    with pytest.raises(TransientError, match="redirect target answered HTTP 403"):
        read_range_blocking(setup.client, asset.asset_id, asset.artifact_version_id, 0, 10)
    assert (setup.count("get-asset"), setup.count("blob", 403)) == (3, 3)


def test_redirect_blob_url_expires(
    make_server: Callable[..., CometServer], world: World, api_key: str
) -> None:
    server = make_server(**BYTE_MODES["redirect"])
    now = [0.0]
    client = CometClient(server.url, api_key, clock=lambda: now[0])
    try:
        asset = big_asset(client)
        read_range_blocking(client, asset.asset_id, asset.artifact_version_id, 0, 10)
        read_range_blocking(client, asset.asset_id, asset.artifact_version_id, 0, 10)
        assert server.request_log.count("get-asset") == 1
        now[0] += 301.0
        read_range_blocking(client, asset.asset_id, asset.artifact_version_id, 0, 10)
        assert server.request_log.count("get-asset") == 2
    finally:
        client.close()


def test_stream_exact_bytes(setup: Setup) -> None:
    asset = big_asset(setup.client)
    with setup.client.stream(
        asset.asset_id, asset.artifact_version_id, chunk_size=256 * 1024, expected_size=len(BIG)
    ) as chunks:
        received = list(chunks)
    assert b"".join(received) == BIG
    assert len(received) > 1
    (request,) = setup.server.request_log.entries("get-asset")
    assert request["params"]["allow301"] == "False" and request["range"] is None


def test_stream_small_and_empty_chunking(setup: Setup) -> None:
    (hello,) = [a for a in setup.client.assets(WS, "images", "1.0.0") if a.size == len(HELLO)]
    with setup.client.stream(hello.asset_id, hello.artifact_version_id, chunk_size=4) as chunks:
        assert b"".join(chunks) == HELLO


def test_stream_chunks_are_sized_to_what_is_left(setup: Setup) -> None:
    """A chunk never maps more than the rest of the body: a small asset gets a small buffer."""
    (hello,) = [a for a in setup.client.assets(WS, "images", "1.0.0") if a.size == len(HELLO)]
    with setup.client.stream(
        hello.asset_id, hello.artifact_version_id, chunk_size=2 << 20, expected_size=len(HELLO)
    ) as chunks:
        (only,) = list(chunks)
    assert isinstance(only, bytearray) and only == HELLO
    asset = big_asset(setup.client)
    chunk = 256 * 1024
    with setup.client.stream(
        asset.asset_id, asset.artifact_version_id, chunk_size=chunk, expected_size=len(BIG)
    ) as chunks:
        sizes = [memoryview(c).nbytes for c in chunks]
    assert sizes[:-1] == [chunk] * (len(sizes) - 1) and sum(sizes) == len(BIG)


def test_read_range_retries_one_500(setup: Setup, mode: str) -> None:
    asset = big_asset(setup.client)
    setup.server.faults.add(FaultRule("get-asset", "status", status=500, count=1))
    data = read_range_blocking(setup.client, asset.asset_id, asset.artifact_version_id, 0, len(BIG))
    assert bytes(data) == BIG
    assert setup.count("get-asset", 500) == 1
    assert setup.count("get-asset") == 2
    assert setup.sleeps == [0.25]
    assert setup.client.counters()["retries"] == 1


def test_read_range_429_with_retry_after(setup: Setup) -> None:
    asset = big_asset(setup.client)
    setup.server.faults.add(FaultRule("get-asset", "status", status=429, retry_after=2, count=1))
    data = read_range_blocking(setup.client, asset.asset_id, asset.artifact_version_id, 0, len(BIG))
    assert bytes(data) == BIG
    assert setup.sleeps == [2.0]


def test_truncated_body_is_retried(setup: Setup, mode: str) -> None:
    asset = big_asset(setup.client)
    # Where the bytes come from: the blob URL when the server redirects.
    source = "blob" if mode == "redirect" else "get-asset"
    setup.server.faults.add(FaultRule(source, "truncate", count=1))
    data = read_range_blocking(setup.client, asset.asset_id, asset.artifact_version_id, 0, len(BIG))
    assert bytes(data) == BIG
    assert setup.count(source) == 2
    assert setup.client.counters()["retries"] == 1


def test_truncated_every_time_is_a_protocol_error(connect: Callable[..., Setup]) -> None:
    setup = connect(retries=2, faults=parse_faults("get-asset=truncate"))
    asset = big_asset(setup.client)
    with pytest.raises(ProtocolError):
        read_range_blocking(setup.client, asset.asset_id, asset.artifact_version_id, 100, 200_000)
    assert setup.count("get-asset") == 3


def test_stream_retries_the_first_request_but_not_the_body(setup: Setup) -> None:
    client = setup.client
    asset = big_asset(client)
    setup.server.faults.add(FaultRule("get-asset", "status", status=503, count=1))
    with client.stream(asset.asset_id, asset.artifact_version_id) as chunks:
        assert b"".join(chunks) == BIG
    assert setup.sleeps == [0.25]
    setup.server.faults.add(FaultRule("get-asset", "truncate", count=1))
    with (
        pytest.raises(ProtocolError),
        client.stream(asset.asset_id, asset.artifact_version_id) as chunks,
    ):
        for _ in chunks:
            pass
    assert setup.count("get-asset") == 3


def test_stale_size(setup: Setup, mode: str) -> None:
    asset = big_asset(setup.client)
    ids = (asset.asset_id, asset.artifact_version_id)
    wrong = len(BIG) + 1
    with pytest.raises(StaleError):
        read_range_blocking(setup.client, *ids, 0, len(BIG), expected_size=wrong)
    if mode != "no-range":
        with pytest.raises(StaleError):
            read_range_blocking(setup.client, *ids, 5, 10, expected_size=wrong)
    with pytest.raises(StaleError), setup.client.stream(*ids, expected_size=wrong) as chunks:
        next(iter(chunks))
    assert setup.sleeps == []


def test_concurrent_reads_share_the_client(setup: Setup, mode: str) -> None:
    client = setup.client
    asset = big_asset(client)
    if mode == "no-range":
        # Detect first, so the tasks all see "stream" (and ask for nothing).
        with pytest.raises(RangeNotSupported):
            read_range_blocking(client, asset.asset_id, asset.artifact_version_id, 1, 2)
    rng = random.Random(3)
    jobs = []
    for _ in range(40):
        start = rng.randrange(len(BIG) - 1)
        jobs.append((start, min(len(BIG), start + rng.randrange(1, 300_000))))
    results: dict[tuple[int, int], bytes | None] = {}

    async def read(window: tuple[int, int], limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                data = await client.read_range(asset.asset_id, asset.artifact_version_id, *window)
                results[window] = bytes(data)
            except RangeNotSupported:
                results[window] = None

    async def main() -> None:
        limiter = trio.CapacityLimiter(8)
        async with trio.open_nursery() as nursery:
            for window in jobs:
                nursery.start_soon(read, window, limiter)

    trio.run(main)
    for start, end in jobs:
        assert results[(start, end)] == (None if mode == "no-range" else BIG[start:end])


# -- the key stays secret ----------------------------------------------------------------


def test_key_never_in_logs_or_errors(
    connect: Callable[..., Setup], caplog: pytest.LogCaptureFixture, api_key: str, mode: str
) -> None:
    caplog.set_level(logging.DEBUG)
    setup = connect(**BYTE_MODES[mode], faults=parse_faults("*=500*1;blob=403*1"))
    client = setup.client
    messages: list[str] = [repr(client)]
    asset = big_asset(client)
    calls: list[Callable[[], object]] = [
        lambda: read_range_blocking(client, asset.asset_id, asset.artifact_version_id, 0, 10),
        lambda: read_range_blocking(client, asset.asset_id, asset.artifact_version_id, 3, 10),
        lambda: client.artifact(WS, "nope"),
        lambda: client.experiment_metadata("nope"),
    ]
    for call in calls:
        try:
            call()
        except Exception as exc:
            messages.append(str(exc))
    bad = connect(key=api_key + "-wrong", **BYTE_MODES[mode]).client
    with pytest.raises(Unauthorized) as info:
        bad.artifacts(WS)
    messages.append(str(info.value))
    records = [f"{r.getMessage()} {r.args!r}" for r in caplog.records]
    assert records  # DEBUG logging did happen
    for text in messages + records:
        assert api_key not in text
