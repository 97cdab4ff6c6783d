"""`cometfs download` against the real comet_ml SDK's LoggedArtifact.download on the same files."""

from __future__ import annotations

import http.server
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cometfs.config import Config
from cometfs.download import PART_SUFFIX, DownloadError, Strategy, download, parse_spec
from cometfs.engine import Engine
from cometfs.server import ArtifactStore, AssetSource, CometServer, VersionSpec

comet_ml = pytest.importorskip("comet_ml")
from comet_ml import exceptions as cx  # noqa: E402

WS = "ws"
ART = "weights"
rng = random.Random(5)
FILES = {
    "model.bin": rng.randbytes(2_500_000),
    "conf/a.json": b'{"a": 1}\n',
    "conf/b.json": b'{"b": 2}\n',
    "empty.txt": b"",
    "deep/er/c.txt": b"c" * 5000,
}
REMOTE_BYTES = b"remote,bytes\n1,2\n"


@pytest.fixture
def http_file() -> Iterator[str]:
    """A loopback HTTP server with one file, standing in for a remote asset's https link."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(REMOTE_BYTES)))
            self.end_headers()
            self.wfile.write(REMOTE_BYTES)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/r.csv"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def world(store: ArtifactStore, sdk_env: CometServer, http_file: str) -> CometServer:
    store.add_version(
        VersionSpec(
            WS,
            ART,
            [AssetSource(p, data=b) for p, b in FILES.items()],
            version="1.0.0",
            aliases=["best"],
            remotes={"remote/r.csv": http_file, "remote/s3.bin": "s3://b/k"},
        )
    )
    return sdk_env


@pytest.fixture
def engine(world: CometServer, api_key: str, tmp_path: Path) -> Iterator[Engine]:
    with Engine(Config(world.url, api_key), cache_dir=tmp_path / "cache") as made:
        yield made


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _prepare(root: Path) -> None:
    """An identical file, one with other content of the same size, one shorter, one extra."""
    (root / "conf").mkdir(parents=True)
    (root / "conf/a.json").write_bytes(FILES["conf/a.json"])
    (root / "conf/b.json").write_bytes(b'{"b": 9}\n')
    (root / "model.bin").write_bytes(b"local")
    (root / "mine.txt").write_bytes(b"not in the artifact")


@pytest.mark.sdk
@pytest.mark.parametrize("strategy", ["FAIL", "PRESERVE", "OVERWRITE"])
def test_each_strategy_leaves_the_tree_the_sdk_leaves(
    strategy: str, engine: Engine, world: CometServer, tmp_path: Path
) -> None:
    sdk_dest, our_dest = tmp_path / "sdk", tmp_path / "ours"
    _prepare(sdk_dest)
    _prepare(our_dest)
    sdk_error: Exception | None = None
    try:
        comet_ml.API(cache=False).get_artifact(WS, ART, version="1.0.0").download(
            str(sdk_dest), overwrite_strategy=strategy
        )
    except cx.ArtifactDownloadException as exc:
        sdk_error = exc
    our_error: DownloadError | None = None
    try:
        result = download(engine, f"{WS}/{ART}:1.0.0", our_dest, strategy=Strategy(strategy))
    except DownloadError as exc:
        our_error, result = exc, exc.result

    assert _tree(our_dest) == _tree(sdk_dest)
    assert (our_error is None) == (sdk_error is None)
    assert result.identical == ["conf/a.json"]
    if strategy == "FAIL":
        assert result.conflicts == ["conf/b.json", "model.bin"]
        assert our_error is not None and "conf/b.json" in str(our_error)
        assert "model.bin" in str(our_error)
    elif strategy == "PRESERVE":
        assert result.preserved == ["conf/b.json", "model.bin"]
    else:
        assert result.overwritten == ["conf/b.json", "model.bin"]
        assert _tree(our_dest) == {**FILES, "mine.txt": b"not in the artifact"}
    assert sorted(rel for rel, _ in result.remote_skipped) == ["remote/r.csv", "remote/s3.bin"]
    assert not list(our_dest.rglob(f"*{PART_SUFFIX}"))


def test_fresh_download_then_a_second_run_fetches_nothing(
    engine: Engine, world: CometServer, api_key: str, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    result = download(engine, f"{WS}/{ART}:best", dest, jobs=3)
    assert result.version == f"{WS}/{ART}:1.0.0"
    assert _tree(dest) == FILES
    assert result.written == sorted(FILES)
    (dest / "deep/er/c.txt").unlink()  # an interrupted run: one file missing, a stale part
    (dest / f"model.bin{PART_SUFFIX}").write_bytes(b"half")
    before = world.request_log.count("get-asset")
    # A new process with the same cache directory: everything comes from disk.
    with Engine(Config(world.url, api_key), cache_dir=tmp_path / "cache") as again:
        rerun = download(again, f"{WS}/{ART}", dest)
    assert world.request_log.count("get-asset") == before
    assert rerun.written == ["deep/er/c.txt"]
    assert _tree(dest) == {**FILES, f"model.bin{PART_SUFFIX}": b"half"}


def test_include_remote_fetches_http_links_only(engine: Engine, tmp_path: Path) -> None:
    result = download(engine, f"{WS}/{ART}:1.0.0", tmp_path / "out", include_remote=True)
    assert (tmp_path / "out/remote/r.csv").read_bytes() == REMOTE_BYTES
    assert result.remote_skipped == [("remote/s3.bin", "s3://b/k")]


def test_unknown_version_and_bad_spec(engine: Engine, tmp_path: Path) -> None:
    from cometfs.errors import NotFound

    with pytest.raises(NotFound):
        download(engine, f"{WS}/{ART}:7.0.0", tmp_path / "out")
    with pytest.raises(ValueError):
        parse_spec("no-slash")
    assert parse_spec("w/n") == ("w", "n", "latest")
    assert parse_spec("w/n:2.0.0") == ("w", "n", "2.0.0")


def _cli(
    args: list[str], server: CometServer, api_key: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "COMET_API_KEY": api_key,
        "COMET_URL_OVERRIDE": server.url,
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
    }
    return subprocess.run(
        [sys.executable, "-m", "cometfs.cli", "download", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_exit_codes_and_quiet_output_off_a_terminal(
    world: CometServer, api_key: str, tmp_path: Path
) -> None:
    dest = tmp_path / "cli"
    ok = _cli([f"{WS}/{ART}:1.0.0", str(dest), "--jobs", "2"], world, api_key, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert _tree(dest) == FILES
    assert "skipped remote asset remote/s3.bin -> s3://b/k" in ok.stderr
    assert "\r" not in ok.stderr and "B/s" not in ok.stderr  # no progress bar into a pipe
    assert "5 written" in ok.stdout

    (dest / "conf/b.json").write_bytes(b"edited\n")
    failed = _cli([f"{WS}/{ART}", str(dest)], world, api_key, tmp_path)
    assert failed.returncode == 1
    assert "conf/b.json" in failed.stderr and "different content" in failed.stderr
    kept = _cli(
        [f"{WS}/{ART}", str(dest), "--overwrite-strategy", "preserve"], world, api_key, tmp_path
    )
    assert kept.returncode == 0 and "kept" in kept.stderr
    assert (dest / "conf/b.json").read_bytes() == b"edited\n"
    replaced = _cli(
        [f"{WS}/{ART}", str(dest), "--overwrite-strategy", "OVERWRITE"], world, api_key, tmp_path
    )
    assert replaced.returncode == 0
    assert _tree(dest) == FILES
    missing = _cli([f"{WS}/{ART}:9.9.9", str(tmp_path / "none")], world, api_key, tmp_path)
    assert missing.returncode == 1 and "9.9.9" in missing.stderr
    for run in (ok, failed, kept, replaced, missing):
        assert api_key not in run.stdout + run.stderr
    shutil.rmtree(dest)
