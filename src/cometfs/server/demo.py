"""Deterministic demo artifacts for `cometfs serve --demo` (workspace `demo`).

- `mnist-mini` (dataset): grey-scale PNG digits in class folders train/<digit>/<n>.png,
  1.0.0 (10 per class, alias production) and 2.0.0 (15 per class, alias staging).
- `titanic` (dataset): train.csv (300 rows), README.md and the remote asset raw/full.csv.
- `tiny-net` (model): model.safetensors, config.json and embeddings.npy (numpy format 1.0,
  so `numpy.load(..., mmap_mode="r")` works), 1.0.0 (production) and 1.1.0 (candidate).

Every file is generated from a seeded RNG with the stdlib only (zlib/struct), so runs are
byte-identical. Seeding is idempotent: versions already in the store are skipped. Runs on the
caller's thread (the main thread of `cometfs serve`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from cometfs.server.store import ArtifactStore, AssetSource, VersionSpec

logger = logging.getLogger(__name__)

WORKSPACE = "demo"
_BASE_MS = 1_700_000_000_000
_DAY_MS = 86_400_000

# 3x5 bitmaps of the digits 0-9, one string per row.
_FONT = {
    0: ("###", "#.#", "#.#", "#.#", "###"),
    1: (".#.", "##.", ".#.", ".#.", "###"),
    2: ("###", "..#", "###", "#..", "###"),
    3: ("###", "..#", ".##", "..#", "###"),
    4: ("#.#", "#.#", "###", "..#", "..#"),
    5: ("###", "#..", "###", "..#", "###"),
    6: ("###", "#..", "###", "#.#", "###"),
    7: ("###", "..#", ".#.", ".#.", ".#."),
    8: ("###", "#.#", "###", "#.#", "###"),
    9: ("###", "#.#", "###", "..#", "###"),
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_encode(width: int, height: int, pixels: bytes | bytearray, channels: int = 1) -> bytes:
    """Encode 8-bit pixels (row-major; 1 channel = grey, 3 = RGB) as a PNG file. The one
    encoder of the project: the benchmark's chart and the tests' images use it too."""
    color_type = {1: 0, 3: 2}[channels]
    stride = width * channels
    raw = b"".join(b"\x00" + bytes(pixels[y * stride : (y + 1) * stride]) for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def png_gray(width: int, height: int, pixels: Sequence[int]) -> bytes:
    """Encode 8-bit grey-scale pixels (row-major) as a PNG file."""
    return png_encode(width, height, bytes(pixels))


def _digit_png(rng: random.Random, digit: int, size: int = 28, scale: int = 4) -> bytes:
    pixels = [rng.randrange(0, 40) for _ in range(size * size)]
    ox = rng.randrange(2, size - 3 * scale - 2)
    oy = rng.randrange(2, size - 5 * scale - 2)
    for r, row in enumerate(_FONT[digit]):
        for c, cell in enumerate(row):
            if cell != "#":
                continue
            for dy in range(scale):
                for dx in range(scale):
                    pixels[(oy + r * scale + dy) * size + ox + c * scale + dx] = rng.randrange(
                        180, 256
                    )
    return png_gray(size, size, pixels)


def npy_bytes(shape: tuple[int, ...], values: Sequence[float]) -> bytes:
    """A little-endian float32 array in .npy format version 1.0."""
    header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode("latin1")
    # magic(6) + version(2) + header length(2) + header + padding + "\n" is a multiple of 64.
    pad = 64 - (10 + len(header) + 1) % 64
    header += b" " * (pad % 64) + b"\n"
    return (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", len(header))
        + header
        + struct.pack(f"<{len(values)}f", *values)
    )


def safetensors_bytes(
    tensors: dict[str, tuple[tuple[int, ...], list[float]]], metadata: dict[str, str]
) -> bytes:
    """float32 tensors in the safetensors layout: u64 header size, JSON header, raw data."""
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs: list[bytes] = []
    offset = 0
    for name, (shape, values) in tensors.items():
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # the format pads the header to 8-byte alignment
    return struct.pack("<Q", len(hbytes)) + hbytes + b"".join(blobs)


def _exp_key(name: str, version: str) -> str:
    return hashlib.sha256(f"{WORKSPACE}/{name}/{version}".encode()).hexdigest()[:32]


def _mnist(per_class: int, seed: int) -> list[AssetSource]:
    rng = random.Random(seed)
    assets = [
        AssetSource("classes.txt", data="\n".join(str(d) for d in range(10)).encode() + b"\n")
    ]
    for digit in range(10):
        for n in range(per_class):
            assets.append(AssetSource(f"train/{digit}/{n:03d}.png", data=_digit_png(rng, digit)))
    return assets


def _titanic_csv(rows: int, seed: int) -> bytes:
    rng = random.Random(seed)
    first = [
        "John",
        "Mary",
        "William",
        "Anna",
        "James",
        "Elizabeth",
        "Thomas",
        "Margaret",
        "Henry",
        "Alice",
        "George",
        "Helen",
        "Charles",
        "Emily",
        "Edward",
        "Rose",
    ]
    last = [
        "Smith",
        "Brown",
        "Taylor",
        "Johnson",
        "Walker",
        "Wright",
        "Robinson",
        "Thompson",
        "White",
        "Hughes",
        "Edwards",
        "Green",
        "Hall",
        "Wood",
        "Harris",
        "Clarke",
    ]
    lines = ["PassengerId,Survived,Pclass,Name,Sex,Age,SibSp,Parch,Fare,Embarked"]
    for pid in range(1, rows + 1):
        sex = rng.choice(["male", "female"])
        pclass = rng.choice([1, 2, 3, 3])
        survived = int(rng.random() < (0.7 if sex == "female" else 0.2) + (3 - pclass) * 0.08)
        age = "" if rng.random() < 0.15 else f"{rng.uniform(0.5, 75):.1f}"
        fare = rng.uniform(5, 30) * (4 - pclass) ** 1.5
        name = f'"{rng.choice(last)}, {"Mr." if sex == "male" else "Mrs."} {rng.choice(first)}"'
        lines.append(
            f"{pid},{survived},{pclass},{name},{sex},{age},{rng.randrange(0, 4)},"
            f"{rng.randrange(0, 3)},{fare:.4f},{rng.choice('SCQ')}"
        )
    return ("\n".join(lines) + "\n").encode()


def _tiny_net(seed: int, hidden: int) -> list[AssetSource]:
    rng = random.Random(seed)

    def gauss(n: int) -> list[float]:
        return [rng.gauss(0.0, 0.1) for _ in range(n)]

    tensors = {
        "fc1.weight": ((hidden, 16), gauss(hidden * 16)),
        "fc1.bias": ((hidden,), gauss(hidden)),
        "fc2.weight": ((10, hidden), gauss(10 * hidden)),
        "fc2.bias": ((10,), gauss(10)),
    }
    config = {
        "architecture": "mlp",
        "input_dim": 16,
        "hidden_dim": hidden,
        "num_classes": 10,
        "activation": "relu",
    }
    return [
        AssetSource("config.json", data=(json.dumps(config, indent=2) + "\n").encode()),
        AssetSource("model.safetensors", data=safetensors_bytes(tensors, {"format": "pt"})),
        AssetSource("embeddings.npy", data=npy_bytes((2048, 128), gauss(2048 * 128))),
    ]


_TITANIC_README = b"""# titanic

A synthetic, Titanic-shaped passenger table for the cometfs demo.

- `train.csv`: 300 passengers with a header row.
- `raw/full.csv`: a remote asset (a link only; cometfs shows it as a symlink).
"""


def seed_demo(store: ArtifactStore) -> None:
    """Add the demo artifacts to `store`, skipping versions that are already there."""
    snap = store.snapshot()

    def have(name: str, version: str) -> bool:
        art = snap.artifact(WORKSPACE, name)
        return art is not None and art.find_version(version) is not None

    plans: list[tuple[str, str, dict[str, Any], Any]] = [
        (
            "mnist-mini",
            "1.0.0",
            dict(
                artifact_type="dataset",
                aliases=["production"],
                tags=["images", "mnist"],
                version_tags=["initial"],
                description="Tiny MNIST-like digits in class folders",
                metadata={"num_classes": 10, "per_class": 10, "image_size": [28, 28]},
            ),
            lambda: _mnist(10, seed=1),
        ),
        (
            "mnist-mini",
            "2.0.0",
            dict(
                artifact_type="dataset",
                aliases=["staging"],
                tags=["images", "mnist"],
                version_tags=["more-data"],
                metadata={"num_classes": 10, "per_class": 15, "image_size": [28, 28]},
            ),
            lambda: _mnist(15, seed=2),
        ),
        (
            "titanic",
            "1.0.0",
            dict(
                artifact_type="dataset",
                aliases=["production"],
                tags=["tabular", "csv"],
                version_tags=["cleaned"],
                description="Synthetic passenger table",
                metadata={"rows": 300, "target": "Survived"},
                remotes={"raw/full.csv": "https://example.com/datasets/titanic/full.csv"},
            ),
            lambda: [
                AssetSource("README.md", data=_TITANIC_README),
                AssetSource("train.csv", data=_titanic_csv(300, seed=3)),
            ],
        ),
        (
            "tiny-net",
            "1.0.0",
            dict(
                artifact_type="model",
                aliases=["production"],
                tags=["mlp", "safetensors"],
                version_tags=["baseline"],
                description="A tiny MLP checkpoint",
                metadata={"framework": "pytorch", "accuracy": 0.91, "epochs": 5},
            ),
            lambda: _tiny_net(seed=4, hidden=32),
        ),
        (
            "tiny-net",
            "1.1.0",
            dict(
                artifact_type="model",
                aliases=["candidate"],
                tags=["mlp", "safetensors"],
                version_tags=["finetuned"],
                metadata={"framework": "pytorch", "accuracy": 0.94, "epochs": 12},
            ),
            lambda: _tiny_net(seed=5, hidden=64),
        ),
    ]
    for day, (name, version, kwargs, make_assets) in enumerate(plans):
        if have(name, version):
            continue
        store.add_version(
            VersionSpec(
                WORKSPACE,
                name,
                make_assets(),
                version=version,
                experiment_key=_exp_key(name, version),
                created_ms=_BASE_MS + day * _DAY_MS,
                **kwargs,
            )
        )
    logger.info("demo: workspace %r is seeded", WORKSPACE)
