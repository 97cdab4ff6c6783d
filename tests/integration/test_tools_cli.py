"""The everyday commands against a real mount: mount-point checks, unmount of a busy mount,
df, prefetch, status, cache info/clear, and the cometfs.mounted() context manager."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import cometfs
from cometfs.server import CometServer
from cometfs.testing import CLI, wait_for, wait_unmounted

from .conftest import Mount, MountFactory
from .data import ART, KEY, WS, Dataset

pytestmark = pytest.mark.fuse


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 50
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def status_json(mount: Mount) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((mount.path / ".comet" / "status.json").read_text())
    return status


def asset_requests(mount: Mount) -> int:
    requests = status_json(mount)["requests"]
    return sum(v for k, v in requests.items() if "asset" in k)


# -- mount points -------------------------------------------------------------------------


def test_mount_onto_a_missing_directory_says_it_does_not_exist(
    world: tuple[CometServer, Dataset], tmp_path: Path
) -> None:
    server, _ = world
    env = {**os.environ, "COMET_API_KEY": KEY}
    result = run("mount", str(tmp_path / "nope"), "--server-url", server.url, env=env)
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "is not a directory" not in result.stderr


def test_mount_refuses_a_non_empty_directory_unless_allowed(
    world: tuple[CometServer, Dataset], tmp_path: Path
) -> None:
    server, _ = world
    target = tmp_path / "full"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    env = {**os.environ, "COMET_API_KEY": KEY}
    base = ["mount", str(target), "--server-url", server.url, "--cache-dir", str(tmp_path / "c")]
    try:
        result = run(*base, env=env)
        assert result.returncode == 1
        assert "not empty" in result.stderr and "--allow-non-empty" in result.stderr
        assert not os.path.ismount(target)
        result = run(*base, "--allow-non-empty", env=env)
        assert result.returncode == 0, result.stderr
        assert WS in os.listdir(target)
    finally:
        if os.path.ismount(target):
            run("unmount", str(target), env=env)
            wait_unmounted(target)
    assert (target / "mine.txt").read_text() == "keep me"


def test_dead_mount_suggests_unmount_and_unmount_clears_it(
    world: tuple[CometServer, Dataset], mount_factory: Callable[..., Mount]
) -> None:
    server, _ = world
    mount = mount_factory(server)
    pid = status_json(mount)["pid"]
    os.kill(pid, 9)
    wait_for(
        lambda: not _answers(mount.path), 20, "the mount to stop answering once its process died"
    )
    result = run("mount", str(mount.path), "--server-url", server.url, env=mount.env)
    assert result.returncode == 1
    assert f"cometfs unmount {mount.path}" in result.stderr
    result = run("unmount", str(mount.path), env=mount.env)
    assert result.returncode == 0, result.stderr
    assert "dead mount" in result.stderr
    mount.mounted = False
    wait_unmounted(mount.path)


def _answers(path: Path) -> bool:
    try:
        (path / ".comet" / "status.json").read_bytes()  # direct_io: always reaches FUSE
    except OSError:
        return False
    return True


def test_unmount_of_a_busy_mount_refuses_then_detaches_lazily(
    world: tuple[CometServer, Dataset], mount_factory: Callable[..., Mount]
) -> None:
    server, _ = world
    mount = mount_factory(server)
    holder = subprocess.Popen(["sleep", "60"], cwd=mount.path / WS)
    try:
        result = run("unmount", str(mount.path), env=mount.env)
        assert result.returncode == 1
        assert "busy" in result.stderr and "--lazy" in result.stderr
        assert os.path.ismount(mount.path)
        result = run("unmount", "--lazy", str(mount.path), env=mount.env)
        assert result.returncode == 0, result.stderr
        assert "detached lazily" in result.stderr
        mount.mounted = False
        wait_unmounted(mount.path)
    finally:
        holder.kill()
        holder.wait()


def test_df_shows_the_cache_room_not_a_full_disk(
    world: tuple[CometServer, Dataset], mount_factory: MountFactory
) -> None:
    server, _ = world
    mount = mount_factory(server, "--cache-size", "1G")
    st = os.statvfs(mount.path)
    assert st.f_blocks * st.f_frsize == 1024**3
    assert st.f_bavail > 0 and st.f_bfree == st.f_bavail
    result = subprocess.run(
        ["df", "--output=pcent", str(mount.path)], capture_output=True, text=True, check=True
    )
    assert "100%" not in result.stdout


# -- prefetch -------------------------------------------------------------------------------


def test_prefetch_fills_the_cache_and_a_second_run_fetches_nothing(
    world: tuple[CometServer, Dataset], mount_factory: MountFactory
) -> None:
    server, _ = world
    mount = mount_factory(server)
    version = mount.path / WS / ART / "latest"
    before = asset_requests(mount)
    result = run("prefetch", str(version), "--jobs", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # quiet when not on a terminal
    first = asset_requests(mount)
    assert first > before
    assert status_json(mount)["cache"]["disk_bytes"] > 0
    result = run("prefetch", str(version), "--jobs", "4")
    assert result.returncode == 0, result.stderr
    assert asset_requests(mount) == first


def test_prefetch_with_progress_reports_bytes(
    world: tuple[CometServer, Dataset], mount_factory: MountFactory
) -> None:
    server, _ = world
    mount = mount_factory(server)
    pattern = str(mount.path / WS / ART / "1.0.0" / "*")  # a glob we expand ourselves
    result = run("prefetch", pattern, "--progress")
    assert result.returncode == 0, result.stderr
    assert "prefetched" in result.stderr and "B/s" in result.stderr


def test_prefetch_refuses_paths_off_the_mount_and_names_failed_files(
    world: tuple[CometServer, Dataset], mount_factory: MountFactory, tmp_path: Path
) -> None:
    server, _ = world
    result = run("prefetch", str(tmp_path))
    assert result.returncode == 1 and "not on a cometfs mount" in result.stderr
    # a server that fails every download: the file names are reported, exit is non-zero
    mount = mount_factory(server, expect_warnings=True)
    broken = mount.path / WS / ART / "1.0.0"
    victim = sorted(p for p in broken.rglob("*") if p.is_file() and ".comet" not in p.parts)[0]
    with _failing_downloads(server):
        result = run("prefetch", str(victim))
    assert result.returncode == 1
    assert str(victim) in result.stderr


class _failing_downloads:
    """Make the local server answer every asset download with a 500 for the block."""

    def __init__(self, server: CometServer) -> None:
        self.server = server

    def __enter__(self) -> None:
        from cometfs.server import parse_faults

        self.saved = self.server.faults
        self.server.faults = parse_faults("get-asset=500")

    def __exit__(self, *exc: object) -> None:
        self.server.faults = self.saved


# -- status and cache ---------------------------------------------------------------------


def test_status_lists_the_mount_with_pid_and_cache_dir(
    world: tuple[CometServer, Dataset], mount_factory: MountFactory
) -> None:
    server, _ = world
    mount = mount_factory(server)
    result = run("status", "--json")
    assert result.returncode == 0, result.stderr
    mine = [s for s in json.loads(result.stdout) if s["mountpoint"] == str(mount.path)]
    assert len(mine) == 1
    assert mine[0]["server"] == server.url
    assert mine[0]["cache_dir"] == str(mount.cache_dir)
    os.kill(mine[0]["pid"], 0)  # the mount's process is alive
    text = run("status", str(mount.path))
    assert text.returncode == 0, text.stderr
    assert str(mount.cache_dir) in text.stdout and "hit rate" in text.stdout
    assert run("status", str(mount.path.parent)).returncode == 1


def test_cache_info_and_clear_refuse_a_cache_in_use(
    world: tuple[CometServer, Dataset], mount_factory: MountFactory, tmp_path: Path
) -> None:
    server, _ = world
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    cache = tmp_path / "xdg" / "cometfs" / "0123456789abcdef"
    mount = mount_factory(server, cache_dir=cache)
    (mount.path / WS / ART / "1.0.0" / "readme.txt").read_bytes()
    info = run("cache", "info", env=env)
    assert info.returncode == 0, info.stderr
    assert str(cache) in info.stdout and str(mount.path) in info.stdout
    refused = run("cache", "clear", env=env)
    assert refused.returncode == 1 and "unmount first" in refused.stderr
    assert cache.is_dir()
    mount.stop()
    cleared = run("cache", "clear", env=env)
    assert cleared.returncode == 0, cleared.stderr
    assert not cache.exists()


# -- cometfs.mounted ------------------------------------------------------------------------


def test_mounted_cleans_up_after_an_exception(
    world: tuple[CometServer, Dataset], tmp_path: Path
) -> None:
    server, _ = world
    target = tmp_path / "ctx"
    target.mkdir()
    environ = dict(os.environ)
    os.environ.pop("COMET_API_KEY", None)
    try:
        with (
            pytest.raises(RuntimeError, match="inside"),
            cometfs.mounted(
                target, server_url=server.url, api_key=KEY, cache_dir=tmp_path / "c", metadata_ttl=5
            ) as root,
        ):
            assert root == target
            assert WS in os.listdir(root)
            pid = json.loads((root / ".comet" / "status.json").read_text())["pid"]
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                assert KEY.encode() not in handle.read()  # the key is not in argv
            raise RuntimeError("inside the with block")
    finally:
        os.environ.clear()
        os.environ.update(environ)
    assert not os.path.ismount(target)
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid) is False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return False


def test_mounted_reports_a_failed_mount(world: tuple[CometServer, Dataset], tmp_path: Path) -> None:
    server, _ = world
    target = tmp_path / "ctx"
    target.mkdir()
    with (
        pytest.raises(cometfs.CometFSError, match="refused"),
        cometfs.mounted(target, server_url=server.url, api_key="wrong-key"),
    ):
        pass  # pragma: no cover - never reached
    assert not os.path.ismount(target)
