"""fsspec `comet://`: Comet artifacts for pandas, pyarrow, Dask and anything fsspec reads, no FUSE.

Registered as the `comet` protocol through the `fsspec.specs` entry point. Paths are the
mount's: `comet://WORKSPACE/ARTIFACT/VERSION_OR_ALIAS/ASSET_PATH`, `.comet/*.json` included.
Every call goes to an Engine (cometfs.engine), i.e. the mount's own Store, AssetReader, disk
cache and Tree; this module only translates fsspec's vocabulary (info dicts, FileNotFoundError,
buffered files) to the Engine's.

Thread: any. The Engine is made lazily, once per process: a filesystem unpickled in a Dask
worker, or inherited through fork, builds its own Engine there. Storage options: server_url,
api_key, cache_dir, cache_size, workspace, metadata_ttl. An API key resolved from the
environment or ini files stays out of the pickled state (workers resolve their own); one passed
as an option is pickled, since a worker needs it, and is never shown in repr.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from cometfs.config import DEFAULT_CACHE_SIZE, DEFAULT_METADATA_TTL, resolve
from cometfs.engine import Engine, Entry, NotAFile, OpenFile
from cometfs.errors import NotFound, Unauthorized

log = logging.getLogger(__name__)


@contextmanager
def _os_errors(path: str) -> Iterator[None]:
    """cometfs errors as the OSError subclasses fsspec callers test for."""
    try:
        yield
    except NotFound:
        raise FileNotFoundError(path) from None
    except Unauthorized as exc:
        raise PermissionError(f"{path}: {exc}") from None
    except NotAFile as exc:
        raise IsADirectoryError(str(exc)) from None


def _info(entry: Entry) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": entry.path,
        "size": entry.size,
        "type": entry.type,
        "mtime": entry.mtime_ns / 1e9,
        "islink": entry.link is not None,
    }
    if entry.link is not None:
        info["destination"] = entry.link
    return info


class CometFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over Comet artifacts; see the module doc."""

    protocol = "comet"
    root_marker = ""

    def __init__(
        self,
        server_url: str | None = None,
        api_key: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_size: int | None = None,
        workspace: str | None = None,
        metadata_ttl: float = DEFAULT_METADATA_TTL,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._config = resolve(
            api_key=api_key, server_url=server_url, workspaces=[workspace] if workspace else ()
        )
        self._config.require_key()
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache_size = cache_size if cache_size is not None else DEFAULT_CACHE_SIZE
        self._metadata_ttl = metadata_ttl
        self._engine_lock = threading.Lock()
        self._engine_obj: Engine | None = None
        self._engine_pid = os.getpid()

    def __repr__(self) -> str:
        return f"<CometFileSystem {self._config.server_url}>"

    @property
    def engine(self) -> Engine:
        """This process's Engine, built on first use (and again after fork or close)."""
        if self._engine_pid != os.getpid():
            # Inherited through fork: the parent's lock and Engine are not ours to use.
            self._engine_lock = threading.Lock()
            self._engine_obj = None
            self._engine_pid = os.getpid()
        with self._engine_lock:
            if self._engine_obj is None or not self._engine_obj.usable:
                self._engine_obj = Engine(
                    self._config,
                    cache_dir=self._cache_dir,
                    cache_size=self._cache_size,
                    metadata_ttl=self._metadata_ttl,
                )
            return self._engine_obj

    def close(self) -> None:
        """Stop this process's Engine; the next call builds a new one."""
        with self._engine_lock:
            if self._engine_obj is not None and self._engine_pid == os.getpid():
                self._engine_obj.close()
            self._engine_obj = None

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("comet://"):
            path = path[len("comet://") :]
        elif path.startswith("comet:"):
            path = path[len("comet:") :]
        return "/".join(part for part in path.split("/") if part)

    # -- metadata -----------------------------------------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        with _os_errors(path):
            return _info(self.engine.info(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        with _os_errors(path):
            entry = self.engine.info(path)
            entries = self.engine.listdir(path) if entry.type == "directory" else [entry]
        if detail:
            return [_info(e) for e in entries]
        return [e.path for e in entries]

    def modified(self, path: str) -> Any:
        import datetime

        mtime = self.info(path)["mtime"]
        return datetime.datetime.fromtimestamp(mtime, tz=datetime.timezone.utc)

    def ukey(self, path: str) -> str:
        info = self.info(path)
        return f"{info['name']}:{info['size']}:{info['mtime']}"

    # -- bytes --------------------------------------------------------------------------------

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        path = self._strip_protocol(path)
        with _os_errors(path):
            opened = self.engine.open(path)
            size = opened.entry.size
            first = 0 if start is None else (max(0, size + start) if start < 0 else start)
            last = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            if first >= last:
                return b""
            return self.engine.pread(opened, first, last)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> CometFile:
        if mode != "rb":
            raise PermissionError(f"comet:// is read-only: cannot open {path!r} with {mode!r}")
        path = self._strip_protocol(path)
        with _os_errors(path):
            opened = self.engine.open(path)
        return CometFile(
            self, path, opened, block_size=block_size, cache_options=cache_options, **kwargs
        )


class CometFile(AbstractBufferedFile):
    """A random-access read-only file; fsspec's buffer in front of Engine.pread."""

    def __init__(self, fs: CometFileSystem, path: str, opened: OpenFile, **kwargs: Any) -> None:
        self._opened = opened
        kwargs.setdefault("cache_type", "readahead")
        super().__init__(fs, path, mode="rb", size=opened.entry.size, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        with _os_errors(self.path):
            data: bytes = self.fs.engine.pread(self._opened, start, end)
        return data


__all__ = ["CometFile", "CometFileSystem"]
