"""Receive buffers for asset bytes: big ones are anonymous mappings backed by huge pages.

Runs on the store's worker threads (whoever reads a response body). A fetch of several
MiB used to be a bytearray: glibc then either recycles heap memory (each free raises its
mmap threshold, and freed blocks stay resident in up to one heap per thread: a 1 GiB cold
stream peaked at 291 MiB RSS with a 128 MiB budget) or, with a fixed threshold, maps fresh
4 KiB pages (1.1 CPU-s/GiB of page faults and zeroing, measured). A mapping of its own
with MADV_HUGEPAGE is zeroed by the kernel in 2 MiB pages (0.15 CPU-s/GiB) and goes back
to the system as soon as the last view of it is dropped. A single 1 MiB block (the first
fetches of each read run) is mapped too, in 4 KiB pages: in the heap, those blocks left
holes that kept a 4 GiB cold read ~45 MiB above its budget (207 MiB peak RSS, 162 mapped).
"""

from __future__ import annotations

import contextlib
import mmap

# Below this a bytearray is cheaper (small files: no page faults, heap memory reused).
MAPPED_MIN = 1 << 20

# A view of a mapping keeps it alive and compares equal to bytes, as a bytearray does.
Buffer = bytearray | memoryview


def allocate(size: int) -> Buffer:
    """A zeroed, writable buffer of `size` bytes; the caller owns it."""
    if size < MAPPED_MIN:
        return bytearray(size)
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    hugepage = getattr(mmap, "MADV_HUGEPAGE", None)
    if hugepage is not None:
        # Without THP in the kernel: 4 KiB pages, still returned on release.
        with contextlib.suppress(OSError):
            buffer.madvise(hugepage)
    return memoryview(buffer)
