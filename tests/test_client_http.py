"""CometClient's HTTP layer against small misbehaving servers written here (trickling
bodies, gzip bombs, wrong ETags, HTTP-date Retry-After, not-finalized versions, cross-host
redirects) and against the local server (one shared connection pool, quiet logs)."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import trio

from cometfs import errors
from cometfs.client import CometClient
from cometfs.client import http as client_http
from cometfs.errors import ProtocolError, StaleError, TransientError
from cometfs.server import ArtifactStore, AssetSource, CometServer, VersionSpec
from cometfs.testing import read_range_blocking

KEY = "SECRETKEY-test-0123456789"
DATA = os.urandom(5000)
SHA = hashlib.sha256(DATA).hexdigest()
FILES_BODY = {
    "files": [
        {
            "artifactVersionId": "v1",
            "assetId": "a1",
            "fileName": "x.bin",
            "fileSize": 5,
            "link": None,
            "remote": False,
            "type": "asset",
            "metadata": None,
        }
    ]
}

Route = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    """Answers each path with the route the test gave for it; records what it was sent."""

    protocol_version = "HTTP/1.1"
    server: FakeServer

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.server.seen.append((path, dict(self.headers.items())))
        route = self.server.routes.get(path)
        if route is None:
            self.reply(404, b"{}")
        else:
            route(self)

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        sent = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        sent.update(headers or {})
        for name, value in sent.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def trickle(self, body_size: int, stop: threading.Event, every: float = 0.2) -> None:
        """Promise `body_size` bytes, then send one every `every` s until told to stop."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(body_size))
        self.end_headers()
        self.wfile.flush()
        for _ in range(body_size):
            if stop.wait(every):
                break
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                break
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Route] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    """Tells trickling handlers to give up, so teardown never waits on them."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def clients() -> Iterator[Callable[..., CometClient]]:
    made: list[CometClient] = []

    def make(url: str, **kwargs: Any) -> CometClient:
        kwargs.setdefault("sleep", lambda _s: None)
        client = CometClient(url, KEY, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def asset_route(data: bytes, etag: str | None, *, ranges: bool) -> Route:
    """get-asset that answers Range with 206 (or ignores it) and sends `etag`."""

    def route(handler: Handler) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        if etag is not None:
            headers["ETag"] = etag
        wanted = handler.headers.get("Range")
        if ranges and wanted:
            first, last = (int(x) for x in wanted.removeprefix("bytes=").split("-"))
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            handler.reply(206, data[first : last + 1], headers)
        else:
            handler.reply(200, data, headers)

    return route


GET_ASSET = "/api/rest/v2/experiment/asset/get-asset"
FILES = "/api/rest/v2/artifacts/version/files"
WORKSPACES = "/api/rest/v2/workspaces"


# -- 1. one pool: sockets stay flat over bursts of fresh threads -------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_sockets_stay_flat_over_bursts_of_concurrent_reads(
    store: ArtifactStore, make_server: Callable[..., CometServer], api_key: str
) -> None:
    store.add_version(VersionSpec("ws", "art", [AssetSource("f.bin", data=DATA)], version="1.0.0"))
    server = make_server()
    client = CometClient(server.url, api_key)
    try:
        asset = client.assets("ws", "art", "1.0.0")[0]

        async def burst() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(
                        client.read_range, asset.asset_id, asset.artifact_version_id, 0, 100
                    )

        before = open_fds()
        for _ in range(20):
            trio.run(burst)
        after = open_fds()
        assert server.request_log.count("get-asset") == 20 * 8
        # At most 8 requests run at once, so at most 8 connections are ever needed; each is
        # two fds here (the client's and the server's ends, in one process). A connection
        # per request would leave 160.
        assert after - before <= 2 * 8, (before, after)
    finally:
        client.close()


# -- 2. total deadlines against trickling bodies -----------------------------------------


def test_trickling_json_body_fails_within_the_deadline(
    fake: FakeServer, stop: threading.Event, clients: Callable[..., CometClient]
) -> None:
    fake.routes[WORKSPACES] = lambda h: h.trickle(10_000, stop)
    client = clients(fake.url, timeout=1.5, read_timeout=5.0)
    started = time.monotonic()
    with pytest.raises(TransientError):
        client.workspaces()
    assert time.monotonic() - started < 1.5 + 1.0


def test_trickling_byte_range_fails_within_the_deadline(
    fake: FakeServer, stop: threading.Event, clients: Callable[..., CometClient]
) -> None:
    fake.routes[GET_ASSET] = lambda h: h.trickle(10_000, stop)
    client = clients(fake.url, timeout=1.5, read_timeout=5.0)
    started = time.monotonic()
    with pytest.raises(TransientError):
        read_range_blocking(client, "a1", "v1", 0, 10_000)
    assert time.monotonic() - started < 1.5 + 1.0


def test_stalled_body_is_retried_while_time_is_left(
    fake: FakeServer, stop: threading.Event, clients: Callable[..., CometClient]
) -> None:
    # The first answer stalls for good; the second is fine: a short read timeout lets the
    # call retry within its deadline.
    answers = iter([lambda h: h.trickle(10_000, stop, every=60.0)])

    def route(handler: Handler) -> None:
        next(answers, lambda h: h.reply(200, json.dumps({"workspaceNames": ["w"]}).encode()))(
            handler
        )

    fake.routes[WORKSPACES] = route
    client = clients(fake.url, timeout=5.0, read_timeout=0.5)
    started = time.monotonic()
    assert client.workspaces() == ["w"]
    assert time.monotonic() - started < 5.0
    assert client.counters()["retries"] == 1


def test_stream_chunk_that_trickles_fails_within_the_timeout(
    fake: FakeServer, stop: threading.Event, clients: Callable[..., CometClient]
) -> None:
    fake.routes[GET_ASSET] = lambda h: h.trickle(10_000, stop)
    client = clients(fake.url, timeout=1.5, read_timeout=5.0)
    started = time.monotonic()
    body = client.stream("a1", "v1", expected_size=10_000)
    with pytest.raises(TransientError), body as chunks:
        for _ in chunks:
            pass
    assert time.monotonic() - started < 1.5 + 1.0


# -- 3. Retry-After and not-finalized versions -------------------------------------------


def test_retry_after_forms() -> None:
    retry_after_seconds = client_http.retry_after_seconds
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("-3") == 0.0
    assert (
        retry_after_seconds(format_datetime(now + timedelta(seconds=42), usegmt=True), lambda: now)
        == 42.0
    )
    assert retry_after_seconds("Fri, 02 Jan 2026 03:04:15 -0000", lambda: now) == 10.0
    assert retry_after_seconds(format_datetime(now - timedelta(hours=1)), lambda: now) == 0.0
    for bad in (None, "", "soon", "Fri, 99 Foo"):
        assert retry_after_seconds(bad, lambda: now) is None


def test_retry_after_http_date_is_honoured(
    fake: FakeServer, clients: Callable[..., CometClient]
) -> None:
    answers = iter([429])

    def route(handler: Handler) -> None:
        if next(answers, 200) == 429:
            when = datetime.now(timezone.utc) + timedelta(seconds=3)
            handler.reply(429, b"{}", {"Retry-After": format_datetime(when, usegmt=True)})
        else:
            handler.reply(200, json.dumps({"workspaceNames": ["w"]}).encode())

    fake.routes[WORKSPACES] = route
    sleeps: list[float] = []
    client = clients(fake.url, sleep=sleeps.append)
    assert client.workspaces() == ["w"]
    # HTTP-dates have whole seconds: 3 s ahead is 2 < delay <= 3 by the time it is read.
    assert len(sleeps) == 1 and 1.0 < sleeps[0] <= 3.0


def test_retry_after_beyond_the_deadline_gives_up_at_once(
    fake: FakeServer, clients: Callable[..., CometClient]
) -> None:
    fake.routes[WORKSPACES] = lambda h: h.reply(429, b"{}", {"Retry-After": "30"})
    sleeps: list[float] = []
    client = clients(fake.url, sleep=sleeps.append, timeout=5.0, max_backoff=60.0)
    with pytest.raises(Exception, match="rate limited"):
        client.workspaces()
    assert sleeps == [] and len(fake.seen) == 1


@pytest.mark.parametrize("code", [90402, 90403])
def test_not_finalized_version_is_its_own_error(
    fake: FakeServer, clients: Callable[..., CometClient], code: int
) -> None:
    body = {"msg": "Artifact version is not closed", "code": 400, "sdk_error_code": code}
    fake.routes["/api/rest/v2/artifacts/version"] = lambda h: h.reply(
        400, json.dumps(body).encode()
    )
    with pytest.raises(errors.NotFinalized, match="not finalized") as info:
        clients(fake.url).artifact_version("ws", "art", version="1.0.0")
    assert info.value.sdk_error_code == code


# -- 4. byte ranges land in one buffer ---------------------------------------------------


def test_read_range_returns_one_buffer_of_exact_size(
    fake: FakeServer, clients: Callable[..., CometClient]
) -> None:
    fake.routes[GET_ASSET] = asset_route(DATA, None, ranges=True)
    data = read_range_blocking(clients(fake.url), "a1", "v1", 10, 4010)
    assert isinstance(data, bytearray) and len(data) == 4000
    assert data == DATA[10:4010]


# -- 5. bounded, unencoded JSON ------------------------------------------------------------


def test_identity_encoding_is_asked_for(
    fake: FakeServer, clients: Callable[..., CometClient]
) -> None:
    fake.routes[WORKSPACES] = lambda h: h.reply(200, b'{"workspaceNames": []}')
    clients(fake.url).workspaces()
    assert fake.seen[0][1]["Accept-Encoding"] == "identity"


def test_gzip_json_is_decoded_up_to_the_cap(
    fake: FakeServer, clients: Callable[..., CometClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_http, "MAX_JSON_BYTES", 1 << 20)
    small = gzip.compress(json.dumps(FILES_BODY).encode())
    # 8 MiB of spaces inside a valid JSON document: ~8 KiB once compressed.
    bomb = gzip.compress(b'{"files": []' + b" " * (8 << 20) + b"}")
    answers = iter([small, bomb])
    fake.routes[FILES] = lambda h: h.reply(200, next(answers), {"Content-Encoding": "gzip"})
    client = clients(fake.url)
    assert [a.asset_id for a in client.assets("ws", "art", "1.0.0")] == ["a1"]
    with pytest.raises(ProtocolError, match="over the JSON cap"):
        client.assets("ws", "art", "1.0.0")
    assert len(fake.seen) == 2  # not retried


def test_json_over_the_cap_is_refused(
    fake: FakeServer, clients: Callable[..., CometClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_http, "MAX_JSON_BYTES", 1000)
    big = json.dumps({"workspaceNames": ["w" * 100] * 20}).encode()
    fake.routes[WORKSPACES] = lambda h: h.reply(200, big)
    with pytest.raises(ProtocolError, match="over the JSON cap"):
        clients(fake.url).workspaces()


def test_one_bad_file_size_keeps_the_rest_of_the_listing(
    fake: FakeServer, clients: Callable[..., CometClient], caplog: pytest.LogCaptureFixture
) -> None:
    bad = dict(FILES_BODY["files"][0], assetId="a2", fileName="huge.bin", fileSize=2**64)
    body = {"files": [*FILES_BODY["files"], bad]}
    fake.routes[FILES] = lambda h: h.reply(200, json.dumps(body).encode())
    good, skipped = clients(fake.url).assets("ws", "art", "1.0.0")
    assert (good.asset_id, good.problem) == ("a1", None)
    assert skipped.asset_id == "a2" and skipped.problem and skipped.size == 0
    assert any("a2" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# -- 6. whole assets are checked against a SHA-256 ETag ------------------------------------


@pytest.mark.parametrize("ranges", [True, False])
def test_whole_asset_with_a_wrong_etag_is_stale(
    fake: FakeServer, clients: Callable[..., CometClient], ranges: bool
) -> None:
    fake.routes[GET_ASSET] = asset_route(DATA, f'"{"0" * 64}"', ranges=ranges)
    with pytest.raises(StaleError, match="SHA-256"):
        read_range_blocking(clients(fake.url), "a1", "v1", 0, len(DATA), expected_size=len(DATA))


@pytest.mark.parametrize("ranges", [True, False])
def test_whole_asset_with_its_etag_is_served(
    fake: FakeServer, clients: Callable[..., CometClient], ranges: bool
) -> None:
    fake.routes[GET_ASSET] = asset_route(DATA, f'"{SHA.upper()}"', ranges=ranges)
    data = read_range_blocking(clients(fake.url), "a1", "v1", 0, len(DATA), expected_size=len(DATA))
    assert bytes(data) == DATA


def test_part_of_an_asset_is_not_hashed_and_weak_etags_are_ignored(
    fake: FakeServer, clients: Callable[..., CometClient]
) -> None:
    fake.routes[GET_ASSET] = asset_route(DATA, f'"{"0" * 64}"', ranges=True)
    assert bytes(read_range_blocking(clients(fake.url), "a1", "v1", 1, 100)) == DATA[1:100]
    fake.routes[GET_ASSET] = asset_route(DATA, f'W/"{"0" * 64}"', ranges=True)
    assert bytes(read_range_blocking(clients(fake.url), "a1", "v1", 0, len(DATA))) == DATA


def test_streamed_asset_with_a_wrong_etag_is_stale(
    fake: FakeServer, clients: Callable[..., CometClient]
) -> None:
    fake.routes[GET_ASSET] = asset_route(DATA, f'"{"0" * 64}"', ranges=False)
    client = clients(fake.url)
    body = client.stream("a1", "v1", chunk_size=1024)
    with pytest.raises(StaleError), body as chunks:
        assert b"".join(chunks) == DATA
    fake.routes[GET_ASSET] = asset_route(DATA, f'"{SHA}"', ranges=False)
    with clients(fake.url).stream("a1", "v1", chunk_size=1024) as chunks:
        assert b"".join(chunks) == DATA


# -- 7. secrets -----------------------------------------------------------------------------


def test_debug_logs_never_show_a_blob_url(
    store: ArtifactStore,
    make_server: Callable[..., CometServer],
    api_key: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store.add_version(VersionSpec("ws", "art", [AssetSource("f.bin", data=DATA)], version="1.0.0"))
    server = make_server(ranges=False, redirect=True)
    client = CometClient(server.url, api_key)
    try:
        asset = client.assets("ws", "art", "1.0.0")[0]
        assert (
            bytes(read_range_blocking(client, asset.asset_id, asset.artifact_version_id, 0, 10))
            == DATA[:10]
        )
        assert (
            bytes(read_range_blocking(client, asset.asset_id, asset.artifact_version_id, 5, 10))
            == DATA[5:10]
        )
    finally:
        client.close()
    assert client.byte_mode == "redirect"
    client_records = [r for r in caplog.records if not r.name.startswith("cometfs.server")]
    assert any(r.name.startswith("cometfs.client") for r in client_records)
    for record in client_records:
        assert "/blob/" not in record.getMessage(), record.getMessage()


def test_key_is_dropped_on_a_redirect_to_another_host(
    fake: FakeServer, clients: Callable[..., CometClient]
) -> None:
    other = FakeServer()
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        other.routes[WORKSPACES] = lambda h: h.reply(200, b'{"workspaceNames": ["w"]}')
        # "localhost" is another host name for the same loopback address.
        target = f"http://localhost:{other.server_address[1]}{WORKSPACES}"
        fake.routes[WORKSPACES] = lambda h: h.reply(302, b"", {"Location": target})
        assert clients(fake.url).workspaces() == ["w"]
    finally:
        other.shutdown()
        other.server_close()
        thread.join(5)
    assert fake.seen[0][1]["Authorization"] == KEY
    assert "Authorization" not in other.seen[0][1]
