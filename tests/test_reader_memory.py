"""MemoryCache: one charge per underlying buffer, eviction by buffer, holds, admission."""

from __future__ import annotations

import pytest

from cometfs.reader.memory import MemoryCache


def test_views_of_one_buffer_are_charged_once_and_evicted_together() -> None:
    cache = MemoryCache(100)
    run = memoryview(bytearray(60))
    assert cache.put("a", run[:30]) and cache.put("b", run[30:])
    assert cache.charged == 60 and len(cache) == 2
    assert cache.put("c", bytes(50))  # needs the run's 60 bytes back: both pieces go
    assert "a" not in cache and "b" not in cache and "c" in cache
    assert cache.charged == 50


def test_least_recently_used_buffer_goes_first() -> None:
    cache = MemoryCache(100)
    cache.put("old", bytes(40))
    cache.put("new", bytes(40))
    assert cache.get("old") is not None  # now the most recently used
    cache.put("third", bytes(40))
    assert "old" in cache and "new" not in cache and "third" in cache


def test_a_held_buffer_stays_counted_after_its_pieces_are_evicted() -> None:
    cache = MemoryCache(100)
    run = memoryview(bytes(80))
    cache.hold(run)
    cache.put("a", run[:40])
    assert cache.charged == 80 and cache.held == 80
    assert not cache.put("b", bytes(30))  # the held 80 cannot be evicted
    assert cache.room() == 20 and not cache.admits(30) and cache.admits(20)
    cache.unhold(run)
    assert cache.held == 0 and cache.charged == 80  # still cached, now evictable
    assert cache.put("b", bytes(30))
    assert "a" not in cache and cache.charged == 30
    with pytest.raises(RuntimeError):
        cache.unhold(run)


def test_pieces_cached_while_held_are_trimmed_to_the_budget_on_release() -> None:
    cache = MemoryCache(50)
    run = memoryview(bytes(80))  # larger than the whole budget
    cache.hold(run)
    cache.put("a", run[:10])
    cache.unhold(run)
    assert cache.charged == 0 and len(cache) == 0


def test_reservations_evict_and_a_lone_load_is_always_admitted() -> None:
    cache = MemoryCache(100)
    cache.put("a", bytes(70))
    cache.reserve(50)
    assert "a" not in cache and cache.usage == 50
    assert not cache.admits(60)
    cache.release(50)
    assert cache.admits(1000)  # nothing in flight: a read larger than the budget still runs
    with pytest.raises(RuntimeError):
        cache.release(1)
