"""The read path for asset bytes: block math, memory and disk caches, and AssetReader.

Modules: blocks (block math and readahead), memory (MemoryCache), disk and cachedir
(DiskCache), pieces (pieces, slots and the ByteSource protocol both modes share), reader
(AssetReader: range mode, readahead, disk writes) and streaming (stream mode).

Public surface (everything else is internal):

    AssetKey      identity of immutable bytes (from cometfs.model, re-exported)
    ByteSource    what the reader needs from the store facade (fetch_range, stream)
    DiskCache     persistent block cache; sync, called from worker threads
    MemoryCache   the LRU of cached pieces under the one memory budget every buffer counts
                  against (cached, in flight, queued for the disk); trio thread
    AssetReader   read(handle, offset, size) -> bytes or a read-only memoryview;
                  `async with reader:` runs its background work
    ReadHandle    per-open-file state returned by AssetReader.open
"""

from cometfs.model import AssetKey
from cometfs.reader.disk import DiskCache
from cometfs.reader.memory import MemoryCache
from cometfs.reader.pieces import ByteSource
from cometfs.reader.reader import AssetReader, ReadHandle

__all__ = ["AssetKey", "AssetReader", "ByteSource", "DiskCache", "MemoryCache", "ReadHandle"]
