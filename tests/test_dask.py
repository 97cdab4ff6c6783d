"""Dask on a LocalCluster reading comet:// in worker processes equals the local computation."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from cometfs.server import ArtifactStore, AssetSource, CometServer, VersionSpec

dd = pytest.importorskip("dask.dataframe")
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("dask.distributed")

if TYPE_CHECKING:  # the module itself is imported above only when dask is installed
    from dask.distributed import Client

WS = "ws"
PARTS = 4
SMALL = 48


def _frame(part: int) -> pd.DataFrame:
    return pd.DataFrame({"part": [part] * 500, "x": range(part * 500, part * 500 + 500)})


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def _registered() -> None:
    # The shared venv's installed entry-point metadata may predate pyproject's (see
    # test_filesystem.test_entry_point_names_this_class); workers get the pickled class.
    import fsspec

    from cometfs.filesystem import CometFileSystem

    fsspec.register_implementation("comet", CometFileSystem, clobber=True)


@pytest.fixture
def world(store: ArtifactStore, server: CometServer) -> CometServer:
    store.add_version(
        VersionSpec(
            WS,
            "data",
            [AssetSource(f"part-{i}.parquet", data=_parquet(_frame(i))) for i in range(PARTS)],
            version="1.0.0",
        )
    )
    store.add_version(
        VersionSpec(
            WS,
            "small",
            [AssetSource(f"n/{i:04d}.txt", data=f"{i}\n{i * 3}\n".encode()) for i in range(SMALL)],
            version="1.0.0",
        )
    )
    return server


@pytest.fixture(scope="module")
def cluster() -> Iterator[Client]:
    with (
        distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            host="127.0.0.1",
        ) as local,
        distributed.Client(local) as client,
    ):
        yield client


def test_read_parquet_and_bag_on_worker_processes(
    world: CometServer, cluster: Client, api_key: str, tmp_path: Path
) -> None:
    options = {
        "server_url": world.url,
        "api_key": api_key,
        "cache_dir": str(tmp_path / "worker-cache"),
    }
    frame = dd.read_parquet(f"comet://{WS}/data/1.0.0/*.parquet", storage_options=options)
    got = frame.compute().sort_values("x").reset_index(drop=True)
    expected = pd.concat([_frame(i) for i in range(PARTS)]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert frame.x.sum().compute() == expected.x.sum()

    lines = db.read_text(f"comet://{WS}/small/1.0.0/n/*.txt", storage_options=options)
    assert lines.npartitions == SMALL
    total = lines.map(str.strip).map(int).sum().compute()
    assert total == sum(i + 3 * i for i in range(SMALL))

    # Both worker processes read (each with its own Engine), not the client process.
    readers = {entry["params"].get("assetId") for entry in world.request_log.entries("get-asset")}
    assert len(readers) == PARTS + SMALL
    workers = cluster.run(lambda: __import__("os").getpid())
    assert len(workers) == 2
