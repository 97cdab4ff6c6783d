"""A real mount of an artifact full of hostile remote links, walked and read as a data loader
would: nothing outside the mount is read, nothing loops, `cp -rL` of a version stays small."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cometfs.server import ArtifactStore, CometServer, VersionSpec

from .conftest import MountFactory

pytestmark = pytest.mark.fuse

CANARY = b"CANARY-outside-the-mount\n"


def hostile_links(tmp_path: Path) -> dict[str, str]:
    canary = tmp_path / "canary.txt"
    return {
        "train/cat/2.jpg": str(canary),  # absolute, into the user's files
        "train/cat/3.jpg": "../../../../../../canary.txt",  # relative, next to the mount
        "train/cat/4.jpg": "../../..",  # a directory above: cp -rL copies the host
        "train/cat/5.jpg": "../" * 40 + "etc/passwd",
        "train/cat/6.jpg": "s3://bucket/../../../../../../canary.txt",
        "train/cat/7.jpg": "s3:/../../../../../..",
        "train/cat/8.jpg": "s3://bucket/" + "k" * 4100,  # readlink would fail
        "train/s3:": "s3:",  # a symlink to itself: ELOOP
        "remote/full.csv": "https://example.com/datasets/full.csv",  # fine: a URI
        "remote/b.bin": "s3://bucket/b.bin",
    }


@pytest.fixture
def hostile(
    tmp_path: Path, store: ArtifactStore, make_server: Callable[..., CometServer]
) -> CometServer:
    (tmp_path / "canary.txt").write_bytes(CANARY)
    source = tmp_path / "src"
    (source / "train" / "cat").mkdir(parents=True)
    (source / "train" / "cat" / "1.jpg").write_bytes(b"a real image\n")
    spec = VersionSpec("team", "cats", version="1.0.0", remotes=hostile_links(tmp_path))
    store.add_directory(spec, source)
    return make_server()


def walk_and_read(root: Path, mount: Path) -> tuple[list[str], list[OSError]]:
    """os.walk(followlinks=True) and read every file; fail at once on a path that leaves
    the mount (so a regression cannot wander the host)."""
    read: list[str] = []
    errors: list[OSError] = []
    for directory, _, files in os.walk(root, followlinks=True, onerror=errors.append):
        assert Path(directory).resolve().is_relative_to(mount), directory
        assert len(Path(directory).relative_to(root).parts) < 10, f"loop at {directory}"
        for name in files:
            path = Path(directory) / name
            if path.is_symlink():
                target = os.readlink(path)
                if os.path.exists(path):
                    assert path.resolve().is_relative_to(mount), f"{path} -> {target}"
            try:
                data = path.read_bytes()
            except OSError as exc:
                errors.append(exc)
                continue
            assert CANARY not in data, path
            read.append(str(path.relative_to(root)))
    return read, errors


def test_a_loader_walking_hostile_links_reads_nothing_outside(
    hostile: CometServer, mount_factory: MountFactory, tmp_path: Path
) -> None:
    mount = mount_factory(hostile, expect_warnings=True)
    mount_root = mount.path.resolve()
    for version in ("1.0.0", "latest"):
        root = mount.path / "team" / "cats" / version
        read, errors = walk_and_read(root, mount_root)
        assert "train/cat/1.jpg" in read
        # The published links are URIs that dangle: ENOENT, never ELOOP or EIO.
        assert all(e.errno == errno.ENOENT for e in errors), errors
        assert {Path(e.filename).name for e in errors} == {"full.csv", "b.bin"}
        links = {
            str(p.relative_to(root)): os.readlink(p) for p in root.rglob("*") if p.is_symlink()
        }
        assert links == {
            "remote/full.csv": "https://example.com/datasets/full.csv",
            "remote/b.bin": "s3://bucket/b.bin",
        }

    meta = mount.path / "team" / "cats" / "1.0.0" / ".comet"
    listed = json.loads((meta / "assets.json").read_text())
    assert {a["logical_path"] for a in listed} == {"train/cat/1.jpg", *hostile_links(tmp_path)}
    path_map = {m["logical_path"]: m for m in json.loads((meta / "path-map.json").read_text())}
    assert path_map["train/cat/2.jpg"]["reason"] == "remote link is not a URI"
    assert path_map["train/cat/2.jpg"]["path"] is None
    assert set(path_map) == set(hostile_links(tmp_path)) - {"remote/full.csv", "remote/b.bin"}

    copy = tmp_path / "copy"
    result = subprocess.run(
        ["cp", "-rL", str(mount.path / "team" / "cats" / "1.0.0"), str(copy)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "loop" not in result.stderr.lower() and "many levels" not in result.stderr
    copied = [p for p in copy.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in copied) < 1_000_000
    assert all(CANARY not in p.read_bytes() for p in copied)
