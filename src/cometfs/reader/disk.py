"""The persistent disk cache of asset blocks, shared by every process that uses the directory.

Layout under the root (a directory this user owns that no one else may write, else refused):

    <root>/.lock               flock'ed by writers; first 8 bytes: booked usage
    <root>/v3/<asset file>     one sparse file per asset, 0600

The asset file's name is a hash of (version id, asset id, size, block size): the block size
is part of it so a remount with another block size can never read a block cut differently.
The file holds a header (magic CFA3, asset size, block size), a table with one 16-byte
record per block (magic CFB3, CRC-32 of the block, last use in ns; zeros while the block is
absent), then the blocks themselves at fixed offsets from the next page boundary. A block is
written with `pwrite` (its data, then its record), so a write costs no file create, rename
or directory entry: one file per block spent more CPU on those than on the bytes (cold
1 GiB read 424 -> 537 MB/s, 2.74 -> 2.07 CPU-s/GiB with one file per asset). Every read
checks owner, file type, record and CRC before serving; a block whose bytes do not match its
record is dropped, a file that is a symlink or owned by someone else is never served. Older
layouts (`<root>/<asset dir>/`, `<root>/v2/`) are removed by `scan()`.

Several processes (a mount, `cometfs download`, fsspec readers) may share one directory:
- `.lock` holds the usage the processes have booked. A writer books a block's size under the
  lock before writing it; when the booked usage crosses the capacity, that writer re-measures
  the directory (still under the lock), evicts the least recently used blocks (a `get`
  refreshes the block's last use) down to a low-water mark and writes the measured usage
  back. The directory as a whole therefore stays within capacity plus the blocks being
  written. An evicted block's record is cleared first, then its bytes are freed with
  FALLOC_FL_PUNCH_HOLE; a file left without blocks is deleted.
- A block evicted by another process is a miss, never an error; a block that another process
  writes into a file this one has just deleted is lost (a miss later), and its booked bytes
  stay counted until the next measurement.

Each process keeps an index of the blocks it knows of, so `holds()` answers without I/O on the
trio thread. Construction does no directory walk; `scan()` indexes the directory, removes
old layouts and enforces the capacity: the mount runs it in a worker thread at start-up,
and otherwise the first `put`, `discard` or `clear` runs it. Until it has run, `holds()` says
True so the worker thread's `get` looks at the file itself. All other methods block on disk
I/O and run in worker threads (`trio.to_thread.run_sync`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import logging
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from cometfs.model import AssetKey
from cometfs.reader.cachedir import Ledger, open_private_dir, owned_by_us

try:  # ISA-L's CRC-32 has zlib's values at ~4x the speed; zlib is the fallback.
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - depends on the environment
    from zlib import crc32 as _crc32

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1 << 20
_GIB = 1 << 30
# A file with no block and no write for this long is a leftover (its writer died or lost
# the race with an eviction), not a file another process is about to fill.
_EMPTY_GRACE_SECONDS = 60.0

_HEADER = struct.Struct(">4sQQ")  # magic, asset size, block size
_HEADER_MAGIC = b"CFA3"
_RECORD = struct.Struct(">4sIq")  # magic, CRC-32, last use (ns since the epoch)
_RECORD_MAGIC = b"CFB3"
_LAST_USE = struct.Struct(">q")
_ABSENT = bytes(_RECORD.size)
_PAGE = 4096
_LAYOUT = "v3"
_OLD_LAYOUTS = ("v2",)
_ASSET_NAME = re.compile(r"^[0-9a-f]{32}$")
# What opening an asset file for writing raises when its name is a symlink, a directory or
# a file of another user: not ours to write, and not a disk failure either.
_TAKEN = (errno.ELOOP, errno.EISDIR, errno.EACCES)


class StatvfsResult(Protocol):
    """The fields of `os.statvfs` the free-space check reads."""

    @property
    def f_frsize(self) -> int: ...

    @property
    def f_blocks(self) -> int: ...

    @property
    def f_bavail(self) -> int: ...


@dataclass(frozen=True)
class _Geometry:
    """Where an asset file keeps block `i`'s record and bytes."""

    size: int
    block_size: int

    @property
    def blocks(self) -> int:
        return -(-self.size // self.block_size)

    @property
    def data_start(self) -> int:
        table_end = _HEADER.size + self.blocks * _RECORD.size
        return -(-table_end // _PAGE) * _PAGE

    def record(self, index: int) -> int:
        return _HEADER.size + index * _RECORD.size

    def last_use(self, index: int) -> int:
        return self.record(index) + _RECORD.size - _LAST_USE.size

    def data(self, index: int) -> int:
        return self.data_start + index * self.block_size

    def length(self, index: int) -> int:
        return min(self.block_size, self.size - index * self.block_size)

    def header(self) -> bytes:
        return _HEADER.pack(_HEADER_MAGIC, self.size, self.block_size)


class _Write(NamedTuple):
    """One block to write: its asset file (path and descriptor), where it goes, its bytes."""

    path: Path
    fd: int
    geometry: _Geometry
    block: int  # its index
    view: memoryview

    @property
    def booked(self) -> int:
        """What the block takes of the capacity: its bytes and its record."""
        return self.view.nbytes + _RECORD.size


class DiskCache:
    """Blocks of immutable assets on disk, persistent across mounts, shared across processes.

    `capacity` bounds the bytes of blocks and their records in the whole directory; headers
    and file-system overhead are not counted. `block_size` must match the AssetReader's.
    Writes are skipped while they would leave less than `reserve_bytes` free on the file
    system (default: the larger of 1 GiB and 5% of it); `statvfs` is injectable for tests.
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
        entry = block_size + _RECORD.size
        # Evict a sixteenth below capacity (whole blocks) so a full cache re-measures the
        # directory once per many writes, not on every one.
        self._low_water = capacity_bytes - (capacity_bytes // 16) // entry * entry
        self._files = self.root / _LAYOUT
        open_private_dir(self.root)
        open_private_dir(self._files, what="cache block directory")
        self._ledger = Ledger(self.root / ".lock")
        self._lock = threading.Lock()  # guards the index, the writes in flight and the flags
        self._index: set[tuple[Path, int]] = set()
        self._writing: dict[Path, int] = {}  # asset files this process is writing into
        self._booked_unwritten = 0  # bytes this process booked and has not written yet
        self._usage = self._ledger.peek()
        self._scanned = False
        self._scan_lock = threading.Lock()
        self._warned_space = False
        self._warned_foreign = False

    # -- public API ---------------------------------------------------------------------------

    def scan(self) -> None:
        """Index the directory, drop old layouts, enforce the capacity.

        Walks the whole cache: run it in a worker thread. Idempotent; later calls return at once.
        """
        with self._scan_lock:
            if self._scanned:
                return
            for child in self.root.iterdir():
                # The first layout kept asset directories right under the root.
                old = _ASSET_NAME.match(child.name) or child.name in _OLD_LAYOUTS
                if old and _is_real_dir(child):
                    shutil.rmtree(child, ignore_errors=True)
            with self._ledger.locked() as ledger:
                self._measure_and_evict(ledger, self.capacity)
            self._scanned = True
            logger.debug("disk cache %s: %d blocks, %d bytes", self.root, len(self), self._usage)

    def get(self, key: AssetKey, block_index: int, expected_len: int) -> bytes | None:
        """The block's bytes if present, ours and intact; a damaged one is dropped."""
        return self.get_many(key, {block_index: expected_len}).get(block_index)

    def get_many(self, key: AssetKey, lengths: dict[int, int]) -> dict[int, bytes]:
        """The blocks of one asset that are present, ours and intact, by index."""
        path = self._asset_path(key)
        geometry = _Geometry(key.size, self.block_size)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # missing (maybe evicted by another process), or a symlink: a miss
            self._forget(path, lengths)
            return {}
        found: dict[int, bytes] = {}
        try:
            st = os.fstat(fd)
            if not owned_by_us(st):
                self._warn_foreign(path, st)
                self._forget(path, lengths)
                return {}
            now = _LAST_USE.pack(time.time_ns())
            for index, expected_len in lengths.items():
                data = self._read_block(fd, path, geometry, index, expected_len)
                if data is None:
                    self._forget(path, [index])
                    continue
                found[index] = data
                with contextlib.suppress(OSError):
                    os.pwrite(fd, now, geometry.last_use(index))
        finally:
            os.close(fd)
        with self._lock:
            self._index.update((path, index) for index in found)
        return found

    def put(self, key: AssetKey, block_index: int, data: bytes | bytearray | memoryview) -> None:
        """Store a block within the shared capacity.

        `data` is any buffer; it is written as is, not copied. Skipped when it cannot fit the
        capacity or the file system's free-space reserve, or when the block is already there.
        """
        errors = self.put_many([(key, block_index, data)])
        if errors:
            raise errors[0]

    def put_many(
        self, blocks: Sequence[tuple[AssetKey, int, bytes | bytearray | memoryview]]
    ) -> list[OSError]:
        """Store several blocks as `put` does, opening each asset file once, booking them
        in the shared ledger and checking the free-space reserve once for all.

        A block that fails to be written is returned with the others' errors and unbooked;
        the rest are stored.
        """
        if not self._scanned:
            self.scan()
        wanted: dict[Path, tuple[_Geometry, dict[int, memoryview]]] = {}
        for key, block_index, data in blocks:
            view = memoryview(data).cast("B")
            path = self._asset_path(key)
            geometry, views = wanted.setdefault(path, (_Geometry(key.size, self.block_size), {}))
            fits = view.nbytes + _RECORD.size <= self.capacity
            inside = 0 <= block_index < geometry.blocks
            if fits and inside and view.nbytes == geometry.length(block_index):
                views[block_index] = view  # a block given twice is written once
        errors: list[OSError] = []
        files: dict[Path, int] = {}
        try:
            todo = self._open_for_writing(wanted, files, errors)
            total = sum(write.booked for write in todo)
            if not todo or not self._space_for(total, len(todo)):
                return errors
            with self._ledger.locked() as ledger:
                if ledger.read() + total > self.capacity:
                    self._measure_and_evict(ledger, self._low_water - total)
                    # Writes in flight (this process's) cannot be evicted: store what fits.
                    todo = _fitting(todo, self.capacity - ledger.read())
                    total = sum(write.booked for write in todo)
                self._usage = ledger.add(total)
                with self._lock:
                    self._booked_unwritten += total
            stored = 0
            written: list[tuple[Path, int]] = []
            try:
                for write in todo:
                    try:
                        _write_block(write.fd, write.geometry, write.block, write.view)
                    except OSError as exc:
                        errors.append(exc)
                    else:
                        written.append((write.path, write.block))
                        stored += write.booked
            finally:
                with self._lock:
                    # After the writes: a measurement may count them twice, never not at all.
                    self._booked_unwritten -= total
                    self._index.update(written)
                if stored < total:
                    with self._ledger.locked() as ledger:
                        self._usage = ledger.add(stored - total)
        finally:
            self._close_written(files)
        return errors

    def discard(self, key: AssetKey) -> None:
        """Delete every block of one asset (its bytes turned out not to be what was listed)."""
        if not self._scanned:
            self.scan()
        path = self._asset_path(key)
        with self._ledger.locked() as ledger:
            try:
                ours = owned_by_us(os.lstat(path))
            except FileNotFoundError:
                ours = False
            if ours:
                table = _read_table(path) or []
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                self._usage = ledger.add(-sum(length + _RECORD.size for _, _, length in table))
        with self._lock:
            self._index = {entry for entry in self._index if entry[0] != path}

    def holds(self, key: AssetKey, block_index: int) -> bool:
        """Whether the block is probably on disk: no file I/O, so the trio thread may ask.

        Read without the lock (a set membership test is atomic). Before `scan()` has run the
        answer is True, so the worker thread's get() looks at the file itself. A True may
        still turn into a miss in get(); blocks written by other processes since the last
        scan or eviction are not known and read False.
        """
        return not self._scanned or (self._asset_path(key), block_index) in self._index

    def usage(self) -> int:
        """Bytes of blocks and records in the directory, as last booked or measured by this
        process. Read without the lock (an int read is atomic) so the trio thread may call it."""
        return self._usage

    def clear(self) -> None:
        """Delete every cached block; files that are not ours are left alone."""
        if not self._scanned:
            self.scan()
        with self._ledger.locked() as ledger:
            self._measure_and_evict(ledger, 0)

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    # -- internals ----------------------------------------------------------------------------

    def _asset_path(self, key: AssetKey) -> Path:
        return _asset_path(self._files, key, self.block_size)

    def _read_block(
        self, fd: int, path: Path, geometry: _Geometry, index: int, expected_len: int
    ) -> bytes | None:
        """The block's bytes if its record says present and its CRC matches; a block whose
        record still claims bytes that do not match is dropped."""
        if index >= geometry.blocks or expected_len != geometry.length(index):
            return None
        record = os.pread(fd, _RECORD.size, geometry.record(index))
        if len(record) != _RECORD.size:
            return None
        magic, crc, _ = _RECORD.unpack(record)
        if magic != _RECORD_MAGIC:
            return None
        data = os.pread(fd, expected_len, geometry.data(index)) if expected_len else b""
        if len(data) == expected_len and _crc32(data) == crc:
            return data
        # Evicted by another process between the two reads: a miss, not damage.
        if os.pread(fd, _RECORD.size, geometry.record(index)) == record:
            logger.warning(
                "disk cache: dropping corrupt block %d of %s (%d bytes)", index, path, len(data)
            )
            with self._ledger.locked() as ledger:
                if os.pread(fd, _RECORD.size, geometry.record(index)) == record:
                    if not _free_block(fd, geometry, index):
                        self._delete_unless_writing(path)
                    self._usage = ledger.add(-(expected_len + _RECORD.size))
        return None

    def _open_for_writing(
        self,
        wanted: dict[Path, tuple[_Geometry, dict[int, memoryview]]],
        files: dict[Path, int],
        errors: list[OSError],
    ) -> list[_Write]:
        """Open (or create) the asset files and keep the blocks they do not hold yet."""
        todo: list[_Write] = []
        for path, (geometry, views) in wanted.items():
            if not views:
                continue
            try:
                fd = self._open_asset_file(path, geometry)
            except OSError as exc:
                if exc.errno not in _TAKEN:
                    errors.append(exc)
                    continue
                with contextlib.suppress(OSError):  # the name is taken by what is not ours
                    self._warn_foreign(path, os.lstat(path))
                continue
            if fd < 0:
                continue
            files[path] = fd
            for index, view in views.items():
                record = os.pread(fd, _RECORD.size, geometry.record(index))
                if record[:4] == _RECORD_MAGIC:  # this or another process wrote it already
                    with self._lock:
                        self._index.add((path, index))
                else:
                    todo.append(_Write(path, fd, geometry, index, view))
        return todo

    def _open_asset_file(self, path: Path, geometry: _Geometry) -> int:
        """A descriptor to write the asset file with (made, header first, if missing); -1
        if the name is taken by something that is not ours."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            st = os.fstat(fd)
            if not owned_by_us(st):
                self._warn_foreign(path, st)
                os.close(fd)
                return -1
            if st.st_size < _HEADER.size:
                os.pwrite(fd, geometry.header(), 0)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            self._writing[path] = self._writing.get(path, 0) + 1
        return fd

    def _close_written(self, files: dict[Path, int]) -> None:
        for path, fd in files.items():
            os.close(fd)
            with self._lock:
                self._writing[path] -= 1
                if not self._writing[path]:
                    del self._writing[path]

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

    def _measure_and_evict(self, ledger: Ledger, target: int) -> None:
        """Measure the directory and free least recently used blocks down to `target`.

        Called with the ledger lock held. Leaves files that are not ours alone, deletes
        files of ours that are damaged or left without blocks, rebuilds the index. Blocks
        this process has booked but not written yet count as written (they soon will be).
        """
        blocks: list[tuple[int, Path, int, int]] = []  # last use, file, index, bytes
        with self._lock:
            total = self._booked_unwritten
        now = time.time()
        for entry in _scandir(self._files):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not _ASSET_NAME.match(entry.name) or not owned_by_us(st):
                continue
            path = Path(entry.path)
            table = _read_table(path)
            if not table:
                if table is None or now - st.st_mtime > _EMPTY_GRACE_SECONDS:
                    self._delete_unless_writing(path)
                continue
            for index, last_use, length in table:
                blocks.append((last_use, path, index, length + _RECORD.size))
                total += length + _RECORD.size
        blocks.sort(key=lambda item: item[0])
        evicted = 0
        while evicted < len(blocks) and total > target:
            total -= blocks[evicted][3]
            evicted += 1
        by_file: dict[Path, list[int]] = {}
        for _, path, index, _ in blocks[:evicted]:
            by_file.setdefault(path, []).append(index)
        survivors = blocks[evicted:]
        kept = {path for _, path, _, _ in survivors}
        lost: set[Path] = set()  # files deleted whole: their blocks could not be freed alone
        for path, indexes in by_file.items():
            if path not in kept and self._delete_unless_writing(path):
                continue
            if not self._free_blocks(path, indexes) and self._delete_unless_writing(path):
                lost.add(path)
        if lost:
            total -= sum(nbytes for _, path, _, nbytes in survivors if path in lost)
            survivors = [block for block in survivors if block[1] not in lost]
        ledger.write(total)
        self._usage = total
        with self._lock:
            self._index = {(path, index) for _, path, index, _ in survivors}

    def _free_blocks(self, path: Path, indexes: list[int]) -> bool:
        """Free some blocks of an asset file; False if the file system cannot free them."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            _, size, block_size = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
            geometry = _Geometry(size, block_size)
            return all([_free_block(fd, geometry, index) for index in indexes])
        finally:
            os.close(fd)

    def _delete_unless_writing(self, path: Path) -> bool:
        """Delete an asset file this process is not writing into; True if it is gone."""
        with self._lock:
            if path in self._writing:
                return False
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return True

    def _forget(self, path: Path, indexes: Iterable[int]) -> None:
        with self._lock:
            for index in indexes:
                self._index.discard((path, index))

    def _warn_foreign(self, path: Path, st: os.stat_result) -> None:
        if not self._warned_foreign:
            self._warned_foreign = True
            logger.warning(
                "disk cache: ignoring %s: not a regular file of this user (uid %d, mode %o)",
                path,
                st.st_uid,
                st.st_mode,
            )


# holds() asks on the trio thread for every block a read needs: a hash and a pathlib join
# cost ~20 us there, a cache hit ~1 us. lru_cache is thread-safe (workers ask too).
@functools.lru_cache(maxsize=8192)
def _asset_path(files: Path, key: AssetKey, block_size: int) -> Path:
    ident = f"{key.version_id}\0{key.asset_id}\0{key.size}\0{block_size}"
    return files / hashlib.blake2b(ident.encode("utf-8"), digest_size=16).hexdigest()


def _fitting(todo: list[_Write], room: int) -> list[_Write]:
    """The leading writes whose blocks and records fit in `room` bytes."""
    kept: list[_Write] = []
    for write in todo:
        room -= write.booked
        if room < 0:
            break
        kept.append(write)
    return kept


def _write_block(fd: int, geometry: _Geometry, index: int, view: memoryview) -> None:
    """The block's bytes, then its record: a record is only ever found after its bytes."""
    record = _RECORD.pack(_RECORD_MAGIC, _crc32(view), time.time_ns())
    offset = geometry.data(index)
    done = 0
    while done < view.nbytes:
        done += os.pwrite(fd, view[done:], offset + done)
    os.pwrite(fd, record, geometry.record(index))


def _free_block(fd: int, geometry: _Geometry, index: int) -> bool:
    """Clear the block's record, then give its bytes back to the file system; False if the
    file system cannot (the caller then deletes the whole file)."""
    os.pwrite(fd, _ABSENT, geometry.record(index))
    return _punch_hole(fd, geometry.data(index), geometry.length(index))


def _read_table(path: Path) -> list[tuple[int, int, int]] | None:
    """(index, last use, length) of each block an asset file holds; [] for a file still
    being made (no header yet), None for one that is not an asset file or is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        header = os.pread(fd, _HEADER.size, 0)
        if not header:
            return []
        if len(header) != _HEADER.size:
            return None
        magic, size, block_size = _HEADER.unpack(header)
        if magic != _HEADER_MAGIC or block_size < 1:
            return None
        geometry = _Geometry(size, block_size)
        raw = os.pread(fd, geometry.blocks * _RECORD.size, _HEADER.size)
    finally:
        os.close(fd)
    return [
        (index, last_use, geometry.length(index))
        for index, (magic, _, last_use) in enumerate(_RECORD.iter_unpack(raw))
        if magic == _RECORD_MAGIC
    ]


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:  # pragma: no cover - every Linux libc has it
        return None
    function = ctypes.CDLL(name, use_errno=True).fallocate
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Give a byte range back to the file system; False where it cannot do that."""
    fallocate = _fallocate()
    if not length:
        return True
    if fallocate is None:  # pragma: no cover - every Linux libc has it
        return False
    if fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(code, os.strerror(code))


def _scandir(path: Path) -> Iterator[os.DirEntry[str]]:
    """Entries of a directory; a directory that vanished under us is empty."""
    try:
        with os.scandir(path) as entries:
            yield from entries
    except (FileNotFoundError, NotADirectoryError):
        return


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()
