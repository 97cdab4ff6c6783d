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
* If the source raises RangeNotSupported, the reader switches to stream mode for good and
  hands every load to its StreamLoader (reader/streaming.py): each asset is streamed whole,
  cut into blocks that land in the caches and wake their waiters as they arrive.
* Cross-file readahead: `open(key, following=...)` learns the assets after this one in its
  directory. When opens walk a directory in that order, the next assets are loaded before
  they are opened, each in one fetch: whole up to a few MiB, the head of a larger one
  (bounded in files, bytes in flight and bytes ahead), so a walk over many files pipelines
  its requests, as `cp -r` or a DataLoader without shuffling would want; opens in any other
  order prefetch nothing.

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
from functools import partial
from types import TracebackType
from typing import Any

import trio

from cometfs.errors import ProtocolError, RangeNotSupported, TransientError
from cometfs.model import AssetKey
from cometfs.reader.blocks import (
    Readahead,
    aligned_span,
    block_bounds,
    block_length,
    blocks_covering,
    coalesce,
)
from cometfs.reader.disk import DEFAULT_BLOCK_SIZE, DiskCache
from cometfs.reader.memory import MemoryCache
from cometfs.reader.pieces import (
    WHOLE,
    ByteSource,
    Piece,
    Slot,
    SlotTable,
    disk_put_batch,
)
from cometfs.reader.streaming import StreamLoader

logger = logging.getLogger(__name__)

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
_WALK_BYTES = 8 << 20  # in flight at once
_WALK_AHEAD = 16 << 20  # ahead of the latest open, loaded or in flight
_WALK_HEAD = 4 << 20  # of each asset: small and medium ones whole, the head of a big one

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
    "streams_restarted",
    "disk_errors",
    "memory_waits",
    "files_prefetched",
)


# A fetched run's whole blocks waiting for the disk: (asset, blocks, their slots, run buffer)
_DiskWrite = tuple[AssetKey, dict[int, memoryview], dict[Piece, Slot], memoryview]


class ReadHandle:
    """State of one open file: which asset, its sequential-read detection, and whether it
    has been read yet."""

    __slots__ = ("fresh", "key", "readahead")

    def __init__(self, key: AssetKey, readahead: Readahead) -> None:
        self.key = key
        self.readahead = readahead
        self.fresh = True

    def __repr__(self) -> str:
        return f"ReadHandle({self.key!r}, window={self.readahead.window})"


class AssetReader:
    """Block-cached, single-flight, readahead reads of immutable assets. See the module doc."""

    def __init__(
        self,
        source: ByteSource,
        disk: DiskCache | None,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        memory_budget: int = 128 << 20,
        min_readahead: int = 1 << 20,
        max_readahead: int = 32 << 20,
        max_parallel_fetches: int = 32,
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
        self._ranges_unsupported = False
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._busy = 0
        self._idle = trio.Event()
        self._disk_warned = False
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._disk_pending: list[_DiskWrite] = []
        self._slots = SlotTable(self._memory)
        self._streaming = StreamLoader(
            source,
            self._slots,
            self._memory,
            disk,
            block_size=block_size,
            span=self._span,
            counts=self._counts,
            spawn=self._spawn,
            disk_trouble=self._disk_trouble,
        )
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

        For tests, which check caches and counters once the work behind a read has settled.
        Unmount does not wait: leaving the reader cancels background work and drops the
        disk writes still queued (those blocks are fetched again next time).
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
        head = self._head_first(handle, offset, end, missing)
        handle.fresh = False
        if head:
            # Its block and the readahead are asked for once the head is back, so they do
            # not compete with it for the server (and the server's disk).
            slots = self._start_load(key, head)
            found = {piece: await slot.wait() for piece, slot in slots.items()}
            for later in (missing, prefetch):
                pending = [piece for piece in later if self._absent(piece)]
                if pending:
                    self._start_load(key, pending)
            return self._assemble(head, found, offset, end)
        # Separate loads, so the bytes this read waits for are never fetched in one run
        # with readahead it does not need yet.
        if missing:
            slots = self._start_load(key, missing)
            waits.update((piece, slots[piece]) for piece in missing)
        if prefetch:
            self._start_load(key, prefetch)
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
            "inflight_blocks": len(self._slots),
            "active_streams": self._streaming.active,
            "range_unsupported": int(self._ranges_unsupported),
            **self._counts,
        }

    # -- read path ----------------------------------------------------------------------------

    def _plan(self, key: AssetKey, offset: int, end: int, sequential: bool) -> list[Piece]:
        """The pieces, in byte order, that cover [offset, end)."""
        needed = blocks_covering(offset, end, self.block_size)
        if sequential or self._span >= self.block_size or self._ranges_unsupported:
            return [(key, index, WHOLE) for index in needed]
        low, high = aligned_span(offset, end, self._span, key.size)
        pieces: list[Piece] = []
        for index in needed:
            block_start, block_end = block_bounds(index, self.block_size, key.size)
            whole = (key, index, WHOLE)
            if (
                (low <= block_start and block_end <= high)
                or whole in self._memory
                or whole in self._slots
                or (self._disk is not None and self._disk.holds(key, index))
            ):
                pieces.append(whole)
                continue
            first = (max(low, block_start) - block_start) // self._span
            last = (min(high, block_end) - block_start - 1) // self._span
            pieces.extend((key, index, chunk) for chunk in range(first, last + 1))
        return pieces

    def _head_first(
        self, handle: ReadHandle, offset: int, end: int, missing: list[Piece]
    ) -> list[Piece]:
        """The chunks that answer a fresh handle's first read before its block arrives.

        Time to first byte: the first read of a multi-block asset would wait for a whole
        block (1 MiB, read from the server's disk) and compete with the readahead it
        starts. Its own chunks are fetched first, alone; the block still comes whole right
        behind them, for the readahead and the disk cache (so one read's chunks are fetched
        twice, once per open of an uncached asset).
        """
        key = handle.key
        if (
            not handle.fresh
            or len(missing) != 1
            or missing[0][2] != WHOLE
            or key.size <= self.block_size
            or self._span >= self.block_size
            or self._ranges_unsupported
        ):
            return []
        index = missing[0][1]
        if self._disk is not None and self._disk.holds(key, index):
            return []
        block_start, block_end = block_bounds(index, self.block_size, key.size)
        if offset < block_start or end > block_end:
            return []  # the read needs other pieces too
        low, high = aligned_span(offset, end, self._span, key.size)
        chunks = range(
            (low - block_start) // self._span, (high - block_start - 1) // self._span + 1
        )
        if high - low >= (block_end - block_start) // 2:
            return []  # most of the block: waiting for it costs little more
        head = [(key, index, chunk) for chunk in chunks]
        return head if all(self._absent(piece) for piece in head) else []

    def _absent(self, piece: Piece) -> bool:
        """Neither cached in memory nor being loaded."""
        return piece not in self._memory and piece not in self._slots

    def _bounds(self, piece: Piece) -> tuple[int, int]:
        """Byte range [start, end) of a piece within its asset."""
        key, index, chunk = piece
        block_start, block_end = block_bounds(index, self.block_size, key.size)
        if chunk == WHOLE:
            return block_start, block_end
        start = block_start + chunk * self._span
        return start, min(start + self._span, block_end)

    def _lookup(
        self, pieces: list[Piece]
    ) -> tuple[dict[Piece, memoryview], dict[Piece, Slot], list[Piece]]:
        """Split the pieces into cached (views), in flight (slots) and missing."""
        found: dict[Piece, memoryview] = {}
        waits: dict[Piece, Slot] = {}
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
            slot = self._slots.get(piece)
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
            piece = (key, index, WHOLE)
            if piece in pieces or not self._absent(piece):
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
        """Load the next assets of a directory walk (their first _WALK_HEAD bytes), within
        the walk's bounds."""
        if self._ranges_unsupported:
            return
        ahead = 0
        for key in following[:_WALK_FILES]:
            nbytes = min(key.size, _WALK_HEAD)
            ahead += nbytes
            if self._walk_files >= _WALK_FILES or ahead > _WALK_AHEAD:
                return
            indexes = blocks_covering(0, nbytes, self.block_size)
            pieces = [(key, i, WHOLE) for i in indexes if self._absent((key, i, WHOLE))]
            if not pieces:
                continue
            load = sum(block_length(piece[1], self.block_size, key.size) for piece in pieces)
            if self._walk_bytes + load > _WALK_BYTES or load > self._memory.room():
                return
            self._walk_files += 1
            self._walk_bytes += load
            self._counts["files_prefetched"] += 1
            self._start_load(key, pieces, on_done=partial(self._walk_done, load))

    def _walk_done(self, nbytes: int) -> None:
        self._walk_files -= 1
        self._walk_bytes -= nbytes

    # -- slots ----------------------------------------------------------------------------------

    def _start_load(
        self,
        key: AssetKey,
        pieces: list[Piece],
        on_done: Callable[[], None] | None = None,
    ) -> dict[Piece, Slot]:
        """Register a slot per piece (reserving its memory) and load them in the background."""
        slots: dict[Piece, Slot] = {}
        for piece in pieces:
            slots[piece] = self._slots.add(piece, *self._bounds(piece))
        self._spawn(self._load, key, slots, on_done)
        return slots

    # -- background loads -----------------------------------------------------------------------

    async def _load(
        self, key: AssetKey, slots: dict[Piece, Slot], on_done: Callable[[], None] | None
    ) -> None:
        """Fill the slots from the disk cache, then from the source. Never raises Exception."""
        try:
            pending = await self._load_from_disk(key, slots)
            if pending:
                await self._load_from_source(key, pending)
        except Exception as exc:
            logger.exception("unexpected error loading blocks of %s", key)
            self._slots.fail_all(slots, exc)
        except BaseException:
            self._slots.fail_all(slots, TransientError("read interrupted: reader shutting down"))
            raise
        finally:
            if on_done is not None:
                on_done()

    async def _load_from_disk(self, key: AssetKey, slots: dict[Piece, Slot]) -> dict[Piece, Slot]:
        """Complete the whole-block slots the disk cache can fill; return the others."""
        disk = self._disk
        if disk is None:
            return slots
        # Ask the index first: a cold block then costs no worker-thread round trip.
        lengths = {
            piece[1]: slot.nbytes
            for piece, slot in slots.items()
            if piece[2] == WHOLE and disk.holds(key, piece[1])
        }
        if not lengths:
            return slots
        try:
            found = await trio.to_thread.run_sync(disk.get_many, key, lengths)
        except OSError as exc:
            self._disk_trouble("read", exc)
            return slots
        for index, data in found.items():
            self._counts["hits_disk"] += 1
            piece = (key, index, WHOLE)
            self._slots.complete(piece, slots[piece], memoryview(data), linger=False)
        return {
            piece: slot
            for piece, slot in slots.items()
            if piece[2] != WHOLE or piece[1] not in found
        }

    async def _load_from_source(self, key: AssetKey, slots: dict[Piece, Slot]) -> None:
        if self._ranges_unsupported:
            self._streaming.load(key, slots)
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

    async def _fetch_run(self, key: AssetKey, run: list[tuple[Piece, Slot]]) -> None:
        """One fetch_range for abutting pieces; never raises Exception."""
        run_slots = dict(run)
        start, end = run[0][1].start, run[-1][1].end
        limiter = self._fetch_limiter
        try:
            # `async with limiter` always yields to the scheduler once; a free token is taken
            # without that round (the fetch itself suspends soon enough).
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                await limiter.acquire()
            try:
                if self._ranges_unsupported:  # learnt while this fetch waited for the limiter
                    raise RangeNotSupported("ranges known to be unsupported")
                self._counts["fetches"] += 1
                data = await self._source.fetch_range(key, start, end)
            finally:
                limiter.release()
            if len(data) != end - start:
                raise ProtocolError(
                    f"asked for bytes {start}-{end} of asset {key.asset_id}, got {len(data)}"
                )
        except RangeNotSupported:
            if not self._ranges_unsupported:
                self._ranges_unsupported = True
                logger.info("the server ignores Range requests: assets will be streamed whole")
            self._streaming.load(key, run_slots)
            return
        except Exception as exc:
            self._counts["fetch_errors"] += 1
            logger.debug("fetch of %s bytes %d-%d failed: %r", key, start, end, exc)
            self._slots.fail_all(run_slots, exc)
            return
        self._counts["bytes_fetched"] += len(data)
        view = memoryview(data).toreadonly()
        # The run buffer now exists: count it instead of the reservations, and keep it
        # counted until its disk write is done even if memory evicts its pieces.
        for _, slot in run:
            self._slots.unreserve(slot)
        self._memory.hold(view)
        blocks: dict[int, memoryview] = {}
        lingering: dict[Piece, Slot] = {}
        for piece, slot in run:
            piece_view = view[slot.start - start : slot.end - start]
            to_disk = self._disk is not None and piece[2] == WHOLE
            self._slots.complete(piece, slot, piece_view, linger=to_disk)
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
        slots: dict[Piece, Slot],
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
                        disk_put_batch, disk, [(key, blocks) for key, blocks, _, _ in batch]
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
                self._slots.forget(piece, slot)
            self._memory.unhold(buffer)

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
