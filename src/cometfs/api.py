"""`cometfs.mounted()`: a mount for the length of a `with` block, for notebooks and tests.

Runs in the caller's thread. The mount lives in a child process (`cometfs mount
--foreground`), so a crash or a page fault in it never takes the caller's interpreter with
it, and the caller's own threads never have to serve FUSE requests. The API key reaches the
child through its environment, never its command line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cometfs.errors import CometFSError

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
POLL = 0.05

# Keyword -> flag of `cometfs mount`; lists repeat the flag, True adds a bare switch.
_FLAGS = {
    "workspace": "--workspace",
    "workspaces": "--workspace",
    "cache_size": "--cache-size",
    "metadata_ttl": "--metadata-ttl",
    "log_level": "--log-level",
    "log_file": "--log-file",
    "fuse_options": "-o",
    "allow_non_empty": "--allow-non-empty",
}


def _mount_argv(
    path: Path,
    server_url: str | None,
    cache_dir: str | os.PathLike[str] | None,
    options: dict[str, Any],
) -> list[str]:
    argv = [sys.executable, "-m", "cometfs.cli", "mount", str(path), "--foreground"]
    if server_url is not None:
        argv += ["--server-url", server_url]
    if cache_dir is not None:
        argv += ["--cache-dir", str(cache_dir)]
    for name, value in options.items():
        if name not in _FLAGS:
            raise TypeError(f"mounted() got an unexpected option {name!r}")
        flag = _FLAGS[name]
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def _answers(path: Path) -> bool:
    try:
        return os.path.ismount(path) and (path / ".comet").is_dir()
    except OSError:
        return False


def _last_line(log_file: Any) -> str:
    log_file.seek(0)
    lines = [line.strip() for line in log_file.read().decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def mounted(
    path: str | os.PathLike[str],
    server_url: str | None = None,
    api_key: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    ready_timeout: float = READY_TIMEOUT,
    **options: Any,
) -> Iterator[Path]:
    """Mount Comet artifacts at `path` for the `with` block; yields the mount point.

    Options are `cometfs mount` flags as keywords (workspace=["ws"], cache_size="2G",
    metadata_ttl=5, log_file=..., fuse_options=["allow_other"], allow_non_empty=True).
    Credentials not given are resolved like the CLI (COMET_API_KEY, ~/.comet.config ...).
    On leaving the block, also by an exception, the mount is unmounted and the child reaped.
    """
    root = Path(path).absolute()
    argv = _mount_argv(root, server_url, cache_dir, options)
    env = dict(os.environ)
    if api_key is not None:
        env["COMET_API_KEY"] = api_key
    with tempfile.TemporaryFile() as output:
        child = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            _wait_ready(root, child, output, ready_timeout)
            yield root
        finally:
            _stop(root, child)


def _wait_ready(root: Path, child: subprocess.Popen[bytes], output: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _answers(root):
        if child.poll() is not None:
            raise CometFSError(f"cometfs mount {root} failed: {_last_line(output)}")
        if time.monotonic() > deadline:
            raise CometFSError(f"cometfs mount {root} did not answer within {timeout:.0f} s")
        time.sleep(POLL)


def _stop(root: Path, child: subprocess.Popen[bytes]) -> None:
    """SIGTERM makes the foreground mount unmount itself; a stuck child is killed."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("mount process %d did not stop; killing it", child.pid)
            child.kill()
            child.wait(STOP_TIMEOUT)
    try:
        still_mounted = os.path.ismount(root)
    except OSError:
        still_mounted = True
    if still_mounted or _dead(root):
        # The process is gone but the kernel still holds the mount (killed, or it died).
        subprocess.run(
            ["fusermount3", "-u", "-z", str(root)],
            capture_output=True,
            check=False,
            timeout=STOP_TIMEOUT,
        )


def _dead(root: Path) -> bool:
    try:
        os.stat(root)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False
