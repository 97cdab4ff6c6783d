"""Mount lifecycle: check access, build the object graph, run pyfuse3, unmount cleanly.

Runs on the main thread. `mount()` checks the key and server first, so a wrong key or URL
costs one readable line and no mount. In the background mode the process forks: the child
mounts and reports "ready" (or the error) through a pipe, and the parent returns only once
the mount answers. SIGINT and SIGTERM end pyfuse3.main and unmount.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import logging.handlers
import os
import queue
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from cometfs import __version__
from cometfs.client import CometClient
from cometfs.client.buffers import release_unused
from cometfs.config import DEFAULT_METADATA_TTL, Config
from cometfs.deadlines import Guard
from cometfs.errors import CometFSError, NotFound, TransientError, Unauthorized
from cometfs.fs import CometFS
from cometfs.reader import AssetReader, DiskCache
from cometfs.readpath import build_read_path
from cometfs.readpath import default_cache_dir as default_cache_dir  # cli.py imports it here

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h
_TRIM_PERIOD = 5.0
# The total deadline of one server request, retries included (`--timeout`).
DEFAULT_TIMEOUT = 20.0
# A FUSE request may wait this much longer than one server request (a read can wait for a
# fetch that started a little before it) before it is answered EIO regardless.
_FUSE_DEADLINE_MARGIN = 10.0
# Signals that unmount cleanly. SIGHUP too: a daemon has no terminal to hang up, so a HUP
# is someone asking it to stop.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The kernel's default readahead cuts sequential reads into 128 KiB FUSE requests; 1 MiB
# requests cost an eighth of the round trips (measured: re-reads ~3x faster).
READ_AHEAD_KB = 1024


@dataclass(frozen=True)
class MountOptions:
    mountpoint: Path
    config: Config
    cache_dir: Path
    cache_size: int
    metadata_ttl: float = DEFAULT_METADATA_TTL
    timeout: float = DEFAULT_TIMEOUT
    foreground: bool = False
    log_level: str = "WARNING"
    log_file: Path | None = None
    fuse_options: tuple[str, ...] = field(default_factory=tuple)
    allow_non_empty: bool = False


class MountError(CometFSError):
    """The mount could not start; the message is one line for the user."""


def check_access(client: CometClient, config: Config) -> None:
    """Fail early, with a readable message, on an unreachable server or a refused key."""
    try:
        client.server_version()
        if config.workspaces:
            for ws in config.workspaces:
                client.artifacts(ws)
        else:
            client.workspaces()
    except Unauthorized:
        raise MountError(f"the API key was refused by {config.server_url}") from None
    except NotFound as exc:
        raise MountError(f"not found on {config.server_url}: {exc}") from None
    except TransientError as exc:
        raise MountError(f"cannot reach {config.server_url}: {exc}") from None
    except CometFSError as exc:
        raise MountError(f"{config.server_url} did not answer like a Comet server: {exc}") from None


def _make_client(config: Config, timeout: float = DEFAULT_TIMEOUT) -> CometClient:
    return CometClient(config.server_url, config.require_key(), timeout=timeout)


def _check_mountpoint(mountpoint: Path, allow_non_empty: bool = False) -> None:
    """One readable line for each way a mount point can be wrong, with what to do."""
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mount point {mountpoint} does not exist (mkdir -p it first)") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            raise MountError(
                f"{mountpoint} holds a dead mount; clear it with: cometfs unmount {mountpoint}"
            ) from None
        raise MountError(f"mount point {mountpoint}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {mountpoint} is not a directory")
    if _is_dead_mount(mountpoint):
        raise MountError(
            f"{mountpoint} holds a dead mount; clear it with: cometfs unmount {mountpoint}"
        )
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")
    # Mounting over files hides them until the unmount; rclone refuses for the same reason.
    if not allow_non_empty and any(os.scandir(mountpoint)):
        raise MountError(
            f"mount point {mountpoint} is not empty (its files would be hidden); "
            "use an empty directory or pass --allow-non-empty"
        )


# Options the mount sets itself and a user may not turn around.
_CONTRADICTIONS = {
    "rw": "the filesystem is read-only",
    "dev": "device files are never shown",
    "suid": "setuid bits are never honoured",
}


def fuse_options(extra: tuple[str, ...]) -> set[str]:
    """pyfuse3's defaults, ours and the user's `-o` options.

    An option that contradicts ours is refused rather than merged: in a set, which of `ro`
    and `rw` wins would depend on hash order."""
    options = {*pyfuse3.default_options, "fsname=cometfs", "subtype=cometfs", "ro"}
    for item in extra:
        for part in (p.strip() for p in item.split(",")):
            if part in _CONTRADICTIONS:
                raise MountError(f"-o {part} is not allowed: {_CONTRADICTIONS[part]}")
            if part:
                options.add(part)
    return options


def _status(
    config: Config,
    client: CometClient,
    reader: AssetReader,
    mounted_at: float,
    ttl: float,
    cache_dir: Path | None = None,
) -> Callable[[], dict[str, Any]]:
    # pid and cache_dir let `cometfs status` and `cometfs cache` tie a mount to its process
    # and its cache directory without asking the kernel.
    pid = os.getpid()

    def status() -> dict[str, Any]:
        return {
            "cometfs_version": __version__,
            "server": config.server_url,
            "workspaces": list(config.workspaces),
            "byte_mode": client.byte_mode,
            "requests": client.counters(),
            "cache": reader.stats(),
            "cache_dir": str(cache_dir) if cache_dir is not None else None,
            "pid": pid,
            "metadata_ttl": ttl,
            "mounted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mounted_at)),
        }

    return status


async def _return_memory_periodically(period: float = _TRIM_PERIOD) -> None:
    """Hand memory nothing uses any more back to the kernel, off the trio thread: receive
    buffers kept for recycling (`release_unused`) and, with glibc, memory freed inside
    malloc's heaps, where 1 MiB buffers freed on many threads leave holes (malloc_trim: a
    few milliseconds of work every few seconds)."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        trim = None
    while True:
        await trio.sleep(period)
        await trio.to_thread.run_sync(release_unused)
        if trim is not None:
            await trio.to_thread.run_sync(trim, 0)


def _limit_malloc_arenas() -> None:
    """Best effort, glibc only: at most two malloc arenas for the mount process.

    glibc gives busy threads arenas of their own (up to 8 per core), and each keeps the
    memory its thread freed. With 32 fetch threads landing 1 MiB bodies, that kept the
    soak's RSS near 370 MiB while the reader's buffers stayed inside their 128 MiB budget.
    Called before any worker thread exists."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 2)


async def _run(options: MountOptions, client: CometClient, ready: Callable[[], None]) -> None:
    _limit_malloc_arenas()
    mounted_at = time.time()
    graph = build_read_path(
        client,
        options.cache_dir,
        options.cache_size,
        metadata_ttl=options.metadata_ttl,
        workspaces=options.config.workspaces,
        status=lambda reader: _status(
            options.config, client, reader, mounted_at, options.metadata_ttl, options.cache_dir
        ),
        mount_time_ns=int(mounted_at * 1e9),
    )
    disk, reader, tree = graph.disk, graph.reader, graph.tree
    guard = Guard(deadline=options.timeout + _FUSE_DEADLINE_MARGIN)
    fs = CometFS(
        tree,
        reader,
        uid=os.getuid(),
        gid=os.getgid(),
        cache_bytes=disk.usage,
        cache_capacity=lambda: disk.capacity,
        guard=guard,
    )
    pyfuse3.init(fs, str(options.mountpoint), fuse_options(options.fuse_options))
    clean_exit = False
    try:
        async with reader, trio.open_nursery() as nursery:

            async def on_signal() -> None:
                with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
                    async for signum in signals:
                        log.info("signal %d: unmounting", signum)
                        pyfuse3.terminate()
                        return

            nursery.start_soon(on_signal)
            nursery.start_soon(guard.watch)
            nursery.start_soon(_scan_cache, disk)
            nursery.start_soon(_return_memory_periodically)
            nursery.start_soon(client.preconnect)
            ready()
            # Runs in a thread: its stat() is answered by pyfuse3.main below.
            nursery.start_soon(trio.to_thread.run_sync, raise_readahead, options.mountpoint)
            await pyfuse3.main()
            clean_exit = True
            nursery.cancel_scope.cancel()
    finally:
        # Unmount only on a signal or a clean exit. After a crash the mount stays (ENOTCONN)
        # until `cometfs unmount`, so a tool reading it fails loudly instead of finding an
        # empty directory (an `rsync --delete` from it would wipe the mirror). After an
        # external `fusermount3 -u` the kernel side is gone already.
        # pyfuse3.main has returned: nothing else is left to run on this trio loop.
        pyfuse3.close(unmount=clean_exit and os.path.ismount(options.mountpoint))  # noqa: ASYNC240
        client.close()


async def _scan_cache(disk: DiskCache) -> None:
    """Index what earlier mounts left in the disk cache, off the trio thread."""
    try:
        await trio.to_thread.run_sync(disk.scan)
    except OSError as exc:
        log.warning("disk cache %s could not be scanned; it fills up afresh: %s", disk.root, exc)


def raise_readahead(mountpoint: Path) -> None:
    """Best effort: only root may write the mount's bdi setting; others keep the default."""
    try:
        st = os.stat(mountpoint)
        bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        (bdi / "read_ahead_kb").write_text(f"{READ_AHEAD_KB}\n")
    except OSError as exc:
        log.info("kernel readahead left at its default: %s", exc)


@contextlib.contextmanager
def _logging_to(level: str, log_file: Path | None, to_stderr: bool) -> Iterator[None]:
    """Send the log to `log_file` (and stderr) through a thread of its own; what is queued
    is written before this returns.

    The trio thread answers every FUSE request. An append to a log file took 0.3-0.5 ms
    here (more on a network home directory), and written on that thread the INFO line of
    a mount's first read added 0.8 ms to its time to first byte.
    """
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handlers.append(logging.StreamHandler(os.fdopen(fd, "a", buffering=1)))
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    if not handlers:  # a background mount without --log-file: no thread to write nothing
        logging.basicConfig(level=level.upper(), handlers=[logging.NullHandler()], force=True)
        yield
        return
    writer = logging.handlers.QueueListener(queue.SimpleQueue(), *handlers)
    # The QueueHandler formats each record where it is logged (exception text included);
    # the writer's handlers only write the finished line.
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.handlers.QueueHandler(writer.queue)],
        force=True,
    )
    writer.start()
    try:
        yield
    finally:
        writer.stop()


def mount(options: MountOptions) -> None:
    """Mount and, unless in the foreground, return once the mount answers."""
    _check_mountpoint(options.mountpoint, options.allow_non_empty)
    fuse_options(options.fuse_options)  # refuse contradicting options before anything else
    client = _make_client(options.config, options.timeout)
    try:
        check_access(client, options.config)
    finally:
        client.close()

    if options.foreground:
        with _logging_to(options.log_level, options.log_file, to_stderr=True):
            trio.run(_run, options, _make_client(options.config, options.timeout), lambda: None)
        return

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the mount process
        os.close(read_end)
        _daemon_child(options, write_end)
    os.close(write_end)
    _wait_ready(read_end, pid, options.mountpoint)


def _daemon_child(options: MountOptions, report_fd: int) -> None:
    code = 0
    reported = False

    def report(message: bytes) -> None:
        # Once: after that the descriptor is closed and its number may belong to another file.
        nonlocal reported
        if not reported:
            reported = True
            try:
                os.write(report_fd, message)
            finally:
                os.close(report_fd)

    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.chdir("/")
        with _logging_to(options.log_level, options.log_file, to_stderr=False):
            try:
                client = _make_client(options.config, options.timeout)
                trio.run(_run, options, client, lambda: report(b"ok\n"))
            except BaseException:
                log.exception("mount process failed")  # inside: written before the exit
                raise
    except BaseException as exc:  # reported to the waiting parent; nothing else can see it
        with contextlib.suppress(OSError):
            report(f"error: {exc}\n".encode(errors="replace"))
        code = 1
    finally:
        os._exit(code)


def _wait_ready(read_end: int, pid: int, mountpoint: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    message = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([read_end], [], [], deadline - time.monotonic())
        if not readable:
            break
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        message += chunk
        if message.endswith(b"\n"):
            break
    os.close(read_end)
    text = message.decode(errors="replace").strip()
    if text == "ok":
        _wait_answering(mountpoint, deadline)
        return
    if not text:
        os.kill(pid, signal.SIGTERM)
        text = "the mount process did not report back in time"
    raise MountError(text.removeprefix("error: "))


def _wait_answering(mountpoint: Path, deadline: float) -> None:
    """Return once the mount answers a stat(); a stat that hangs must not hang us."""
    done = threading.Event()
    failure: list[OSError] = []

    def probe() -> None:
        try:
            os.stat(mountpoint)
        except OSError as exc:
            failure.append(exc)
        done.set()

    threading.Thread(target=probe, name="mount-probe", daemon=True).start()
    if not done.wait(max(1.0, deadline - time.monotonic())):
        raise MountError(f"the mount at {mountpoint} did not answer within {READY_TIMEOUT:g}s")
    if failure:
        raise MountError(f"the mount at {mountpoint} does not answer: {failure[0].strerror}")


class MountBusy(MountError):
    """The mount is in use (open files, a shell's working directory); retry with lazy=True."""


def unmount(mountpoint: Path, *, lazy: bool = False) -> str:
    """Unmount and say how: "unmounted", "detached lazily" or "cleared a dead mount".

    A busy mount raises MountBusy unless `lazy`, which detaches it now and lets the kernel
    finish once the last user lets go. A mount whose process died is always cleared.
    """
    dead = _is_dead_mount(mountpoint)
    if not dead and not _is_fuse_mount(mountpoint):
        raise MountError(f"{mountpoint} is not mounted")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    plain: list[list[str]] = [[tool, "-u", str(mountpoint)]] if tool else []
    lazy_commands: list[list[str]] = [[tool, "-u", "-z", str(mountpoint)]] if tool else []
    if os.geteuid() == 0:
        plain.append(["umount", str(mountpoint)])
        lazy_commands.append(["umount", "-l", str(mountpoint)])
    last_error = "no fusermount3 found"
    busy = False
    for command in plain:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return "cleared a dead mount" if dead else "unmounted"
        last_error = result.stderr.strip() or f"{command[0]} exited {result.returncode}"
        busy = busy or "busy" in last_error.lower()
    if busy and not lazy and not dead:
        raise MountBusy(
            f"{mountpoint} is busy (a process has a file or its working directory there); "
            f"close it, or detach now with: cometfs unmount --lazy {mountpoint}"
        )
    for command in lazy_commands:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            if dead:
                return "cleared a dead mount"
            return "detached lazily" if busy else "unmounted"
        last_error = result.stderr.strip() or f"{command[0]} exited {result.returncode}"
    if not _is_fuse_mount(mountpoint):
        raise MountError(f"{mountpoint} is not mounted")
    raise MountError(f"cannot unmount {mountpoint}: {last_error}")


def _is_dead_mount(mountpoint: Path) -> bool:
    # stat() alone can be answered from the kernel's attribute cache after the process died;
    # opening the directory always reaches the FUSE connection.
    try:
        os.stat(mountpoint)
        with os.scandir(mountpoint):
            pass
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def _is_fuse_mount(mountpoint: Path) -> bool:
    # os.path.ismount says False for a dead FUSE mount (its lstat fails with ENOTCONN).
    return _is_dead_mount(mountpoint) or os.path.ismount(mountpoint)
