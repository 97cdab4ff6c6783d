"""Receive buffers for asset bytes: big ones are anonymous mappings backed by huge pages.

Runs on the store's worker threads (whoever reads a response body). A fetch of several
MiB used to be a bytearray: glibc then either recycles heap memory (each free raises its
mmap threshold, and freed blocks stay resident in up to one heap per thread: a 1 GiB cold
stream peaked at 291 MiB RSS with a 128 MiB budget) or, with a fixed threshold, maps fresh
4 KiB pages (1.1 CPU-s/GiB of page faults and zeroing, measured). A mapping of its own
with MADV_HUGEPAGE is zeroed by the kernel in 2 MiB pages and goes back to the system as
soon as the last view of it is dropped. A single 1 MiB block (the first fetches of each
read run) is mapped too, in 4 KiB pages: in the heap, those blocks left holes that kept a
4 GiB cold read ~45 MiB above its budget (207 MiB peak RSS, 162 mapped).

A `--no-range` stream's chunks (at most RECYCLED_MAX bytes each) are recycled: every one
handed out stays on a list, and a new buffer of the same size reuses one that
nothing views any more (its reference count says only the list holds it) instead of
mapping, faulting and zeroing a fresh huge page and unmapping the old one (cold 1 GiB
`--no-range` read: 297 -> 377 MB/s, 4.36 -> 3.37 CPU-s/GiB). At most _FREE_KEPT unviewed
mappings are kept; `release_unused` unmaps them all (the mount calls it every few seconds,
so a finished stream does not stay resident). Range fetches are not recycled: they gained
nothing, and their mappings, left unswept between the rare fetches of a recycled size,
stayed resident once the memory cache had let them go (a 4 GiB cold read peaked at 204
instead of 155 MiB).
"""

from __future__ import annotations

import contextlib
import mmap
import sys
import threading
from collections import deque

# Below this a bytearray is cheaper (small files: no page faults, heap memory reused).
MAPPED_MIN = 1 << 20
# Recycled buffers are at most this size (a stream chunk); bigger ones are mapped afresh.
RECYCLED_MAX = 2 << 20
_FREE_KEPT = 4

# A view of a mapping keeps it alive and compares equal to bytes, as a bytearray does.
Buffer = bytearray | memoryview

_lock = threading.Lock()
_handed_out: deque[mmap.mmap] = deque()  # recyclable mappings, in the order handed out


def allocate(size: int, *, recycle: bool = False) -> Buffer:
    """A writable buffer of `size` bytes that the caller owns. With `recycle` it may be a
    mapping used before, still holding old bytes: fill it, and hand out only the part that
    was filled. Without, a big buffer is zeroed and returned to the kernel with its last view."""
    if size < MAPPED_MIN:
        return bytearray(size)
    if not recycle or size > RECYCLED_MAX:
        return memoryview(_new_mapping(size))
    with _lock:
        mapping, _ = _sweep(size, keep=_FREE_KEPT)
        if mapping is None:
            mapping = _new_mapping(size)
        _handed_out.append(mapping)
    return memoryview(mapping)


def release_unused() -> int:
    """Unmap every recyclable mapping nothing views any more; how many there were."""
    with _lock:
        return _sweep(None, keep=0)[1]


def _sweep(size: int | None, keep: int) -> tuple[mmap.mmap | None, int]:
    """Walk the list (with the lock held): take the first unviewed mapping of `size`, keep
    `keep` other unviewed ones, unmap the rest. Returns (taken, unmapped)."""
    taken: mmap.mmap | None = None
    kept = unmapped = 0
    index = 0
    while index < len(_handed_out):
        mapping = _handed_out[index]
        # References: the list, `mapping` and getrefcount's argument. A view adds its own.
        if sys.getrefcount(mapping) > 3:
            index += 1
        elif taken is None and len(mapping) == size:
            taken = mapping
            del _handed_out[index]
        elif kept < keep:
            kept += 1
            index += 1
        else:
            del _handed_out[index]
            mapping.close()
            unmapped += 1
    return taken, unmapped


def _new_mapping(size: int) -> mmap.mmap:
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    hugepage = getattr(mmap, "MADV_HUGEPAGE", None)
    if hugepage is not None:
        # Without THP in the kernel: 4 KiB pages, still returned on release.
        with contextlib.suppress(OSError):
            mapping.madvise(hugepage)
    return mapping
