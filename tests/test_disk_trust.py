"""The disk cache trusts only a private directory of ours and files in it that are ours."""

from __future__ import annotations

import logging
import os
import stat
import struct
import time
import zlib
from pathlib import Path

import pytest

from cometfs.errors import ConfigError
from cometfs.model import AssetKey
from cometfs.reader.disk import DiskCache

BLOCK = 1000
KEY = AssetKey("version-1", "asset-1", 10 * BLOCK)
NOBODY = 65534
RECORD_0 = 20  # block 0's record: after the header (magic, asset size, block size)
DATA_0 = 4096  # block 0's bytes: the record table rounded up to a page


def valid_asset_file(data: bytes, written: Path) -> bytes:
    """The asset file the cache wrote as `written` with block 0 replaced by `data` and a
    correct CRC in its record: only trust stops it."""
    raw = bytearray(written.read_bytes())
    raw[DATA_0 : DATA_0 + len(data)] = data
    struct.pack_into(">I", raw, RECORD_0 + 4, zlib.crc32(data))
    return bytes(raw)


def asset_path(root: Path) -> Path:
    (path,) = (root / "v3").iterdir()
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


def test_a_planted_asset_file_owned_by_another_user_is_not_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = DiskCache(tmp_path, 1 << 20, block_size=BLOCK)
    cache.put(KEY, 0, b"g" * BLOCK)
    path = asset_path(tmp_path)
    path.write_bytes(valid_asset_file(b"EVILEVIL" * (BLOCK // 8), path))
    os.chown(path, NOBODY, NOBODY)
    with caplog.at_level(logging.WARNING, logger="cometfs.reader.disk"):
        assert cache.get(KEY, 0, BLOCK) is None
    assert "not a regular file of this user" in caplog.text
    # The same bytes owned by us would be served: it is the owner alone that stops them.
    os.chown(path, os.geteuid(), os.getegid())
    assert cache.get(KEY, 0, BLOCK) == b"EVILEVIL" * (BLOCK // 8)


def test_an_asset_file_that_is_a_symlink_is_not_served(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", 1 << 20, block_size=BLOCK)
    cache.put(KEY, 0, b"g" * BLOCK)
    path = asset_path(tmp_path / "c")
    elsewhere = tmp_path / "elsewhere"
    planted = valid_asset_file(b"E" * BLOCK, path)
    elsewhere.write_bytes(planted)
    path.unlink()
    path.symlink_to(elsewhere)
    assert cache.get(KEY, 0, BLOCK) is None
    cache.clear()
    assert cache.usage() == 0
    assert path.is_symlink()
    assert elsewhere.read_bytes() == planted, "a link is ignored, never followed to free blocks"
    # The same file in place of the link would be served: it is the link alone that stops it.
    path.unlink()
    elsewhere.rename(path)
    assert cache.get(KEY, 0, BLOCK) == b"E" * BLOCK


def test_foreign_files_are_neither_counted_nor_deleted(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20, block_size=BLOCK)
    cache.put(KEY, 0, b"g" * BLOCK)
    path = asset_path(tmp_path)
    long_ago = time.time() - 3600
    foreign = {  # each would be counted or deleted if it were ours
        path.with_name("a" * 32): valid_asset_file(b"E" * BLOCK, path),
        path.with_name("b" * 32): b"not an asset file",
        path.with_name("c" * 32): b"",
    }
    for other, content in foreign.items():
        other.write_bytes(content)
        os.utime(other, (long_ago, long_ago))
        os.chown(other, NOBODY, NOBODY)
    counting = DiskCache(tmp_path, 1 << 20, block_size=BLOCK)
    counting.scan()
    assert counting.usage() == BLOCK + 16
    cache.clear()
    assert cache.usage() == 0
    assert {other: other.read_bytes() for other in foreign} == foreign
    assert not path.exists()


def test_discard_leaves_a_foreign_file_alone(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20, block_size=BLOCK)
    cache.put(KEY, 0, b"g" * BLOCK)
    path = asset_path(tmp_path)
    os.chown(path, NOBODY, NOBODY)
    cache.discard(KEY)
    assert path.exists(), "a file of another user is never deleted"
    assert cache.usage() == BLOCK + 16, "nor unbooked"


@pytest.mark.parametrize("taken_by", ["symlink", "directory"])
def test_a_name_taken_by_what_is_not_ours_is_skipped_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, taken_by: str
) -> None:
    cache = DiskCache(tmp_path / "c", 1 << 20, block_size=BLOCK)
    cache.put(KEY, 0, b"g" * BLOCK)
    path = asset_path(tmp_path / "c")
    path.unlink()
    target = tmp_path / "elsewhere"
    if taken_by == "symlink":
        target.write_bytes(b"")
        path.symlink_to(target)
    else:
        path.mkdir()
    with caplog.at_level(logging.WARNING, logger="cometfs.reader.disk"):
        assert cache.put_many([(KEY, 1, b"h" * BLOCK)]) == []
    assert "not a regular file of this user" in caplog.text
    assert not cache.holds(KEY, 1)
    assert taken_by == "directory" or target.read_bytes() == b"", "a link is never written"


def test_a_planted_lock_symlink_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir(mode=0o700)
    (root / ".lock").symlink_to(tmp_path / "target")
    with pytest.raises((ConfigError, OSError)):
        DiskCache(root, 1 << 20, block_size=BLOCK)
    assert not (tmp_path / "target").exists()
