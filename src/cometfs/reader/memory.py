"""The in-memory block cache and the one memory budget every asset buffer counts against.

Cached pieces are memoryviews, often slices of one larger fetched buffer (a run of blocks
fetched in one request), so the cache charges each underlying buffer once, for its full size,
for as long as any piece of it is cached or the buffer is held outside the cache (queued for a
disk write). Eviction works on whole buffers, least recently used first: dropping one slice of
a 32 MiB run frees nothing, dropping the run frees it all. Reservations cover bytes that do
not exist yet (fetches in flight, a stream's partial block). Used only from the trio thread,
so there is no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import trio


class _Backing:
    """One underlying buffer: its size, the cached pieces viewing it, and outside holds."""

    __slots__ = ("holds", "keys", "nbytes", "obj")

    def __init__(self, obj: object, nbytes: int) -> None:
        self.obj = obj  # keeps id(obj) valid while the buffer is tracked
        self.nbytes = nbytes
        self.keys: set[Hashable] = set()
        self.holds = 0


def _owner(view: memoryview) -> tuple[object, int]:
    """The buffer a view slices and that buffer's size in bytes."""
    obj = view.obj
    if obj is None:
        return view, view.nbytes
    with memoryview(obj) as whole:
        return obj, whole.nbytes


class MemoryCache:
    """Pieces of assets keyed by any hashable, one byte budget for cached and held bytes.

    Reservations are allowed to exceed the budget (a read must be answered even when it is
    larger than the whole budget); the cache then simply holds nothing.
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError("memory budget must be >= 0")
        self.budget = budget
        self.reserved = 0
        self.charged = 0  # bytes of buffers cached or held
        self.held = 0  # bytes of buffers held outside the cache (not evictable)
        self._pieces: dict[Hashable, tuple[memoryview, _Backing]] = {}
        self._live: dict[int, _Backing] = {}
        self._lru: OrderedDict[int, _Backing] = OrderedDict()  # backings with cached pieces
        self._freed = trio.Event()

    @property
    def cached(self) -> int:
        """Bytes charged for cached pieces and held buffers."""
        return self.charged

    @property
    def usage(self) -> int:
        """Everything counted against the budget."""
        return self.charged + self.reserved

    def __len__(self) -> int:
        return len(self._pieces)

    def __contains__(self, key: Hashable) -> bool:
        # Membership does not count as a use, so probing for readahead keeps the LRU order.
        return key in self._pieces

    def get(self, key: Hashable) -> memoryview | None:
        """The piece, marking its buffer most recently used; None if not cached."""
        entry = self._pieces.get(key)
        if entry is None:
            return None
        self._lru.move_to_end(id(entry[1].obj))
        return entry[0]

    def put(self, key: Hashable, data: bytes | bytearray | memoryview) -> bool:
        """Cache a piece if its buffer fits beside the reservations; True if it was kept."""
        self.discard(key)
        view = data if isinstance(data, memoryview) else memoryview(data)
        obj, nbytes = _owner(view)
        backing = self._live.get(id(obj))
        extra = 0 if backing is not None else nbytes
        if extra:
            self._evict_until(self.budget - self.reserved - extra)
            if self.charged + self.reserved + extra > self.budget:
                return False
            backing = self._track(obj, nbytes)
        assert backing is not None
        backing.keys.add(key)
        self._pieces[key] = (view, backing)
        self._lru[id(backing.obj)] = backing
        self._lru.move_to_end(id(backing.obj))
        return True

    def discard(self, key: Hashable) -> None:
        entry = self._pieces.pop(key, None)
        if entry is None:
            return
        backing = entry[1]
        backing.keys.discard(key)
        if not backing.keys:
            self._lru.pop(id(backing.obj), None)
            self._untrack_if_dead(backing)

    def hold(self, data: bytes | bytearray | memoryview) -> None:
        """Count a buffer held outside the cache (queued for the disk) until `unhold`."""
        view = data if isinstance(data, memoryview) else memoryview(data)
        obj, nbytes = _owner(view)
        backing = self._live.get(id(obj))
        if backing is None:
            backing = self._track(obj, nbytes)
        if not backing.holds:
            self.held += backing.nbytes
        backing.holds += 1
        self._evict_until(self.budget - self.reserved)

    def unhold(self, data: bytes | bytearray | memoryview) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)
        obj, _ = _owner(view)
        backing = self._live.get(id(obj))
        if backing is None or not backing.holds:
            raise RuntimeError("memory hold released twice")
        backing.holds -= 1
        if not backing.holds:
            self.held -= backing.nbytes
            self._untrack_if_dead(backing)
            # Pieces cached while held cost nothing then; now they must fit the budget.
            self._evict_until(self.budget - self.reserved)
            self._signal_freed()

    def reserve(self, nbytes: int) -> None:
        """Account for `nbytes` about to be held outside the cache (in flight)."""
        self.reserved += nbytes
        self._evict_until(self.budget - self.reserved)

    def release(self, nbytes: int) -> None:
        self.reserved -= nbytes
        if self.reserved < 0:
            raise RuntimeError("memory reservation released twice")
        self._signal_freed()

    def room(self) -> int:
        """Bytes that can still be reserved without going over budget (evicting as needed)."""
        return max(0, self.budget - self.reserved - self.held)

    def admits(self, nbytes: int) -> bool:
        """Whether a load of `nbytes` may start now: it fits beside what cannot be evicted,
        or nothing else is in flight (a read larger than the budget must still be served)."""
        return nbytes <= self.room() or (self.reserved == 0 and self.held == 0)

    async def wait_freed(self) -> None:
        """Wait until a reservation or hold is given back."""
        await self._freed.wait()

    def clear(self) -> None:
        for key in list(self._pieces):
            self.discard(key)

    def _track(self, obj: object, nbytes: int) -> _Backing:
        backing = _Backing(obj, nbytes)
        self._live[id(obj)] = backing
        self.charged += nbytes
        return backing

    def _untrack_if_dead(self, backing: _Backing) -> None:
        if backing.keys or backing.holds:
            return
        if self._live.pop(id(backing.obj), None) is backing:
            self.charged -= backing.nbytes

    def _signal_freed(self) -> None:
        self._freed.set()
        self._freed = trio.Event()

    def _evict_until(self, limit: int) -> None:
        """Drop least recently used buffers until charged bytes are within `limit`.

        Buffers held outside the cache are skipped (evicting their pieces frees nothing) and
        keep their place in the LRU order.
        """
        skipped: list[tuple[int, _Backing]] = []
        while self.charged > limit and self._lru:
            ident, backing = self._lru.popitem(last=False)
            if backing.holds:
                skipped.append((ident, backing))
                continue
            for key in backing.keys:
                del self._pieces[key]
            backing.keys.clear()
            self._untrack_if_dead(backing)
        for ident, backing in reversed(skipped):
            self._lru[ident] = backing
            self._lru.move_to_end(ident, last=False)
