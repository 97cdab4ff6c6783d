"""Cached data stays readable through an outage, through a real mount.

A file read once is in the disk cache; once the server is gone (stopped, or only its
listing endpoints failing) and `--metadata-ttl` has passed, the mount answers from its
stale listings (stale-if-error), counts that in status.json, and does not ask the dead
server again on every lookup.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cometfs.server import ArtifactStore, AssetSource, CometServer, FaultRule, VersionSpec
from cometfs.testing import wait_for

from .conftest import MountFactory
from .test_faults_live import payload, read_direct, sha

pytestmark = pytest.mark.fuse

WS = "outage-ws"
TTL = 1.0
LISTINGS = (
    "workspaces",
    "artifacts/get-all",
    "artifacts/get",
    "artifacts/version",
    "artifacts/version/files",
)


def add(store: ArtifactStore, name: str, files: dict[str, bytes], version: str = "1.0.0") -> None:
    store.add_version(
        VersionSpec(WS, name, [AssetSource(p, data=d) for p, d in files.items()], version=version)
    )


def status(mount_path: Path) -> dict[str, int]:
    doc = json.loads((mount_path / ".comet" / "status.json").read_text())
    metadata: dict[str, int] = doc["metadata"]
    return metadata


def test_cached_file_stays_readable_after_the_server_stops(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    data = payload(3 << 20, 1)
    add(store, "model", {"w.bin": data, "sub/x.txt": b"x" * 100})
    server = make_server(store=store)
    mount = mount_factory(
        server, "--metadata-ttl", str(TTL), "--timeout", "2", expect_warnings=True
    )
    artifact = mount.path / WS / "model"
    assert sha(read_direct(artifact / "1.0.0" / "w.bin")) == sha(data)
    assert (artifact / "latest" / "sub" / "x.txt").read_bytes() == b"x" * 100
    assert status(mount.path)["stale_served"] == 0
    server.close()
    time.sleep(TTL + 0.5)  # the listings are now past their TTL: lookups must refresh
    for _ in range(3):
        assert sha(read_direct(artifact / "1.0.0" / "w.bin")) == sha(data)
        assert sha(read_direct(artifact / "latest" / "w.bin")) == sha(data)
        assert (artifact / "latest" / "sub" / "x.txt").read_bytes() == b"x" * 100
        assert os.readlink(artifact / "latest") == "1.0.0"
        assert sorted(os.listdir(artifact)) == [".comet", "1.0.0", "latest"]
        time.sleep(TTL)
    assert status(mount.path)["stale_served"] > 0

    def stale_lines() -> list[str]:
        return [line for line in mount.log_problems() if "stale listing" in line]

    # The mount writes its log from a thread of its own: a line may follow the answer.
    wait_for(lambda: bool(stale_lines()), 10, "a stale-listing warning in the mount log")
    # Logged once per listing, not once per lookup: a handful of listings here.
    assert len(stale_lines()) <= 6, stale_lines()


def test_cached_file_stays_readable_when_only_listings_fail(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    files = {"a.bin": payload(2 << 20, 2), "b.bin": payload(5000, 3)}
    add(store, "model", files)
    server = make_server(store=store)
    mount = mount_factory(
        server, "--metadata-ttl", str(TTL), "--timeout", "2", expect_warnings=True
    )
    artifact = mount.path / WS / "model"
    assert sha(read_direct(artifact / "latest" / "a.bin")) == sha(files["a.bin"])
    assert (artifact / "1.0.0" / "b.bin").stat().st_size == len(files["b.bin"])
    for endpoint in LISTINGS:
        server.faults.add(FaultRule(endpoint, "status", status=503))
    time.sleep(TTL + 0.5)
    assert sha(read_direct(artifact / "latest" / "a.bin")) == sha(files["a.bin"])
    # Not read before, but listed: its bytes come from get-asset, which still works.
    assert sha(read_direct(artifact / "1.0.0" / "b.bin")) == sha(files["b.bin"])
    assert status(mount.path)["stale_served"] > 0


def test_a_dead_server_is_not_asked_on_every_lookup(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    data = payload(4096, 4)
    add(store, "model", {"w.bin": data})
    server = make_server(store=store)
    mount = mount_factory(
        server, "--metadata-ttl", str(TTL), "--timeout", "2", expect_warnings=True
    )
    artifact = mount.path / WS / "model"
    assert sha(read_direct(artifact / "latest" / "w.bin")) == sha(data)
    server.faults.add(FaultRule("*", "status", status=503))
    time.sleep(TTL + 0.5)
    names = (artifact / "1.0.0" / "w.bin", artifact / "latest" / "w.bin", artifact)
    look(names, data)  # the first failure of each listing waits for its --timeout once
    server.request_log.clear()
    lookups = 0
    started = time.monotonic()
    slowest = 0.0
    while time.monotonic() - started < 3.0:
        slowest = max(slowest, look(names, data))
        lookups += len(names)
    asked = len(server.request_log)
    # Refreshes run on in their own task; a lookup waits at most the stale grace for one.
    assert slowest < 1.0, f"a lookup took {slowest:.2f} s"
    assert lookups > 100, lookups
    # A few refresh attempts per listing (each with its retries), not one per lookup.
    assert asked <= 40, f"{asked} requests for {lookups} lookups in 3 s"
    assert status(mount.path)["stale_served"] > 0


def look(paths: tuple[Path, ...], data: bytes) -> float:
    """Stat each path; the slowest stat in seconds."""
    slowest = 0.0
    for path in paths:
        started = time.monotonic()
        # Names the stale listings do not show cannot be confirmed missing while the
        # server fails: ENOENT or EIO, never a hang or a crash.
        try:
            assert os.stat(path).st_size in (len(data), 0)
        except OSError as exc:
            assert exc.errno in (errno.ENOENT, errno.EIO)
        slowest = max(slowest, time.monotonic() - started)
    return slowest
