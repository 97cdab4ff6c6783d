"""The mount against a server that changes and fails: new versions and moved aliases within
the TTL, injected faults, hostile asset paths, key scoping, and the mount's lifecycle."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cometfs.server import (
    ApiKey,
    ArtifactStore,
    AssetSource,
    CometServer,
    VersionSpec,
    parse_faults,
)
from cometfs.testing import CLI, wait_for, wait_unmounted

from .conftest import MountFactory

pytestmark = pytest.mark.fuse

WS = "live-ws"


def add(store: ArtifactStore, name: str, files: dict[str, bytes], **kwargs: object) -> str:
    return store.add_version(
        VersionSpec(
            WS,
            name,
            [AssetSource(p, data=d) for p, d in files.items()],
            **kwargs,  # type: ignore[arg-type]
        )
    )


def test_new_version_and_moved_alias_visible_within_ttl(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "model", {"w.bin": b"one"}, version="1.0.0", aliases=["production"])
    server = make_server(store=store)
    mount = mount_factory(server, "--metadata-ttl", "1")
    artifact = mount.path / WS / "model"
    assert os.readlink(artifact / "latest") == "1.0.0"
    assert (artifact / "production" / "w.bin").read_bytes() == b"one"

    add(store, "model", {"w.bin": b"two"}, version="2.0.0", aliases=["production"])
    wait_for(lambda: os.readlink(artifact / "latest") == "2.0.0", 10, "latest to move")
    wait_for(lambda: os.readlink(artifact / "production") == "2.0.0", 10, "alias to move")
    assert (artifact / "production" / "w.bin").read_bytes() == b"two"
    assert json.loads((artifact / "1.0.0" / ".comet" / "aliases.json").read_text()) == []
    assert "2.0.0" in os.listdir(artifact)


def test_transient_fault_is_retried_and_persistent_fault_is_eio(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "data", {"a.bin": b"A" * 5000, "b.bin": b"B" * 7000}, version="1.0.0")
    server = make_server(store=store)
    mount = mount_factory(server, expect_warnings=True)
    version = mount.path / WS / "data" / "1.0.0"

    server.faults.add(parse_faults("get-asset=500*1").rules[0])
    assert (version / "a.bin").read_bytes() == b"A" * 5000

    server.faults.add(parse_faults("get-asset=500").rules[0])
    with pytest.raises(OSError) as caught:
        (version / "b.bin").read_bytes()
    assert caught.value.errno == errno.EIO
    server.faults.clear()
    # The mount survived and the failure was not cached.
    assert sorted(os.listdir(version)) == [".comet", "a.bin", "b.bin"]
    assert (version / "b.bin").read_bytes() == b"B" * 7000


def test_truncated_body_never_serves_wrong_bytes(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    payload = bytes(range(256)) * 4000
    add(store, "data", {"c.bin": payload}, version="1.0.0")
    server = make_server(store=store, faults=parse_faults("get-asset=truncate*2"))
    mount = mount_factory(server, expect_warnings=True)
    assert (mount.path / WS / "data" / "1.0.0" / "c.bin").read_bytes() == payload


def test_hostile_asset_paths_are_mapped_inside_the_version(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    hostile = {
        "../escape.txt": b"1",
        "/abs/path.txt": b"2",
        "a//b.txt": b"3",
        "dup.txt": b"4",
        ".comet/evil.json": b"5",
        "x" * 300: b"6",
        "file": b"7",
        "file/inner.txt": b"8",
        "ok/normal.txt": b"9",
    }
    version = store.add_version(
        VersionSpec(
            WS,
            "hostile",
            [AssetSource(p, data=d) for p, d in hostile.items()]
            + [AssetSource("dup.txt", data=b"4bis")],
            version="1.0.0",
        )
    )
    server = make_server(store=store)
    mount = mount_factory(server)
    root = mount.path / WS / "hostile" / version
    files = {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".comet" not in p.relative_to(root).parts
    }
    assert sorted(files.values()) == sorted([*hostile.values(), b"4bis"])
    assert files["ok/normal.txt"] == b"9"
    for path in files:
        assert ".." not in Path(path).parts and not path.startswith("/")
        assert all(len(part.encode()) <= 255 for part in Path(path).parts)
    mapping = json.loads((root / ".comet" / "path-map.json").read_text())
    mapped = {m["logical_path"] for m in mapping}
    assert {"../escape.txt", "/abs/path.txt", "a//b.txt", ".comet/evil.json", "x" * 300} <= mapped
    for entry in mapping:
        assert (root / entry["path"]).is_file()
    assert not (mount.path.parent / "escape.txt").exists()


def test_key_sees_only_its_workspaces(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "mine", {"m.txt": b"m"}, version="1.0.0")
    store.add_version(
        VersionSpec("other-ws", "secret", [AssetSource("s.txt", data=b"s")], version="1.0.0")
    )
    server = make_server(store=store, api_keys=[ApiKey("scoped-key-123456", frozenset({WS}))])
    mount = mount_factory(server, key="scoped-key-123456")
    assert sorted(os.listdir(mount.path)) == [".comet", WS]
    assert not (mount.path / "other-ws").exists()
    assert not (mount.path / "other-ws" / "secret" / "1.0.0").exists()


def test_bad_key_or_server_fails_with_one_line(
    store: ArtifactStore, make_server: Callable[..., CometServer], tmp_path: Path, api_key: str
) -> None:
    server = make_server(store=store)
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    env = {**os.environ, "COMET_API_KEY": "wrong-key-000000", "HOME": str(tmp_path)}
    result = subprocess.run(
        [*CLI, "mount", str(mountpoint), "--server-url", server.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "refused" in result.stderr
    assert "wrong-key" not in result.stderr
    assert not os.path.ismount(mountpoint)

    env["COMET_API_KEY"] = api_key
    result = subprocess.run(
        [*CLI, "mount", str(mountpoint), "--server-url", "http://127.0.0.1:9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "cannot reach" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_sigterm_unmounts_cleanly(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "data", {"a.txt": b"a"}, version="1.0.0")
    server = make_server(store=store)
    mount = mount_factory(server)
    pid = mount.pid()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"COMET" not in cmdline and b"test-key" not in cmdline
    os.kill(pid, signal.SIGTERM)
    wait_unmounted(mount.path)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 20, "the mount process to exit")
    mount.mounted = False


def test_unmount_clears_a_killed_mount(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "data", {"a.txt": b"a"}, version="1.0.0")
    server = make_server(store=store)
    mount = mount_factory(server)
    os.kill(mount.pid(), signal.SIGKILL)
    with pytest.raises(OSError) as caught:
        os.listdir(mount.path)
    assert caught.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    result = subprocess.run(
        [*CLI, "unmount", str(mount.path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    wait_unmounted(mount.path)
    assert os.listdir(mount.path) == []
    mount.mounted = False


def test_foreground_mount_and_sigint(
    store: ArtifactStore, make_server: Callable[..., CometServer], tmp_path: Path, api_key: str
) -> None:
    add(store, "data", {"a.txt": b"fg"}, version="1.0.0")
    server = make_server(store=store)
    mountpoint = tmp_path / "fg"
    mountpoint.mkdir()
    env = {**os.environ, "COMET_API_KEY": api_key, "HOME": str(tmp_path)}
    process = subprocess.Popen(
        [
            *CLI,
            "mount",
            str(mountpoint),
            "--server-url",
            server.url,
            "--foreground",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: os.path.ismount(mountpoint), 30, "the foreground mount")
        assert (mountpoint / WS / "data" / "1.0.0" / "a.txt").read_bytes() == b"fg"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert not os.path.ismount(mountpoint)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def test_cli_store_add_then_mount(
    tmp_path: Path,
    make_server: Callable[..., CometServer],
    mount_factory: MountFactory,
    api_key: str,
) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "x.txt").write_text("x")
    store_dir = tmp_path / "cli-store"
    result = subprocess.run(
        [
            *CLI,
            "store",
            "add",
            f"{WS}/cli-art",
            str(source),
            "--store",
            str(store_dir),
            "--version",
            "1.2.3",
            "--alias",
            "prod",
            "--metadata",
            '{"k": 1}',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    bad = subprocess.run(
        [
            *CLI,
            "store",
            "add",
            f"{WS}/cli-art",
            str(source),
            "--store",
            str(store_dir),
            "--version",
            "1.2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "1.2" in bad.stderr
    server = make_server(store=ArtifactStore(store_dir))
    mount = mount_factory(server)
    artifact = mount.path / WS / "cli-art"
    assert (artifact / "prod" / "sub" / "x.txt").read_text() == "x"
    assert json.loads((artifact / "1.2.3" / ".comet" / "metadata.json").read_text()) == {"k": 1}


def test_fuse_options_pass_through(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "data", {"a.txt": b"a"}, version="1.0.0")
    server = make_server(store=store)
    mount = mount_factory(server, "-o", "allow_other")
    options = next(
        line.split()[3]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1] == str(mount.path)
    )
    assert "allow_other" in options.split(",") and "ro" in options.split(",")


def test_changed_bytes_of_a_version_are_estale_not_served(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "data", {"a.bin": b"original-bytes"}, version="1.0.0")
    server = make_server(store=store)
    mount = mount_factory(server, expect_warnings=True)
    path = mount.path / WS / "data" / "1.0.0" / "a.bin"
    assert path.stat().st_size == len(b"original-bytes")
    # Tamper with the server's copy behind the listing's back (a different length).
    import hashlib

    blob = store.root / "blobs" / hashlib.sha256(b"original-bytes").hexdigest()
    blob.chmod(0o644)
    blob.write_bytes(b"tampered and longer bytes")
    with pytest.raises(OSError) as caught:
        path.read_bytes()
    assert caught.value.errno == errno.ESTALE


def test_names_the_cached_listing_did_not_show_resolve(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "model", {"w.bin": b"one"}, version="1.0.0")
    server = make_server(store=store)
    mount = mount_factory(server, "--metadata-ttl", "3600")
    artifact = mount.path / WS / "model"
    assert sorted(os.listdir(artifact)) == [".comet", "1.0.0", "latest"]
    add(store, "model", {"w.bin": b"two"}, version="2.0.0", aliases=["fresh"])
    add(store, "other", {"x.bin": b"x"}, version="1.0.0")
    # The listings are cached for an hour and do not show these names; lookups still work.
    assert (artifact / "2.0.0" / "w.bin").read_bytes() == b"two"
    assert os.readlink(artifact / "fresh") == "2.0.0"
    assert (mount.path / WS / "other" / "1.0.0" / "x.bin").read_bytes() == b"x"
    assert not (artifact / "9.9.9").exists()
