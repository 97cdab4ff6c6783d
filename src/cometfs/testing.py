"""Helpers for the test suite and the benchmark scripts only; nothing in cometfs imports this.

One copy of what both need: waiting for a condition with a deadline, finding the pid of a
`cometfs mount` daemon, unmounting it (with a lazy `fusermount3 -u -z` as the last resort),
reading its log for problems, writing random files, and calling the client's async
read_range from blocking code. Everything here blocks and runs on the caller's thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from cometfs.client import CometClient
    from cometfs.client.buffers import Buffer

CLI = [sys.executable, "-m", "cometfs.cli"]
MiB = 1 << 20


def read_range_blocking(
    client: CometClient, asset_id: str, version_id: str, start: int, end: int, **kwargs: int
) -> Buffer:
    """client.read_range in a trio run of its own (never alongside another run's calls)."""
    return trio.run(partial(client.read_range, asset_id, version_id, start, end, **kwargs))


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds have passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Like `wait_until`, but a timeout is a test failure naming `what` was awaited."""
    if not wait_until(predicate, timeout, step):
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def is_mounted(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:  # ENOTCONN: a FUSE mount whose process died is still a mount
        return True


def wait_unmounted(path: Path, timeout: float = 20.0) -> None:
    """Until `path` is no longer a mount point; a test failure after `timeout` seconds."""
    wait_for(lambda: not is_mounted(path), timeout, f"{path} to be unmounted")


def mount_pid(path: Path) -> int | None:
    """The daemon whose argv is `... -m cometfs.cli mount <path> ...` (what pgrep -f sees)."""
    want = ["cometfs.cli", "mount", str(path)]
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            continue
        for i in range(len(argv) - 2):
            if argv[i : i + 3] == want:
                return int(entry.name)
    return None


def unmount(path: Path, env: Mapping[str, str], timeout: float = 20.0) -> bool:
    """`cometfs unmount`, or a lazy `fusermount3 -u -z` if that fails; True once `path` is no
    longer a mount point (within `timeout` seconds)."""
    result = subprocess.run(
        [*CLI, "unmount", str(path)],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        subprocess.run(
            ["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True, timeout=30
        )
    return wait_until(lambda: not is_mounted(path), timeout)


def log_problems(log_file: Path) -> list[str]:
    """The WARNING, ERROR and CRITICAL lines of a mount log (none if there is no log)."""
    if not log_file.exists():
        return []
    return [
        line
        for line in log_file.read_text(errors="replace").splitlines()
        if " WARNING " in line or " ERROR " in line or " CRITICAL " in line
    ]


def write_random_file(path: Path, size: int, *, repeat: bool, chunk: int = 4 * MiB) -> None:
    """Write `size` random bytes to `path`, `chunk` at a time. With `repeat`, one random chunk
    is written over and over, which is much faster for files far larger than any cache."""
    block = os.urandom(chunk)
    with open(path, "wb") as f:
        for off in range(0, size, chunk):
            n = min(chunk, size - off)
            f.write(block[:n] if repeat else os.urandom(n))
