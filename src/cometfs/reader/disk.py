"""The persistent disk cache of asset blocks, shared by every process that uses the directory.

Layout under the root (a directory this user owns that no one else may write, else refused):

    <root>/.lock                          flock'ed by writers; first 8 bytes: booked usage
    <root>/v2/<asset dir>/<index>.blk     data + 8-byte trailer (magic CFB2, CRC-32), 0600
    <root>/v2/<asset dir>/.<index>.blk.<pid>.<random>.tmp   a write in flight

The asset directory is a hash of (version id, asset id, size, block size): the block size is
part of it so a remount with another block size can never read a block cut differently. A
block is written to a temporary name (data and trailer in one `writev`, no copy) and renamed
into place. Every read checks owner, file type, length, magic and CRC before serving; a torn
or damaged block is deleted, a file that is a symlink or owned by someone else is never served.
Files of the first layout (`<root>/<asset dir>/`) are removed by `scan()`.

Several processes (a mount, `cometfs download`, fsspec readers) may share one directory:
- `.lock` holds the usage the processes have booked. A writer books a block's size under the
  lock before writing it; when the booked usage crosses the capacity, that writer re-measures
  the directory (still under the lock), evicts the least recently used blocks by mtime (a
  `get` refreshes the mtime) down to a low-water mark and writes the measured usage back. The
  directory as a whole therefore stays within capacity plus the blocks being written.
- Temporary files are deleted only when their pid is dead or they are over an hour old.
- A file that vanished (evicted by another process) is a miss, never an error.

Each process keeps an index of the blocks it knows of, so `holds()` answers without I/O on the
trio thread. Construction does no directory walk; `scan()` indexes the directory, removes
crash leftovers and enforces the capacity: the mount runs it in a worker thread at start-up,
and otherwise the first `put`, `discard` or `clear` runs it. Until it has run, `holds()` says
True so the worker thread's `get` looks at the file itself. All other methods block on disk
I/O and run in worker threads (`trio.to_thread.run_sync`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from cometfs.model import AssetKey
from cometfs.processes import pid_exists
from cometfs.reader.cachedir import Ledger, open_private_dir, owned_by_us

try:  # ISA-L's CRC-32 has zlib's values at ~4x the speed; zlib is the fallback.
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - depends on the environment
    from zlib import crc32 as _crc32

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1 << 20
_GIB = 1 << 30
_STALE_TMP_SECONDS = 3600.0

_TRAILER = struct.Struct(">4sI")
_MAGIC = b"CFB2"
_LAYOUT = "v2"
_BLOCK_NAME = re.compile(r"^(\d+)\.blk$")
_TMP_NAME = re.compile(r"^\.\d+\.blk\.(\d+)\.[0-9a-f]+\.tmp$")
_ASSET_DIR_NAME = re.compile(r"^[0-9a-f]{32}$")


class StatvfsResult(Protocol):
    """The fields of `os.statvfs` the free-space check reads."""

    @property
    def f_frsize(self) -> int: ...

    @property
    def f_blocks(self) -> int: ...

    @property
    def f_bavail(self) -> int: ...


class DiskCache:
    """Blocks of immutable assets on disk, persistent across mounts, shared across processes.

    `capacity` bounds the bytes of block files (trailers included) in the whole directory;
    directories are not counted. `block_size` must match the AssetReader's. Writes are
    skipped while they would leave less than `reserve_bytes` free on the file system
    (default: the larger of 1 GiB and 5% of it); `statvfs` is injectable for tests.
    """

    def __init__(
        self,
        root: Path,
        capacity_bytes: int,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        reserve_bytes: int | None = None,
        statvfs: Callable[[Path], StatvfsResult] = os.statvfs,
    ) -> None:
        if capacity_bytes < 0:
            raise ValueError("disk cache capacity must be >= 0")
        if block_size < 1:
            raise ValueError("block size must be >= 1")
        self.root = Path(root)
        self.capacity = capacity_bytes
        self.block_size = block_size
        self.reserve_bytes = reserve_bytes
        self.skipped_low_space = 0
        self._statvfs = statvfs
        entry = block_size + _TRAILER.size
        # Evict a sixteenth below capacity (whole blocks) so a full cache re-measures the
        # directory once per many writes, not on every one.
        self._low_water = capacity_bytes - (capacity_bytes // 16) // entry * entry
        self._blocks = self.root / _LAYOUT
        open_private_dir(self.root)
        open_private_dir(self._blocks, what="cache block directory")
        self._ledger = Ledger(self.root / ".lock")
        self._lock = threading.Lock()  # guards the index and the flags below
        self._index: set[Path] = set()
        self._usage = self._ledger.peek()
        self._scanned = False
        self._scan_lock = threading.Lock()
        self._known_dirs: set[Path] = set()
        self._warned_space = False
        self._warned_foreign = False

    # -- public API ---------------------------------------------------------------------------

    def scan(self) -> None:
        """Index the directory, drop crash leftovers and old layouts, enforce the capacity.

        Walks the whole cache: run it in a worker thread. Idempotent; later calls return at once.
        """
        with self._scan_lock:
            if self._scanned:
                return
            for child in self.root.iterdir():
                # The first layout kept asset directories right under the root.
                if _ASSET_DIR_NAME.match(child.name) and _is_real_dir(child):
                    shutil.rmtree(child, ignore_errors=True)
            with self._ledger.locked() as ledger:
                self._measure_and_evict(ledger, self.capacity)
            self._scanned = True
            logger.debug("disk cache %s: %d blocks, %d bytes", self.root, len(self), self._usage)

    def get(self, key: AssetKey, block_index: int, expected_len: int) -> bytes | None:
        """The block's bytes if present, ours and intact; a damaged one is deleted."""
        path = self._block_path(key, block_index)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # missing (maybe evicted by another process), or a symlink: a miss
            self._forget(path)
            return None
        try:
            st = os.fstat(fd)
            if not owned_by_us(st):
                self._warn_foreign(path, st)
                self._forget(path)
                return None
            data = _read_block(fd, st.st_size, expected_len)
            if data is None:
                logger.warning(
                    "disk cache: dropping corrupt block %s (%d bytes, expected %d + trailer)",
                    path,
                    st.st_size,
                    expected_len,
                )
                self._remove(path, expected_len + _TRAILER.size)
                return None
            with contextlib.suppress(OSError):
                _stamp(fd)
        finally:
            os.close(fd)
        with self._lock:
            self._index.add(path)
        return data

    def put(self, key: AssetKey, block_index: int, data: bytes | bytearray | memoryview) -> None:
        """Store a block atomically (temporary file + rename) within the shared capacity.

        `data` is any buffer; it is written as is, not copied. Skipped when it cannot fit the
        capacity or the file system's free-space reserve, or when the block is already there.
        """
        errors = self.put_many([(key, block_index, data)])
        if errors:
            raise errors[0]

    def put_many(
        self, blocks: Sequence[tuple[AssetKey, int, bytes | bytearray | memoryview]]
    ) -> list[OSError]:
        """Store several blocks as `put` does, booking them in the shared ledger and checking
        the free-space reserve once for all (a walk over small files writes many at once).

        A block that fails to be written is returned with the others' errors and unbooked;
        the rest are stored.
        """
        if not self._scanned:
            self.scan()
        todo: dict[Path, tuple[memoryview, int]] = {}  # a block given twice is written once
        for key, block_index, data in blocks:
            view = memoryview(data).cast("B")
            size = view.nbytes + _TRAILER.size
            path = self._block_path(key, block_index)
            if size <= self.capacity and path not in todo and not self._already_stored(path, size):
                todo[path] = (view, size)
        total = sum(size for _, size in todo.values())
        if not todo or not self._space_for(total, len(todo)):
            return []
        with self._ledger.locked() as ledger:
            booked = ledger.add(total)
            if booked > self.capacity:
                self._measure_and_evict(ledger, self._low_water - total)
                booked = ledger.add(total)
            self._usage = booked
        errors: list[OSError] = []
        written: list[Path] = []
        stored = 0
        try:
            for path, (view, size) in todo.items():
                try:
                    self._write(path, view)
                except OSError as exc:
                    errors.append(exc)
                else:
                    written.append(path)
                    stored += size
        finally:
            if stored < total:
                with self._ledger.locked() as ledger:
                    self._usage = ledger.add(stored - total)
            with self._lock:
                self._index.update(written)
        return errors

    def discard(self, key: AssetKey) -> None:
        """Delete every block of one asset (its bytes turned out not to be what was listed)."""
        if not self._scanned:
            self.scan()
        asset_dir = self._block_path(key, 0).parent
        with self._ledger.locked() as ledger:
            freed = 0
            for entry in _scandir(asset_dir):
                if _BLOCK_NAME.match(entry.name):
                    freed += _unlink_entry(entry)
            self._usage = ledger.add(-freed)
        with self._lock:
            self._index = {p for p in self._index if p.parent != asset_dir}

    def holds(self, key: AssetKey, block_index: int) -> bool:
        """Whether the block is probably on disk: no file I/O, so the trio thread may ask.

        Read without the lock (a set membership test is atomic). Before `scan()` has run the
        answer is True, so the worker thread's get() looks for the file itself. A True may
        still turn into a miss in get(); blocks written by other processes since the last
        scan or eviction are not known and read False.
        """
        return not self._scanned or self._block_path(key, block_index) in self._index

    def usage(self) -> int:
        """Bytes of block files in the directory, as last booked or measured by this process.

        Read without the lock (an int read is atomic) so the trio thread may call it for stats.
        """
        return self._usage

    def clear(self) -> None:
        """Delete every cached block; files that are not ours and live writes are left alone."""
        if not self._scanned:
            self.scan()
        with self._ledger.locked() as ledger:
            self._measure_and_evict(ledger, 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    # -- internals ----------------------------------------------------------------------------

    def _block_path(self, key: AssetKey, block_index: int) -> Path:
        return _block_path(self._blocks, key, self.block_size, block_index)

    def _already_stored(self, path: Path, size: int) -> bool:
        """A block of the right size is there already (this or another process wrote it)."""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not owned_by_us(st) or st.st_size != size:
            return False
        with self._lock:
            self._index.add(path)
        return True

    def _space_for(self, size: int, blocks: int = 1) -> bool:
        """Whether writing `size` bytes (of `blocks` blocks) keeps the file system's
        free-space reserve."""
        try:
            fs = self._statvfs(self.root)
        except OSError:
            return True  # cannot tell: the write itself will report a full disk
        total = fs.f_blocks * fs.f_frsize
        reserve = self.reserve_bytes if self.reserve_bytes is not None else max(_GIB, total // 20)
        if fs.f_bavail * fs.f_frsize - size >= reserve:
            return True
        self.skipped_low_space += blocks
        if not self._warned_space:
            self._warned_space = True
            logger.warning(
                "disk cache %s: less than %d bytes would stay free on its file system; "
                "not caching blocks while that lasts",
                self.root,
                reserve,
            )
        return False

    def _write(self, path: Path, view: memoryview) -> None:
        trailer = _TRAILER.pack(_MAGIC, _crc32(view))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        for attempt in range(2):
            if path.parent not in self._known_dirs:
                path.parent.mkdir(mode=0o700, exist_ok=True)
                self._known_dirs.add(path.parent)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                break
            except FileNotFoundError:
                # Another process removed the emptied asset directory: make it again.
                self._known_dirs.discard(path.parent)
                if attempt:
                    raise
        try:
            try:
                _write_all(fd, [view, trailer])
                _stamp(fd)
            finally:
                os.close(fd)
            # No fsync: a block lost in a power cut is refetched, a torn one fails its CRC.
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _measure_and_evict(self, ledger: Ledger, target: int) -> None:
        """Measure the directory and delete least recently used blocks down to `target`.

        Called with the ledger lock held. Counts live temporary files (writes in flight),
        deletes dead ones, leaves files that are not ours alone, rebuilds the index.
        """
        blocks: list[tuple[int, Path, int]] = []
        total = 0
        now = time.time()
        for asset_dir in _scandir(self._blocks):
            if not _ASSET_DIR_NAME.match(asset_dir.name) or not asset_dir.is_dir(
                follow_symlinks=False
            ):
                continue
            for entry in _scandir(Path(asset_dir.path)):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not owned_by_us(st):
                    continue
                tmp = _TMP_NAME.match(entry.name)
                if tmp:
                    if _is_stale_tmp(int(tmp.group(1)), st.st_mtime, now):
                        _unlink_entry(entry)
                    else:
                        total += st.st_size
                elif _BLOCK_NAME.match(entry.name):
                    blocks.append((st.st_mtime_ns, Path(entry.path), st.st_size))
                    total += st.st_size
        blocks.sort(key=lambda item: item[0])
        evicted = 0
        while evicted < len(blocks) and total > target:
            _, path, size = blocks[evicted]
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            evicted += 1
        for emptied in {path.parent for _, path, _ in blocks[:evicted]}:
            _rmdir_if_empty(emptied)
            self._known_dirs.discard(emptied)
        survivors = {path for _, path, _ in blocks[evicted:]}
        ledger.write(total)
        self._usage = total
        with self._lock:
            self._index = survivors

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._index.discard(path)

    def _remove(self, path: Path, booked: int) -> None:
        """Delete a damaged block and return the `booked` bytes its write booked."""
        self._forget(path)
        with self._ledger.locked() as ledger:
            try:
                path.unlink()
            except FileNotFoundError:
                return
            self._usage = ledger.add(-booked)

    def _warn_foreign(self, path: Path, st: os.stat_result) -> None:
        if not self._warned_foreign:
            self._warned_foreign = True
            logger.warning(
                "disk cache: ignoring %s: not a regular file of this user (uid %d, mode %o)",
                path,
                st.st_uid,
                st.st_mode,
            )


# holds() asks on the trio thread for every block a read needs: a hash and two pathlib joins
# cost ~20 us there, a cache hit ~1 us. lru_cache is thread-safe (workers ask too).
@functools.lru_cache(maxsize=8192)
def _block_path(blocks: Path, key: AssetKey, block_size: int, block_index: int) -> Path:
    ident = f"{key.version_id}\0{key.asset_id}\0{key.size}\0{block_size}"
    digest = hashlib.blake2b(ident.encode("utf-8"), digest_size=16).hexdigest()
    return blocks / digest / f"{block_index}.blk"


def _read_block(fd: int, file_size: int, expected_len: int) -> bytes | None:
    """The data part of an open block file, or None if its length, magic or CRC is wrong."""
    if file_size != expected_len + _TRAILER.size:
        return None
    data = os.read(fd, expected_len) if expected_len else b""
    trailer = os.read(fd, _TRAILER.size + 1)  # one more byte: the file grew under us
    if len(data) != expected_len or len(trailer) != _TRAILER.size:
        return None
    magic, crc = _TRAILER.unpack(trailer)
    if magic != _MAGIC or _crc32(data) != crc:
        return None
    return data


def _stamp(fd: int) -> None:
    """Record a use in the file's mtime, the shared last-use record eviction sorts by.

    Set from the clock, not left to the kernel: its file timestamps tick only every few
    milliseconds, which would tie blocks written or read in quick succession.
    """
    now = time.time_ns()
    os.utime(fd, ns=(now, now))


def _write_all(fd: int, buffers: list[memoryview | bytes]) -> None:
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _is_stale_tmp(pid: int, mtime: float, now: float) -> bool:
    return now - mtime > _STALE_TMP_SECONDS or not pid_exists(pid)


def _scandir(path: Path) -> Iterator[os.DirEntry[str]]:
    """Entries of a directory; a directory that vanished under us is empty."""
    try:
        with os.scandir(path) as entries:
            yield from entries
    except (FileNotFoundError, NotADirectoryError):
        return


def _unlink_entry(entry: os.DirEntry[str]) -> int:
    """Delete a file of ours; its size if this call deleted it, else 0."""
    try:
        st = entry.stat(follow_symlinks=False)
        if not owned_by_us(st):
            return 0
        os.unlink(entry.path)
    except FileNotFoundError:
        return 0
    return st.st_size


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: still in use
        path.rmdir()


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()
