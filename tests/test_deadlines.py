"""Requests get a deadline and are abandoned when their process dies: Guard and the fs wrapper.

No FUSE mount: CometFS handlers are called directly, as s3ql tests its operations.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from cometfs.deadlines import Abandoned, DeadlineExceeded, Guard, fatal_signal_pending
from cometfs.fs import CometFS


class Ctx(pyfuse3.RequestContext):
    """A request context from process 4242 (pyfuse3's own has read-only fields)."""

    pid = 4242


def status_file(tmp_path: Path, pid: int, **fields: str) -> Path:
    directory = tmp_path / str(pid)
    directory.mkdir(parents=True)
    lines = {"State": "S (sleeping)", "SigPnd": "0000000000000000", "ShdPnd": "0000000000000000"}
    lines.update(fields)
    (directory / "status").write_text("".join(f"{k}:\t{v}\n" for k, v in lines.items()))
    return tmp_path


def test_a_pending_sigkill_or_a_zombie_or_a_missing_process_is_dying(tmp_path: Path) -> None:
    assert not fatal_signal_pending(1, status_file(tmp_path / "a", 1))
    assert fatal_signal_pending(1, status_file(tmp_path / "b", 1, SigPnd="0000000000000100"))
    assert fatal_signal_pending(1, status_file(tmp_path / "c", 1, ShdPnd="0000000000000100"))
    assert fatal_signal_pending(1, status_file(tmp_path / "d", 1, State="Z (zombie)"))
    assert fatal_signal_pending(7, tmp_path / "e")
    # SIGINT (bit 2) alone is not fatal yet: the kernel turns a fatal one into SIGKILL.
    assert not fatal_signal_pending(1, status_file(tmp_path / "f", 1, SigPnd="0000000000000002"))


def test_real_processes_alive_and_reaped() -> None:
    assert not fatal_signal_pending(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert fatal_signal_pending(child.pid)


def test_a_request_is_cancelled_at_its_deadline() -> None:
    async def main() -> None:
        guard = Guard(deadline=0.2, is_dying=lambda pid: False)
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded), guard.request(4242):
            await trio.sleep(30)
        assert trio.current_time() - start < 1
        assert guard.timed_out == 1

    trio.run(main)


def test_a_request_of_a_dying_process_is_abandoned_within_a_poll_or_two() -> None:
    dying: set[int] = set()

    async def main() -> None:
        guard = Guard(deadline=60, poll=0.05, is_dying=lambda pid: pid in dying)
        with trio.fail_after(5):
            await abandon_one(guard)
        assert guard.abandoned == 1

    async def abandon_one(guard: Guard) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard.watch)
            with pytest.raises(Abandoned), guard.request(4242):
                await trio.sleep(0.2)  # alive: keeps waiting
                dying.add(4242)
                await trio.sleep(30)
            # Another process's request is untouched.
            with guard.request(1):
                await trio.sleep(0.2)
            nursery.cancel_scope.cancel()

    trio.run(main)


class HangingTree:
    """Just enough of Tree for lookup: a node for the parent, then a lookup that never ends."""

    def node(self, inode: int) -> object:
        return object()

    async def lookup(self, parent: object, name: str) -> Any:
        await trio.sleep_forever()


def fs_with(guard: Guard) -> CometFS:
    return CometFS(HangingTree(), object(), uid=0, gid=0, guard=guard)  # type: ignore[arg-type]


def test_fuse_handler_of_a_killed_reader_answers_eintr() -> None:
    async def main() -> None:
        guard = Guard(deadline=60, poll=0.05, is_dying=lambda pid: pid == 4242)
        fs = fs_with(guard)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard.watch)
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await fs.lookup(1, b"name", Ctx())
            assert caught.value.errno == errno.EINTR
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_fuse_handler_past_its_deadline_answers_eio() -> None:
    async def main() -> None:
        fs = fs_with(Guard(deadline=0.1, is_dying=lambda pid: False))
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await fs.lookup(1, b"name", Ctx())
        assert caught.value.errno == errno.EIO

    trio.run(main)
