"""pyfuse3 adapter: the FUSE operations and the one place errors become errno.

With mount.py (which starts and ends pyfuse3.main) the only module that imports pyfuse3.

Runs on the trio thread inside pyfuse3.main(). Each handler is a few lines over the Tree
and the AssetReader. A handler never lets anything but FUSEError escape, because any other
exception would end pyfuse3.main and take the mount down: expected errors map to errno,
unexpected ones are logged once and become EIO.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3

from cometfs.deadlines import Abandoned, DeadlineExceeded, Guard
from cometfs.errors import CometFSError, NotFound, StaleError, Unauthorized
from cometfs.reader import AssetReader
from cometfs.tree import AssetFile, Attributes, Directory, Node, Symlink, Tree, VirtualFile

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT


def errno_for(exc: BaseException) -> int:
    """The one mapping from cometfs errors to errno."""
    if isinstance(exc, NotFound):
        return errno.ENOENT
    if isinstance(exc, Unauthorized):
        return errno.EACCES
    if isinstance(exc, StaleError):
        return errno.ESTALE
    return errno.EIO


def _fuse_errors(
    handler: Callable[Concatenate[CometFS, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[CometFS, P], Coroutine[Any, Any, R]]:
    """Run a handler under its request's deadline and map every error to errno."""

    @functools.wraps(handler)
    async def wrapper(self: CometFS, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with self._guard.request(self._requester(args)):
                return await handler(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Abandoned:
            raise pyfuse3.FUSEError(errno.EINTR) from None
        except DeadlineExceeded as exc:
            log.warning("%s failed: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except CometFSError as exc:
            code = errno_for(exc)
            if code == errno.EACCES:
                self._warn_refused(handler.__name__, exc)
            elif code != errno.ENOENT:
                log.warning("%s failed: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    # functools.wraps returns a _Wrapped, which is exactly this callable.
    return wrapper  # type: ignore[return-value]


@dataclass(eq=False)
class _Open:
    """An open file or directory: what reads are served from, and who opened it."""

    value: Any
    pid: int


async def _read_only(*_: Any, **__: Any) -> Any:
    raise pyfuse3.FUSEError(errno.EROFS)


class CometFS(pyfuse3.Operations):
    """Read-only FUSE operations over a Tree (names, attributes) and an AssetReader (bytes)."""

    def __init__(
        self,
        tree: Tree,
        reader: AssetReader,
        *,
        uid: int,
        gid: int,
        cache_bytes: Callable[[], int] = int,
        cache_capacity: Callable[[], int] = int,
        guard: Guard | None = None,
    ) -> None:
        super().__init__()
        self._tree = tree
        self._reader = reader
        self._uid = uid
        self._gid = gid
        self._cache_bytes = cache_bytes
        self._cache_capacity = cache_capacity
        self._guard = guard or Guard(deadline=float("inf"))
        self._handles: dict[int, _Open] = {}
        self._next_fh = itertools.count(1)
        self._refused_logged = False

    def _warn_refused(self, handler: str, exc: Exception) -> None:
        # A revoked key fails every request alike: one warning says it, a warning per
        # request would flood the log of a mount left running for days.
        if self._refused_logged:
            log.debug("%s failed: %s", handler, exc)
            return
        self._refused_logged = True
        log.warning("%s failed: %s (logged once; later refusals are at DEBUG)", handler, exc)

    # -- helpers -----------------------------------------------------------------------------

    def _entry(self, attrs: Attributes) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = attrs.inode
        entry.generation = 0
        entry.entry_timeout = attrs.timeout
        entry.attr_timeout = attrs.timeout
        entry.st_mode = attrs.mode
        entry.st_nlink = attrs.nlink
        entry.st_uid = self._uid
        entry.st_gid = self._gid
        entry.st_rdev = 0
        entry.st_size = attrs.size
        entry.st_blksize = 128 * 1024
        entry.st_blocks = attrs.blocks
        entry.st_atime_ns = entry.st_mtime_ns = entry.st_ctime_ns = attrs.mtime_ns
        return entry

    async def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        return self._entry(await self._tree.attributes(node))

    def _new_handle(self, value: Any, ctx: pyfuse3.RequestContext) -> int:
        fh = next(self._next_fh)
        self._handles[fh] = _Open(value, ctx.pid)
        return fh

    def _handle(self, fh: int) -> Any:
        try:
            return self._handles[fh].value
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def _requester(self, args: tuple[Any, ...]) -> int | None:
        """The pid behind a request: from its context, or (read, readdir) its open handle."""
        if args and isinstance(args[-1], pyfuse3.RequestContext):
            return int(args[-1].pid)
        if args and isinstance(args[0], int) and args[0] in self._handles:
            return self._handles[args[0]].pid
        return None

    # -- names and attributes ---------------------------------------------------------------

    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._tree.node(parent_inode)
        if name == b".":
            return await self._attributes(parent)
        node = await self._tree.lookup(parent, os.fsdecode(name))
        return await self._attributes(node)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._attributes(self._tree.node(inode))

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._tree.node(inode)
        if not isinstance(node, Symlink):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @_fuse_errors
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        self._tree.node(inode)
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    async def forget(self, inode_list: Any) -> None:
        # No request to answer, so nothing may escape: a bad entry is logged and skipped.
        for inode, nlookup in inode_list:
            try:
                self._tree.forget(inode, nlookup)
            except Exception:
                log.exception("forget(%d, %d) failed", inode, nlookup)

    # -- directories -------------------------------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._tree.node(inode)
        if not isinstance(node, Directory):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        # A snapshot per handle keeps readdir offsets stable while the listing refreshes.
        return self._new_handle(list((await self._tree.children(node)).items()), ctx)

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries: list[tuple[str, Node]] = self._handle(fh)
        for index in range(start_id, len(entries)):
            name, node = entries[index]
            attrs = await self._attributes(node)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index + 1):
                break
            # readdirplus: the kernel now holds a reference, which it will forget later.
            self._tree.remember(node)

    # -- files -------------------------------------------------------------------------------

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._tree.node(inode)
        if isinstance(node, AssetFile):
            fh = self._new_handle(self._reader.open(node.key, following=node.following), ctx)
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        if isinstance(node, VirtualFile):
            # Reads see the document as it was at open, so a refresh never tears a file; an
            # editable one also bypasses the page cache (direct_io), whose size may be an
            # earlier render's and would cut the read short.
            fh = self._new_handle(await self._tree.content(node), ctx)
            return pyfuse3.FileInfo(fh=fh, keep_cache=node.immutable, direct_io=not node.immutable)
        raise pyfuse3.FUSEError(errno.EISDIR if isinstance(node, Directory) else errno.EINVAL)

    # pyfuse3 replies from any contiguous buffer (PyObject_GetBuffer), so a view of a cached
    # block goes to the kernel without a copy; its stub only says bytes.
    @_fuse_errors
    async def read(  # type: ignore[override]
        self, fh: int, off: int, size: int
    ) -> bytes | memoryview:
        handle = self._handle(fh)
        if isinstance(handle, bytes):
            return handle[off : off + size]
        return await self._reader.read(handle, off, size)

    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    releasedir = release

    # flush and fsync are left to pyfuse3's ENOSYS: the kernel remembers it and stops sending
    # them, where a no-op answer cost a round trip on every close.

    # -- the filesystem --------------------------------------------------------------------------

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        # Size = the disk cache's capacity, free = its room left: the one resource a read
        # through the mount can run out of. Reporting only the used bytes read as a full disk.
        used = self._cache_bytes()
        capacity = max(self._cache_capacity(), used)
        data.f_blocks = capacity // 4096
        data.f_bfree = data.f_bavail = (capacity - used) // 4096
        data.f_files = self._tree.inode_count
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # getxattr and listxattr are left to pyfuse3's ENOSYS: the kernel remembers that answer
    # and stops asking, whereas ENOATTR cost two round trips per file on every `ls -l`.

    # Every write-type operation: the filesystem is read-only.
    setattr = _read_only
    mknod = _read_only
    mkdir = _read_only
    unlink = _read_only
    rmdir = _read_only
    symlink = _read_only
    rename = _read_only
    link = _read_only
    write = _read_only
    create = _read_only
    setxattr = _read_only
    removexattr = _read_only
