"""`cometfs prefetch`: warm a mount's disk cache by reading files through the mount.

Runs on the CLI's main thread, with a pool of reader threads. Reading through the mount
(rather than fetching beside it) keeps one writer per cache directory: the mount process
fills its own disk cache exactly as for any other reader, so a second run, or the training
job that follows, is served from that cache without asking the server.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cometfs.errors import CometFSError
from cometfs.status import MountEntry, cometfs_mounts, mount_of

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # the mount's kernel readahead size: one FUSE request per read() call
GLOB_CHARS = frozenset("*?[")


@dataclass
class PrefetchResult:
    files: int = 0
    bytes: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _expand(path: str) -> list[Path]:
    """Globs the shell left alone (quoted, or no match there) are expanded here."""
    if os.path.lexists(path) or not GLOB_CHARS & set(path):
        return [Path(path)]
    matches = sorted(glob.glob(path, recursive=True))
    if not matches:
        raise CometFSError(f"{path}: no such file or directory")
    return [Path(m) for m in matches]


def _files_under(top: Path) -> Iterator[Path]:
    """Asset files under `top`; skips .comet/ (virtual JSON) and symlinks (aliases, remotes)."""
    if ".comet" in top.parts or (top.is_symlink() and not top.is_dir()):
        return  # virtual JSON, or a remote asset's link: nothing to fetch
    st = os.stat(top)  # follows a symlink given by name, e.g. .../latest
    if stat.S_ISREG(st.st_mode):
        yield top
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(
            d for d in dirs if d != ".comet" and not os.path.islink(os.path.join(root, d))
        )
        for name in sorted(files):
            path = Path(root, name)
            if not path.is_symlink():
                yield path


def collect(paths: Iterable[str], mounts: list[MountEntry] | None = None) -> list[Path]:
    """Every asset file named by `paths`, once each; refuses paths outside cometfs mounts."""
    known = cometfs_mounts() if mounts is None else mounts
    seen: set[str] = set()
    out: list[Path] = []
    for raw in paths:
        for path in _expand(raw):
            if mount_of(Path(os.path.realpath(path)), known) is None:
                raise CometFSError(f"{path} is not on a cometfs mount")
            for file in _files_under(path):
                real = os.path.realpath(file)
                if real not in seen:
                    seen.add(real)
                    out.append(file)
    return out


def _read_all(path: Path, progress: tqdm[Any], lock: threading.Lock) -> int:
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK):
            total += len(chunk)
            with lock:
                progress.update(len(chunk))
    return total


def prefetch(paths: Iterable[str], *, jobs: int = 8, progress: bool = False) -> PrefetchResult:
    """Read every asset file under `paths` through the mount, `jobs` files at a time."""
    if jobs < 1:
        raise ValueError("--jobs must be at least 1")
    files = collect(paths)
    sizes = {}
    for file in files:
        try:
            sizes[file] = os.stat(file).st_size
        except OSError:
            sizes[file] = 0  # reported as a failure when read
    result = PrefetchResult()
    lock = threading.Lock()
    bar = tqdm(
        total=sum(sizes.values()),
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="prefetch",
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar, ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="prefetch") as pool:
        futures = {pool.submit(_read_all, file, bar, lock): file for file in files}
        for future in as_completed(futures):
            file = futures[future]
            try:
                result.bytes += future.result()
                result.files += 1
            except OSError as exc:
                log.debug("prefetch of %s failed: %r", file, exc)
                result.failed.append((file, exc.strerror or str(exc)))
    result.failed.sort()
    return result
