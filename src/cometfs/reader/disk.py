"""The persistent disk cache of asset blocks, bounded in bytes, least recently used evicted.

Layout under the root (0700):

    <root>/<asset dir>/<block index>.blk      data + 8-byte trailer (magic, CRC-32), mode 0600

The asset directory is a hash of (version id, asset id, size, block size): the block size is
part of it so a remount with another block size can never read a block cut differently. Files
are written to a temporary name in the same directory and renamed into place, so a crash leaves
either the old state or a whole file; temporary files are removed at start. Every block is
checked (length and CRC) before it is trusted; a bad one is deleted.

All methods are synchronous and block on disk I/O: they run in worker threads
(`trio.to_thread.run_sync`), never on the trio thread. A lock guards the index; file I/O runs
outside it, and the races that leaves (a file evicted while read, a block written twice)
only ever cost a cache miss. One cache directory serves one mount process at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path

from cometfs.model import AssetKey

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1 << 20

_TRAILER = struct.Struct(">4sI")
_MAGIC = b"CFB1"
_BLOCK_NAME = re.compile(r"^(\d+)\.blk$")
_TMP_SUFFIX = ".tmp"
_ASSET_DIR_NAME = re.compile(r"^[0-9a-f]{32}$")


class DiskCache:
    """Blocks of immutable assets on disk, persistent across mounts.

    `capacity` bounds the bytes of block files (trailers included); directories are not
    counted. `block_size` must match the AssetReader's.
    """

    def __init__(
        self, root: Path, capacity_bytes: int, *, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> None:
        if capacity_bytes < 0:
            raise ValueError("disk cache capacity must be >= 0")
        if block_size < 1:
            raise ValueError("block size must be >= 1")
        self.root = Path(root)
        self.capacity = capacity_bytes
        self.block_size = block_size
        self._lock = threading.Lock()
        # path -> size in bytes, least recently used first.
        self._index: OrderedDict[Path, int] = OrderedDict()
        self._usage = 0
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._scan()
        with self._lock:
            self._evict_locked()

    # -- public API ---------------------------------------------------------------------------

    def get(self, key: AssetKey, block_index: int, expected_len: int) -> bytes | None:
        """The block's bytes if present and intact; a corrupt entry is deleted and None returned."""
        path = self._block_path(key, block_index)
        with self._lock:
            if path not in self._index:
                return None
            self._index.move_to_end(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self._forget(path)
            return None
        data = _unwrap(raw, expected_len)
        if data is None:
            logger.warning(
                "disk cache: dropping corrupt block %s (%d bytes, expected %d + trailer)",
                path,
                len(raw),
                expected_len,
            )
            self._remove(path)
            return None
        self._touch(path)
        return data

    def put(self, key: AssetKey, block_index: int, data: bytes) -> None:
        """Store a block atomically (temporary file + rename), then evict down to capacity."""
        size = len(data) + _TRAILER.size
        if size > self.capacity:
            return
        path = self._block_path(key, block_index)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        _write_atomically(path, data + _TRAILER.pack(_MAGIC, zlib.crc32(data)))
        with self._lock:
            self._usage -= self._index.pop(path, 0)
            self._index[path] = size
            self._usage += size
            self._evict_locked()

    def discard(self, key: AssetKey) -> None:
        """Delete every block of one asset (its bytes turned out not to be what was listed)."""
        asset_dir = self._block_path(key, 0).parent
        with self._lock:
            for path in [p for p in self._index if p.parent == asset_dir]:
                self._usage -= self._index.pop(path)
                _unlink_quietly(path)

    def holds(self, key: AssetKey, block_index: int) -> bool:
        """Whether the index lists the block: no file I/O, so the trio thread may ask.

        Read without the lock (a dict membership test is atomic). A True may still turn
        into a miss in get() (the file vanished or is corrupt); a False is never wrong for
        blocks written before the call.
        """
        return self._block_path(key, block_index) in self._index

    def usage(self) -> int:
        """Bytes of cached block files.

        Read without the lock (an int read is atomic) so the trio thread may call it for stats.
        """
        return self._usage

    def clear(self) -> None:
        """Delete every cached block; files under the root that are not ours are left alone."""
        with self._lock:
            self._index.clear()
            self._usage = 0
            for child in self.root.iterdir():
                if _ASSET_DIR_NAME.match(child.name) and _is_real_dir(child):
                    shutil.rmtree(child, ignore_errors=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    # -- internals ----------------------------------------------------------------------------

    def _block_path(self, key: AssetKey, block_index: int) -> Path:
        ident = f"{key.version_id}\0{key.asset_id}\0{key.size}\0{self.block_size}"
        digest = hashlib.blake2b(ident.encode("utf-8"), digest_size=16).hexdigest()
        return self.root / digest / f"{block_index}.blk"

    def _scan(self) -> None:
        """Index the blocks a previous mount left, oldest use first; drop crash leftovers."""
        found: list[tuple[float, Path, int]] = []
        for asset_dir in self.root.iterdir():
            if not _ASSET_DIR_NAME.match(asset_dir.name) or not _is_real_dir(asset_dir):
                continue
            for entry in os.scandir(asset_dir):
                if entry.name.endswith(_TMP_SUFFIX):
                    _unlink_quietly(Path(entry.path))
                elif _BLOCK_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found.append((st.st_mtime, Path(entry.path), st.st_size))
            _rmdir_if_empty(asset_dir)
        found.sort(key=lambda item: item[0])
        with self._lock:
            for _, path, size in found:
                self._index[path] = size
                self._usage += size
        logger.debug("disk cache %s: %d blocks, %d bytes", self.root, len(found), self._usage)

    def _evict_locked(self) -> None:
        while self._index and self._usage > self.capacity:
            path, size = self._index.popitem(last=False)
            self._usage -= size
            _unlink_quietly(path)

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._usage -= self._index.pop(path, 0)

    def _remove(self, path: Path) -> None:
        self._forget(path)
        _unlink_quietly(path)

    @staticmethod
    def _touch(path: Path) -> None:
        # The file's mtime is the persistent record of last use, read back by the next scan.
        with contextlib.suppress(OSError):
            os.utime(path)


def _unwrap(raw: bytes, expected_len: int) -> bytes | None:
    """The data part of a block file, or None if its length, magic or CRC is wrong."""
    if len(raw) != expected_len + _TRAILER.size:
        return None
    magic, crc = _TRAILER.unpack_from(raw, expected_len)
    data = raw[:expected_len]
    if magic != _MAGIC or zlib.crc32(data) != crc:
        return None
    return data


def _write_atomically(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}{_TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
        # No fsync: a block lost in a power cut is refetched, a torn one fails its CRC.
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: still in use
        path.rmdir()


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()
