"""CometFS handlers called directly (no mount), as s3ql tests its operations: writes are
refused by our handlers themselves, not only by the kernel's `ro` flag."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import pytest
import trio

from cometfs.fs import CometFS


class NodeTree:
    """Any inode exists; nothing else is needed before a write is refused."""

    def node(self, inode: int) -> object:
        return object()


def call(make: Callable[[CometFS], Awaitable[Any]]) -> int:
    fs = CometFS(NodeTree(), object(), uid=0, gid=0)  # type: ignore[arg-type]

    async def main() -> int:
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await make(fs)
        return caught.value.errno

    return trio.run(main)


ctx = pyfuse3.RequestContext()


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_APPEND, os.O_TRUNC, os.O_CREAT])
def test_open_for_writing_is_erofs(flags: int) -> None:
    assert call(lambda fs: fs.open(2, flags, ctx)) == errno.EROFS


def test_access_for_writing_is_erofs() -> None:
    assert call(lambda fs: fs.access(2, os.W_OK, ctx)) == errno.EROFS


@pytest.mark.parametrize(
    "operation",
    [
        lambda fs: fs.setattr(2, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, ctx),
        lambda fs: fs.mkdir(1, b"d", 0o755, ctx),
        lambda fs: fs.mknod(1, b"n", 0o644, 0, ctx),
        lambda fs: fs.unlink(1, b"f", ctx),
        lambda fs: fs.rmdir(1, b"d", ctx),
        lambda fs: fs.symlink(1, b"l", b"t", ctx),
        lambda fs: fs.rename(1, b"a", 1, b"b", 0, ctx),
        lambda fs: fs.link(2, 1, b"h", ctx),
        lambda fs: fs.write(1, 0, b"x"),
        lambda fs: fs.create(1, b"c", 0o644, os.O_WRONLY, ctx),
        lambda fs: fs.setxattr(2, b"user.x", b"1", ctx),
        lambda fs: fs.removexattr(2, b"user.x", ctx),
    ],
)
def test_every_write_operation_is_erofs(operation: Callable[[CometFS], Awaitable[Any]]) -> None:
    assert call(operation) == errno.EROFS


def test_flush_and_fsync_are_left_to_enosys() -> None:
    # pyfuse3's defaults answer ENOSYS, which the kernel remembers: no round trip per close.
    assert CometFS.flush is pyfuse3.Operations.flush
    assert CometFS.fsync is pyfuse3.Operations.fsync
