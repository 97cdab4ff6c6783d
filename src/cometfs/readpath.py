"""The read path's object graph, built once for every front end: the FUSE mount and the Engine.

Store (async facade over the REST client) -> AssetReader (memory + DiskCache) -> Tree (path
grammar and rendered `.comet/` files). `build_read_path` is the one place that wires them, so
`cometfs mount`, `comet://` (fsspec) and `cometfs download` serve the same bytes the same way.

Construction is synchronous and cheap (DiskCache scans its directory); call it on the thread
that will run the trio loop. The objects it returns belong to that loop.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cometfs.config import DEFAULT_METADATA_TTL
from cometfs.reader import AssetReader, DiskCache
from cometfs.store import RestClient, Store
from cometfs.tree import Tree


def default_cache_dir(server_url: str, environ: Mapping[str, str] | None = None) -> Path:
    """Per-server cache under the XDG cache directory, so ids of two servers never mix."""
    env = os.environ if environ is None else environ
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cometfs"
    return base / hashlib.sha256(server_url.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ReadPath:
    store: Store
    disk: DiskCache
    reader: AssetReader
    tree: Tree


def build_read_path(
    client: RestClient,
    cache_dir: Path,
    cache_size: int,
    *,
    metadata_ttl: float = DEFAULT_METADATA_TTL,
    workspaces: Iterable[str] = (),
    status: Callable[[AssetReader], Callable[[], Mapping[str, Any]]] | None = None,
    mount_time_ns: int | None = None,
) -> ReadPath:
    """Wire Store, DiskCache, AssetReader and Tree; `status(reader)` renders status.json."""
    store = Store(client, metadata_ttl=metadata_ttl)
    disk = DiskCache(cache_dir, cache_size)
    reader = AssetReader(store, disk)
    tree = Tree(
        store,
        metadata_ttl=metadata_ttl,
        workspaces=workspaces,
        status=status(reader) if status is not None else dict,
        mount_time_ns=mount_time_ns,
    )
    return ReadPath(store, disk, reader, tree)
