"""Engine: the mount's read path (Store, AssetReader + DiskCache, Tree) behind a sync API."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from cometfs.config import Config
from cometfs.engine import Engine, EngineClosed, EngineForked, NotAFile
from cometfs.errors import NotFound
from cometfs.server import ArtifactStore, AssetSource, CometServer, VersionSpec

WS = "ws"
ART = "data set"
rng = random.Random(11)
V1 = {"a.csv": b"x,y\n1,2\n", "dir/b.bin": rng.randbytes(3 << 20), "empty.txt": b""}
V2 = {**V1, "a.csv": b"x,y\n3,4\n"}
REMOTE = ("remote/r.csv", "https://example.invalid/r.csv")


@pytest.fixture
def world(store: ArtifactStore, server: CometServer) -> CometServer:
    store.add_version(
        VersionSpec(
            WS,
            ART,
            [AssetSource(p, data=b) for p, b in V1.items()],
            version="1.0.0",
            aliases=["prod"],
            tags=["t1"],
        )
    )
    store.add_version(
        VersionSpec(
            WS,
            ART,
            [AssetSource(p, data=b) for p, b in V2.items()],
            version="2.0.0",
            remotes=dict([REMOTE]),
        )
    )
    return server


@pytest.fixture
def engine(world: CometServer, api_key: str, tmp_path: Path) -> Iterator[Engine]:
    with Engine(Config(world.url, api_key), cache_dir=tmp_path / "cache") as made:
        yield made


def test_listing_shows_aliases_as_directories_that_follow_their_version(engine: Engine) -> None:
    names = {e.name: e for e in engine.listdir(f"{WS}/{ART}")}
    assert set(names) == {".comet", "1.0.0", "2.0.0", "latest", "prod"}
    assert (names["prod"].type, names["prod"].link) == ("directory", "1.0.0")
    assert (names["latest"].type, names["latest"].link) == ("directory", "2.0.0")
    assert names["1.0.0"].link is None
    assert engine.info(f"{WS}/{ART}/prod").link == "1.0.0"
    via_alias = [e.name for e in engine.listdir(f"/{WS}/{ART}/prod/")]
    assert via_alias == [e.name for e in engine.listdir(f"{WS}/{ART}/1.0.0")]
    assert engine.read(f"{WS}/{ART}/prod/a.csv", 0, 100) == V1["a.csv"]
    assert engine.read(f"{WS}/{ART}/latest/a.csv", 0, 100) == V2["a.csv"]


def test_reads_whole_files_and_ranges(engine: Engine) -> None:
    blob = V1["dir/b.bin"]
    path = f"{WS}/{ART}/1.0.0/dir/b.bin"
    assert engine.info(path).size == len(blob)
    assert engine.read(path, 0, len(blob)) == blob
    for start, end in [
        (0, 1),
        (1_048_575, 1_048_577),
        (len(blob) - 5, len(blob) + 100),
        (len(blob), len(blob) + 10),
        (123_456, 2_900_000),
    ]:
        assert engine.read(path, start, end) == blob[start:end]
    assert engine.read(f"{WS}/{ART}/1.0.0/empty.txt", 0, 10) == b""
    opened = engine.open(path)
    pieces = [engine.pread(opened, off, off + 700_000) for off in range(0, len(blob), 700_000)]
    assert b"".join(pieces) == blob


def test_walk_lists_files_and_links_once(engine: Engine) -> None:
    walked = {e.path: e for e in engine.walk(f"{WS}/{ART}/2.0.0")}
    prefix = f"{WS}/{ART}/2.0.0/"
    files = {p[len(prefix) :] for p, e in walked.items() if e.type == "file"}
    assert {f for f in files if not f.startswith(".comet/")} == set(V2)
    assert ".comet/assets.json" in files
    remote = walked[prefix + REMOTE[0]]
    assert (remote.type, remote.link) == ("other", REMOTE[1])


def test_comet_files_render_like_the_mount(engine: Engine) -> None:
    base = f"{WS}/{ART}/prod/.comet"
    assert engine.read(f"{base}/source", 0, 100) == f"{WS}/{ART}:1.0.0\n".encode()
    tags = json.loads(engine.read(f"{base}/tags.json", 0, 10_000))
    assert tags == {"artifact_tags": ["t1"], "version_tags": []}
    size = engine.info(f"{base}/assets.json").size
    assets = engine.read(f"{base}/assets.json", 0, size)
    assert len(assets) == size and assets.endswith(b"\n")
    assert {a["logical_path"] for a in json.loads(assets)} == set(V1)
    status = json.loads(engine.read(".comet/status.json", 0, 1 << 20))
    assert status["pid"] == os.getpid()
    assert "test-key" not in json.dumps(status)


def test_remote_assets_are_links_and_never_read(engine: Engine) -> None:
    path = f"{WS}/{ART}/2.0.0/{REMOTE[0]}"
    with pytest.raises(NotAFile, match=r"example\.invalid"):
        engine.read(path, 0, 10)
    with pytest.raises(NotFound):
        engine.listdir(f"{path}/below")


def test_missing_and_escaping_paths_are_not_found(engine: Engine) -> None:
    for path in (
        f"{WS}/nope",
        f"{WS}/{ART}/9.9.9",
        f"{WS}/{ART}/1.0.0/no.txt",
        f"{WS}/{ART}/1.0.0/../2.0.0/a.csv",
        "nows",
    ):
        with pytest.raises(NotFound):
            engine.info(path)
    with pytest.raises(NotADirectoryError):
        engine.listdir(f"{WS}/{ART}/1.0.0/a.csv")
    with pytest.raises(IsADirectoryError):
        engine.read(f"{WS}/{ART}/1.0.0/dir", 0, 1)


def test_a_second_engine_reads_from_the_shared_disk_cache(
    world: CometServer, api_key: str, tmp_path: Path
) -> None:
    path = f"{WS}/{ART}/1.0.0/dir/b.bin"
    config = Config(world.url, api_key)
    with Engine(config, cache_dir=tmp_path / "shared") as first:
        assert first.read(path, 0, 1 << 30) == V1["dir/b.bin"]
    fetched = world.request_log.count("get-asset")
    assert fetched >= 1
    with Engine(config, cache_dir=tmp_path / "shared") as second:
        assert second.read(path, 0, 1 << 30) == V1["dir/b.bin"]
        assert second.stats()["cache"]["hits_disk"] >= 3
    assert world.request_log.count("get-asset") == fetched


def test_engine_refuses_use_after_fork_and_close(engine: Engine) -> None:
    engine.info(WS)
    pid = os.fork()
    if pid == 0:  # child: the parent's loop thread does not exist here
        code = 1
        try:
            engine.info(WS)
        except EngineForked:
            code = 0
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert engine.info(WS).type == "directory"  # the parent's engine is unharmed
    engine.close()
    assert not engine.usable
    with pytest.raises(EngineClosed):
        engine.info(WS)
