"""The disk cache trusts only a private directory of ours and files in it that are ours."""

from __future__ import annotations

import logging
import os
import stat
import struct
import zlib
from pathlib import Path

import pytest

from cometfs.errors import ConfigError
from cometfs.model import AssetKey
from cometfs.reader.disk import DiskCache

BLOCK = 1000
KEY = AssetKey("version-1", "asset-1", 10 * BLOCK)
NOBODY = 65534


def valid_block_file(data: bytes, written: Path) -> bytes:
    """A block file as the cache wrote `written`, with a correct trailer: only trust stops it."""
    magic = written.read_bytes()[-8:-4]
    return data + struct.pack(">4sI", magic, zlib.crc32(data))


def block_path(root: Path) -> Path:
    (path,) = root.rglob("*.blk")
    return path


@pytest.mark.parametrize(
    ("mode", "complaint"),
    [(0o1777, "world-writable"), (0o777, "world-writable"), (0o770, "group-writable")],
)
def test_a_directory_others_can_write_is_refused_and_left_as_is(
    tmp_path: Path, mode: int, complaint: str
) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(ConfigError) as info:
        DiskCache(root, 1 << 20, block_size=BLOCK)
    assert str(root) in str(info.value) and complaint in str(info.value)
    assert stat.S_IMODE(root.stat().st_mode) == mode, "nothing is fixed silently"
    assert list(root.iterdir()) == []


def test_a_directory_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    os.chown(root, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        DiskCache(root, 1 << 20, block_size=BLOCK)


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        DiskCache(link, 1 << 20, block_size=BLOCK)


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("not a directory")
    with pytest.raises(ConfigError, match="not a directory"):
        DiskCache(root, 1 << 20, block_size=BLOCK)


def test_a_planted_block_owned_by_another_user_is_not_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = DiskCache(tmp_path, 1 << 20, block_size=BLOCK)
    cache.put(KEY, 0, b"g" * BLOCK)
    path = block_path(tmp_path)
    path.write_bytes(valid_block_file(b"EVILEVIL" * (BLOCK // 8), path))
    os.chown(path, NOBODY, NOBODY)
    with caplog.at_level(logging.WARNING, logger="cometfs.reader.disk"):
        assert cache.get(KEY, 0, BLOCK) is None
    assert "not a regular file of this user" in caplog.text
    # The same bytes owned by us would be served: it is the owner alone that stops them.
    os.chown(path, os.geteuid(), os.getegid())
    assert cache.get(KEY, 0, BLOCK) == b"EVILEVIL" * (BLOCK // 8)


def test_a_block_that_is_a_symlink_is_not_served(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", 1 << 20, block_size=BLOCK)
    cache.put(KEY, 0, b"g" * BLOCK)
    path = block_path(tmp_path / "c")
    elsewhere = tmp_path / "elsewhere.blk"
    elsewhere.write_bytes(valid_block_file(b"E" * BLOCK, path))
    path.unlink()
    path.symlink_to(elsewhere)
    assert cache.get(KEY, 0, BLOCK) is None
    assert elsewhere.exists(), "a link is ignored, never followed to delete its target"


def test_foreign_files_are_neither_counted_nor_deleted(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20, block_size=BLOCK)
    cache.put(KEY, 0, b"g" * BLOCK)
    path = block_path(tmp_path)
    foreign = path.with_name("1.blk")
    foreign.write_bytes(valid_block_file(b"E" * BLOCK, path))
    os.chown(foreign, NOBODY, NOBODY)
    cache.clear()
    assert cache.usage() == 0
    assert foreign.exists()
    assert not path.exists()


def test_a_planted_lock_symlink_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir(mode=0o700)
    (root / ".lock").symlink_to(tmp_path / "target")
    with pytest.raises((ConfigError, OSError)):
        DiskCache(root, 1 << 20, block_size=BLOCK)
    assert not (tmp_path / "target").exists()
