"""The keep-alive transports under the REST client (http.client's for the worker threads,
trio's for byte fetches; every test runs against both), against a tiny server written here
that counts the connections it accepts: reuse, no reuse with unread bytes, stale pooled
connections, the pool's bounds, body framings, bad answers, bad URLs and verified TLS."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

from cometfs.client import CometClient
from cometfs.client.async_transport import AsyncResponse, AsyncTransport
from cometfs.client.http import Http
from cometfs.client.transport import Transport
from cometfs.errors import ApiError

BODY = b"x" * 5000
BIG = 1 << 20
WAIT = 10.0

_CHUNKS = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:1], BODY[1:4000]))
RAW = {
    "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + _CHUNKS.replace(b"\r\n", b";ext=1\r\n", 1)
    + b"%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (1000, BODY[4000:]),
    "/until-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY,
    "/short": b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + BODY[:100],
    "/stall": b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + BODY,
    "/huge-head": b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * (70 << 10) + b"\r\n\r\n",
    "/bad-status": b"HTTP/1.1 OK 200\r\nContent-Length: 0\r\n\r\n",
}

# A CA and a certificate it signed for 127.0.0.1, valid 2000-2100 (made with `openssl ca`;
# a test key, used nowhere else).
CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBaDCCAQ6gAwIBAgICEAAwCgYIKoZIzj0EAwIwGjEYMBYGA1UEAwwPY29tZXRm
cyB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMDAwMTAxMDAwMDAwWjAaMRgw
FgYDVQQDDA9jb21ldGZzIHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAQLeSR3nRWqRauLVPG2c2/yNhxv7z26Z6/TrM8FELtmdSLyeQ/MI6qqVmJ8MJm9
JNskOXUmjrRACBHgjZOkikhPo0IwQDAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB
/wQEAwIBBjAdBgNVHQ4EFgQUeKePjaXKHu2U7UudEp+83o0kAjkwCgYIKoZIzj0E
AwIDSAAwRQIgRi7r9xzWcFFsOlAojbuxcfGVVNfHDB0vDZLm03rC9E8CIQDy9Lqc
XcVLtqNEPDEjRX2HaZRjBFToGPCOr9ltEPbpvQ==
-----END CERTIFICATE-----
"""
SERVER_PEM = """-----BEGIN CERTIFICATE-----
MIIBqDCCAU6gAwIBAgICEAEwCgYIKoZIzj0EAwIwGjEYMBYGA1UEAwwPY29tZXRm
cyB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMDAwMTAxMDAwMDAwWjAUMRIw
EAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASKoJx9
L/QGSP2jcw+K8BWa/44JDu0fuCzCrubWu05olMOg3ngF+lWxnM9wW7vz/BWDb8uf
f6TQn3tkSoyGMIoDo4GHMIGEMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeA
MBMGA1UdJQQMMAoGCCsGAQUFBwMBMA8GA1UdEQQIMAaHBH8AAAEwHwYDVR0jBBgw
FoAUeKePjaXKHu2U7UudEp+83o0kAjkwHQYDVR0OBBYEFBg1hhOTksqMZxA46xeE
h0ne0eb2MAoGCCqGSM49BAMCA0gAMEUCIQC/neNAoFJJPsaaMUrEBSHIq6HIexD7
hgoh3mAKUBZLigIgNDj2Ml1GBx8k0QnHNj9pESiGmIhVV4gvCStU0SwX7iQ=
-----END CERTIFICATE-----
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg2hdJJL/VVR3ELUdi
BTGdoTQjPeer2Z9Qbt/qAXc6kYWhRANCAASKoJx9L/QGSP2jcw+K8BWa/44JDu0f
uCzCrubWu05olMOg3ngF+lWxnM9wW7vz/BWDb8uff6TQn3tkSoyGMIoD
-----END PRIVATE KEY-----
"""


class Handler(BaseHTTPRequestHandler):
    """One per connection. Paths: /ok, /big (1 MiB), /close (says Connection: close),
    /then-fin (answers, then closes), /then-408 (answers, then sends a 408 unasked),
    /then-drop (answers; the next request on the connection is read and left unanswered),
    /drop (never answers), /chunked (BODY in chunks, with an extension and a trailer),
    /until-close (no length: the body ends with the connection), /short (says 5000
    bytes, sends 100 and closes), /stall (answers only once go_on is set), /huge-head
    (a header line over 64 KiB), /bad-status (not an HTTP status line)."""

    protocol_version = "HTTP/1.1"
    server: CountingServer
    drop_next = False

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.drop_next or self.path == "/drop":
            self.close_connection = True  # closed without a byte of answer
            return
        if self.path in RAW:
            if self.path == "/stall":
                assert self.server.go_on.wait(WAIT)
            self.wfile.write(RAW[self.path])
            self.close_connection = self.path != "/chunked"
            return
        if self.path == "/big":
            self.reply(b"y" * BIG)
        elif self.path == "/close":
            self.reply(BODY, {"Connection": "close"})
        else:
            self.reply(BODY)
        if self.path == "/then-fin":
            self.wfile.flush()
            self.close_connection = True
            self.server.shutdown_request(self.connection)
            self.server.closed.set()
        elif self.path == "/then-408":
            self.wfile.flush()
            assert self.server.go_on.wait(WAIT)
            self.wfile.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            self.wfile.flush()
            self.server.closed.set()
        elif self.path == "/then-drop":
            self.drop_next = True

    def reply(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.tls = tls
        self.accepted = 0
        self.requests: list[str] = []
        self.closed = threading.Event()
        self.go_on = threading.Event()
        self.finished = threading.Semaphore(0)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        self.accepted += 1
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.tls is not None:
                request.do_handshake()
            super().process_request_thread(request, client_address)
        except OSError:  # a handshake the client gave up on
            self.shutdown_request(request)
        finally:
            self.finished.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client closing mid-request is what some of these tests do

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.server_address[1]}"


def serve(tls: ssl.SSLContext | None = None) -> Iterator[CountingServer]:
    server = CountingServer(tls)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.go_on.set()
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


@pytest.fixture
def server() -> Iterator[CountingServer]:
    yield from serve()


class AsyncAnswer:
    """An AsyncResponse behind http.client's read(), each call a trio run of its own."""

    def __init__(self, inner: AsyncResponse) -> None:
        self.inner = inner
        self.status = inner.status

    def read(self, amount: int | None = None) -> bytes:
        async def read() -> bytes:
            out = bytearray()
            buffer = memoryview(bytearray(64 << 10))
            while amount is None or len(out) < amount:
                want = len(buffer) if amount is None else min(len(buffer), amount - len(out))
                n = await self.inner.read_some(buffer[:want])
                if n == 0:
                    break
                out += buffer[:n]
            return bytes(out)

        return trio.run(read)


class BlockingAsyncTransport:
    """AsyncTransport behind Transport's blocking interface, each call a trio run of its
    own (one at a time: the pool belongs to one run at a time)."""

    def __init__(self, pool_size: int, **kwargs: Any) -> None:
        self.inner = AsyncTransport(pool_size, **kwargs)

    def request(self, url: str, headers: Mapping[str, str], **kwargs: float) -> AsyncAnswer:
        return AsyncAnswer(trio.run(partial(self.inner.request, url, headers, **kwargs)))

    def release(self, answer: Any) -> None:
        answer.inner.release()

    def idle(self) -> int:
        return self.inner.idle()

    def close(self) -> None:
        self.inner.close()


AnyTransport = Transport | BlockingAsyncTransport


@pytest.fixture(params=["http.client", "trio"])
def transports(request: pytest.FixtureRequest) -> Iterator[Callable[..., AnyTransport]]:
    made: list[AnyTransport] = []

    def make(pool_size: int = 4, **kwargs: Any) -> AnyTransport:
        kind = Transport if request.param == "http.client" else BlockingAsyncTransport
        transport = kind(pool_size, **kwargs)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


def get(transport: AnyTransport, url: str, timeout: float = WAIT) -> Any:
    """The answer, body unread: an http.client.HTTPResponse or an AsyncAnswer."""
    return transport.request(url, {}, connect_timeout=timeout, read_timeout=timeout)


def fetch(transport: AnyTransport, url: str) -> bytes:
    """GET, read the whole body, give the connection back."""
    response = get(transport, url)
    try:
        assert response.status == 200
        body: bytes = response.read()
        return body
    finally:
        transport.release(response)


def test_connections_are_reused(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    transport = transports()
    for _ in range(5):
        assert fetch(transport, f"{server.url}/ok") == BODY
    assert (server.accepted, len(server.requests)) == (1, 5)
    assert transport.idle() == 1


def test_a_connection_with_unread_body_is_not_reused(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    transport = transports()
    response = get(transport, f"{server.url}/big")
    assert response.read(10) == b"y" * 10
    transport.release(response)
    assert transport.idle() == 0
    assert fetch(transport, f"{server.url}/ok") == BODY
    assert server.accepted == 2


def test_a_connection_the_server_will_close_is_not_reused(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    transport = transports()
    assert fetch(transport, f"{server.url}/close") == BODY
    assert transport.idle() == 0
    assert fetch(transport, f"{server.url}/ok") == BODY
    assert server.accepted == 2


def test_releasing_twice_pools_once(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    transport = transports()
    response = get(transport, f"{server.url}/ok")
    response.read()
    transport.release(response)
    transport.release(response)
    assert transport.idle() == 1


@pytest.mark.parametrize("path", ["/then-fin", "/then-408"])
def test_an_idle_connection_the_server_closed_or_wrote_on_is_dropped(
    server: CountingServer, transports: Callable[..., AnyTransport], path: str
) -> None:
    transport = transports()
    assert fetch(transport, f"{server.url}{path}") == BODY
    server.go_on.set()
    assert server.closed.wait(WAIT)
    assert transport.idle() == 1
    # Seen before sending: the request goes on a new connection, and the 408 is no answer.
    assert fetch(transport, f"{server.url}/ok") == BODY
    assert server.accepted == 2
    assert server.requests == [path, "/ok"]


def test_a_stale_pooled_connection_is_retried_once_transparently(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    transport = transports()
    assert fetch(transport, f"{server.url}/then-drop") == BODY
    # The server takes the next request on that connection and closes it unanswered, as
    # when an idle timeout crosses a request on the wire.
    assert fetch(transport, f"{server.url}/ok") == BODY
    assert server.requests == ["/then-drop", "/ok", "/ok"]
    assert server.accepted == 2
    assert transport.idle() == 1


def test_a_fresh_connection_that_fails_is_not_retried(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    transport = transports()
    with pytest.raises(http.client.RemoteDisconnected):
        get(transport, f"{server.url}/drop")
    assert (server.accepted, server.requests) == (1, ["/drop"])
    # Stale, then fresh: sent twice in all, never a third time.
    assert fetch(transport, f"{server.url}/then-drop") == BODY
    with pytest.raises(http.client.RemoteDisconnected):
        get(transport, f"{server.url}/drop")
    assert server.accepted == 3
    assert server.requests == ["/drop", "/then-drop", "/drop", "/drop"]
    assert transport.idle() == 0


def test_idle_connections_stay_within_pool_size(server: CountingServer) -> None:
    transport = Transport(pool_size=2)
    barrier = threading.Barrier(6)
    failures: list[BaseException] = []

    def one() -> None:
        try:
            response = get(transport, f"{server.url}/ok")
            barrier.wait(WAIT)  # all six answers open at once: six connections
            response.read()
            transport.release(response)
        except BaseException as exc:
            failures.append(exc)

    try:
        for burst in range(1, 3):
            threads = [threading.Thread(target=one) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
            assert not failures
            assert transport.idle() == 2
            # The burst beyond the pool opened extra connections rather than waiting, and
            # those were closed when given back to the full pool.
            assert server.accepted == 6 + (burst - 1) * 4
        for _ in range(4 + 4):  # every connection the client closed, the server saw end
            assert server.finished.acquire(timeout=WAIT)
    finally:
        transport.close()


def test_idle_connections_stay_within_pool_size_with_trio(server: CountingServer) -> None:
    transport = AsyncTransport(pool_size=2)

    async def one(opened: list[AsyncResponse], all_open: trio.Event) -> None:
        response = await transport.request(
            f"{server.url}/ok", {}, connect_timeout=WAIT, read_timeout=WAIT
        )
        opened.append(response)
        if len(opened) == 6:
            all_open.set()
        await all_open.wait()  # all six answers open at once: six connections
        buffer = memoryview(bytearray(len(BODY)))
        while await response.read_some(buffer):
            pass
        response.release()

    async def burst() -> None:
        opened: list[AsyncResponse] = []
        all_open = trio.Event()
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(one, opened, all_open)

    try:
        for n in range(1, 3):
            trio.run(burst)
            assert transport.idle() == 2
            assert server.accepted == 6 + (n - 1) * 4
        for _ in range(4 + 4):
            assert server.finished.acquire(timeout=WAIT)
    finally:
        transport.close()


def test_close_closes_idle_connections(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    transport = transports()
    fetch(transport, f"{server.url}/ok")
    transport.close()
    assert transport.idle() == 0
    assert server.finished.acquire(timeout=WAIT)
    fetch(transport, f"{server.url}/ok")
    assert server.accepted == 2


def test_origins_are_pooled_apart_and_only_the_recent_ones_kept(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    transport = transports(max_origins=1)
    port = server.server_address[1]
    fetch(transport, f"http://127.0.0.1:{port}/ok")
    fetch(transport, f"http://localhost:{port}/ok")  # another origin, same server
    assert (server.accepted, transport.idle()) == (2, 1)
    assert server.finished.acquire(timeout=WAIT)  # the first origin's connection closed
    fetch(transport, f"http://localhost:{port}/ok")
    assert server.accepted == 2


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "http://:80/x", "http:///x", "http://h:port/", "x/y"]
)
def test_a_bad_url_is_refused(url: str, transports: Callable[..., AnyTransport]) -> None:
    with pytest.raises(http.client.InvalidURL):
        get(transports(), url)


def test_a_bad_url_is_an_api_error_of_the_client() -> None:
    client = Http(
        "k",
        connect_timeout=1.0,
        read_timeout=1.0,
        retries=2,
        backoff=0.0,
        max_backoff=0.0,
        sleep=lambda _s: None,
        jitter=lambda: 0.0,
    )
    with pytest.raises(ApiError, match=r"^w: request failed \(InvalidURL\)$"):
        client.get("e", "ftp://127.0.0.1/x?signature=secret", "w", client.deadline(5.0))


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[CountingServer]:
    pem = tmp_path / "server.pem"
    pem.write_text(SERVER_PEM)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    yield from serve(context)


def test_https_is_verified_against_the_system_cas(
    tls_server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        get(transports(), f"{tls_server.url}/ok")


def test_https_connections_are_reused(
    tls_server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    context = ssl.create_default_context(cadata=CA_PEM)
    transport = transports(ssl_context=context)
    for _ in range(3):
        assert fetch(transport, f"{tls_server.url}/ok") == BODY
    assert (tls_server.accepted, len(tls_server.requests)) == (1, 3)


def test_unsafe_characters_in_a_url_are_percent_encoded(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    # As a Location header may carry them; http.client would refuse the request line.
    fetch(transports(), f"{server.url}/a b/é?x=ü&y=%20#fragment")
    assert server.requests == ["/a%20b/%C3%A9?x=%C3%BC&y=%20"]


# -- framings and bad answers -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/chunked", "/until-close"])
def test_bodies_without_a_length_are_read_whole(
    server: CountingServer, transports: Callable[..., AnyTransport], path: str
) -> None:
    transport = transports()
    assert fetch(transport, f"{server.url}{path}") == BODY
    # A chunked body ends with its last chunk: the connection is kept; one that ran to the
    # end of the connection is not.
    assert transport.idle() == (1 if path == "/chunked" else 0)


def test_a_body_cut_short_is_an_incomplete_read(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    transport = transports()
    response = get(transport, f"{server.url}/short")
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    transport.release(response)
    assert transport.idle() == 0


@pytest.mark.parametrize("path", ["/huge-head", "/bad-status"])
def test_a_malformed_answer_is_an_http_exception(
    server: CountingServer, transports: Callable[..., AnyTransport], path: str
) -> None:
    with pytest.raises(http.client.HTTPException):
        get(transports(), f"{server.url}{path}")


def test_an_answer_that_does_not_come_times_out(
    server: CountingServer, transports: Callable[..., AnyTransport]
) -> None:
    transport = transports()
    with pytest.raises(TimeoutError):
        get(transport, f"{server.url}/stall", timeout=0.3)
    server.go_on.set()
    assert fetch(transport, f"{server.url}/ok") == BODY
    assert server.accepted == 2  # the timed-out connection was not kept


def test_a_cancelled_read_closes_its_connection(server: CountingServer) -> None:
    transport = AsyncTransport(pool_size=4)

    async def main() -> None:
        response = await transport.request(
            f"{server.url}/big", {}, connect_timeout=WAIT, read_timeout=WAIT
        )
        buffer = memoryview(bytearray(10))
        assert await response.read_some(buffer) == 10
        with trio.CancelScope() as scope:
            scope.cancel()
            await response.read_some(buffer)
        response.release()

    try:
        trio.run(main)
        assert transport.idle() == 0
        assert server.finished.acquire(timeout=WAIT)  # the server saw the connection end
    finally:
        transport.close()


def test_a_connection_opened_ahead_serves_the_first_request(server: CountingServer) -> None:
    transport = AsyncTransport(pool_size=4)

    async def main() -> None:
        await transport.preconnect(f"{server.url}/ok", connect_timeout=WAIT)
        await transport.preconnect(f"{server.url}/other", connect_timeout=WAIT)  # one is idle
        assert transport.idle() == 1
        response = await transport.request(
            f"{server.url}/ok", {}, connect_timeout=WAIT, read_timeout=WAIT
        )
        buffer = memoryview(bytearray(len(BODY)))
        while await response.read_some(buffer):
            pass
        response.release()

    try:
        trio.run(main)
        assert (server.accepted, server.requests, transport.idle()) == (1, ["/ok"], 1)
    finally:
        transport.close()


def test_opening_a_connection_ahead_to_a_dead_server_is_quiet() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = CometClient(f"http://127.0.0.1:{port}", "key")
    try:
        trio.run(client.preconnect)  # logged at DEBUG, never raised
    finally:
        client.close()
