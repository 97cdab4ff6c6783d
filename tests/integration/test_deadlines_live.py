"""A stalled server never leaves a reader hanging: killed readers return at once, every
request has a total deadline, and the mount's lifecycle signals behave."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cometfs.server import ArtifactStore, AssetSource, CometServer, VersionSpec, parse_faults
from cometfs.testing import CLI, wait_for, wait_unmounted

from .conftest import MountFactory

pytestmark = pytest.mark.fuse

WS = "slow-ws"


def add(store: ArtifactStore, name: str, files: dict[str, bytes]) -> None:
    store.add_version(
        VersionSpec(WS, name, [AssetSource(p, data=d) for p, d in files.items()], version="1.0.0")
    )


def start_and_kill(argv: list[str], *, after: float = 1.0) -> float:
    """Start a reader, let it block on the mount, SIGKILL it; seconds until it was reaped."""
    reader = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(after)
        assert reader.poll() is None, "the reader did not block: the fault did not bite"
        killed_at = time.monotonic()
        reader.kill()
        reader.wait(timeout=10)
        return time.monotonic() - killed_at
    finally:
        if reader.poll() is None:
            reader.kill()


def test_a_killed_reader_of_a_stalled_download_returns_at_once(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "data", {"big.bin": os.urandom(3 << 20)})
    server = make_server(store=store, faults=parse_faults("get-asset=delay:60"))
    mount = mount_factory(server)
    path = mount.path / WS / "data" / "1.0.0" / "big.bin"
    assert path.stat().st_size == 3 << 20
    assert start_and_kill(["cat", str(path)]) < 3
    # A second reader, now with a fetch of the same blocks already in flight.
    assert start_and_kill(["dd", f"if={path}", "of=/dev/null", "iflag=direct", "bs=1M"]) < 3
    # The mount is still alive and answers.
    assert sorted(os.listdir(path.parent)) == [".comet", "big.bin"]


def test_a_killed_ls_of_a_stalled_listing_returns_at_once(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "data", {"a.txt": b"a"})
    server = make_server(store=store)
    mount = mount_factory(server)
    server.faults.add(parse_faults("artifacts/get=delay:60").rules[0])
    assert start_and_kill(["ls", str(mount.path / WS / "data")]) < 3
    server.faults.clear()


def test_every_request_has_a_total_deadline(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "data", {"a.bin": b"A" * 5000})
    server = make_server(store=store, faults=parse_faults("get-asset=delay:60"))
    mount = mount_factory(server, "--timeout", "2", expect_warnings=True)
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        (mount.path / WS / "data" / "1.0.0" / "a.bin").read_bytes()
    assert caught.value.errno == errno.EIO
    assert time.monotonic() - started < 8


def test_sighup_unmounts_cleanly(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "data", {"a.txt": b"a"})
    server = make_server(store=store)
    mount = mount_factory(server)
    pid = mount.pid()
    os.kill(pid, signal.SIGHUP)
    wait_unmounted(mount.path)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 20, "the mount process to exit")
    assert os.listdir(mount.path) == []
    mount.mounted = False


@pytest.mark.parametrize("option", ["rw", "ro,rw", "suid"])
def test_options_contradicting_read_only_are_refused(
    server: CometServer, tmp_path: Path, api_key: str, option: str
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {**os.environ, "COMET_API_KEY": api_key, "HOME": str(tmp_path)}
    result = subprocess.run(
        [*CLI, "mount", str(mountpoint), "--server-url", server.url, "-o", option],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "is not allowed" in result.stderr
    assert not os.path.ismount(mountpoint)
