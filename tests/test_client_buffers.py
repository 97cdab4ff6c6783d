"""Receive buffers: a big body gets a mapping of its own, given back when it is dropped."""

from __future__ import annotations

import gc

from cometfs.client.buffers import MAPPED_MIN, allocate

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
