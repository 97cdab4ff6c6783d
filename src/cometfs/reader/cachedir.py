"""Trust checks and the cross-process usage ledger of one disk cache directory.

A cache directory is only used when this user owns it, it is a real directory (not a symlink)
and nobody else may write to it: anyone who can write there could plant blocks we would serve.
Nothing is repaired silently; a missing directory is created 0700, anything else is refused
with a ConfigError naming the directory and the problem.

`Ledger` is `<root>/.lock`: the file every process sharing the directory `flock`s before it
changes what the directory holds, and whose first 8 bytes are the directory's usage in bytes
as the processes have booked it. It is used from worker threads (a thread lock serialises
threads of one process, since `flock` only excludes other open file descriptions).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from cometfs.errors import ConfigError

_COUNTER = struct.Struct(">q")


def owned_by_us(st: os.stat_result) -> bool:
    """Whether a file may be trusted: a regular file (not a link) this user owns."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def open_private_dir(path: Path, *, what: str = "cache directory") -> None:
    """Create `path` 0700 if missing; refuse it if it is not a private directory of ours."""
    with contextlib.suppress(FileExistsError):
        # Parents get the default mode: only the cache directory itself must be private.
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be used: {exc.strerror}") from exc
    problem = _trust_problem(st)
    if problem:
        raise ConfigError(
            f"{what} {path} {problem}; refusing to use it "
            "(it must be a directory you own that no one else can write to, e.g. mode 0700)"
        )


def _trust_problem(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        writable = "world" if mode & 0o002 else "group"
        return f"is {writable}-writable (mode {mode:04o})"
    return None


class Ledger:
    """The `.lock` file: an exclusive cross-process lock and the booked usage counter."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd = -1
        self._pid = -1
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        if not owned_by_us(os.fstat(fd)):
            os.close(fd)
            raise ConfigError(f"cache lock file {self.path} is not a regular file of this user")
        self._fd = fd
        self._pid = os.getpid()

    @contextlib.contextmanager
    def locked(self) -> Iterator[Ledger]:
        """Hold the directory lock (threads of this process and other processes wait)."""
        with self._thread_lock:
            if self._pid != os.getpid():
                # A forked child shares the parent's open file description, and with it
                # the parent's flock: it needs its own.
                self._open()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def peek(self) -> int:
        """The booked usage, read without the lock (for start-up figures only)."""
        return self._read()

    def read(self) -> int:
        """The booked usage; call with the lock held."""
        return self._read()

    def write(self, value: int) -> None:
        """Set the booked usage; call with the lock held."""
        os.pwrite(self._fd, _COUNTER.pack(max(0, value)), 0)

    def add(self, delta: int) -> int:
        """Book `delta` bytes and return the new usage; call with the lock held."""
        value = max(0, self._read() + delta)
        os.pwrite(self._fd, _COUNTER.pack(value), 0)
        return value

    def _read(self) -> int:
        raw = os.pread(self._fd, _COUNTER.size, 0)
        # A missing or short counter (new file, or one from an older layout) counts as empty;
        # the next measurement under the lock sets the truth.
        return max(0, _COUNTER.unpack(raw)[0]) if len(raw) == _COUNTER.size else 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        # Caches made and dropped (fsspec readers, tests) must not leak a descriptor each.
        self.close()
