"""Receive buffers: a big body gets a mapping of its own, given back when it is dropped;
chunk-sized mappings are recycled once nothing views them."""

from __future__ import annotations

import gc
import subprocess
import sys

from cometfs.client.buffers import MAPPED_MIN, RECYCLED_MAX, allocate, release_unused

MIB = 1 << 20


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_small_buffer_is_a_zeroed_bytearray() -> None:
    buffer = allocate(MAPPED_MIN - 1)
    assert isinstance(buffer, bytearray)
    assert buffer == bytes(MAPPED_MIN - 1)


def test_a_big_buffer_is_zeroed_writable_and_its_memory_goes_back_when_dropped() -> None:
    # The data path reads a fetch straight into it and hands out views of it; once the
    # last view is gone the memory must leave the process, not stay in a heap arena.
    gc.collect()
    before = _rss_kib()
    buffer = allocate(64 * MIB)
    assert isinstance(buffer, memoryview)  # of a mapping
    view = buffer
    assert len(view) == 64 * MIB and not view.readonly
    assert view[: 4 * MIB] == bytes(4 * MIB)
    view[::4096] = b"x" * (64 * MIB // 4096)  # touch every page
    assert _rss_kib() - before > 60 * 1024
    block = view[MIB : 2 * MIB].toreadonly()  # what the reader keeps of it
    del view, buffer
    assert _rss_kib() - before > 60 * 1024  # a view still holds the mapping
    assert block[0] == ord("x")
    del block
    gc.collect()
    assert _rss_kib() - before < 4 * 1024


def _recycled(size: int) -> memoryview:
    buffer = allocate(size, recycle=True)
    assert isinstance(buffer, memoryview)  # of a mapping
    return buffer


def test_a_chunk_nothing_views_is_recycled_and_one_still_viewed_never_is() -> None:
    release_unused()
    first = _recycled(RECYCLED_MAX)
    first[:5] = b"first"
    first_id = id(first.obj)
    kept = first[:5].toreadonly()  # a block the reader keeps
    del first
    second = _recycled(RECYCLED_MAX)
    assert id(second.obj) != first_id, "a mapping that is still viewed is never handed out"
    second[:5] = b"other"
    assert bytes(kept) == b"first"
    second_id = id(second.obj)
    del second
    third = _recycled(RECYCLED_MAX)
    assert id(third.obj) == second_id, "an unviewed mapping of the same size is reused"
    del third, kept
    assert release_unused() == 2
    assert release_unused() == 0


def test_a_buffer_not_asked_to_be_recycled_is_never_kept() -> None:
    release_unused()
    buffer = allocate(RECYCLED_MAX)
    assert bytes(buffer) == bytes(RECYCLED_MAX)
    del buffer
    assert release_unused() == 0


def test_unviewed_mappings_beyond_a_few_are_unmapped_at_once() -> None:
    release_unused()
    gc.collect()
    before = _rss_kib()
    views = [_recycled(RECYCLED_MAX) for _ in range(40)]
    for view in views:
        view[::4096] = b"x" * (RECYCLED_MAX // 4096)
    assert _rss_kib() - before > 70 * 1024
    views.clear()
    allocate(MAPPED_MIN + 1, recycle=True)  # any recycled allocation sweeps the list
    assert _rss_kib() - before < 16 * 1024  # at most four kept, 8 MiB
    release_unused()
    assert _rss_kib() - before < 4 * 1024


# Fetch threads receive big bodies while small objects stay alive between them, then drop
# the bodies; report how much stayed resident. With bytearrays, glibc raises its mmap
# threshold after the first free and keeps the freed memory in per-thread heaps.
_WORKLOAD = """
import sys, threading
from cometfs.client.buffers import allocate
make = allocate if sys.argv[1] == "allocate" else bytearray

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

keep = []
def work():
    bodies = []
    for n in range(32):
        body = make(4 << 20)
        body[::4096] = b"x" * (1024)  # touch every page, as a received body does
        bodies.append(body)
        keep.append(bytearray(200))
        if n % 4 == 3:
            bodies.clear()

once = make(8 << 20)
del once
before = rss_kib()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(rss_kib() - before)
"""


def _left_resident_mib(make: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, make],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout) / 1024


def test_bodies_received_on_many_threads_do_not_stay_resident_once_dropped() -> None:
    # 4 threads hold at most 16 MiB each while working; all of it is dropped at the end.
    assert _left_resident_mib("allocate") < 8
