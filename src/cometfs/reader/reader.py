"""AssetReader: answers read(offset, size) on asset files from memory, disk cache or network.

Runs on the trio thread. Disk cache calls go to worker threads (`trio.to_thread.run_sync`);
network calls go through the injected ByteSource (the async store facade).

How a read is served:

* The byte range maps to pieces: whole fixed-size blocks, or, while the handle reads at
  random (no sequential run), aligned chunks of a block (`random_span` bytes), so a 4 KiB
  read fetches a chunk instead of a whole block. A handle that reads on from where it was
  switches back to whole blocks and the readahead window at once. Chunks live only in memory
  and are served only for the bytes they hold; the disk cache stores whole blocks only.
* Pieces in the memory cache are used at once. Pieces already being loaded are waited for
  (single-flight: one load per piece, however many readers need it; a failed load wakes every
  waiter with the same exception and leaves nothing cached, so the next read retries).
* Missing pieces, plus any readahead blocks the handle's window asks for, get a "slot" each
  and one background load: disk cache first, then the source, abutting pieces coalesced into
  one `fetch_range` per run. Pieces are memoryviews of the fetched run (no copies); a read
  within one piece is answered with a view, a read over several with one join.
* Memory: every buffer counts against `memory_budget` (see MemoryCache): cached pieces,
  fetches in flight, a stream's partial block, blocks queued for the disk. A read whose load
  does not fit beside what cannot be evicted waits until something is given back, unless
  nothing is in flight; so the total stays within the budget, or within what one read needs
  when that alone is larger.
* If the source raises RangeNotSupported, the reader switches to stream mode for good: each
  asset is streamed from its start, once at a time, up to _STREAM_AHEAD bytes past what
  readers wait for, cut into blocks as the bytes arrive (chunks that line up with blocks
  are used as they are, others copied once into the block's buffer);
  every block lands in the caches and wakes its waiters at once.
* Cross-file readahead: `open(key, following=...)` learns the assets after this one in its
  directory. When opens walk a directory in that order, the next small assets are loaded
  whole before they are opened (bounded in files and bytes), so a walk over many small files
  pipelines its requests; opens in any other order prefetch nothing.

Background work (loads, streams, disk writes) runs in a nursery the reader owns while it is
entered as an async context manager:

    async with AssetReader(source, disk) as reader:
        ...  # reader.read(...) from any task; leaving cancels background work

Background tasks never raise: their errors are delivered to the readers waiting on them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Protocol

import trio

from cometfs.errors import ProtocolError, RangeNotSupported, TransientError
from cometfs.model import AssetKey
from cometfs.reader.blocks import (
    Readahead,
    aligned_span,
    block_bounds,
    block_count,
    block_length,
    blocks_covering,
    coalesce,
)
from cometfs.reader.disk import DiskCache
from cometfs.reader.memory import MemoryCache

logger = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
# (asset, block index, chunk index within the block or _WHOLE for the whole block)
Piece = tuple[AssetKey, int, int]
_WHOLE = -1

# Streamed blocks waiting for their disk write; beyond this the download waits for the disk.
_STREAM_DISK_QUEUE = 8
# Reserved per running stream, in blocks: the partial block being assembled plus the chunks
# the source has received ahead of the sink (the store queues two and its worker holds one).
_STREAM_ALLOWANCE = 4
# A stream goes on at most this many bytes past the furthest block a reader waited on
# from it (sequential readers keep extending that), then stops: in stream mode a read
# costs the bytes up to it plus this readahead, not the whole asset.
_STREAM_AHEAD = 8 << 20
# Cross-file readahead: an open counts as part of a directory walk when its asset is among
# the first _WALK_NEAR of the previous open's `following` (a walker may skip a few names),
# or is the very next asset after one of the last _WALK_TRAILS opens (several workers
# walking their own stretches of a directory at once). _WALK_STREAK such opens in a row
# start prefetching, so a shuffled reader, hit now and then by chance, practically never
# does: with 400 files a chance hit is 12/400, four in a row about 1 open in a million.
_WALK_NEAR = 4
_WALK_TRAILS = 8
_WALK_STREAK = 4
_WALK_FILES = 16
_WALK_BYTES = 8 << 20

_COUNTERS = (
    "hits_memory",
    "hits_disk",
    "shared_waits",
    "fetches",
    "bytes_fetched",
    "fetch_errors",
    "streams",
    "bytes_streamed",
    "stream_errors",
    "streams_cut",
    "disk_errors",
    "memory_waits",
    "files_prefetched",
)


class ByteSource(Protocol):
    """Where bytes come from when no cache has them; implemented by the async store facade."""

    async def fetch_range(self, key: AssetKey, start: int, end: int) -> Buffer:
        """Bytes [start, end) exactly (any bytes-like object, never modified afterwards);
        may raise RangeNotSupported and any CometFSError."""
        ...

    async def stream(self, key: AssetKey, sink: Callable[[Buffer], Awaitable[None]]) -> None:
        """The whole asset from byte 0, in order, awaiting sink(chunk) on the trio thread
        for each chunk before reading the next (so a slow sink slows the download)."""
        ...


class ReadHandle:
    """State of one open file: which asset, and its sequential-read detection."""

    __slots__ = ("key", "readahead")

    def __init__(self, key: AssetKey, readahead: Readahead) -> None:
        self.key = key
        self.readahead = readahead

    def __repr__(self) -> str:
        return f"ReadHandle({self.key!r}, window={self.readahead.window})"


class _Slot:
    """One piece being loaded. Readers wait on `event`; then exactly one of data/error is set.

    `reserved` says whether the piece's bytes are still reserved in the memory budget (until
    its buffer exists and is counted instead)."""

    __slots__ = ("event", "data", "error", "start", "end", "reserved")

    def __init__(self, start: int, end: int) -> None:
        self.event = trio.Event()
        self.data: memoryview | None = None
        self.error: BaseException | None = None
        self.start = start
        self.end = end
        self.reserved = True

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def done(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> memoryview:
        await self.event.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data


_DiskItem = tuple[int, memoryview, "_Slot | None"]
# A fetched run's whole blocks waiting for the disk: (asset, blocks, their slots, run buffer)
_DiskWrite = tuple[AssetKey, dict[int, memoryview], dict[Piece, "_Slot"], memoryview]


@dataclass(eq=False)
class _Stream:
    """One whole-asset download in stream mode and the slots waiting for its blocks."""

    key: AssetKey
    waiting: dict[int, _Slot] = field(default_factory=dict)
    position: int = 0  # index of the block being assembled
    received: int = 0
    buffer: bytearray | None = None  # the partial block, when chunks do not line up
    filled: int = 0
    error: BaseException | None = None
    overlong: bool = False  # the body did not match the listed size: drop what landed
    scope: trio.CancelScope | None = None
    disk_queue: trio.MemorySendChannel[_DiskItem] | None = None
    furthest: int = -1  # the furthest block a reader has waited on from this stream
    cut: bool = False  # stopped early: no reader waited on anything near its position


class AssetReader:
    """Block-cached, single-flight, readahead reads of immutable assets. See the module doc."""

    def __init__(
        self,
        source: ByteSource,
        disk: DiskCache | None,
        *,
        block_size: int = 1 << 20,
        memory_budget: int = 128 << 20,
        min_readahead: int = 1 << 20,
        max_readahead: int = 32 << 20,
        max_parallel_fetches: int = 8,
        random_span: int = 32 << 10,
    ) -> None:
        if block_size < 1 or max_parallel_fetches < 1 or random_span < 1:
            raise ValueError("block_size, max_parallel_fetches and random_span must be >= 1")
        if not 0 <= min_readahead <= max_readahead:
            raise ValueError("need 0 <= min_readahead <= max_readahead")
        if disk is not None and disk.block_size != block_size:
            raise ValueError(
                f"disk cache block size {disk.block_size} != reader block size {block_size}"
            )
        self.block_size = block_size
        self._source = source
        self._disk = disk
        self._memory = MemoryCache(memory_budget)
        # Prefetching more than half the budget would evict blocks before they are read.
        self._max_window = min(max_readahead, memory_budget // 2)
        self._min_window = min(min_readahead, self._max_window)
        self._max_run_bytes = max(block_size, max_readahead)
        # Chunks must tile a block exactly; otherwise random reads fetch whole blocks.
        self._span = random_span if block_size % random_span == 0 else block_size
        self._fetch_limiter = trio.CapacityLimiter(max_parallel_fetches)
        self._inflight: dict[Piece, _Slot] = {}
        self._streams: dict[AssetKey, _Stream] = {}
        self._ranges_unsupported = False
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._busy = 0
        self._idle = trio.Event()
        self._disk_warned = False
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._disk_pending: list[_DiskWrite] = []
        self._disk_writing = False
        self._walk_near: Sequence[AssetKey] = ()
        self._walk_next: deque[AssetKey] = deque(maxlen=_WALK_TRAILS)
        self._walk_streak = 0
        self._walk_files = 0
        self._walk_bytes = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> AssetReader:
        if self._nursery is not None:
            raise RuntimeError("AssetReader is already running")
        manager = trio.open_nursery()
        self._nursery = await manager.__aenter__()
        self._nursery_manager = manager
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        nursery, manager = self._nursery, self._nursery_manager
        self._nursery = self._nursery_manager = None
        assert nursery is not None and manager is not None
        nursery.cancel_scope.cancel()
        # The body's exception is not handed to the nursery: background tasks never raise, and
        # this way it propagates unchanged instead of wrapped in an ExceptionGroup.
        await manager.__aexit__(None, None, None)

    async def wait_idle(self) -> None:
        """Wait until no background work (loads, readahead, streams, disk writes) is running.

        For tests, and for an unmount that wants queued disk writes finished before leaving.
        """
        while self._busy:
            await self._idle.wait()

    # -- public API ---------------------------------------------------------------------------

    def open(self, key: AssetKey, *, following: Sequence[AssetKey] = ()) -> ReadHandle:
        """A handle for one open file of `key`; keep it for the file's reads.

        `following` lists the assets after this one in its directory's listing order; it
        drives cross-file readahead (see the module doc).
        """
        self._note_open(key, following)
        return ReadHandle(key, Readahead(self._min_window, self._max_window))

    async def read(self, handle: ReadHandle, offset: int, size: int) -> bytes | memoryview:
        """Bytes [offset, offset + size) of the asset, short only at its end (POSIX read).

        A read within one cached piece is answered with a read-only view of it, which
        pyfuse3 replies from without a copy."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be >= 0")
        self._require_running()
        key = handle.key
        end = min(offset + size, key.size)
        if offset >= end:
            return b""
        ahead_start, ahead_stop = handle.readahead.on_read(offset, end, key.size)
        sequential = handle.readahead.window > 0
        while True:
            pieces = self._plan(key, offset, end, sequential)
            found, waits, missing = self._lookup(pieces)
            need = sum(self._bounds(piece)[1] - self._bounds(piece)[0] for piece in missing)
            if not missing or self._memory.admits(need):
                break
            # Loading now would push the budget past what eviction can give back.
            self._counts["memory_waits"] += 1
            await self._memory.wait_freed()
        prefetch = self._prefetch_candidates(key, ahead_start, ahead_stop, pieces, need)
        if missing or prefetch:
            slots = self._start_load(key, missing + prefetch)
            waits.update((piece, slots[piece]) for piece in missing)
        for piece, slot in waits.items():
            found[piece] = await slot.wait()
        return self._assemble(pieces, found, offset, end)

    def stats(self) -> dict[str, int]:
        """Counters and cache sizes, for .comet/status.json and tests."""
        disk = self._disk
        return {
            "memory_bytes": self._memory.cached,
            "memory_reserved": self._memory.reserved,
            "memory_held": self._memory.held,
            "memory_budget": self._memory.budget,
            "memory_blocks": len(self._memory),
            "disk_bytes": disk.usage() if disk is not None else 0,
            "disk_capacity": disk.capacity if disk is not None else 0,
            "inflight_blocks": len(self._inflight),
            "active_streams": len(self._streams),
            "range_unsupported": int(self._ranges_unsupported),
            **self._counts,
        }

    # -- read path ----------------------------------------------------------------------------

    def _plan(self, key: AssetKey, offset: int, end: int, sequential: bool) -> list[Piece]:
        """The pieces, in byte order, that cover [offset, end)."""
        needed = blocks_covering(offset, end, self.block_size)
        if sequential or self._span >= self.block_size or self._ranges_unsupported:
            return [(key, index, _WHOLE) for index in needed]
        low, high = aligned_span(offset, end, self._span, key.size)
        pieces: list[Piece] = []
        for index in needed:
            block_start, block_end = block_bounds(index, self.block_size, key.size)
            whole = (key, index, _WHOLE)
            if (
                (low <= block_start and block_end <= high)
                or whole in self._memory
                or whole in self._inflight
                or (self._disk is not None and self._disk.holds(key, index))
            ):
                pieces.append(whole)
                continue
            first = (max(low, block_start) - block_start) // self._span
            last = (min(high, block_end) - block_start - 1) // self._span
            pieces.extend((key, index, chunk) for chunk in range(first, last + 1))
        return pieces

    def _bounds(self, piece: Piece) -> tuple[int, int]:
        """Byte range [start, end) of a piece within its asset."""
        key, index, chunk = piece
        block_start, block_end = block_bounds(index, self.block_size, key.size)
        if chunk == _WHOLE:
            return block_start, block_end
        start = block_start + chunk * self._span
        return start, min(start + self._span, block_end)

    def _lookup(
        self, pieces: list[Piece]
    ) -> tuple[dict[Piece, memoryview], dict[Piece, _Slot], list[Piece]]:
        """Split the pieces into cached (views), in flight (slots) and missing."""
        found: dict[Piece, memoryview] = {}
        waits: dict[Piece, _Slot] = {}
        missing: list[Piece] = []
        for piece in pieces:
            data = self._memory.get(piece)
            if data is not None:
                start, end = self._bounds(piece)
                if len(data) == end - start:
                    found[piece] = data
                    self._counts["hits_memory"] += 1
                    continue
                self._memory.discard(piece)
            slot = self._inflight.get(piece)
            if slot is not None:
                waits[piece] = slot
                self._counts["shared_waits"] += not slot.done
            else:
                missing.append(piece)
        return found, waits, missing

    def _prefetch_candidates(
        self, key: AssetKey, start: int, stop: int, pieces: list[Piece], need: int
    ) -> list[Piece]:
        """Readahead blocks worth loading now: not cached, not in flight, within the budget."""
        if self._ranges_unsupported or start >= stop:
            return []
        room = self._memory.room() - need
        chosen: list[Piece] = []
        for index in blocks_covering(start, stop, self.block_size):
            piece = (key, index, _WHOLE)
            if piece in pieces or piece in self._memory or piece in self._inflight:
                continue
            nbytes = block_length(index, self.block_size, key.size)
            if nbytes > room:
                break
            room -= nbytes
            chosen.append(piece)
        return chosen

    def _assemble(
        self, pieces: list[Piece], found: dict[Piece, memoryview], offset: int, end: int
    ) -> bytes | memoryview:
        if len(pieces) == 1:
            start = self._bounds(pieces[0])[0]
            return found[pieces[0]][offset - start : end - start].toreadonly()
        parts: list[memoryview] = []
        for piece in pieces:
            start, stop = self._bounds(piece)
            parts.append(found[piece][max(offset, start) - start : min(end, stop) - start])
        return b"".join(parts)

    # -- cross-file readahead -------------------------------------------------------------------

    def _note_open(self, key: AssetKey, following: Sequence[AssetKey]) -> None:
        walking = key in self._walk_near or key in self._walk_next
        self._walk_streak = self._walk_streak + 1 if walking else 0
        self._walk_near = following[:_WALK_NEAR]
        if following:
            self._walk_next.append(following[0])
        if self._walk_streak >= _WALK_STREAK and self._nursery is not None:
            self._prefetch_files(following)

    def _prefetch_files(self, following: Sequence[AssetKey]) -> None:
        """Load the next small assets of a directory walk whole, within the walk's bounds."""
        if self._ranges_unsupported:
            return
        for key in following[:_WALK_FILES]:
            if self._walk_files >= _WALK_FILES:
                return
            if not 0 < key.size <= self.block_size:
                continue  # large assets get the per-handle readahead once opened
            piece = (key, 0, _WHOLE)
            if piece in self._memory or piece in self._inflight:
                continue
            if self._walk_bytes + key.size > _WALK_BYTES or key.size > self._memory.room():
                return
            self._walk_files += 1
            self._walk_bytes += key.size
            self._counts["files_prefetched"] += 1
            self._start_load(key, [piece], on_done=partial(self._walk_done, key.size))

    def _walk_done(self, nbytes: int) -> None:
        self._walk_files -= 1
        self._walk_bytes -= nbytes

    # -- slots ----------------------------------------------------------------------------------

    def _start_load(
        self,
        key: AssetKey,
        pieces: list[Piece],
        on_done: Callable[[], None] | None = None,
    ) -> dict[Piece, _Slot]:
        """Register a slot per piece (reserving its memory) and load them in the background."""
        slots: dict[Piece, _Slot] = {}
        for piece in pieces:
            slot = _Slot(*self._bounds(piece))
            self._memory.reserve(slot.nbytes)
            self._inflight[piece] = slot
            slots[piece] = slot
        self._spawn(self._load, key, slots, on_done)
        return slots

    def _unreserve(self, slot: _Slot) -> None:
        if slot.reserved:
            slot.reserved = False
            self._memory.release(slot.nbytes)

    def _complete(self, piece: Piece, slot: _Slot, data: memoryview, *, linger: bool) -> None:
        """Hand a piece to its waiters and the memory cache.

        With `linger` the slot stays findable until its disk write is done, so a reader
        arriving meanwhile does not fetch again when memory has already evicted the block.
        """
        if slot.done:
            return
        self._unreserve(slot)
        slot.data = data
        slot.event.set()
        self._memory.put(piece, data)
        if not linger:
            self._forget(piece, slot)

    def _fail(self, piece: Piece, slot: _Slot, error: BaseException) -> None:
        if slot.done:
            return
        self._unreserve(slot)
        slot.error = error
        slot.event.set()
        self._forget(piece, slot)

    def _fail_all(self, slots: dict[Piece, _Slot], error: BaseException) -> None:
        for piece, slot in slots.items():
            self._fail(piece, slot, error)

    def _forget(self, piece: Piece, slot: _Slot) -> None:
        if self._inflight.get(piece) is slot:
            del self._inflight[piece]

    # -- background loads -----------------------------------------------------------------------

    async def _load(
        self, key: AssetKey, slots: dict[Piece, _Slot], on_done: Callable[[], None] | None
    ) -> None:
        """Fill the slots from the disk cache, then from the source. Never raises Exception."""
        try:
            pending = await self._load_from_disk(key, slots)
            if pending:
                await self._load_from_source(key, pending)
        except Exception as exc:
            logger.exception("unexpected error loading blocks of %s", key)
            self._fail_all(slots, exc)
        except BaseException:
            self._fail_all(slots, TransientError("read interrupted: reader shutting down"))
            raise
        finally:
            if on_done is not None:
                on_done()

    async def _load_from_disk(
        self, key: AssetKey, slots: dict[Piece, _Slot]
    ) -> dict[Piece, _Slot]:
        """Complete the whole-block slots the disk cache can fill; return the others."""
        disk = self._disk
        if disk is None:
            return slots
        # Ask the index first: a cold block then costs no worker-thread round trip.
        lengths = {
            piece[1]: slot.nbytes
            for piece, slot in slots.items()
            if piece[2] == _WHOLE and disk.holds(key, piece[1])
        }
        if not lengths:
            return slots
        try:
            found = await trio.to_thread.run_sync(_disk_get_many, disk, key, lengths)
        except OSError as exc:
            self._disk_trouble("read", exc)
            return slots
        for index, data in found.items():
            self._counts["hits_disk"] += 1
            piece = (key, index, _WHOLE)
            self._complete(piece, slots[piece], memoryview(data), linger=False)
        return {
            piece: slot
            for piece, slot in slots.items()
            if piece[2] != _WHOLE or piece[1] not in found
        }

    async def _load_from_source(self, key: AssetKey, slots: dict[Piece, _Slot]) -> None:
        if self._ranges_unsupported:
            self._load_by_stream(key, slots)
            return
        order = sorted(slots.items(), key=lambda item: item[1].start)
        runs = [
            [order[position] for position in run]
            for run in coalesce(((s.start, s.end) for _, s in order), self._max_run_bytes)
        ]
        if len(runs) == 1:
            await self._fetch_run(key, runs[0])
            return
        async with trio.open_nursery() as nursery:
            for run in runs:
                nursery.start_soon(self._fetch_run, key, run)

    async def _fetch_run(self, key: AssetKey, run: list[tuple[Piece, _Slot]]) -> None:
        """One fetch_range for abutting pieces; never raises Exception."""
        run_slots = dict(run)
        start, end = run[0][1].start, run[-1][1].end
        try:
            async with self._fetch_limiter:
                if self._ranges_unsupported:  # learnt while this fetch waited for the limiter
                    raise RangeNotSupported("ranges known to be unsupported")
                self._counts["fetches"] += 1
                data = await self._source.fetch_range(key, start, end)
            if len(data) != end - start:
                raise ProtocolError(
                    f"asked for bytes {start}-{end} of asset {key.asset_id}, got {len(data)}"
                )
        except RangeNotSupported:
            self._switch_to_streaming()
            self._load_by_stream(key, run_slots)
            return
        except Exception as exc:
            self._counts["fetch_errors"] += 1
            logger.debug("fetch of %s bytes %d-%d failed: %r", key, start, end, exc)
            self._fail_all(run_slots, exc)
            return
        self._counts["bytes_fetched"] += len(data)
        view = memoryview(data).toreadonly()
        # The run buffer now exists: count it instead of the reservations, and keep it
        # counted until its disk write is done even if memory evicts its pieces.
        for _, slot in run:
            self._unreserve(slot)
        self._memory.hold(view)
        blocks: dict[int, memoryview] = {}
        lingering: dict[Piece, _Slot] = {}
        for piece, slot in run:
            piece_view = view[slot.start - start : slot.end - start]
            to_disk = self._disk is not None and piece[2] == _WHOLE
            self._complete(piece, slot, piece_view, linger=to_disk)
            if to_disk:
                blocks[piece[1]] = piece_view
                lingering[piece] = slot
        if blocks:
            self._queue_disk_write(key, blocks, lingering, view)
        else:
            self._memory.unhold(view)

    # -- disk writes ----------------------------------------------------------------------------

    def _queue_disk_write(
        self,
        key: AssetKey,
        blocks: dict[int, memoryview],
        slots: dict[Piece, _Slot],
        buffer: memoryview,
    ) -> None:
        """Write fetched blocks to the disk cache off the read path.

        One writer task takes everything queued at each worker-thread hop, so a walk over
        many small files costs one hop per batch instead of one per file. The buffer stays
        counted in the memory budget (held) until written, which holds new loads back when
        the disk lags.
        """
        if self._nursery is None:  # the reader is shutting down: nothing runs the writer
            self._finish_disk_writes([(key, blocks, slots, buffer)])
            return
        self._disk_pending.append((key, blocks, slots, buffer))
        if not self._disk_writing:
            self._disk_writing = True
            self._spawn(self._drain_disk_queue)

    async def _drain_disk_queue(self) -> None:
        disk = self._disk
        assert disk is not None
        try:
            while self._disk_pending:
                batch, self._disk_pending = self._disk_pending, []
                try:
                    errors = await trio.to_thread.run_sync(
                        _disk_put_batch, disk, [(key, blocks) for key, blocks, _, _ in batch]
                    )
                finally:
                    self._finish_disk_writes(batch)
                for error in errors:
                    self._disk_trouble("write", error)
        finally:
            self._disk_writing = False
            # Cancelled (the reader is leaving): give back what unwritten blocks held.
            pending, self._disk_pending = self._disk_pending, []
            self._finish_disk_writes(pending)

    def _finish_disk_writes(self, batch: list[_DiskWrite]) -> None:
        for _, _, slots, buffer in batch:
            for piece, slot in slots.items():
                self._forget(piece, slot)
            self._memory.unhold(buffer)

    # -- stream mode ----------------------------------------------------------------------------

    def _switch_to_streaming(self) -> None:
        if not self._ranges_unsupported:
            self._ranges_unsupported = True
            logger.info("the server ignores Range requests: assets will be streamed whole")

    def _load_by_stream(self, key: AssetKey, slots: dict[Piece, _Slot]) -> None:
        """Fill the slots from whole streamed blocks; chunks are cut from their block."""
        blocks: dict[int, _Slot] = {}
        for piece, slot in slots.items():
            if piece[2] == _WHOLE:
                blocks[piece[1]] = slot
        for piece, slot in slots.items():
            if piece[2] == _WHOLE or slot.done:
                continue
            whole = (key, piece[1], _WHOLE)
            block_slot = blocks.get(piece[1]) or self._inflight.get(whole)
            if block_slot is None:
                block_slot = _Slot(*self._bounds(whole))
                self._memory.reserve(block_slot.nbytes)
                self._inflight[whole] = blocks[piece[1]] = block_slot
            self._spawn(self._cut_chunk, piece, slot, block_slot)
        self._attach_to_stream(key, blocks)

    async def _cut_chunk(self, piece: Piece, slot: _Slot, block_slot: _Slot) -> None:
        try:
            block = await block_slot.wait()
        except Exception as exc:
            self._fail(piece, slot, exc)
            return
        offset = slot.start - block_slot.start
        self._complete(piece, slot, block[offset : offset + slot.nbytes], linger=False)

    def _attach_to_stream(self, key: AssetKey, slots: dict[int, _Slot]) -> None:
        """Have the asset's running stream fill the slots, or start one for those it passed."""
        stream = self._streams.get(key)
        behind: dict[int, _Slot] = {}
        for index, slot in slots.items():
            if slot.done:
                continue
            if (stream is not None and stream.error is None and not stream.cut
                    and index >= stream.position):
                stream.waiting[index] = slot
                stream.furthest = max(stream.furthest, index)
            else:
                behind[index] = slot
        if behind:
            stream = _Stream(key, waiting=behind, furthest=max(behind))
            self._streams[key] = stream
            self._spawn(self._run_stream, stream)

    async def _run_stream(self, stream: _Stream) -> None:
        """Download the whole asset, landing blocks as they complete. Never raises Exception."""
        key = stream.key
        self._counts["streams"] += 1
        self._memory.reserve(_STREAM_ALLOWANCE * self.block_size)
        try:
            send, receive = trio.open_memory_channel[_DiskItem](_STREAM_DISK_QUEUE)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_streamed_blocks, key, receive)
                async with send:
                    stream.disk_queue = send
                    await self._receive_stream(stream)
                    stream.disk_queue = None
            if stream.overlong:
                await self._purge(key)
            if stream.error is not None:
                self._fail_stream(stream, stream.error)
        except Exception as exc:
            logger.exception("unexpected error streaming %s", key)
            self._fail_stream(stream, exc)
        except BaseException:
            self._fail_stream(stream, TransientError("read interrupted: reader shutting down"))
            raise
        finally:
            stream.buffer = None
            self._memory.release(_STREAM_ALLOWANCE * self.block_size)
            if self._streams.get(key) is stream:
                del self._streams[key]

    async def _receive_stream(self, stream: _Stream) -> None:
        """Run the source's stream; afterwards `stream.error` tells whether it all arrived.

        The error is set before the queued disk writes drain, so readers arriving meanwhile
        start a fresh stream instead of joining a failed one.
        """
        key = stream.key
        try:
            with trio.CancelScope() as scope:
                stream.scope = scope
                await self._source.stream(key, partial(self._on_stream_chunk, stream))
        except Exception as exc:
            if stream.error is None:
                stream.error = exc
        if stream.error is None and not stream.cut and stream.received < key.size:
            stream.error = ProtocolError(
                f"stream of asset {key.asset_id} ended after {stream.received} of "
                f"{key.size} bytes"
            )

    async def _on_stream_chunk(self, stream: _Stream, chunk: Buffer) -> None:
        """The stream's sink: cut arriving bytes into blocks. Runs on the trio thread.

        A chunk that holds a whole block at a block boundary is used as it is (a view, no
        copy); otherwise its bytes are copied once into the partial block's own buffer,
        which then becomes the block."""
        key = stream.key
        if stream.error is not None or stream.cut:
            return
        view = memoryview(chunk).toreadonly()
        if stream.received + len(view) > key.size:
            stream.error = ProtocolError(
                f"stream of asset {key.asset_id} is longer than its {key.size} bytes"
            )
            stream.overlong = True
            if stream.scope is not None:
                stream.scope.cancel()
            return
        stream.received += len(view)
        self._counts["bytes_streamed"] += len(view)
        while len(view):
            length = self._block_len(key, stream.position)
            if stream.filled == 0 and len(view) >= length:
                block, view = view[:length], view[length:]
            else:
                if stream.buffer is None:
                    stream.buffer = bytearray(length)
                take = min(length - stream.filled, len(view))
                stream.buffer[stream.filled : stream.filled + take] = view[:take]
                stream.filled += take
                view = view[take:]
                if stream.filled < length:
                    continue
                block = memoryview(stream.buffer).toreadonly()
                stream.buffer, stream.filled = None, 0
            # Advance before landing: _land may wait for the disk, and a reader arriving
            # meanwhile must not wait on this stream for a block it has already passed.
            index = stream.position
            stream.position += 1
            await self._land(stream, index, block)
            ahead = max(1, _STREAM_AHEAD // self.block_size)
            if not stream.waiting and stream.position > stream.furthest + ahead:
                # A random reader far into an asset would otherwise make the mount download
                # all of it, once per read behind the running stream.
                stream.cut = True
                self._counts["streams_cut"] += 1
                if stream.scope is not None:
                    stream.scope.cancel()
                return

    async def _land(self, stream: _Stream, index: int, data: memoryview) -> None:
        """A streamed block is complete: wake its waiters, cache it, queue its disk write.

        The disk queue is bounded and its blocks count against the memory budget: when the
        disk lags, this waits, which holds the download back instead of piling blocks up."""
        key = stream.key
        piece = (key, index, _WHOLE)
        queue = stream.disk_queue if self._disk is not None else None
        # A reader may have attached to another stream of this asset; any stream can serve it.
        slot = stream.waiting.pop(index, None)
        if slot is None or slot.done:
            slot = self._inflight.get(piece)
        if slot is not None and not slot.done:
            self._complete(piece, slot, data, linger=queue is not None)
        else:
            slot = None
            self._memory.put(piece, data)
        if queue is not None:
            self._memory.hold(data)
            await queue.send((index, data, slot))

    async def _write_streamed_blocks(
        self, key: AssetKey, receive: trio.MemoryReceiveChannel[_DiskItem]
    ) -> None:
        async with receive:
            try:
                async for index, data, slot in receive:
                    await self._write_streamed_block(key, index, data, slot)
            finally:
                # Cancelled: give back what the unwritten blocks held.
                while True:
                    try:
                        index, data, slot = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    self._memory.unhold(data)
                    if slot is not None:
                        self._forget((key, index, _WHOLE), slot)

    async def _write_streamed_block(
        self, key: AssetKey, index: int, data: memoryview, slot: _Slot | None
    ) -> None:
        try:
            if self._disk is not None:
                await trio.to_thread.run_sync(_disk_put_many, self._disk, key, {index: data})
        except OSError as exc:
            self._disk_trouble("write", exc)
        finally:
            self._memory.unhold(data)
            if slot is not None:
                self._forget((key, index, _WHOLE), slot)

    async def _purge(self, key: AssetKey) -> None:
        """Forget every cached piece of an asset whose bytes are not the ones listed."""
        logger.warning("asset %s is not the %d bytes listed; dropping its cache", key, key.size)
        chunks = range(_WHOLE, -(-self.block_size // self._span))
        for index in range(block_count(key.size, self.block_size)):
            for chunk in chunks:
                self._memory.discard((key, index, chunk))
        if self._disk is not None:
            try:
                await trio.to_thread.run_sync(self._disk.discard, key)
            except OSError as exc:
                self._disk_trouble("discard", exc)

    def _fail_stream(self, stream: _Stream, error: BaseException) -> None:
        self._counts["stream_errors"] += 1
        logger.debug("stream of %s failed at byte %d: %r", stream.key, stream.received, error)
        waiting, stream.waiting = stream.waiting, {}
        key = stream.key
        self._fail_all({(key, index, _WHOLE): slot for index, slot in waiting.items()}, error)

    def _block_len(self, key: AssetKey, index: int) -> int:
        return block_length(index, self.block_size, key.size)

    # -- plumbing -------------------------------------------------------------------------------

    def _require_running(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("AssetReader must be entered (`async with reader:`) before reads")
        return self._nursery

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        nursery = self._require_running()
        self._busy += 1
        nursery.start_soon(self._tracked, fn, *args)

    async def _tracked(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception:
            # The tasks deliver their own errors; this only keeps a bug from ending the mount.
            logger.exception("internal error in reader background task %r", fn)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()
                self._idle = trio.Event()

    def _disk_trouble(self, action: str, exc: OSError) -> None:
        self._counts["disk_errors"] += 1
        if not self._disk_warned:
            self._disk_warned = True
            logger.warning(
                "disk cache %s failed; serving without it, later failures logged at debug: %s",
                action,
                exc,
            )
        else:
            logger.debug("disk cache %s failed: %s", action, exc)


def _disk_get_many(disk: DiskCache, key: AssetKey, lengths: dict[int, int]) -> dict[int, bytes]:
    """Worker thread: the blocks the disk cache holds, by index."""
    found: dict[int, bytes] = {}
    for index, length in lengths.items():
        data = disk.get(key, index, length)
        if data is not None:
            found[index] = data
    return found


def _disk_put_batch(
    disk: DiskCache, batch: list[tuple[AssetKey, dict[int, memoryview]]]
) -> list[OSError]:
    """Worker thread: store the blocks of several fetches; one failure skips only its asset."""
    errors: list[OSError] = []
    for key, blocks in batch:
        try:
            _disk_put_many(disk, key, blocks)
        except OSError as exc:
            errors.append(exc)
    return errors


def _disk_put_many(disk: DiskCache, key: AssetKey, blocks: dict[int, memoryview]) -> None:
    """Worker thread: store whole blocks."""
    for index, data in blocks.items():
        disk.put(key, index, data)
