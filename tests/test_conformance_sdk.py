"""The real comet_ml SDK (3.58.8) against the local server: the server's fidelity proof."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cometfs.server import ApiKey, ArtifactStore, AssetSource, CometServer, VersionSpec

if os.environ.get("CI"):  # CI must prove fidelity, never skip it
    import comet_ml
else:
    comet_ml = pytest.importorskip("comet_ml")
from comet_ml import exceptions as cx

pytestmark = pytest.mark.sdk

WS = "team-ws"
NAME = "my-dataset"
EXP1 = "0123456789abcdef0123456789abcdef"
EXP2 = "fedcba9876543210fedcba9876543210"

rng = random.Random(7)
V1_FILES = {"data/hello.txt": b"hello v1\n", "weights.bin": rng.randbytes(300_000)}
V2_FILES = {
    "data/hello.txt": b"hello v2\n",
    "weights.bin": rng.randbytes(3 << 20),
    "nested/deep/dir/x.json": b'{"x": 1}\n',
    "empty.txt": b"",
    "unicod\u00e9 name.txt": "caf\u00e9\n".encode(),
}
V2_ASSET_META = {"weights.bin": {"dtype": "float32", "rows": 3}}
V2_REMOTES = {"raw/remote.csv": "https://example.invalid/remote.csv"}
V2_KWARGS: dict[str, Any] = dict(
    version="2.0.0",
    aliases=["staging"],
    tags=["tagB"],
    version_tags=["v2tag", "big"],
    metadata={"source": "unit", "n": 2, "nested": {"list": [1, 2, 3]}},
    remotes=V2_REMOTES,
    experiment_key=EXP2,
    description="a test dataset",
)


def _sources(
    files: dict[str, bytes], meta: dict[str, dict[str, Any]] | None = None
) -> list[AssetSource]:
    meta = meta or {}
    return [AssetSource(p, data=b, metadata=meta.get(p)) for p, b in files.items()]


@pytest.fixture
def populated(store: ArtifactStore) -> ArtifactStore:
    store.add_version(
        VersionSpec(
            WS,
            NAME,
            _sources(V1_FILES),
            version="1.0.0",
            aliases=["prod"],
            tags=["tagA"],
            version_tags=["v1tag"],
            metadata={"n": 1},
            experiment_key=EXP1,
        )
    )
    store.add_version(VersionSpec(WS, NAME, _sources(V2_FILES, V2_ASSET_META), **V2_KWARGS))
    store.add_version(
        VersionSpec(
            WS, "my data+set", [AssetSource("a b+c.txt", data=b"plus")], artifact_type="model"
        )
    )
    store.add_version(VersionSpec("other-ws", "hidden", [AssetSource("h", data=b"h")]))
    return store


@pytest.fixture
def api(populated: ArtifactStore, sdk_env: CometServer) -> Any:
    return comet_ml.API(cache=False)  # type: ignore[no-untyped-call]  # comet_ml leaves API() unannotated


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_get_artifact_properties(api: Any) -> None:
    art = api.get_artifact(WS, NAME)
    assert art.name == NAME
    assert art.artifact_type == "dataset"
    assert art.workspace == WS
    assert str(art.version) == "2.0.0"
    assert art.aliases == frozenset({"staging", "Latest"})
    assert art.artifact_tags == frozenset({"tagA", "tagB"})
    assert art.version_tags == frozenset({"v2tag", "big"})
    assert art.size == sum(len(b) for b in V2_FILES.values())
    assert dict(art.metadata) == V2_KWARGS["metadata"]
    assert art.source_experiment_key == EXP2

    assets = {a.logical_path: a for a in art.assets}
    assert set(assets) == set(V2_FILES) | set(V2_REMOTES)
    for path, data in V2_FILES.items():
        a = assets[path]
        assert (a.size, a.remote, a.link, a.asset_type) == (len(data), False, None, "asset")
        assert a.metadata == V2_ASSET_META.get(path)
        assert a.artifact_version_id == art._artifact_version_id
    remote = assets["raw/remote.csv"]
    assert remote.remote is True and remote.link == V2_REMOTES["raw/remote.csv"]
    assert remote.size == 0
    assert [(a.logical_path, a.link) for a in art.remote_assets] == list(V2_REMOTES.items())


def test_get_artifact_by_version_and_alias(api: Any) -> None:
    v1 = api.get_artifact(WS, NAME, version="1.0.0")
    assert str(v1.version) == "1.0.0"
    assert v1.aliases == frozenset({"prod"})
    assert v1.version_tags == frozenset({"v1tag"})
    assert dict(v1.metadata) == {"n": 1}
    assert v1.source_experiment_key == EXP1
    assert {a.logical_path for a in v1.assets} == set(V1_FILES)
    assert str(api.get_artifact(WS, NAME, alias="prod").version) == "1.0.0"
    assert str(api.get_artifact(WS, NAME, alias="staging").version) == "2.0.0"
    assert str(api.get_artifact(WS, NAME, alias="latest").version) == "2.0.0"


def test_download_is_byte_identical(api: Any, tmp_path: Path, sdk_env: CometServer) -> None:
    art = api.get_artifact(WS, NAME)
    out = tmp_path / "out"
    local = art.download(str(out))
    assert Path(local.download_local_path) == out
    assert _tree(out) == V2_FILES  # every file, byte for byte; the remote one is not fetched
    assert sdk_env.request_log.count("get-asset", 200) == len(V2_FILES)

    # FAIL (default) with identical content: fine.
    art.download(str(out))
    assert _tree(out) == V2_FILES
    # FAIL with different content: refused, and the local file is left alone.
    (out / "data/hello.txt").write_bytes(b"local edit\n")
    with pytest.raises(cx.ArtifactDownloadException):
        art.download(str(out), overwrite_strategy="FAIL")
    assert (out / "data/hello.txt").read_bytes() == b"local edit\n"
    # PRESERVE keeps the local file.
    art.download(str(out), overwrite_strategy="PRESERVE")
    assert (out / "data/hello.txt").read_bytes() == b"local edit\n"
    # OVERWRITE replaces it.
    art.download(str(out), overwrite_strategy="OVERWRITE")
    assert _tree(out) == V2_FILES

    v1_out = tmp_path / "v1"
    api.get_artifact(WS, NAME, version="1.0.0").download(str(v1_out))
    assert _tree(v1_out) == V1_FILES


def test_get_asset_download(api: Any, tmp_path: Path) -> None:
    art = api.get_artifact(WS, NAME)
    asset = art.get_asset("weights.bin")
    got = asset.download(str(tmp_path / "out"))
    path = Path(got.local_path_or_data)
    assert path == tmp_path / "out" / "weights.bin"
    assert (
        hashlib.sha256(path.read_bytes()).digest()
        == hashlib.sha256(V2_FILES["weights.bin"]).digest()
    )
    with pytest.raises(cx.ArtifactAssetNotFound):
        art.get_asset("no/such/file")
    # A plain remote asset has no bytes on the server: the download is refused.
    with pytest.raises(cx.ArtifactDownloadException):
        art.get_asset("raw/remote.csv").download(str(tmp_path / "remote"))


def test_source_experiment(api: Any) -> None:
    exp = api.get_artifact(WS, NAME).get_source_experiment()
    assert exp.key == EXP2
    assert exp.workspace == WS
    assert exp.name == f"{NAME}-2.0.0"
    assert exp.project_name
    assert exp.archived is False
    exp1 = api.get_artifact(WS, NAME, version="1.0.0").get_source_experiment()
    assert exp1.key == EXP1


def test_workspaces_and_lists(api: Any) -> None:
    assert api.get_workspaces() == ["other-ws", WS]
    listing = api.get_artifact_list(WS)
    assert sorted(a["name"] for a in listing["artifacts"]) == ["my data+set", NAME]
    models = api.get_artifact_list(WS, "model")
    assert [a["name"] for a in models["artifacts"]] == ["my data+set"]
    assert api.get_artifact_list(WS, "nope") == {"artifacts": []}
    details = api.get_artifact_details(WS, NAME)
    assert details["name"] == NAME and details["latestVersion"] == "2.0.0"
    assert [v["version"] for v in details["versions"]] == ["1.0.0", "2.0.0"]
    assert details["versions"][1]["alias"] == ["Latest", "staging"]
    assert api.get_default_workspace() == "other-ws"


def test_name_with_space_and_plus(api: Any, tmp_path: Path) -> None:
    art = api.get_artifact(WS, "my data+set")
    assert art.name == "my data+set" and art.artifact_type == "model"
    assert api.get_artifact_details(WS, "my data+set")["name"] == "my data+set"
    art.download(str(tmp_path / "out"))
    assert _tree(tmp_path / "out") == {"a b+c.txt": b"plus"}


def test_missing_version_and_artifact(api: Any) -> None:
    with pytest.raises(cx.ArtifactNotFound):
        api.get_artifact(WS, NAME, version="9.9.9")
    with pytest.raises(cx.ArtifactNotFound):
        api.get_artifact(WS, NAME, alias="nope")
    with pytest.raises(cx.ArtifactNotFound):
        api.get_artifact(WS, "no-such-artifact")
    with pytest.raises(cx.NotFound):
        api.get_artifact_list("no-such-ws")


def test_bad_key(
    populated: ArtifactStore, sdk_env: CometServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMET_API_KEY", "not-the-key")
    api = comet_ml.API(cache=False)  # type: ignore[no-untyped-call]  # comet_ml leaves API() unannotated
    with pytest.raises(cx.Unauthorized):
        api.get_artifact_details(WS, NAME)
    with pytest.raises(cx.GetArtifactException) as info:
        api.get_artifact(WS, NAME)
    assert isinstance(info.value.__cause__, cx.Unauthorized)
    assert sdk_env.request_log.count(status=401) == 2


def test_scoped_key(
    populated: ArtifactStore,
    make_server: Callable[..., CometServer],
    monkeypatch: pytest.MonkeyPatch,
    sdk_env: CometServer,
) -> None:
    srv = make_server(api_keys=[ApiKey("scoped-key", frozenset({WS}))])
    monkeypatch.setenv("COMET_API_KEY", "scoped-key")
    monkeypatch.setenv("COMET_URL_OVERRIDE", f"{srv.url}/clientlib/")
    api = comet_ml.API(cache=False)  # type: ignore[no-untyped-call]  # comet_ml leaves API() unannotated
    assert api.get_workspaces() == [WS]
    assert str(api.get_artifact(WS, NAME).version) == "2.0.0"
    with pytest.raises(cx.ArtifactNotFound):
        api.get_artifact("other-ws", "hidden")
    with pytest.raises(cx.NotFound):
        api.get_artifact_list("other-ws")


def test_enhanced_key_and_redirect_server(
    populated: ArtifactStore,
    tmp_path: Path,
    api_key: str,
    make_server: Callable[..., CometServer],
    monkeypatch: pytest.MonkeyPatch,
    sdk_env: CometServer,
) -> None:
    # The SDK never sends allow301=True for artifacts, so a redirecting server must still
    # answer 200 directly; and an enhanced KEY*base64 key is sent whole.
    srv = make_server(redirect=True, ranges=False)
    monkeypatch.setenv("COMET_API_KEY", api_key + "*eyJiYXNlVXJsIjogImh0dHA6Ly94In0=")
    monkeypatch.setenv("COMET_URL_OVERRIDE", f"{srv.url}/clientlib/")
    api = comet_ml.API(cache=False)  # type: ignore[no-untyped-call]  # comet_ml leaves API() unannotated
    api.get_artifact(WS, NAME).download(str(tmp_path / "out"))
    assert _tree(tmp_path / "out") == V2_FILES
    assert srv.request_log.count("blob") == 0


def test_sdk_traffic_stays_on_the_server(api: Any, sdk_env: CometServer, tmp_path: Path) -> None:
    api.get_artifact(WS, NAME).download(str(tmp_path / "out"))
    endpoints = {e["endpoint"] for e in sdk_env.request_log}
    assert endpoints == {"isAlive", "artifacts/version", "artifacts/version/files", "get-asset"}
    assert all(e["status"] == 200 for e in sdk_env.request_log)
    # The experimentKey the SDK sends on this path is empty; the server must accept it.
    assert {e["params"]["experimentKey"] for e in sdk_env.request_log.entries("get-asset")} == {""}
    assert os.environ["COMET_ERROR_TRACKING_ENABLE"] == "false"
