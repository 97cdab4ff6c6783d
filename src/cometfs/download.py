"""`cometfs download`: one artifact version into a local directory, the way the comet_ml SDK's
LoggedArtifact.download does it, but parallel, resumable and through the mount's read path.

Semantics (same as the SDK's for an existing file at an asset's path):

* the file's content equals the asset's: nothing is written, whatever the strategy;
* FAIL (default): the file is left alone and the download fails, naming every such file;
* PRESERVE: the file is kept (and reported as differing);
* OVERWRITE: the file is replaced.

Files that do not exist are written to `NAME.cometfs-part` beside their destination and renamed
into place once complete, so an interrupted run never leaves a truncated file under an asset's
name; running again skips what is already there (identical) and refetches the rest from the
disk cache the Engine shares with the mount, so nothing is downloaded twice. Remote assets (a
link, no bytes on the server) are listed and skipped unless `include_remote` is set and the
link is http(s); then they are fetched from the link (never with the Comet API key).

Runs on the caller's thread plus a pool of `jobs` worker threads, each blocking on the Engine.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from cometfs.engine import Engine, Entry
from cometfs.errors import CometFSError, NotFound
from cometfs.names import escape_name
from cometfs.tree import META_DIR

log = logging.getLogger(__name__)

PIECE = 8 << 20
PART_SUFFIX = ".cometfs-part"
REMOTE_TIMEOUT = 60.0


class Strategy(enum.Enum):
    FAIL = "FAIL"
    PRESERVE = "PRESERVE"
    OVERWRITE = "OVERWRITE"

    @classmethod
    def parse(cls, text: str) -> Strategy:
        try:
            return cls(text.upper())
        except ValueError:
            raise ValueError(
                f"overwrite strategy must be FAIL, PRESERVE or OVERWRITE, got {text!r}"
            ) from None


class DownloadError(CometFSError):
    """Some files were not downloaded; `result` says which and why."""

    def __init__(self, message: str, result: DownloadResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class DownloadResult:
    """What happened to each asset, by its path under the destination."""

    version: str
    destination: Path
    written: list[str] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)
    preserved: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    remote_skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    bytes_written: int = 0

    def summary(self) -> str:
        return (
            f"{self.version} -> {self.destination}: {len(self.written)} written, "
            f"{len(self.identical)} already identical, {len(self.preserved)} preserved, "
            f"{len(self.overwritten)} overwritten, {len(self.remote_skipped)} remote "
            f"skipped, {len(self.conflicts) + len(self.failed)} failed"
        )


def parse_spec(spec: str) -> tuple[str, str, str]:
    """'WS/NAME[:VERSION_OR_ALIAS]' -> (workspace, name, version or alias; default latest)."""
    ws, slash, rest = spec.partition("/")
    name, _, version = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not slash or not ws or not name:
        raise ValueError(f"expected WORKSPACE/NAME[:VERSION_OR_ALIAS], got {spec!r}")
    return ws, name, version or "latest"


class _Progress:
    """A tqdm byte counter when asked for, nothing otherwise; safe to update from threads."""

    def __init__(self, total: int, enabled: bool, label: str) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                dynamic_ncols=True,
                leave=True,
            )

    def update(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Downloader:
    def __init__(
        self,
        engine: Engine,
        dest: Path,
        strategy: Strategy,
        progress: _Progress,
        result: DownloadResult,
        open_url: Callable[[str], IO[bytes]],
    ) -> None:
        self._engine = engine
        self._dest = dest
        self._strategy = strategy
        self._progress = progress
        self._result = result
        self._open_url = open_url
        self._lock = threading.Lock()

    def _pieces(self, entry: Entry) -> Iterator[bytes]:
        if entry.type == "file":
            opened = self._engine.open(entry.path)
            for offset in range(0, entry.size, PIECE):
                yield self._engine.pread(opened, offset, min(offset + PIECE, entry.size))
            return
        assert entry.link is not None
        with self._open_url(entry.link) as response:
            while chunk := response.read(PIECE):
                yield chunk

    def _same(self, entry: Entry, local: Path) -> bool:
        if entry.type == "file" and local.stat().st_size != entry.size:
            return False
        with local.open("rb") as handle:
            for piece in self._pieces(entry):
                if handle.read(len(piece)) != piece:
                    return False
            return handle.read(1) == b""

    def _write(self, entry: Entry, target: Path) -> int:
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + PART_SUFFIX)
        written = 0
        try:
            with part.open("wb") as handle:
                for piece in self._pieces(entry):
                    handle.write(piece)
                    written += len(piece)
                    self._progress.update(len(piece))
            if entry.type == "file" and written != entry.size:
                raise CometFSError(f"got {written} bytes, expected {entry.size}")
            os.replace(part, target)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        return written

    def _record(self, bucket: list[str], rel: str, nbytes: int = 0) -> None:
        with self._lock:
            bucket.append(rel)
            self._result.bytes_written += nbytes

    def one(self, rel: str, entry: Entry) -> None:
        result = self._result
        target = self._dest / rel
        try:
            if os.path.lexists(target):
                if not target.is_file():
                    raise CometFSError(f"{target} exists and is not a file")
                if self._same(entry, target):
                    self._progress.update(entry.size)
                    self._record(result.identical, rel)
                    return
                if self._strategy is Strategy.FAIL:
                    self._progress.update(entry.size)
                    self._record(result.conflicts, rel)
                    return
                if self._strategy is Strategy.PRESERVE:
                    log.info("kept %s: it differs from the artifact's asset", target)
                    self._progress.update(entry.size)
                    self._record(result.preserved, rel)
                    return
                log.info("replacing %s with the artifact's asset", target)
                self._record(result.overwritten, rel, self._write(entry, target))
                return
            self._record(result.written, rel, self._write(entry, target))
        except (CometFSError, OSError) as exc:
            log.debug("download of %s failed", rel, exc_info=True)
            with self._lock:
                result.failed[rel] = str(exc) or exc.__class__.__name__


def _open_http(url: str) -> IO[bytes]:
    response: IO[bytes] = urllib.request.urlopen(url, timeout=REMOTE_TIMEOUT)
    return response


def download(
    engine: Engine,
    spec: str,
    dest: Path,
    *,
    strategy: Strategy = Strategy.FAIL,
    include_remote: bool = False,
    jobs: int = 8,
    progress: bool = False,
    open_url: Callable[[str], IO[bytes]] = _open_http,
) -> DownloadResult:
    """Download `spec` ('WS/NAME[:VERSION_OR_ALIAS]') into `dest`; see the module doc.

    Raises DownloadError (after every other file is done) when a file conflicted under FAIL
    or could not be fetched; NotFound when the version does not exist.
    """
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    ws, name, wanted = parse_spec(spec)
    version_path = f"{escape_name(ws)}/{escape_name(name)}/{wanted}"
    info = engine.info(version_path)
    if info.type != "directory":
        raise NotFound(f"{spec}: no such version or alias")
    version = info.link or wanted
    result = DownloadResult(f"{ws}/{name}:{version}", dest)
    prefix = f"{escape_name(ws)}/{escape_name(name)}/{version}/"
    todo: list[tuple[str, Entry]] = []
    for entry in engine.walk(f"{escape_name(ws)}/{escape_name(name)}/{version}"):
        rel = entry.path[len(prefix) :]
        if rel.split("/", 1)[0] == META_DIR:
            continue
        if entry.type != "file":
            scheme = urlsplit(entry.link or "").scheme
            if not (include_remote and scheme in ("http", "https")):
                result.remote_skipped.append((rel, entry.link or ""))
                continue
        todo.append((rel, entry))

    bar = _Progress(sum(e.size for _, e in todo), progress, result.version)
    worker = _Downloader(engine, dest, strategy, bar, result, open_url)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cometfs-download") as pool:
            # Largest first: the long transfers start early and the pool drains evenly.
            for future in [
                pool.submit(worker.one, rel, entry)
                for rel, entry in sorted(todo, key=lambda t: -t[1].size)
            ]:
                future.result()
    finally:
        bar.close()
    for bucket in (
        result.written,
        result.identical,
        result.preserved,
        result.overwritten,
        result.conflicts,
    ):
        bucket.sort()
    problems = [f"{rel} (exists with different content)" for rel in result.conflicts]
    problems += [f"{rel} ({why})" for rel, why in sorted(result.failed.items())]
    if problems:
        raise DownloadError(
            f"{len(problems)} file(s) not downloaded from {result.version}: " + ", ".join(problems),
            result,
        )
    return result


__all__ = ["DownloadError", "DownloadResult", "Strategy", "download", "parse_spec"]
