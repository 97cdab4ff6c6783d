"""A real mount read with real tools and libraries, compared with the source bytes and with
what the comet_ml SDK reports and downloads for the same versions."""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cometfs.server import CometServer
from cometfs.testing import wait_until

from .conftest import Mount, MountFactory
from .data import ART, KEY, REMOTE, WS, Dataset

pytestmark = pytest.mark.fuse


@pytest.fixture
def mounted(world: tuple[CometServer, Dataset], mount_factory: MountFactory) -> Mount:
    server, _ = world
    return mount_factory(server, key=KEY)


def version_dir(mount: Mount, version: str = "1.0.0") -> Path:
    return mount.path / WS / ART / version


def asset_requests(server: CometServer) -> list[dict[str, Any]]:
    return [r for r in server.request_log if r["endpoint"] in ("get-asset", "blob")]


def test_listing_names_modes_and_sizes(world: tuple[CometServer, Dataset], mounted: Mount) -> None:
    _, data = world
    root = version_dir(mounted)
    found = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if (p.is_file() or p.is_symlink()) and ".comet" not in p.parts
    )
    assert found == sorted([*data.v1, REMOTE[0]])
    for logical, content in data.v1.items():
        st = (root / logical).lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444, logical
        assert st.st_size == len(content), logical
        assert st.st_blocks == (len(content) + 511) // 512
        assert st.st_uid == os.getuid() and st.st_gid == os.getgid()
    assert stat.S_IMODE((root / "data").stat().st_mode) == 0o555
    assert os.readlink(root / REMOTE[0]) == REMOTE[1]
    assert sorted(os.listdir(mounted.path)) == [".comet", WS]
    assert sorted(os.listdir(mounted.path / WS / ART)) == sorted(
        [".comet", "1.0.0", "2.0.0", "latest", "production", "staging"]
    )


def test_command_line_tools(
    world: tuple[CometServer, Dataset], mounted: Mount, tmp_path: Path
) -> None:
    _, data = world
    root = version_dir(mounted)
    ls = subprocess.run(["ls", "-lR", str(root)], capture_output=True, text=True, check=True)
    assert "日本語 ファイル.txt" in ls.stdout and "blob.bin" in ls.stdout

    size = subprocess.run(
        ["stat", "-c", "%s %a", str(root / "big.bin")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert size == [str(len(data.v1["big.bin"])), "444"]

    find = subprocess.run(
        ["find", str(root), "-type", "f", "-not", "-path", "*/.comet/*"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    assert sorted(str(Path(p).relative_to(root)) for p in find if p) == sorted(data.v1)

    du = subprocess.run(
        ["du", "-sb", "--exclude=.comet", str(root)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert int(du) == sum(map(len, data.v1.values())) + len(REMOTE[1])

    sums = subprocess.run(
        ["sha256sum", str(root / "big.bin"), str(root / "readme.txt")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert [line.split()[0] for line in sums] == [
        data.big_sha256,
        hashlib.sha256(data.v1["readme.txt"]).hexdigest(),
    ]

    assert (
        subprocess.run(
            ["cat", str(root / "unicodé/日本語 ファイル.txt")], capture_output=True, check=True
        ).stdout
        == data.v1["unicodé/日本語 ファイル.txt"]
    )

    grep = subprocess.run(
        ["grep", "-rl", "needle-v1", str(root)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert grep == [str(root / "readme.txt")]

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(root), str(copy)], check=True)
    for logical, content in data.v1.items():
        assert (copy / logical).read_bytes() == content, logical

    archive = tmp_path / "v1.tar"
    subprocess.run(
        ["tar", "cf", str(archive), "-C", str(root), "--exclude=.comet", "."], check=True
    )
    with tarfile.open(archive) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        assert sorted(members) == sorted(data.v1)
        extracted = tar.extractfile(members["data/nested/deep/blob.bin"])
        assert extracted is not None and extracted.read() == data.v1["data/nested/deep/blob.bin"]


def test_df_works_and_kernel_readahead_is_raised(mounted: Mount) -> None:
    result = subprocess.run(["df", str(mounted.path)], capture_output=True, text=True)
    assert result.returncode == 0 and "cometfs" in result.stdout
    if os.geteuid() != 0:
        return  # only root may change a mount's readahead; others keep the default
    st = os.stat(mounted.path)
    setting = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    wait_until(lambda: setting.read_text().strip() == "1024", 10)
    assert setting.read_text().strip() == "1024"


def test_aliases_and_latest_read_the_right_version(
    world: tuple[CometServer, Dataset], mounted: Mount
) -> None:
    _, data = world
    artifact = mounted.path / WS / ART
    assert os.readlink(artifact / "latest") == "2.0.0"
    assert (artifact / "latest" / "readme.txt").read_bytes() == data.v2["readme.txt"]
    assert (artifact / "production" / "readme.txt").read_bytes() == data.v1["readme.txt"]
    assert (artifact / "staging" / "extra/new.txt").read_bytes() == data.v2["extra/new.txt"]


def test_python_random_access_mmap_numpy_pandas(
    world: tuple[CometServer, Dataset], mounted: Mount
) -> None:
    _, data = world
    root = version_dir(mounted)
    big = data.v1["big.bin"]
    rng = random.Random(7)
    with open(root / "big.bin", "rb") as handle:
        for _ in range(40):
            offset = rng.randrange(len(big) + 10)
            size = rng.choice([1, 17, 4096, 131_072, 1_000_003])
            handle.seek(offset)
            assert handle.read(size) == big[offset : offset + size], (offset, size)
    # mmap page faults happen with the GIL held, and this process also runs the server, so
    # the mapping is read from a child process.
    blob = data.v1["data/nested/deep/blob.bin"]
    script = """
import hashlib, mmap, sys
import numpy as np
with open(sys.argv[1], "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
    print(m[1000:1010].hex(), hashlib.sha256(m).hexdigest())
weights = np.load(sys.argv[2], mmap_mode="r")
print(weights.shape, float(weights[99, 99]), float(weights.sum()))
"""
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(root / "data/nested/deep/blob.bin"),
            str(root / "arrays/weights.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == [
        f"{blob[1000:1010].hex()} {hashlib.sha256(blob).hexdigest()}",
        f"(100, 100) 9999.0 {float(np.arange(10_000, dtype=np.float32).sum())}",
    ]
    table = pd.read_csv(root / "tables/scores.csv")
    assert len(table) == 500 and table["score"].sum() == sum(i * 0.5 for i in range(500))


def test_class_folder_scan(world: tuple[CometServer, Dataset], mounted: Mount) -> None:
    """What torchvision's ImageFolder does: classes from folder names, then read each file."""
    _, data = world
    images = version_dir(mounted) / "images"
    try:
        from torchvision.datasets import ImageFolder  # type: ignore[import-not-found]
    except ImportError:
        ImageFolder = None
    if ImageFolder is not None:
        dataset = ImageFolder(str(images))
        assert dataset.classes == ["cat", "dog"] and len(dataset) == 6
        return
    classes = sorted(entry.name for entry in os.scandir(images) if entry.is_dir())
    assert classes == ["cat", "dog"]
    samples = sorted(
        (entry.path, label)
        for label, name in enumerate(classes)
        for entry in os.scandir(images / name)
        if entry.is_file() and entry.name.endswith(".png")
    )
    assert len(samples) == 6
    for path, _ in samples:
        content = Path(path).read_bytes()
        assert content.startswith(b"\x89PNG")
        assert content == data.v1[str(Path(path).relative_to(version_dir(mounted)))]


def test_reread_served_from_memory_and_disk_cache(
    world: tuple[CometServer, Dataset], mount_factory: MountFactory
) -> None:
    server, data = world
    mount = mount_factory(server, key=KEY)
    small = {k: v for k, v in data.v2.items() if k != "big.bin"}

    def read_all(m: Mount) -> None:
        for logical, content in small.items():
            assert (version_dir(m, "2.0.0") / logical).read_bytes() == content

    def cache_stats(m: Mount) -> dict[str, int]:
        status = (m.path / ".comet" / "status.json").read_text()
        return dict(json.loads(status)["cache"])

    read_all(mount)
    assert asset_requests(server), "the first read must fetch bytes"
    server.request_log.clear()
    # Drop the kernel's page cache, so the second read has to reach the mount: what answers
    # it then is the mount's memory cache (its hit counter grows, the server sees nothing).
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    before = cache_stats(mount)
    read_all(mount)
    after = cache_stats(mount)
    assert asset_requests(server) == []
    assert after["hits_memory"] - before["hits_memory"] >= sum(1 for v in small.values() if v)
    assert after["hits_disk"] == before["hits_disk"]
    mount.stop()

    again = mount_factory(server, key=KEY, cache_dir=mount.cache_dir)
    server.request_log.clear()
    read_all(again)
    assert asset_requests(server) == [], "a new mount must reuse the disk cache"


def test_middle_of_large_asset_fetches_little(
    world: tuple[CometServer, Dataset], mounted: Mount
) -> None:
    server, data = world
    server.request_log.clear()
    middle = len(data.v1["big.bin"]) // 2
    with open(version_dir(mounted, "1.0.0") / "big.bin", "rb") as handle:
        handle.seek(middle)
        assert handle.read(1 << 20) == data.v1["big.bin"][middle : middle + (1 << 20)]
    # Wait for the readahead this read started, then count: the 1 MiB read plus the kernel's
    # and the reader's readahead windows, a bounded part of the 64 MiB, never the whole.
    time.sleep(1)
    fetched = sum(r["bytes"] for r in asset_requests(server))
    assert 1 << 20 <= fetched <= 12 << 20, fetched


def test_comet_json_files(world: tuple[CometServer, Dataset], mounted: Mount) -> None:
    _, data = world
    meta = version_dir(mounted) / ".comet"
    for path in meta.iterdir():
        raw = path.read_bytes()
        assert path.stat().st_size == len(raw), path.name
        if path.suffix == ".json":
            assert raw.endswith(b"\n")
            json.loads(raw)
    assert (meta / "source").read_text() == f"{WS}/{ART}:1.0.0\n"
    assets = json.loads((meta / "assets.json").read_text())
    assert sorted(a["logical_path"] for a in assets) == sorted([*data.v1, REMOTE[0]])
    status = json.loads((mounted.path / ".comet" / "status.json").read_text())
    assert status["server"].startswith("http://127.0.0.1:")
    assert KEY not in json.dumps(status)
    listing = json.loads((mounted.path / WS / ".comet" / "artifacts.json").read_text())
    assert [a["name"] for a in listing] == [ART]
    details = json.loads((mounted.path / WS / ART / ".comet" / "artifact.json").read_text())
    assert [v["version"] for v in details["versions"]] == ["1.0.0", "2.0.0"]
    assert details["versions"][0]["aliases"] == ["production"]


def test_direct_lookup_of_unlisted_names(
    world: tuple[CometServer, Dataset], mounted: Mount
) -> None:
    artifact = mounted.path / WS / ART
    assert (artifact / "1.0.0").is_dir()
    assert not (artifact / "9.9.9").exists()
    assert not (mounted.path / "no-such-ws").exists()
    assert not (artifact / "no-such-alias").exists()


def test_writes_fail_with_erofs(
    world: tuple[CometServer, Dataset], mounted: Mount, tmp_path: Path
) -> None:
    import errno

    server, _ = world
    server.request_log.clear()
    root = version_dir(mounted)
    attempts: list[Callable[[], object]] = [
        lambda: open(root / "readme.txt", "w"),
        lambda: open(root / "readme.txt", "a"),
        lambda: open(root / "new.txt", "x"),
        lambda: os.truncate(root / "readme.txt", 0),
        lambda: os.mkdir(root / "newdir"),
        lambda: os.unlink(root / "readme.txt"),
        lambda: os.rmdir(root / "data"),
        lambda: os.rename(root / "readme.txt", root / "moved.txt"),
        lambda: os.symlink("readme.txt", root / "link"),
        lambda: os.link(root / "readme.txt", root / "hard"),
        lambda: os.chmod(root / "readme.txt", 0o777),
        lambda: os.utime(root / "readme.txt", (0, 0)),
        lambda: os.setxattr(root / "readme.txt", "user.x", b"1"),
        lambda: os.mkdir(mounted.path / "new-ws"),
        lambda: (mounted.path / WS / ART / "latest").unlink(),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS, (attempt, caught.value)
    assert all(r["method"] == "GET" for r in server.request_log)
    assert (root / "readme.txt").read_bytes().startswith(b"hello from version one")


def test_listing_and_stat_make_no_per_file_requests(
    world: tuple[CometServer, Dataset], mounted: Mount
) -> None:
    server, data = world
    server.request_log.clear()
    root = version_dir(mounted, "2.0.0")
    subprocess.run(["ls", "-lR", str(root)], capture_output=True, check=True)
    subprocess.run(["find", str(root), "-type", "f"], capture_output=True, check=True)
    for logical in data.v2:
        os.stat(root / logical)
    endpoints = sorted(r["endpoint"] for r in server.request_log)
    assert "get-asset" not in endpoints and "blob" not in endpoints
    assert endpoints.count("artifacts/version/files") == 1
    assert len(endpoints) <= 6, endpoints  # a handful of listings, not one per file


def test_mtimes_are_the_version_creation_time(mounted: Mount) -> None:
    from datetime import datetime

    details = json.loads((mounted.path / WS / ART / ".comet" / "artifact.json").read_text())
    for listed in details["versions"]:
        created = datetime.fromisoformat(listed["created_at"].replace("Z", "+00:00"))
        root = mounted.path / WS / ART / listed["version"]
        for path in (root, root / "readme.txt", root / "data" / "nested", root / ".comet"):
            assert abs(path.stat().st_mtime - created.timestamp()) < 0.001, path
