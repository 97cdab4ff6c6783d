"""Stream mode: serve pieces from whole-asset downloads, for servers that ignore Range.

Runs on the trio thread; disk writes go to worker threads. The AssetReader hands a
StreamLoader the slots it cannot fetch by range (`load`); each asset is streamed from its
start, once at a time, up to _STREAM_AHEAD bytes past the furthest block a reader waits for,
cut into blocks as the bytes arrive (chunks that line up with blocks are used as
they are, others copied once into the block's buffer); every block lands in the caches and
wakes its waiters at once. A chunk slot waits for its block and is cut from it. A stream
that breaks while readers wait on it is started again for them, at most _STREAM_RESTARTS
times, as a Range fetch would have been retried.

Memory: a running stream reserves room for its partial block and what the source holds
ahead of it; streamed blocks queued for the disk stay counted until written, and the bounded
queue holds the download back when the disk lags. A body longer than the listed size is a
different asset: everything cached of it is dropped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from cometfs.errors import ProtocolError, TransientError
from cometfs.model import AssetKey
from cometfs.reader.blocks import block_bounds, block_count, block_length
from cometfs.reader.disk import DiskCache
from cometfs.reader.memory import MemoryCache
from cometfs.reader.pieces import WHOLE, Buffer, ByteSource, Piece, Slot, SlotTable, disk_put_many

logger = logging.getLogger(__name__)

# Streamed blocks waiting for their disk write; beyond this the download waits for the disk.
_STREAM_DISK_QUEUE = 8
# A stream goes on at most this many bytes past the furthest block a reader waited on from
# it (sequential readers keep extending that), then stops: in stream mode a read costs the
# bytes up to it plus this readahead, not the whole asset.
_STREAM_AHEAD = 8 << 20
# A stream that breaks (connection lost, body cut short) while readers wait on it is started
# again this many times for them before they see the error: a whole-asset GET cannot resume
# where it broke, and one reset must not fail a read that a Range fetch would have retried.
_STREAM_RESTARTS = 2

_DiskItem = tuple[int, memoryview, "Slot | None"]
Spawn = Callable[..., None]


@dataclass(eq=False)
class _Stream:
    """One whole-asset download in stream mode and the slots waiting for its blocks."""

    key: AssetKey
    waiting: dict[int, Slot] = field(default_factory=dict)
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
    restarts: int = 0  # how many broken streams of this asset came before this one


class StreamLoader:
    """Fills slots from whole-asset streams; shares the reader's slots, memory and counters."""

    def __init__(
        self,
        source: ByteSource,
        slots: SlotTable,
        memory: MemoryCache,
        disk: DiskCache | None,
        *,
        block_size: int,
        span: int,
        counts: dict[str, int],
        spawn: Spawn,
        disk_trouble: Callable[[str, OSError], None],
    ) -> None:
        self._source = source
        self._slots = slots
        self._memory = memory
        self._disk = disk
        self._block_size = block_size
        self._span = span
        self._counts = counts
        self._spawn = spawn
        self._disk_trouble = disk_trouble
        self._streams: dict[AssetKey, _Stream] = {}
        # Reserved per running stream: its partial block and what the source holds ahead.
        self._allowance = block_size + source.stream_ahead

    @property
    def active(self) -> int:
        """Streams running now."""
        return len(self._streams)

    def load(self, key: AssetKey, slots: dict[Piece, Slot]) -> None:
        """Fill the slots from whole streamed blocks; chunks are cut from their block."""
        blocks: dict[int, Slot] = {}
        for piece, slot in slots.items():
            if piece[2] == WHOLE:
                blocks[piece[1]] = slot
        for piece, slot in slots.items():
            if piece[2] == WHOLE or slot.done:
                continue
            whole = (key, piece[1], WHOLE)
            block_slot = blocks.get(piece[1]) or self._slots.get(whole)
            if block_slot is None:
                block_slot = self._slots.add(
                    whole, *block_bounds(piece[1], self._block_size, key.size)
                )
                blocks[piece[1]] = block_slot
            self._spawn(self._cut_chunk, piece, slot, block_slot)
        self._attach(key, blocks)

    async def _cut_chunk(self, piece: Piece, slot: Slot, block_slot: Slot) -> None:
        try:
            block = await block_slot.wait()
        except Exception as exc:
            self._slots.fail(piece, slot, exc)
            return
        offset = slot.start - block_slot.start
        self._slots.complete(piece, slot, block[offset : offset + slot.nbytes], linger=False)

    def _attach(self, key: AssetKey, slots: dict[int, Slot], restarts: int = 0) -> None:
        """Have the asset's running stream fill the slots, or start one for those it passed."""
        stream = self._streams.get(key)
        behind: dict[int, Slot] = {}
        for index, slot in slots.items():
            if slot.done:
                continue
            if (
                stream is not None
                and stream.error is None
                and not stream.cut
                and index >= stream.position
            ):
                stream.waiting[index] = slot
                stream.furthest = max(stream.furthest, index)
            else:
                behind[index] = slot
        if behind:
            stream = _Stream(key, waiting=behind, furthest=max(behind), restarts=restarts)
            self._streams[key] = stream
            self._spawn(self._run, stream)

    async def _run(self, stream: _Stream) -> None:
        """Download the whole asset, landing blocks as they complete. Never raises Exception."""
        key = stream.key
        self._counts["streams"] += 1
        # A small asset's stream holds at most its bytes twice: chunks, and a block cut from them.
        allowance = min(self._allowance, 2 * key.size)
        self._memory.reserve(allowance)
        try:
            send, receive = trio.open_memory_channel[_DiskItem](_STREAM_DISK_QUEUE)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_blocks, key, receive)
                async with send:
                    stream.disk_queue = send
                    await self._receive(stream)
                    stream.disk_queue = None
            if stream.overlong:
                await self._purge(key)
            if stream.error is not None:
                if self._restartable(stream):
                    self._restart(stream)
                else:
                    self._fail(stream, stream.error)
        except Exception as exc:
            logger.exception("unexpected error streaming %s", key)
            self._fail(stream, exc)
        except BaseException:
            self._fail(stream, TransientError("read interrupted: reader shutting down"))
            raise
        finally:
            stream.buffer = None
            self._memory.release(allowance)
            if self._streams.get(key) is stream:
                del self._streams[key]

    async def _receive(self, stream: _Stream) -> None:
        """Run the source's stream; afterwards `stream.error` tells whether it all arrived.

        The error is set before the queued disk writes drain, so readers arriving meanwhile
        start a fresh stream instead of joining a failed one.
        """
        key = stream.key
        try:
            with trio.CancelScope() as scope:
                stream.scope = scope
                await self._source.stream(key, partial(self._on_chunk, stream))
        except Exception as exc:
            if stream.error is None:
                stream.error = exc
        if stream.error is None and not stream.cut and stream.received < key.size:
            stream.error = ProtocolError(
                f"stream of asset {key.asset_id} ended after {stream.received} of {key.size} bytes"
            )

    async def _on_chunk(self, stream: _Stream, chunk: Buffer) -> None:
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
            length = block_length(stream.position, self._block_size, key.size)
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
            ahead = max(1, _STREAM_AHEAD // self._block_size)
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
        piece = (key, index, WHOLE)
        queue = stream.disk_queue if self._disk is not None else None
        # A reader may have attached to another stream of this asset; any stream can serve it.
        slot = stream.waiting.pop(index, None)
        if slot is None or slot.done:
            slot = self._slots.get(piece)
        if slot is not None and not slot.done:
            self._slots.complete(piece, slot, data, linger=queue is not None)
        else:
            slot = None
            self._memory.put(piece, data)
        if queue is not None:
            self._memory.hold(data)
            await queue.send((index, data, slot))

    async def _write_blocks(
        self, key: AssetKey, receive: trio.MemoryReceiveChannel[_DiskItem]
    ) -> None:
        """Write queued blocks; all those waiting when the disk is free go in one call."""
        async with receive:
            try:
                async for item in receive:
                    batch = [item]
                    with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                        while True:
                            batch.append(receive.receive_nowait())
                    await self._write_batch(key, batch)
            finally:
                # Cancelled: give back what the unwritten blocks held.
                with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                    while True:
                        self._written(key, [receive.receive_nowait()])

    async def _write_batch(self, key: AssetKey, batch: list[_DiskItem]) -> None:
        try:
            if self._disk is not None:
                blocks = {index: data for index, data, _ in batch}
                await trio.to_thread.run_sync(disk_put_many, self._disk, key, blocks)
        except OSError as exc:
            self._disk_trouble("write", exc)
        finally:
            self._written(key, batch)

    def _written(self, key: AssetKey, batch: list[_DiskItem]) -> None:
        """The blocks are on disk (or given up): release their memory and slots."""
        for index, data, slot in batch:
            self._memory.unhold(data)
            if slot is not None:
                self._slots.forget((key, index, WHOLE), slot)

    async def _purge(self, key: AssetKey) -> None:
        """Forget every cached piece of an asset whose bytes are not the ones listed."""
        logger.warning("asset %s is not the %d bytes listed; dropping its cache", key, key.size)
        chunks = range(WHOLE, -(-self._block_size // self._span))
        for index in range(block_count(key.size, self._block_size)):
            for chunk in chunks:
                self._memory.discard((key, index, chunk))
        if self._disk is not None:
            try:
                await trio.to_thread.run_sync(self._disk.discard, key)
            except OSError as exc:
                self._disk_trouble("discard", exc)

    def _restartable(self, stream: _Stream) -> bool:
        """Whether the stream broke in a way a new request may not, with readers waiting."""
        return (
            bool(stream.waiting)
            and not stream.overlong
            and stream.restarts < _STREAM_RESTARTS
            and isinstance(stream.error, TransientError | ProtocolError)
        )

    def _restart(self, stream: _Stream) -> None:
        """Hand the stream's waiting slots to a new stream of the asset (or to one a reader
        started meanwhile); blocks that already landed are cached and land again harmlessly."""
        self._counts["streams_restarted"] += 1
        logger.debug(
            "stream of %s broke at byte %d: %r; restarting",
            stream.key,
            stream.received,
            stream.error,
        )
        waiting, stream.waiting = stream.waiting, {}
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]
        self._attach(stream.key, waiting, restarts=stream.restarts + 1)

    def _fail(self, stream: _Stream, error: BaseException) -> None:
        self._counts["stream_errors"] += 1
        logger.debug("stream of %s failed at byte %d: %r", stream.key, stream.received, error)
        waiting, stream.waiting = stream.waiting, {}
        key = stream.key
        self._slots.fail_all({(key, index, WHOLE): slot for index, slot in waiting.items()}, error)


__all__ = ["StreamLoader"]
