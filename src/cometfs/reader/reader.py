"""AssetReader: answers read(offset, size) on asset files from memory, disk cache or network.

Runs on the trio thread. Disk cache calls go to worker threads (`trio.to_thread.run_sync`);
network calls go through the injected ByteSource (the async store facade).

How a read is served:

* The byte range maps to fixed-size blocks. Blocks in the memory cache are used at once.
* Blocks already being loaded are waited for (single-flight: one load per block, however
  many readers need it; a failed load wakes every waiter with the same exception and leaves
  nothing cached, so the next read retries).
* Missing blocks, plus any readahead blocks the handle's window asks for, get a "slot" each
  and one background load: disk cache first, then the source, consecutive missing blocks
  coalesced into one `fetch_range` per run. The read waits only for its own blocks (and,
  when they share a fetch, for the readahead blocks of that fetch: at most one window).
* If the source raises RangeNotSupported, the reader switches to stream mode for good: each
  asset is streamed whole, once at a time, cut into blocks as the bytes arrive; every block
  lands in the caches and wakes its waiters at once, so a read near the start of a large
  asset does not wait for the whole download.

Background work (loads, streams, disk writes) runs in a nursery the reader owns while it is
entered as an async context manager:

    async with AssetReader(source, disk) as reader:
        ...  # reader.read(...) from any task; leaving cancels background work

Background tasks never raise: their errors are delivered to the readers waiting on them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
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
    block_bounds,
    block_count,
    block_length,
    blocks_covering,
    consecutive_runs,
)
from cometfs.reader.disk import DiskCache
from cometfs.reader.memory import MemoryCache

logger = logging.getLogger(__name__)

# Streamed blocks waiting for their disk write; beyond this the download waits for the disk.
_STREAM_DISK_QUEUE = 8

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
    "disk_errors",
)


class ByteSource(Protocol):
    """Where bytes come from when no cache has them; implemented by the async store facade."""

    async def fetch_range(self, key: AssetKey, start: int, end: int) -> bytes | bytearray:
        """Bytes [start, end) exactly; may raise RangeNotSupported and any CometFSError."""
        ...

    async def stream(self, key: AssetKey, sink: Callable[[bytes], Awaitable[None]]) -> None:
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
    """One block being loaded. Readers wait on `event`; then exactly one of data/error is set."""

    __slots__ = ("event", "data", "error", "nbytes")

    def __init__(self, nbytes: int) -> None:
        self.event = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.nbytes = nbytes

    @property
    def done(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> bytes:
        await self.event.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data


_DiskItem = tuple[int, bytes, "_Slot | None"]


@dataclass(eq=False)
class _Stream:
    """One whole-asset download in stream mode and the slots waiting for its blocks."""

    key: AssetKey
    waiting: dict[int, _Slot] = field(default_factory=dict)
    position: int = 0  # index of the block being assembled
    received: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    error: BaseException | None = None
    overlong: bool = False  # the body did not match the listed size: drop what landed
    scope: trio.CancelScope | None = None
    disk_queue: trio.MemorySendChannel[_DiskItem] | None = None


class AssetReader:
    """Block-cached, single-flight, readahead reads of immutable assets. See the module doc."""

    def __init__(
        self,
        source: ByteSource,
        disk: DiskCache | None,
        *,
        block_size: int = 1 << 20,
        memory_budget: int = 256 << 20,
        min_readahead: int = 1 << 20,
        max_readahead: int = 32 << 20,
        max_parallel_fetches: int = 8,
    ) -> None:
        if block_size < 1 or max_parallel_fetches < 1:
            raise ValueError("block_size and max_parallel_fetches must be >= 1")
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
        self._max_run_blocks = max(1, max_readahead // block_size)
        self._fetch_limiter = trio.CapacityLimiter(max_parallel_fetches)
        self._inflight: dict[tuple[AssetKey, int], _Slot] = {}
        self._streams: dict[AssetKey, _Stream] = {}
        self._ranges_unsupported = False
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._busy = 0
        self._idle = trio.Event()
        self._disk_warned = False
        self._counts = dict.fromkeys(_COUNTERS, 0)

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

    def open(self, key: AssetKey) -> ReadHandle:
        """A handle for one open file of `key`; keep it for the file's reads."""
        return ReadHandle(key, Readahead(self._min_window, self._max_window))

    async def read(self, handle: ReadHandle, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of the asset, short only at its end (POSIX read)."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be >= 0")
        self._require_running()
        key = handle.key
        end = min(offset + size, key.size)
        if offset >= end:
            return b""
        ahead_start, ahead_stop = handle.readahead.on_read(offset, end, key.size)
        needed = blocks_covering(offset, end, self.block_size)
        found, waits, missing = self._lookup(key, needed)
        prefetch = self._prefetch_candidates(key, ahead_start, ahead_stop, needed, missing)
        if missing or prefetch:
            slots = self._start_load(key, missing + prefetch)
            waits.update((index, slots[index]) for index in missing)
        for index, slot in waits.items():
            found[index] = await slot.wait()
        return self._assemble(found, needed, offset, end)

    def stats(self) -> dict[str, int]:
        """Counters and cache sizes, for .comet/status.json and tests."""
        disk = self._disk
        return {
            "memory_bytes": self._memory.cached,
            "memory_reserved": self._memory.reserved,
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

    def _lookup(
        self, key: AssetKey, needed: range
    ) -> tuple[dict[int, bytes], dict[int, _Slot], list[int]]:
        """Split the needed blocks into cached (bytes), in flight (slots) and missing."""
        found: dict[int, bytes] = {}
        waits: dict[int, _Slot] = {}
        missing: list[int] = []
        for index in needed:
            data = self._memory.get((key, index))
            if data is not None and len(data) == self._block_len(key, index):
                found[index] = data
                self._counts["hits_memory"] += 1
                continue
            if data is not None:
                self._memory.discard((key, index))
            slot = self._inflight.get((key, index))
            if slot is not None:
                waits[index] = slot
                self._counts["shared_waits"] += not slot.done
            else:
                missing.append(index)
        return found, waits, missing

    def _prefetch_candidates(
        self, key: AssetKey, start: int, stop: int, needed: range, missing: list[int]
    ) -> list[int]:
        """Readahead blocks worth loading now: not cached, not in flight, within the budget."""
        if self._ranges_unsupported or start >= stop:
            return []
        room = self._memory.room() - sum(self._block_len(key, i) for i in missing)
        chosen: list[int] = []
        for index in blocks_covering(start, stop, self.block_size):
            if index in needed or (key, index) in self._memory or (key, index) in self._inflight:
                continue
            nbytes = self._block_len(key, index)
            if nbytes > room:
                break
            room -= nbytes
            chosen.append(index)
        return chosen

    def _assemble(self, found: dict[int, bytes], needed: range, offset: int, end: int) -> bytes:
        base = needed.start * self.block_size
        if len(needed) == 1:
            return found[needed.start][offset - base : end - base]
        pieces = [memoryview(found[index]) for index in needed]
        pieces[-1] = pieces[-1][: end - (needed.stop - 1) * self.block_size]
        pieces[0] = pieces[0][offset - base :]
        return b"".join(pieces)

    def _block_len(self, key: AssetKey, index: int) -> int:
        return block_length(index, self.block_size, key.size)

    # -- slots ----------------------------------------------------------------------------------

    def _start_load(self, key: AssetKey, indexes: Iterable[int]) -> dict[int, _Slot]:
        """Register a slot per block (reserving its memory) and load them in the background."""
        slots: dict[int, _Slot] = {}
        for index in indexes:
            slot = _Slot(self._block_len(key, index))
            self._memory.reserve(slot.nbytes)
            self._inflight[(key, index)] = slot
            slots[index] = slot
        self._spawn(self._load, key, slots)
        return slots

    def _complete(
        self, key: AssetKey, index: int, slot: _Slot, data: bytes, *, linger: bool
    ) -> None:
        """Hand a block to its waiters and the memory cache.

        With `linger` the slot stays findable until its disk write is done, so a reader
        arriving meanwhile does not fetch again when memory has already evicted the block.
        """
        if slot.done:
            return
        self._memory.release(slot.nbytes)
        slot.data = data
        slot.event.set()
        self._memory.put((key, index), data)
        if not linger:
            self._forget(key, index, slot)

    def _fail(self, key: AssetKey, index: int, slot: _Slot, error: BaseException) -> None:
        if slot.done:
            return
        self._memory.release(slot.nbytes)
        slot.error = error
        slot.event.set()
        self._forget(key, index, slot)

    def _fail_all(self, key: AssetKey, slots: dict[int, _Slot], error: BaseException) -> None:
        for index, slot in slots.items():
            self._fail(key, index, slot, error)

    def _forget(self, key: AssetKey, index: int, slot: _Slot) -> None:
        if self._inflight.get((key, index)) is slot:
            del self._inflight[(key, index)]

    # -- background loads -----------------------------------------------------------------------

    async def _load(self, key: AssetKey, slots: dict[int, _Slot]) -> None:
        """Fill the slots from the disk cache, then from the source. Never raises Exception."""
        try:
            pending = await self._load_from_disk(key, slots)
            if pending:
                await self._load_from_source(key, pending)
        except Exception as exc:
            logger.exception("unexpected error loading blocks of %s", key)
            self._fail_all(key, slots, exc)
        except BaseException:
            self._fail_all(key, slots, TransientError("read interrupted: reader shutting down"))
            raise

    async def _load_from_disk(self, key: AssetKey, slots: dict[int, _Slot]) -> dict[int, _Slot]:
        """Complete the slots the disk cache can fill; return the others."""
        disk = self._disk
        if disk is None:
            return slots
        # Ask the index first: a cold block then costs no worker-thread round trip.
        lengths = {index: slot.nbytes for index, slot in slots.items() if disk.holds(key, index)}
        if not lengths:
            return slots
        try:
            found = await trio.to_thread.run_sync(_disk_get_many, disk, key, lengths)
        except OSError as exc:
            self._disk_trouble("read", exc)
            return slots
        for index, data in found.items():
            self._counts["hits_disk"] += 1
            self._complete(key, index, slots[index], data, linger=False)
        return {index: slot for index, slot in slots.items() if index not in found}

    async def _load_from_source(self, key: AssetKey, slots: dict[int, _Slot]) -> None:
        if self._ranges_unsupported:
            self._attach_to_stream(key, slots)
            return
        runs = consecutive_runs(slots, self._max_run_blocks)
        if len(runs) == 1:
            await self._fetch_run(key, runs[0], slots)
            return
        async with trio.open_nursery() as nursery:
            for run in runs:
                nursery.start_soon(self._fetch_run, key, run, slots)

    async def _fetch_run(self, key: AssetKey, run: range, slots: dict[int, _Slot]) -> None:
        """One fetch_range for consecutive blocks; never raises Exception."""
        run_slots = {index: slots[index] for index in run}
        start = block_bounds(run.start, self.block_size, key.size)[0]
        end = block_bounds(run.stop - 1, self.block_size, key.size)[1]
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
            self._attach_to_stream(key, run_slots)
            return
        except Exception as exc:
            self._counts["fetch_errors"] += 1
            logger.debug("fetch of %s bytes %d-%d failed: %r", key, start, end, exc)
            self._fail_all(key, run_slots, exc)
            return
        self._counts["bytes_fetched"] += len(data)
        blocks: dict[int, bytes] = {}
        view = memoryview(data)  # slicing a view copies nothing; bytes() copies each block once
        for index in run:
            block_start, block_end = block_bounds(index, self.block_size, key.size)
            blocks[index] = bytes(view[block_start - start : block_end - start])
            self._complete(key, index, run_slots[index], blocks[index], linger=True)
        await self._store_on_disk(key, blocks, run_slots)

    async def _store_on_disk(
        self, key: AssetKey, blocks: dict[int, bytes], slots: dict[int, _Slot]
    ) -> None:
        try:
            if self._disk is not None:
                await trio.to_thread.run_sync(_disk_put_many, self._disk, key, blocks)
        except OSError as exc:
            self._disk_trouble("write", exc)
        finally:
            for index, slot in slots.items():
                self._forget(key, index, slot)

    # -- stream mode ----------------------------------------------------------------------------

    def _switch_to_streaming(self) -> None:
        if not self._ranges_unsupported:
            self._ranges_unsupported = True
            logger.info("the server ignores Range requests: assets will be streamed whole")

    def _attach_to_stream(self, key: AssetKey, slots: dict[int, _Slot]) -> None:
        """Have the asset's running stream fill the slots, or start one for those it passed."""
        stream = self._streams.get(key)
        behind: dict[int, _Slot] = {}
        for index, slot in slots.items():
            if slot.done:
                continue
            if stream is not None and stream.error is None and index >= stream.position:
                stream.waiting[index] = slot
            else:
                behind[index] = slot
        if behind:
            stream = _Stream(key, waiting=behind)
            self._streams[key] = stream
            self._spawn(self._run_stream, stream)

    async def _run_stream(self, stream: _Stream) -> None:
        """Download the whole asset, landing blocks as they complete. Never raises Exception."""
        key = stream.key
        self._counts["streams"] += 1
        self._memory.reserve(self.block_size)  # the partial-block buffer
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
            self._memory.release(self.block_size)
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
        if stream.error is None and stream.received < key.size:
            stream.error = ProtocolError(
                f"stream of asset {key.asset_id} ended after {stream.received} of "
                f"{key.size} bytes"
            )

    async def _on_stream_chunk(self, stream: _Stream, chunk: bytes) -> None:
        """The stream's sink: cut arriving bytes into blocks. Runs on the trio thread."""
        key = stream.key
        if stream.error is not None:
            return
        if stream.received + len(chunk) > key.size:
            stream.error = ProtocolError(
                f"stream of asset {key.asset_id} is longer than its {key.size} bytes"
            )
            stream.overlong = True
            if stream.scope is not None:
                stream.scope.cancel()
            return
        stream.received += len(chunk)
        self._counts["bytes_streamed"] += len(chunk)
        view = memoryview(chunk)
        while len(view):
            want = self._block_len(key, stream.position) - len(stream.buffer)
            stream.buffer += view[:want]
            view = view[want:]
            if len(stream.buffer) == self._block_len(key, stream.position):
                index, data = stream.position, bytes(stream.buffer)
                stream.buffer.clear()
                # Advance before landing: _land may wait for the disk, and a reader arriving
                # meanwhile must not wait on this stream for a block it has already passed.
                stream.position += 1
                await self._land(stream, index, data)

    async def _land(self, stream: _Stream, index: int, data: bytes) -> None:
        """A streamed block is complete: wake its waiters, cache it, queue its disk write.

        The disk queue is bounded: when the disk lags, this waits, which holds the download
        back instead of piling blocks up in memory past the budget."""
        key = stream.key
        queue = stream.disk_queue if self._disk is not None else None
        # A reader may have attached to another stream of this asset; any stream can serve it.
        slot = stream.waiting.pop(index, None)
        if slot is None or slot.done:
            slot = self._inflight.get((key, index))
        if slot is not None and not slot.done:
            self._complete(key, index, slot, data, linger=queue is not None)
        else:
            slot = None
            self._memory.put((key, index), data)
        if queue is not None:
            self._memory.reserve(len(data))
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
                    self._memory.release(len(data))
                    if slot is not None:
                        self._forget(key, index, slot)

    async def _write_streamed_block(
        self, key: AssetKey, index: int, data: bytes, slot: _Slot | None
    ) -> None:
        try:
            if self._disk is not None:
                await trio.to_thread.run_sync(self._disk.put, key, index, data)
        except OSError as exc:
            self._disk_trouble("write", exc)
        finally:
            self._memory.release(len(data))
            if slot is not None:
                self._forget(key, index, slot)

    async def _purge(self, key: AssetKey) -> None:
        """Forget every cached block of an asset whose bytes are not the ones listed."""
        logger.warning("asset %s is not the %d bytes listed; dropping its cache", key, key.size)
        for index in range(block_count(key.size, self.block_size)):
            self._memory.discard((key, index))
        if self._disk is not None:
            try:
                await trio.to_thread.run_sync(self._disk.discard, key)
            except OSError as exc:
                self._disk_trouble("discard", exc)

    def _fail_stream(self, stream: _Stream, error: BaseException) -> None:
        self._counts["stream_errors"] += 1
        logger.debug("stream of %s failed at byte %d: %r", stream.key, stream.received, error)
        waiting, stream.waiting = stream.waiting, {}
        self._fail_all(stream.key, waiting, error)

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


def _disk_put_many(disk: DiskCache, key: AssetKey, blocks: dict[int, bytes]) -> None:
    """Worker thread: store fetched blocks."""
    for index, data in blocks.items():
        disk.put(key, index, data)
