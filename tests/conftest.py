"""Shared fixtures: a store, a local Comet-compatible server, and an environment for the SDK.

Fixtures: `store` (empty ArtifactStore in tmp_path), `api_key` (the test key string),
`make_server` (factory: `make_server(store=None, **CometServer kwargs)` -> started server,
closed at teardown), `server` (a default server over `store`), `sdk_env` (COMET_* variables,
HOME and cwd pointing at temp dirs, for tests that run the real comet_ml SDK).
"""

from __future__ import annotations

import os

# Before anything can import comet_ml: no Sentry telemetry (and so no DNS lookups) in tests.
os.environ["COMET_ERROR_TRACKING_ENABLE"] = "false"

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cometfs.server import ApiKey, ArtifactStore, CometServer

TEST_API_KEY = "test-key-0123456789abcdef"


@pytest.fixture
def api_key() -> str:
    return TEST_API_KEY


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def make_server(store: ArtifactStore, api_key: str) -> Iterator[Callable[..., CometServer]]:
    started: list[CometServer] = []
    default_store = store

    def make(store: ArtifactStore | None = None, **kwargs: Any) -> CometServer:
        kwargs.setdefault("api_keys", [ApiKey(api_key, None)])
        srv = CometServer(store if store is not None else default_store, **kwargs)
        started.append(srv)
        srv.start()
        return srv

    try:
        yield make
    finally:
        for srv in reversed(started):
            srv.close()


@pytest.fixture
def server(make_server: Callable[..., CometServer]) -> CometServer:
    return make_server()


@pytest.fixture
def sdk_env(
    monkeypatch: pytest.MonkeyPatch, server: CometServer, api_key: str, tmp_path: Path
) -> CometServer:
    """Point the comet_ml SDK at `server` with nothing read from the real home or cwd."""
    home = tmp_path / "sdk-home"
    work = tmp_path / "sdk-cwd"
    home.mkdir()
    work.mkdir()
    for var in ("COMET_CONFIG", "COMET_INI", "COMET_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COMET_API_KEY", api_key)
    monkeypatch.setenv("COMET_URL_OVERRIDE", f"{server.url}/clientlib/")
    monkeypatch.setenv("COMET_ERROR_TRACKING_ENABLE", "false")
    monkeypatch.setenv("COMET_HTTP_SESSION_RETRY_TOTAL", "0")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return server
