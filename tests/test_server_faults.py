"""The fault kinds added for hostile-network tests, latency, and the server-side mutations.

Each fault is parsed here and then seen through a real HTTP client (http.client or requests).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import socket
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import requests

from cometfs.server import (
    ArtifactStore,
    AssetSource,
    CometServer,
    FaultRule,
    VersionSpec,
    parse_faults,
)
from cometfs.server.faults import GZIP_BOMB_SIZE

REST = "/api/rest/v2/"
ASSET = REST + "experiment/asset/get-asset"
DATA = random.Random(7).randbytes(1 << 20)
SMALL = random.Random(8).randbytes(2000)


@pytest.fixture
def ids(store: ArtifactStore) -> dict[str, str]:
    store.add_version(
        VersionSpec(
            "ws",
            "data",
            [AssetSource("big.bin", data=DATA), AssetSource("small.bin", data=SMALL)],
            aliases=["prod"],
        )
    )
    store.add_version(VersionSpec("ws", "data", [AssetSource("big.bin", data=b"v2")]))
    ver = store.snapshot().artifacts["ws"]["data"].versions[0]
    by_name = {a.file_name: a.asset_id for a in ver.assets}
    return {"big": by_name["big.bin"], "small": by_name["small.bin"], "vid": ver.version_id}


def get(srv: CometServer, path: str, key: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": key, **kwargs.pop("headers", {})}
    return requests.get(srv.url + path, headers=headers, timeout=30, **kwargs)


def raw_get(
    srv: CometServer,
    path: str,
    key: str,
    timeout: float = 10,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    conn.request("GET", path, headers={"Authorization": key, **(headers or {})})
    return conn, conn.getresponse()


# ---- parsing ------------------------------------------------------------------------------


def test_parse_new_fault_kinds() -> None:
    rules = parse_faults(
        "get-asset=trickle:100*1;get-asset=stall;get-asset=short*2;get-asset=reset-mid;"
        "workspaces=429:date*1;get-asset=norange;artifacts/version/files=gzip-bomb;"
        "workspaces=gzip-bomb:4096;artifacts/version/files=huge-size;"
        "artifacts/version=not-final@0.5"
    ).rules
    assert [(r.endpoint, r.kind, r.count) for r in rules] == [
        ("get-asset", "trickle", 1),
        ("get-asset", "stall", None),
        ("get-asset", "truncate", 2),
        ("get-asset", "reset-mid", None),
        ("workspaces", "status", 1),
        ("get-asset", "norange", None),
        ("artifacts/version/files", "gzip-bomb", None),
        ("workspaces", "gzip-bomb", None),
        ("artifacts/version/files", "huge-size", None),
        ("artifacts/version", "not-final", None),
    ]
    assert rules[0].rate == 100.0
    assert rules[4].status == 429 and rules[4].retry_date and rules[4].retry_after is None
    assert rules[6].size == GZIP_BOMB_SIZE == 1 << 30 and rules[7].size == 4096
    assert rules[9].probability == 0.5
    for bad, msg in [
        ("get-asset=trickle", "bytes per second"),
        ("get-asset=trickle:0", "> 0"),
        ("get-asset=trickle:x", "number"),
        ("get-asset=stall:1", "no argument"),
        ("get-asset=reset-mid:3", "no argument"),
        ("x=gzip-bomb", "endpoint"),
        ("workspaces=gzip-bomb:1k", "whole number"),
        ("workspaces=not-final:1", "no argument"),
        ("workspaces=bomb", "unknown"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_faults(bad)


# ---- each kind through a real client ------------------------------------------------------


def test_trickle_sends_headers_at_once_and_the_body_slowly(
    ids: dict[str, str], server: CometServer, api_key: str
) -> None:
    server.faults.add(FaultRule("get-asset", "trickle", rate=4000, count=1))
    t0 = time.monotonic()
    conn, resp = raw_get(server, f"{ASSET}?assetId={ids['small']}", api_key)
    try:
        assert resp.status == 200 and time.monotonic() - t0 < 0.3
        assert resp.read() == SMALL
        # 2000 bytes at 4000 B/s, written ten times a second: about half a second.
        assert time.monotonic() - t0 >= 0.4
    finally:
        conn.close()
    t0 = time.monotonic()
    assert get(server, ASSET, api_key, params={"assetId": ids["small"]}).content == SMALL
    assert time.monotonic() - t0 < 0.3


def test_trickle_a_range_and_a_json_answer(
    ids: dict[str, str], server: CometServer, api_key: str
) -> None:
    server.faults.add(FaultRule("*", "trickle", rate=1e6, count=2))
    r = get(
        server,
        ASSET,
        api_key,
        params={"assetId": ids["big"]},
        headers={"Range": "bytes=100-299999"},
    )
    assert r.status_code == 206 and r.content == DATA[100:300000]
    assert get(server, REST + "workspaces", api_key).json() == {"workspaceNames": ["ws"]}


def test_stall_sends_part_of_the_body_then_hangs_until_close(
    ids: dict[str, str], make_server: Callable[..., CometServer], api_key: str
) -> None:
    srv = make_server(faults=parse_faults("get-asset=stall*1"))
    conn, resp = raw_get(srv, f"{ASSET}?assetId={ids['big']}", api_key, timeout=1)
    try:
        assert resp.status == 200 and resp.headers["Content-Length"] == str(len(DATA))
        assert resp.read(len(DATA) // 2) == DATA[: len(DATA) // 2]
        with pytest.raises(TimeoutError):
            resp.read(1)
        # Other requests are served meanwhile.
        assert get(srv, REST + "workspaces", api_key).status_code == 200
        t0 = time.monotonic()
        srv.close()
        assert time.monotonic() - t0 < 5, "close() waited for the stalled body"
        conn.sock.settimeout(10)
        assert conn.sock.recv(1) == b""  # released: the server closed the connection
    finally:
        conn.close()


def test_short_is_a_clean_close_after_half_the_body(
    ids: dict[str, str], server: CometServer, api_key: str
) -> None:
    server.faults.add(parse_faults("get-asset=short*1").rules[0])
    conn, resp = raw_get(server, f"{ASSET}?assetId={ids['big']}", api_key)
    try:
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert info.value.partial == DATA[: len(DATA) // 2]
    finally:
        conn.close()


def test_reset_mid_body(ids: dict[str, str], server: CometServer, api_key: str) -> None:
    server.faults.add(FaultRule("get-asset", "reset-mid", count=1))
    conn, resp = raw_get(server, f"{ASSET}?assetId={ids['big']}", api_key)
    got = b""
    try:
        assert resp.status == 200
        with pytest.raises((ConnectionResetError, http.client.IncompleteRead)) as info:
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                got += chunk
        if isinstance(info.value, http.client.IncompleteRead):
            got += info.value.partial
    finally:
        conn.close()
    assert 0 < len(got) <= len(DATA) // 2 and DATA.startswith(got)
    # An RST, not a FIN: the server marks it so; a clean close would be `truncate`.
    assert get(server, ASSET, api_key, params={"assetId": ids["big"]}).content == DATA


def test_429_with_an_http_date(ids: dict[str, str], server: CometServer, api_key: str) -> None:
    server.faults.add(parse_faults("workspaces=429:date*1").rules[0])
    r = get(server, REST + "workspaces", api_key)
    assert r.status_code == 429
    when = email.utils.parsedate_to_datetime(r.headers["Retry-After"]).timestamp()
    assert 0.5 <= when - time.time() <= 2.5
    assert r.headers["Retry-After"].endswith(" GMT")


def test_norange_ignores_range_for_one_request(
    ids: dict[str, str], server: CometServer, api_key: str
) -> None:
    server.faults.add(FaultRule("get-asset", "norange", count=1))
    params, headers = {"assetId": ids["big"]}, {"Range": "bytes=10-19"}
    r = get(server, ASSET, api_key, params=params, headers=headers)
    assert r.status_code == 200 and r.content == DATA and "Content-Range" not in r.headers
    r = get(server, ASSET, api_key, params=params, headers=headers)
    assert r.status_code == 206 and r.content == DATA[10:20]


def test_gzip_bomb_is_small_on_the_wire_and_huge_decoded(
    ids: dict[str, str], server: CometServer, api_key: str
) -> None:
    params = {"workspace": "ws", "artifactName": "data", "version": "1.0.0"}
    path = REST + "artifacts/version/files"
    normal = get(server, path, api_key, params=params).content
    server.faults.add(FaultRule("artifacts/version/files", "gzip-bomb", count=1))
    server.faults.add(FaultRule("artifacts/version/files", "gzip-bomb", size=8 << 20, count=1))

    def wire() -> tuple[requests.Response, bytes]:
        r = requests.get(
            server.url + path,
            params=params,
            headers={"Authorization": api_key},
            timeout=30,
            stream=True,
        )
        assert r.status_code == 200 and r.headers["Content-Encoding"] == "gzip"
        body = r.raw.read(decode_content=False)
        assert int(r.headers["Content-Length"]) == len(body)
        return r, body

    # The default bomb: ~1 MB on the wire, 1 GiB of padding by its gzip trailer. Inflating
    # all of it takes ~15 s on a busy machine, so only its start is inflated here.
    _, big = wire()
    assert len(big) < 2 << 20
    assert int.from_bytes(big[-4:], "little") == (len(normal) + (1 << 30)) % (1 << 32)
    start = zlib.decompressobj(31).decompress(big, 16 << 20)
    assert start == b"{" + b" " * (len(start) - 1) and len(start) == 16 << 20
    # A smaller one, inflated whole (the CRC-32 is checked at the end): the real answer,
    # padded with spaces, so it still parses.
    _, small = wire()
    decoded = zlib.decompress(small, 31)
    assert len(decoded) == len(normal) + (8 << 20)
    assert json.loads(decoded) == json.loads(normal)


def test_huge_size_on_one_asset(ids: dict[str, str], server: CometServer, api_key: str) -> None:
    params = {"workspace": "ws", "artifactName": "data", "version": "1.0.0"}
    normal = get(server, REST + "artifacts/version/files", api_key, params=params).json()
    server.faults.add(parse_faults("artifacts/version/files=huge-size*1").rules[0])
    files = get(server, REST + "artifacts/version/files", api_key, params=params).json()["files"]
    assert files[0]["fileSize"] == 2**64
    assert files[1:] == normal["files"][1:] and len(files) == 2
    assert {**files[0], "fileSize": normal["files"][0]["fileSize"]} == normal["files"][0]


def test_not_final(ids: dict[str, str], server: CometServer, api_key: str) -> None:
    server.faults.add(parse_faults("artifacts/version=not-final*1").rules[0])
    params = {"workspace": "ws", "artifactName": "data"}
    r = get(server, REST + "artifacts/version", api_key, params=params)
    assert r.status_code == 400
    assert r.json()["sdk_error_code"] == 90402 and r.json()["code"] == 400
    assert get(server, REST + "artifacts/version", api_key, params=params).status_code == 200


# ---- latency ------------------------------------------------------------------------------


def test_latency_is_added_before_every_answer(
    ids: dict[str, str], make_server: Callable[..., CometServer], api_key: str
) -> None:
    slow = make_server(latency=0.2)
    session = requests.Session()
    for path in ("/clientlib/isAlive/ver", REST + "workspaces"):
        t0 = time.monotonic()
        assert (
            session.get(slow.url + path, headers={"Authorization": api_key}, timeout=10).status_code
            == 200
        )
        assert time.monotonic() - t0 >= 0.2
    fast = make_server()
    t0 = time.monotonic()
    assert (
        session.get(
            fast.url + REST + "workspaces", headers={"Authorization": api_key}, timeout=10
        ).status_code
        == 200
    )
    assert time.monotonic() - t0 < 0.2
    session.close()
    with pytest.raises(ValueError, match="latency"):
        CometServer(ArtifactStore.__new__(ArtifactStore), api_keys=[api_key], latency=-1)


# ---- server-side mutations ----------------------------------------------------------------


def test_revoke_and_add_a_key(ids: dict[str, str], server: CometServer, api_key: str) -> None:
    session = requests.Session()
    url, headers = server.url + REST + "workspaces", {"Authorization": api_key}
    assert session.get(url, headers=headers, timeout=10).status_code == 200
    server.revoke_key(api_key)
    r = session.get(url, headers=headers, timeout=10)  # same keep-alive connection
    assert r.status_code == 401 and r.json()["sdk_error_code"] == 90212
    with pytest.raises(ValueError, match="not accepted") as info:
        server.revoke_key(api_key)
    assert api_key not in str(info.value)
    server.add_key(api_key + ":ws")
    assert session.get(url, headers=headers, timeout=10).json() == {"workspaceNames": ["ws"]}
    session.close()


def test_delete_version(
    ids: dict[str, str], server: CometServer, api_key: str, store: ArtifactStore
) -> None:
    params = {"workspace": "ws", "artifactName": "data", "version": "1.0.0"}
    assert get(server, REST + "artifacts/version", api_key, params=params).status_code == 200
    store.delete_version("ws", "data", "1.0.0")
    r = get(server, REST + "artifacts/version", api_key, params=params)
    assert r.status_code == 400 and r.json()["sdk_error_code"] == 624523
    r = get(
        server,
        REST + "artifacts/version",
        api_key,
        params={"workspace": "ws", "artifactName": "data", "alias": "prod"},
    )
    assert r.status_code == 400  # the alias went with its version
    assert get(server, ASSET, api_key, params={"assetId": ids["big"]}).status_code == 404
    versions = get(
        server, REST + "artifacts/get", api_key, params={"workspace": "ws", "artifactName": "data"}
    ).json()["versions"]
    assert [v["version"] for v in versions] == ["2.0.0"]
    store.delete_version("ws", "data", "2.0.0")
    assert (
        get(server, REST + "artifacts/get-all", api_key, params={"workspace": "ws"}).status_code
        == 404
    )
    from cometfs.errors import StoreError

    with pytest.raises(StoreError, match=r"no artifact|no version"):
        store.delete_version("ws", "data", "2.0.0")


def test_replace_asset_bytes_keeps_id_and_size(
    ids: dict[str, str], server: CometServer, api_key: str, store: ArtifactStore
) -> None:
    params = {"assetId": ids["small"]}
    before = get(server, ASSET, api_key, params=params)
    new = bytes(b ^ 0xFF for b in SMALL)
    assert store.replace_asset_bytes("ws", "data", "1.0.0", "small.bin", new) == ids["small"]
    after = get(server, ASSET, api_key, params=params)
    assert before.content == SMALL and after.content == new
    assert after.headers["ETag"] != before.headers["ETag"]
    files = get(
        server,
        REST + "artifacts/version/files",
        api_key,
        params={"workspace": "ws", "artifactName": "data", "version": "1.0.0"},
    ).json()["files"]
    small = next(f for f in files if f["fileName"] == "small.bin")
    assert small["assetId"] == ids["small"] and small["fileSize"] == len(SMALL)


def test_move_alias_and_set_metadata(
    ids: dict[str, str], server: CometServer, api_key: str, store: ArtifactStore
) -> None:
    def version_of(alias: str) -> dict[str, Any]:
        return dict(
            get(
                server,
                REST + "artifacts/version",
                api_key,
                params={"workspace": "ws", "artifactName": "data", "alias": alias},
            ).json()
        )

    assert version_of("prod")["artifactVersion"] == "1.0.0"
    store.move_alias("ws", "data", "prod", "2.0.0")
    assert version_of("prod")["artifactVersion"] == "2.0.0"
    store.set_version_metadata("ws", "data", "2.0.0", {"epoch": 3})
    assert json.loads(version_of("prod")["metadata"]) == {"epoch": 3}


def test_mutations_are_safe_from_many_threads(ids: dict[str, str], store: ArtifactStore) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            store.set_version_metadata("ws", "data", "1.0.0", {"i": i})
            store.move_alias("ws", "data", "a" + str(i % 3), "2.0.0")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    ver = store.snapshot().artifacts["ws"]["data"].versions[1]
    assert set(ver.aliases) == {"a0", "a1", "a2"}


def test_stall_connection_is_bounded_by_close(
    ids: dict[str, str], make_server: Callable[..., CometServer], api_key: str
) -> None:
    # A JSON answer stalls too; the client sees half the body and then nothing.
    srv = make_server(faults=parse_faults("workspaces=stall*1"))
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=1)
    try:
        sock.sendall(
            f"GET {REST}workspaces HTTP/1.1\r\nHost: x\r\nAuthorization: {api_key}\r\n\r\n".encode()
        )
        data = b""
        with pytest.raises(TimeoutError):
            while True:
                chunk = sock.recv(4096)
                assert chunk
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(
            next(
                line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            ).split(b":")[1]
        )
        assert len(body) == length // 2
    finally:
        sock.close()


@pytest.mark.sdk
def test_not_final_is_what_the_sdk_calls_not_final(
    ids: dict[str, str], sdk_env: CometServer
) -> None:
    comet_ml = pytest.importorskip("comet_ml")
    from comet_ml import exceptions as cx

    sdk_env.faults.add(parse_faults("artifacts/version=not-final*1").rules[0])
    api = comet_ml.API(cache=False)
    with pytest.raises(cx.ArtifactNotFinalException):
        api.get_artifact("ws", "data")
    assert str(api.get_artifact("ws", "data").version) == "2.0.0"
