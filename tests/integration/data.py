"""The artifact store the FUSE integration tests mount: nested paths, an empty file, a file
larger than 64 MiB, unicode names, two versions with aliases and tags, and a remote asset."""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cometfs.server import ApiKey, ArtifactStore, AssetSource, CometServer, VersionSpec
from cometfs.server.demo import png_gray

KEY = "test-key-0123456789abcdef"
WS = "team-ws"
ART = "vision data"  # a space: names are escaped reversibly, and this one needs none
BIG_SIZE = 64 * 1024 * 1024 + 12_345
REMOTE = ("remote/full.csv", "https://example.com/datasets/full.csv")


def png(width: int, height: int, seed: int) -> bytes:
    """A real (tiny, grey) PNG, so the class-folder scan reads genuine image files."""
    rng = random.Random(seed)
    return png_gray(width, height, [rng.randrange(256) for _ in range(width * height)])


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@dataclass(frozen=True)
class Dataset:
    v1: dict[str, bytes]
    v2: dict[str, bytes]
    big_sha256: str


def build(store: ArtifactStore, tmp: Path) -> Dataset:
    """Fill `store` with two versions of WS/ART; return the bytes each version holds."""
    rng = random.Random(1234)
    big = rng.randbytes(BIG_SIZE)
    big_file = tmp / "big.bin"
    big_file.write_bytes(big)
    csv = "id,name,score\n" + "".join(f"{i},item-{i},{i * 0.5}\n" for i in range(500))
    v1 = {
        "readme.txt": b"hello from version one\nneedle-v1\n",
        "empty.txt": b"",
        "data/nested/deep/blob.bin": rng.randbytes(300_001),
        "tables/scores.csv": csv.encode(),
        "unicodé/日本語 ファイル.txt": "ünïcödé ✓\n".encode(),
        "arrays/weights.npy": npy(np.arange(10_000, dtype=np.float32).reshape(100, 100)),
    }
    for label in ("cat", "dog"):
        for i in range(3):
            v1[f"images/{label}/{i}.png"] = png(8, 8, seed=(0 if label == "cat" else 100) + i)
    v2 = {**v1, "readme.txt": b"hello from version two\n", "extra/new.txt": b"only in v2\n"}

    def sources(files: dict[str, bytes]) -> list[AssetSource]:
        return [AssetSource(path, data=data) for path, data in files.items()]

    store.add_version(
        VersionSpec(
            WS,
            ART,
            [*sources(v1), AssetSource("big.bin", path=big_file)],
            version="1.0.0",
            aliases=["production"],
            tags=["vision", "demo"],
            version_tags=["first"],
            metadata={"epochs": 3, "source": "unit"},
            remotes=dict([REMOTE]),
        )
    )
    store.add_version(
        VersionSpec(
            WS,
            ART,
            [*sources(v2), AssetSource("big.bin", path=big_file)],
            version="2.0.0",
            aliases=["staging"],
            version_tags=["second", "candidate"],
            metadata={"epochs": 5},
            remotes=dict([REMOTE]),
        )
    )
    big_file.unlink()
    v1["big.bin"] = v2["big.bin"] = big
    return Dataset(v1, v2, hashlib.sha256(big).hexdigest())


def start_world(root: Path, **server_options: object) -> tuple[CometServer, Dataset]:
    """A store built by `build` under `root` and a started server over it (caller closes)."""
    store = ArtifactStore(root / "store")
    dataset = build(store, root)
    server = CometServer(store, api_keys=[ApiKey(KEY, None)], **server_options)  # type: ignore[arg-type]
    server.start()
    return server, dataset
