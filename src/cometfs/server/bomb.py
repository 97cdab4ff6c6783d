"""The gzip bomb of the `gzip-bomb` fault: a small gzip body that inflates to a huge valid JSON.

Called on server handler threads. The body is the real JSON answer with `pad` spaces after
its first byte, so it still parses to the same object; a client that decodes without a cap
holds the whole padding in memory.

Built without compressing the padding on every request: a raw deflate stream ended by a full
flush is byte-aligned and refers to nothing before it, so independently compressed pieces
concatenate into one valid stream. The padding is one 1 MiB piece repeated; only its CRC-32
(about 0.5 s for 1 GiB) is computed once per pad size and cached.
"""

from __future__ import annotations

import functools
import struct
import zlib

_PIECE = 1 << 20
# gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _deflate(data: bytes, mode: int) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return comp.compress(data) + comp.flush(mode)


@functools.lru_cache(maxsize=4)
def _padding(pad: int) -> bytes:
    """`pad` spaces, deflated, ending in a full flush."""
    whole, rest = divmod(pad, _PIECE)
    body = _deflate(b" " * _PIECE, zlib.Z_FULL_FLUSH) * whole
    return body + (_deflate(b" " * rest, zlib.Z_FULL_FLUSH) if rest else b"")


@functools.lru_cache(maxsize=4)
def _crc_after_padding(head: bytes, pad: int) -> int:
    """CRC-32 of `head` followed by `pad` spaces (the slow part, so cached)."""
    crc = zlib.crc32(head)
    piece = b" " * _PIECE
    whole, rest = divmod(pad, _PIECE)
    for _ in range(whole):
        crc = zlib.crc32(piece, crc)
    return zlib.crc32(b" " * rest, crc)


def gzip_bomb(body: bytes, pad: int) -> bytes:
    """gzip of `body[:1] + b" " * pad + body[1:]` (body should be a JSON object or array)."""
    head, tail = body[:1], body[1:]
    crc = zlib.crc32(tail, _crc_after_padding(head, pad))
    stream = _deflate(head, zlib.Z_FULL_FLUSH) + _padding(pad) + _deflate(tail, zlib.Z_FINISH)
    total = len(body) + pad
    return _GZIP_HEADER + stream + struct.pack("<II", crc, total & 0xFFFFFFFF)
