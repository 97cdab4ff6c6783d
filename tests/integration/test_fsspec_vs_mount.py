"""comet:// and the FUSE mount serve the same bytes: whole files, ranges, listings, .comet/."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest

from cometfs.filesystem import CometFileSystem
from cometfs.server import CometServer

from .conftest import Mount
from .data import ART, KEY, WS, Dataset, start_world

pytestmark = pytest.mark.fuse


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[CometServer, Dataset]]:
    server, dataset = start_world(tmp_path / "world")
    try:
        yield server, dataset
    finally:
        server.close()


@pytest.fixture
def comet_fs(world: tuple[CometServer, Dataset], tmp_path: Path) -> Iterator[CometFileSystem]:
    fsspec.register_implementation("comet", CometFileSystem, clobber=True)
    fs = CometFileSystem(
        server_url=world[0].url,
        api_key=KEY,
        cache_dir=tmp_path / "fsspec-cache",
        skip_instance_cache=True,
    )
    try:
        yield fs
    finally:
        fs.close()


def test_fsspec_reads_are_byte_identical_to_the_mount(
    world: tuple[CometServer, Dataset],
    comet_fs: CometFileSystem,
    mount_factory: Callable[..., Mount],
) -> None:
    server, dataset = world
    mount = mount_factory(server)
    root = mount.path
    base = f"{WS}/{ART}"

    # Listings, level by level, aliases included (the mount shows them as symlinks).
    for rel in (
        "",
        WS,
        base,
        f"{base}/1.0.0",
        f"{base}/production",
        f"{base}/2.0.0/images",
        f"{base}/1.0.0/.comet",
        f"{base}/1.0.0/remote",
    ):
        mounted = sorted(os.listdir(root / rel))
        ours = sorted(p.rsplit("/", 1)[-1] for p in comet_fs.ls(rel, detail=False))
        assert ours == mounted, rel
    for alias in ("latest", "production", "staging"):
        assert comet_fs.info(f"{base}/{alias}")["destination"] == os.readlink(root / base / alias)

    # Every file of both versions, whole and with its size, plus the .comet files.
    for version in ("1.0.0", "2.0.0"):
        for path in comet_fs.find(f"{base}/{version}"):
            on_mount = root / path
            if on_mount.is_symlink():
                assert comet_fs.info(path)["destination"] == os.readlink(on_mount)
                continue
            assert comet_fs.cat_file(path) == on_mount.read_bytes(), path
            assert comet_fs.info(path)["size"] == on_mount.stat().st_size, path
    for meta in (f"{WS}/.comet/artifacts.json", f"{base}/.comet/artifact.json"):
        assert comet_fs.cat_file(meta) == (root / meta).read_bytes()

    # Random ranges of the big file, through cat_file and a seeking file object.
    big = f"{base}/latest/big.bin"
    rng = random.Random(3)
    with open(root / big, "rb") as mounted_file, comet_fs.open(big, "rb") as ours_file:
        for _ in range(20):
            start = rng.randrange(len(dataset.v2["big.bin"]))
            length = rng.randrange(1, 3 << 20)
            mounted_file.seek(start)
            expected = mounted_file.read(length)
            assert comet_fs.cat_file(big, start, start + length) == expected
            ours_file.seek(start)
            assert ours_file.read(length) == expected
