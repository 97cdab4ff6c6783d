"""What range mode and stream mode share: pieces, the slots readers wait on, the byte source.

Runs on the trio thread. A piece is a whole block of an asset or an aligned chunk of one; a
Slot is one piece being loaded, and the SlotTable the pieces in flight, each reserved in the
memory budget until its bytes exist. Completing a slot wakes every reader waiting on it (one
load per piece, however many readers need it); failing it wakes them with the same error
and leaves nothing cached, so the next read retries. The `disk_*` helpers run on worker
threads (`trio.to_thread.run_sync`), the one way either mode reaches the DiskCache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from cometfs.model import AssetKey
from cometfs.reader.disk import DiskCache
from cometfs.reader.memory import MemoryCache

Buffer = bytes | bytearray | memoryview
# (asset, block index, chunk index within the block or WHOLE for the whole block)
Piece = tuple[AssetKey, int, int]
WHOLE = -1


class ByteSource(Protocol):
    """Where bytes come from when no cache has them; implemented by the async store facade."""

    # Bytes of a stream the source may hold received but not yet given to the sink: part of
    # the reader's allowance for each running stream in its memory budget.
    stream_ahead: int

    async def fetch_range(self, key: AssetKey, start: int, end: int) -> Buffer:
        """Bytes [start, end) exactly (any bytes-like object, never modified afterwards);
        may raise RangeNotSupported and any CometFSError."""
        ...

    async def stream(self, key: AssetKey, sink: Callable[[Buffer], Awaitable[None]]) -> None:
        """The whole asset from byte 0, in order, awaiting sink(chunk) on the trio thread
        for each chunk before reading the next (so a slow sink slows the download)."""
        ...


class Slot:
    """One piece being loaded. Readers wait on `event`; then exactly one of data/error is set.

    `reserved` says whether the piece's bytes are still reserved in the memory budget (until
    its buffer exists and is counted instead)."""

    __slots__ = ("data", "end", "error", "event", "reserved", "start")

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


class SlotTable:
    """The pieces in flight, findable by readers that need them while they load."""

    def __init__(self, memory: MemoryCache) -> None:
        self._memory = memory
        self._inflight: dict[Piece, Slot] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def __contains__(self, piece: Piece) -> bool:
        return piece in self._inflight

    def get(self, piece: Piece) -> Slot | None:
        return self._inflight.get(piece)

    def add(self, piece: Piece, start: int, end: int) -> Slot:
        """A new slot for bytes [start, end) of the piece's asset, reserving its memory."""
        slot = Slot(start, end)
        self._memory.reserve(slot.nbytes)
        self._inflight[piece] = slot
        return slot

    def unreserve(self, slot: Slot) -> None:
        if slot.reserved:
            slot.reserved = False
            self._memory.release(slot.nbytes)

    def complete(self, piece: Piece, slot: Slot, data: memoryview, *, linger: bool) -> None:
        """Hand a piece to its waiters and the memory cache.

        With `linger` the slot stays findable until its disk write is done, so a reader
        arriving meanwhile does not fetch again when memory has already evicted the block.
        """
        if slot.done:
            return
        self.unreserve(slot)
        slot.data = data
        slot.event.set()
        self._memory.put(piece, data)
        if not linger:
            self.forget(piece, slot)

    def fail(self, piece: Piece, slot: Slot, error: BaseException) -> None:
        if slot.done:
            return
        self.unreserve(slot)
        slot.error = error
        slot.event.set()
        self.forget(piece, slot)

    def fail_all(self, slots: dict[Piece, Slot], error: BaseException) -> None:
        for piece, slot in slots.items():
            self.fail(piece, slot, error)

    def forget(self, piece: Piece, slot: Slot) -> None:
        if self._inflight.get(piece) is slot:
            del self._inflight[piece]


def disk_put_batch(
    disk: DiskCache, batch: list[tuple[AssetKey, dict[int, memoryview]]]
) -> list[OSError]:
    """Worker thread: store the blocks of several fetches at once; a failure skips only
    its block."""
    return disk.put_many(
        [(key, index, data) for key, blocks in batch for index, data in blocks.items()]
    )


def disk_put_many(disk: DiskCache, key: AssetKey, blocks: dict[int, memoryview]) -> None:
    """Worker thread: store whole blocks of one asset; raises the first failure."""
    errors = disk.put_many([(key, index, data) for index, data in blocks.items()])
    if errors:
        raise errors[0]
