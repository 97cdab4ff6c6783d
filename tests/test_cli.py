"""The command line's surface without FUSE: help texts, mount-point checks, the mount table
parser, prefetch's file selection, and the argv cometfs.mounted() builds."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from cometfs.api import _mount_argv
from cometfs.cli import build_parser, main
from cometfs.errors import CometFSError
from cometfs.mount import MountError, _check_mountpoint
from cometfs.prefetch import collect
from cometfs.status import (
    MountEntry,
    cache_info,
    clear_caches,
    cometfs_mounts,
    hit_rate,
    mount_of,
    parse_mountinfo,
)

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "90 22 0:50 / /home/u/comet rw,nosuid,nodev shared:2 - fuse.cometfs cometfs "
    "ro,user_id=1000,group_id=1000\n"
    "91 22 0:51 / /mnt/my\\040data rw shared:3 - fuse.cometfs cometfs ro,user_id=0,group_id=0\n"
    "92 22 0:52 / /mnt/other rw shared:4 - fuse.sshfs host: rw,user_id=1000,group_id=1000\n"
)


def _subparser(name: str, *path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for step in (name, *path):
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[step]
    return parser


@pytest.mark.parametrize(
    "command", [("mount",), ("unmount",), ("prefetch",), ("status",), ("cache", "clear")]
)
def test_every_flag_has_help_with_its_default(command: tuple[str, ...]) -> None:
    parser = _subparser(*command)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert flags
    for action in flags:
        assert action.help and "default" in action.help, action.option_strings


def test_mount_point_checks_say_what_is_wrong_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(MountError, match="does not exist"):
        _check_mountpoint(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MountError, match="is not a directory"):
        _check_mountpoint(tmp_path / "file")
    with pytest.raises(MountError, match=r"not empty.*--allow-non-empty"):
        _check_mountpoint(tmp_path)
    _check_mountpoint(tmp_path, allow_non_empty=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    _check_mountpoint(empty)


def test_mount_cli_refuses_a_missing_mount_point_before_asking_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMET_API_KEY", "k")
    code = main(["mount", str(tmp_path / "nope"), "--server-url", "http://127.0.0.1:9"])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err


def test_mountinfo_parser_finds_this_users_cometfs_mounts() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert entries == [MountEntry(Path("/home/u/comet"), 1000), MountEntry(Path("/mnt/my data"), 0)]
    assert [m.mountpoint for m in cometfs_mounts(MOUNTINFO, uid=1000)] == [Path("/home/u/comet")]
    assert len(cometfs_mounts(MOUNTINFO, uid=0)) == 2  # root sees everyone's
    assert mount_of(Path("/home/u/comet/ws/a/1.0.0/x"), entries) == Path("/home/u/comet")
    assert mount_of(Path("/home/u/other"), entries) is None


def test_hit_rate_counts_memory_and_disk_hits() -> None:
    assert hit_rate({}) is None
    assert hit_rate({"hits_memory": 2, "hits_disk": 1, "fetches": 1}) == 0.75


def test_prefetch_selects_asset_files_only(tmp_path: Path) -> None:
    version = tmp_path / "ws" / "art" / "1.0.0"
    (version / "train" / "7").mkdir(parents=True)
    (version / ".comet").mkdir()
    (version / "a.csv").write_text("a")
    (version / "train" / "7" / "0.png").write_text("p")
    (version / ".comet" / "assets.json").write_text("{}")
    (version / "remote.csv").symlink_to("s3://bucket/remote.csv")
    (version.parent / "latest").symlink_to("1.0.0")
    mounts = [MountEntry(tmp_path, None)]
    files = collect([str(version.parent)], mounts)
    assert sorted(p.relative_to(version.parent) for p in files) == [
        Path("1.0.0/a.csv"),
        Path("1.0.0/train/7/0.png"),
    ]
    # the alias given by name is followed; a quoted glob is expanded by us; no duplicates
    files = collect([str(version.parent / "latest"), str(version / "*.csv")], mounts)
    assert len(files) == 2
    with pytest.raises(CometFSError, match="not on a cometfs mount"):
        collect([str(version)], [MountEntry(Path("/elsewhere"), None)])


def test_cache_clear_refuses_a_cache_a_mount_uses(tmp_path: Path) -> None:
    used, idle = tmp_path / "aaaa", tmp_path / "bbbb"
    for d in (used, idle):
        (d / "blocks").mkdir(parents=True)
        (d / "blocks" / "0").write_bytes(b"x" * 10)
    statuses = [{"mountpoint": "/m", "cache_dir": str(used)}]
    info = cache_info(tmp_path, statuses)
    taken = (used / "blocks" / "0").stat().st_blocks * 512  # the space on disk, as du says
    assert taken >= 10
    assert [(r["cache_dir"], r["bytes"], r["used_by"]) for r in info] == [
        (str(used), taken, ["/m"]),
        (str(idle), taken, []),
    ]
    with pytest.raises(CometFSError, match="unmount first"):
        clear_caches([used, idle], statuses)
    assert used.exists() and idle.exists()
    assert clear_caches([idle], statuses) == [idle]
    assert not idle.exists()


def test_mounted_passes_options_as_flags_and_never_the_key(tmp_path: Path) -> None:
    argv = _mount_argv(
        tmp_path,
        "http://127.0.0.1:1",
        tmp_path / "c",
        {"workspace": ["a", "b"], "metadata_ttl": 5, "allow_non_empty": True, "log_file": None},
    )
    assert argv[3:] == [
        "mount",
        str(tmp_path),
        "--foreground",
        "--server-url",
        "http://127.0.0.1:1",
        "--cache-dir",
        str(tmp_path / "c"),
        "--workspace",
        "a",
        "--workspace",
        "b",
        "--metadata-ttl",
        "5",
        "--allow-non-empty",
    ]
    with pytest.raises(TypeError, match="api_keys"):
        _mount_argv(tmp_path, None, None, {"api_keys": "x"})
    assert os.environ.get("COMET_API_KEY", "\0") not in argv
