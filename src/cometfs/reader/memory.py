"""The in-memory block cache: one LRU of block bytes under one global byte budget.

The budget covers cached blocks and bytes reserved for blocks being fetched or streamed, so
prefetching evicts cold blocks instead of growing memory. Used only from the trio thread, so
there is no lock.
"""

from __future__ import annotations

from collections.abc import Hashable

from cachetools import LRUCache


class MemoryCache:
    """Block bytes keyed by (AssetKey, block index), least recently used evicted first.

    Reservations are allowed to exceed the budget (a read must be answered even when it is
    larger than the whole budget); the cache then simply holds nothing.
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError("memory budget must be >= 0")
        self.budget = budget
        self.reserved = 0
        self._blocks: LRUCache[Hashable, bytes] = LRUCache(maxsize=budget, getsizeof=len)

    @property
    def cached(self) -> int:
        """Bytes held by cached blocks."""
        return int(self._blocks.currsize)

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: Hashable) -> bool:
        # Membership does not count as a use, so probing for readahead keeps the LRU order.
        return key in self._blocks

    def get(self, key: Hashable) -> bytes | None:
        """The block's bytes, marking it most recently used; None if not cached."""
        return self._blocks.get(key)

    def put(self, key: Hashable, data: bytes) -> bool:
        """Cache a block if it fits beside the reservations; True if it was kept."""
        self._blocks.pop(key, None)
        if len(data) > self.budget - self.reserved:
            return False
        self._evict_until(self.budget - self.reserved - len(data))
        self._blocks[key] = data
        return True

    def discard(self, key: Hashable) -> None:
        self._blocks.pop(key, None)

    def reserve(self, nbytes: int) -> None:
        """Account for `nbytes` about to be held outside the cache (in flight)."""
        self.reserved += nbytes
        self._evict_until(max(0, self.budget - self.reserved))

    def release(self, nbytes: int) -> None:
        self.reserved -= nbytes
        if self.reserved < 0:
            raise RuntimeError("memory reservation released twice")

    def room(self) -> int:
        """Bytes that can still be reserved without going over budget (evicting as needed)."""
        return max(0, self.budget - self.reserved)

    def clear(self) -> None:
        self._blocks.clear()

    def _evict_until(self, limit: int) -> None:
        while self._blocks and self._blocks.currsize > limit:
            self._blocks.popitem()
