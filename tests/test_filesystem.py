"""fsspec `comet://`: pandas, pyarrow, fsspec.open, ls/glob/info, ranged cat_file, seek."""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cometfs.filesystem import CometFileSystem
from cometfs.server import ArtifactStore, AssetSource, CometServer, VersionSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

WS = "ws"
ART = "table"
CSV = "id,name\n" + "".join(f"{i},n{i}\n" for i in range(300))
FRAME = pd.DataFrame({"a": range(1000), "b": [f"s{i}" for i in range(1000)]})
REMOTE = ("raw/remote.csv", "https://example.invalid/remote.csv")


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


FILES = {
    "train.csv": CSV.encode(),
    "part.parquet": _parquet(FRAME),
    "nested/x/y.txt": b"deep\n",
    "nested/z.txt": b"z\n",
}


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    # The shared venv's installed entry-point metadata may predate pyproject's; register the
    # class the entry point names, as an installed package does (checked below).
    fsspec.register_implementation("comet", CometFileSystem, clobber=True)
    yield


@pytest.fixture
def world(
    store: ArtifactStore,
    server: CometServer,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> CometServer:
    store.add_version(
        VersionSpec(
            WS,
            ART,
            [AssetSource(p, data=b) for p, b in FILES.items()],
            version="1.0.0",
            aliases=["prod"],
            remotes=dict([REMOTE]),
        )
    )
    for var in ("COMET_CONFIG", "COMET_INI", "COMET_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COMET_API_KEY", api_key)
    monkeypatch.setenv("COMET_URL_OVERRIDE", server.url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    CometFileSystem.clear_instance_cache()
    return server


@pytest.fixture
def fs(world: CometServer) -> Iterator[CometFileSystem]:
    made = fsspec.filesystem("comet")
    assert isinstance(made, CometFileSystem)
    yield made
    made.close()
    CometFileSystem.clear_instance_cache()


def test_entry_point_names_this_class() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    target = pyproject["project"]["entry-points"]["fsspec.specs"]["comet"]
    module, _, name = target.partition(":")
    assert getattr(import_module(module), name) is CometFileSystem


def test_pandas_reads_csv_through_comet_url(fs: CometFileSystem) -> None:
    frame = pd.read_csv(f"comet://{WS}/{ART}/latest/train.csv")
    pd.testing.assert_frame_equal(frame, pd.read_csv(io.StringIO(CSV)))


def test_pyarrow_reads_parquet_with_the_filesystem(fs: CometFileSystem) -> None:
    table = pq.read_table(f"comet://{WS}/{ART}/prod/part.parquet", filesystem=fs)
    assert table.equals(pa.Table.from_pandas(FRAME, preserve_index=False))
    frame = pd.read_parquet(f"comet://{WS}/{ART}/1.0.0/part.parquet")
    pd.testing.assert_frame_equal(frame, FRAME)


def test_fsspec_open_and_seek(fs: CometFileSystem) -> None:
    data = FILES["part.parquet"]
    with fsspec.open(f"comet://{WS}/{ART}/1.0.0/part.parquet", "rb") as handle:
        assert handle.read(4) == b"PAR1"
        handle.seek(-8, 2)
        assert handle.read() == data[-8:]
        handle.seek(100)
        assert handle.tell() == 100
        assert handle.read(50) == data[100:150]
    with fs.open(f"{WS}/{ART}/1.0.0/train.csv", "rb", block_size=16) as handle:
        assert handle.read() == FILES["train.csv"]
    with pytest.raises(PermissionError):
        fs.open(f"{WS}/{ART}/1.0.0/new.txt", "wb")


def test_cat_file_ranges(fs: CometFileSystem) -> None:
    path = f"comet://{WS}/{ART}/1.0.0/train.csv"
    data = FILES["train.csv"]
    assert fs.cat_file(path) == data
    assert fs.cat_file(path, 5, 40) == data[5:40]
    assert fs.cat_file(path, -10) == data[-10:]
    assert fs.cat_file(path, 10, -10) == data[10:-10]
    assert fs.cat_file(path, len(data) + 5) == b""
    assert fs.cat(f"{WS}/{ART}/1.0.0/.comet/source") == f"{WS}/{ART}:1.0.0\n".encode()


def test_ls_info_glob_exists(fs: CometFileSystem) -> None:
    assert fs.ls("", detail=False) == [".comet", WS]
    listing = {e["name"]: e for e in fs.ls(f"comet://{WS}/{ART}")}
    assert listing[f"{WS}/{ART}/prod"]["type"] == "directory"
    assert listing[f"{WS}/{ART}/prod"]["destination"] == "1.0.0"
    info = fs.info(f"{WS}/{ART}/1.0.0/train.csv")
    assert (info["type"], info["size"], info["islink"]) == ("file", len(CSV), False)
    remote = fs.info(f"{WS}/{ART}/1.0.0/{REMOTE[0]}")
    assert (remote["type"], remote["destination"]) == ("other", REMOTE[1])
    assert sorted(fs.glob(f"{WS}/{ART}/1.0.0/nested/**/*.txt")) == [
        f"{WS}/{ART}/1.0.0/nested/x/y.txt",
        f"{WS}/{ART}/1.0.0/nested/z.txt",
    ]
    assert fs.glob(f"comet://{WS}/{ART}/prod/*.csv") == [f"{WS}/{ART}/prod/train.csv"]
    assert fs.exists(f"{WS}/{ART}/latest/train.csv")
    assert not fs.exists(f"{WS}/{ART}/latest/nope.csv")
    assert fs.isdir(f"{WS}/{ART}/latest") and fs.isfile(f"{WS}/{ART}/1.0.0/nested/z.txt")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{WS}/{ART}/3.0.0")
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{WS}/nothing/1.0.0/x")
    with pytest.raises(IsADirectoryError):
        fs.cat_file(f"{WS}/{ART}/1.0.0/{REMOTE[0]}")
    assert ".comet/assets.json" in {p.split("1.0.0/", 1)[1] for p in fs.find(f"{WS}/{ART}/1.0.0")}


def test_key_from_environment_is_not_pickled(fs: CometFileSystem, api_key: str) -> None:
    state = pickle.dumps(fs)
    assert api_key.encode() not in state
    assert api_key not in repr(fs)
    clone = pickle.loads(state)
    assert clone.cat_file(f"{WS}/{ART}/1.0.0/nested/z.txt") == b"z\n"


def test_explicit_options_travel_with_the_pickle(
    world: CometServer, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = CometFileSystem(server_url=world.url, api_key=api_key, cache_dir=tmp_path / "c2")
    try:
        assert api_key not in repr(fs)
        monkeypatch.delenv("COMET_API_KEY")
        clone = pickle.loads(pickle.dumps(fs))
        assert clone.cat_file(f"{WS}/{ART}/1.0.0/nested/z.txt") == b"z\n"
        assert (tmp_path / "c2").is_dir()
    finally:
        fs.close()


def test_a_fresh_process_takes_server_and_key_from_the_environment(
    world: CometServer, tmp_path: Path
) -> None:
    import subprocess

    code = (
        "import fsspec, pandas as pd\n"
        "from cometfs.filesystem import CometFileSystem\n"
        "fsspec.register_implementation('comet', CometFileSystem, clobber=True)\n"
        f"print(len(pd.read_csv('comet://{WS}/{ART}/latest/train.csv')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "300"
