"""The mount agrees with the real comet_ml SDK: same bytes as download(), same properties in
the .comet JSON files. Runs in every byte mode of the local server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cometfs.server import CometServer

from .conftest import MountFactory
from .data import ART, KEY, REMOTE, WS, Dataset, start_world

if TYPE_CHECKING:  # imported for real inside `sdk`, only where the SDK tests run
    import comet_ml

pytestmark = [pytest.mark.fuse, pytest.mark.sdk]


@pytest.fixture(scope="module", params=["range", "no-range", "redirect"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CometServer, Dataset]]:
    server, dataset = start_world(
        tmp_path_factory.mktemp("store"),
        ranges=request.param != "no-range",
        redirect=request.param == "redirect",
    )
    try:
        yield server, dataset
    finally:
        server.close()


@pytest.fixture
def sdk(
    world: tuple[CometServer, Dataset], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> comet_ml.API:
    import comet_ml

    server, _ = world
    monkeypatch.setenv("COMET_API_KEY", KEY)
    monkeypatch.setenv("COMET_URL_OVERRIDE", f"{server.url}/clientlib/")
    monkeypatch.setenv("COMET_ERROR_TRACKING_ENABLE", "false")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return comet_ml.API(cache=False)  # type: ignore[no-untyped-call]  # comet_ml leaves API() unannotated


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_mount_equals_sdk_download(
    world: tuple[CometServer, Dataset],
    sdk: comet_ml.API,
    mount_factory: MountFactory,
    tmp_path: Path,
    version: str,
) -> None:
    server, _ = world
    mount = mount_factory(server, key=KEY)
    target = tmp_path / "download"
    sdk.get_artifact(WS, ART, version=version).download(str(target))
    mounted = mount.path / WS / ART / version
    diff = subprocess.run(
        [
            "diff",
            "-r",
            "--no-dereference",
            "-x",
            ".comet",
            "-x",
            Path(REMOTE[0]).parent.name,
            str(target),
            str(mounted),
        ],
        capture_output=True,
        text=True,
    )
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert sorted(p.name for p in (mounted / "remote").iterdir()) == [Path(REMOTE[0]).name]


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_comet_files_equal_sdk_properties(
    world: tuple[CometServer, Dataset], sdk: comet_ml.API, mount_factory: MountFactory, version: str
) -> None:
    server, _ = world
    mount = mount_factory(server, key=KEY)
    art = sdk.get_artifact(WS, ART, version=version)
    meta = mount.path / WS / ART / version / ".comet"

    def load(name: str) -> Any:
        return json.loads((meta / name).read_text())

    assert load("artifact.json") == {
        "workspace": art.workspace,
        "name": art.name,
        "artifact_type": art.artifact_type,
        "version": str(art.version),
        "aliases": sorted(art.aliases),
        "artifact_tags": sorted(art.artifact_tags),
        "version_tags": sorted(art.version_tags),
        "size": art.size,
        "source_experiment_key": art.source_experiment_key,
        "metadata": dict(art.metadata),
    }
    assert load("metadata.json") == dict(art.metadata)
    assert load("aliases.json") == sorted(art.aliases)
    assert load("tags.json") == {
        "artifact_tags": sorted(art.artifact_tags),
        "version_tags": sorted(art.version_tags),
    }
    by_path = {a["logical_path"]: a for a in load("assets.json")}
    assert sorted(by_path) == sorted(a.logical_path for a in art.assets)
    for asset in art.assets:
        mine = by_path[asset.logical_path]
        assert (mine["size"], mine["id"], mine["remote"], mine["link"], mine["asset_type"]) == (
            asset.size,
            asset.id,
            asset.remote,
            asset.link,
            asset.asset_type,
        )
        assert mine["metadata"] == asset.metadata
    assert sorted(a["logical_path"] for a in by_path.values() if a["remote"]) == sorted(
        a.logical_path for a in art.remote_assets
    )
    experiment = load("source_experiment.json")
    assert experiment["experimentKey"] == art.source_experiment_key
    source = art.get_source_experiment()
    assert experiment["experimentName"] == source.name
