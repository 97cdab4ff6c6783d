"""DiskCache on its own: layout, validation, LRU eviction, persistence, permissions."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cometfs.model import AssetKey
from cometfs.reader.disk import DiskCache

BLOCK = 1000
TRAILER = 8
ENTRY = BLOCK + TRAILER  # bytes one full block takes on disk

KEY = AssetKey("version-1", "asset-1", 10 * BLOCK)
OTHER = AssetKey("version-1", "asset-2", 10 * BLOCK)


def block(n: int, fill: int | None = None) -> bytes:
    return bytes([(fill if fill is not None else n) % 256]) * BLOCK


def block_files(root: Path) -> list[Path]:
    return sorted(root.glob("v2/*/*.blk"))


def only_file(root: Path) -> Path:
    (path,) = block_files(root)
    return path


def test_put_then_get_round_trips(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 3, block(3))
    assert cache.get(KEY, 3, BLOCK) == block(3)
    assert cache.get(KEY, 4, BLOCK) is None
    assert cache.get(OTHER, 3, BLOCK) is None
    assert cache.usage() == ENTRY


def test_short_last_block(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 9, b"tail")
    assert cache.get(KEY, 9, 4) == b"tail"


def test_blocks_persist_across_instances(tmp_path: Path) -> None:
    DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK).put(KEY, 0, block(0))
    again = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    again.scan()
    assert again.usage() == ENTRY
    assert again.holds(KEY, 0)
    assert again.get(KEY, 0, BLOCK) == block(0)


def test_other_block_size_never_sees_the_blocks(tmp_path: Path) -> None:
    DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK).put(KEY, 1, block(1))
    other = DiskCache(tmp_path, 100 * ENTRY, block_size=2 * BLOCK)
    assert other.get(KEY, 1, BLOCK) is None


def test_permissions_are_private(tmp_path: Path) -> None:
    root = tmp_path / "nested" / "cache"
    cache = DiskCache(root, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    path = only_file(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[:-1], id="truncated"),
        pytest.param(lambda raw: raw[:100], id="truncated-to-data"),
        pytest.param(lambda raw: bytes([raw[0] ^ 1]) + raw[1:], id="flipped-data-bit"),
        pytest.param(lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), id="flipped-crc-bit"),
        pytest.param(lambda raw: raw + b"x", id="extended"),
        pytest.param(lambda raw: b"", id="emptied"),
    ],
)
def test_corrupt_block_is_dropped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: object
) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(7))
    path = only_file(tmp_path)
    assert callable(damage)
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="cometfs.reader.disk"):
        assert cache.get(KEY, 0, BLOCK) is None
        assert cache.get(KEY, 0, BLOCK) is None
    assert not path.exists()
    assert cache.usage() == 0
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_wrong_expected_length_is_treated_as_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    with caplog.at_level(logging.WARNING, logger="cometfs.reader.disk"):
        assert cache.get(KEY, 0, BLOCK - 1) is None
    assert block_files(tmp_path) == []


def test_file_deleted_behind_our_back_is_a_miss(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    only_file(tmp_path).unlink()  # as another process's eviction would
    assert cache.get(KEY, 0, BLOCK) is None
    assert not cache.holds(KEY, 0)
    cache.clear()  # any later measurement books the directory as it is
    assert cache.usage() == 0


def test_eviction_keeps_usage_within_capacity_and_drops_least_recently_used(
    tmp_path: Path,
) -> None:
    cache = DiskCache(tmp_path, 3 * ENTRY, block_size=BLOCK)
    for i in range(3):
        cache.put(KEY, i, block(i))
    assert cache.get(KEY, 0, BLOCK) == block(0)  # 0 is now the most recently used
    cache.put(KEY, 3, block(3))
    assert cache.usage() == 3 * ENTRY
    assert cache.get(KEY, 1, BLOCK) is None  # the least recently used went
    for i in (0, 2, 3):
        assert cache.get(KEY, i, BLOCK) == block(i)
    assert len(block_files(tmp_path)) == 3


def test_many_puts_never_exceed_capacity(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 5 * ENTRY + 3, block_size=BLOCK)
    for i in range(40):
        cache.put(KEY if i % 2 else OTHER, i, block(i))
        assert cache.usage() <= cache.capacity
        on_disk = sum(p.stat().st_size for p in block_files(tmp_path))
        assert on_disk == cache.usage()


def test_rewriting_a_block_does_not_double_count(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    cache.put(KEY, 0, block(0))
    assert cache.usage() == ENTRY


def test_block_larger_than_capacity_is_not_stored(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, BLOCK, block_size=BLOCK)  # no room for the trailer
    cache.put(KEY, 0, block(0))
    assert cache.usage() == 0
    assert cache.get(KEY, 0, BLOCK) is None


def test_recency_survives_a_restart(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    for i in range(3):
        cache.put(KEY, i, block(i))
    paths = {int(p.stem): p for p in block_files(tmp_path)}
    # Deterministic last-use times: block 1 oldest, then 2, then 0.
    for age, index in enumerate((0, 2, 1)):
        os.utime(paths[index], (1_000_000 - age * 100, 1_000_000 - age * 100))
    smaller = DiskCache(tmp_path, 2 * ENTRY, block_size=BLOCK)  # remount with a lower limit
    smaller.scan()
    assert smaller.usage() == 2 * ENTRY
    assert smaller.get(KEY, 1, BLOCK) is None
    assert smaller.get(KEY, 0, BLOCK) == block(0)
    assert smaller.get(KEY, 2, BLOCK) == block(2)


def test_get_refreshes_the_persistent_last_use(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    path = only_file(tmp_path)
    os.utime(path, (1000, 1000))
    cache.get(KEY, 0, BLOCK)
    assert path.stat().st_mtime > 1000


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_temp_files_of_a_crashed_process_are_removed_by_scan(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    asset_dir = only_file(tmp_path).parent
    leftover = asset_dir / f".1.blk.{dead_pid()}.deadbeef.tmp"
    leftover.write_bytes(b"half a block")
    DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK).scan()
    assert not leftover.exists()
    assert [p.name for p in asset_dir.iterdir()] == ["0.blk"]


def test_live_and_recent_temp_files_of_another_process_are_kept(tmp_path: Path) -> None:
    """Another process's write in flight survives our scan, eviction and clear."""
    cache = DiskCache(tmp_path, 2 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    asset_dir = only_file(tmp_path).parent
    live = asset_dir / f".5.blk.{os.getppid()}.cafebabe.tmp"
    live.write_bytes(b"x" * 10)
    old = asset_dir / f".6.blk.{os.getppid()}.0badf00d.tmp"
    old.write_bytes(b"x" * 10)
    os.utime(old, (time.time() - 7200, time.time() - 7200))  # over an hour: abandoned
    other = DiskCache(tmp_path, 2 * ENTRY, block_size=BLOCK)
    other.scan()
    for i in range(1, 6):
        other.put(KEY, i, block(i))
    other.clear()
    assert live.exists()
    assert not old.exists()


def test_put_leaves_no_temp_files(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    for i in range(5):
        cache.put(KEY, i, block(i))
    assert not list(tmp_path.rglob("*.tmp"))


def test_unrelated_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("mine")
    cache = DiskCache(tmp_path, 10 * ENTRY, block_size=BLOCK)
    cache.put(KEY, 0, block(0))
    cache.clear()
    assert (tmp_path / "README").read_text() == "mine"
    assert block_files(tmp_path) == []
    assert cache.usage() == 0
    assert cache.get(KEY, 0, BLOCK) is None


def test_concurrent_threads_keep_the_index_consistent(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 20 * ENTRY, block_size=BLOCK)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for i in range(60):
                index = (seed * 7 + i) % 30
                cache.put(KEY, index, block(index))
                got = cache.get(KEY, (index * 3) % 30, BLOCK)
                assert got is None or got == block((index * 3) % 30)
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not errors
    assert cache.usage() <= cache.capacity
    restarted = DiskCache(tmp_path, 20 * ENTRY, block_size=BLOCK)
    for path in block_files(tmp_path):
        assert restarted.get(KEY, int(path.stem), BLOCK) == block(int(path.stem))


def test_rejects_negative_capacity(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DiskCache(tmp_path, -1)


def test_discard_drops_one_asset_only(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 100 * ENTRY, block_size=BLOCK)
    for i in range(3):
        cache.put(KEY, i, block(i))
    cache.put(OTHER, 0, block(9))
    cache.discard(KEY)
    assert cache.usage() == ENTRY
    assert all(cache.get(KEY, i, BLOCK) is None for i in range(3))
    assert cache.get(OTHER, 0, BLOCK) == block(9)
    assert len(block_files(tmp_path)) == 1


def test_holds_follows_puts_evictions_and_discards(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 3 * 1024, block_size=1024)
    key = AssetKey("v", "held", 10 * 1024)
    cache.scan()
    assert not cache.holds(key, 0)
    cache.put(key, 0, b"a" * 1000)
    assert cache.holds(key, 0) and not cache.holds(key, 1)
    for index in (1, 2, 3):  # the capacity fits two blocks with their trailers
        cache.put(key, index, b"b" * 1000)
    assert not cache.holds(key, 0), "evicted blocks are no longer held"
    assert cache.holds(key, 3)
    cache.discard(key)
    assert not any(cache.holds(key, index) for index in range(4))


def test_put_many_stores_the_blocks_it_can_and_books_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = DiskCache(tmp_path / "c", 100 * ENTRY, block_size=BLOCK)
    real_write = cache._write

    def write(path: Path, view: memoryview) -> None:
        if path == cache._block_path(OTHER, 1):
            raise OSError(28, "No space left on device")
        real_write(path, view)

    monkeypatch.setattr(cache, "_write", write)
    errors = cache.put_many([(KEY, 0, block(0)), (OTHER, 1, block(1)), (OTHER, 2, block(2))])
    assert [e.errno for e in errors] == [28]
    assert cache.get(KEY, 0, BLOCK) == block(0)
    assert cache.get(OTHER, 1, BLOCK) is None
    assert cache.get(OTHER, 2, BLOCK) == block(2)
    assert cache.usage() == 2 * ENTRY
    assert DiskCache(tmp_path / "c", 100 * ENTRY, block_size=BLOCK).usage() == 2 * ENTRY


def test_put_many_writes_and_books_a_block_given_twice_once(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", 100 * ENTRY, block_size=BLOCK)
    assert cache.put_many([(KEY, 0, block(0)), (KEY, 0, block(0))]) == []
    assert cache.usage() == ENTRY
    assert len(block_files(tmp_path / "c")) == 1


def test_put_many_skips_a_batch_that_would_eat_the_free_space_reserve(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", 100 * ENTRY, block_size=BLOCK, reserve_bytes=1 << 62)
    assert cache.put_many([(KEY, 0, block(0)), (KEY, 1, block(1))]) == []
    assert cache.skipped_low_space == 2
    assert block_files(tmp_path / "c") == []
    assert cache.usage() == 0
