"""Keep-alive HTTP/1.1 connections over http.client, pooled per origin (scheme, host, port).

Used by Http from the worker threads that call CometClient, many at once; thread-safe (one
lock guards the idle lists, held only to push or pop). Idle connections are kept last in,
first out, at most `pool_size` per origin: a burst beyond that opens extra connections
rather than queueing, and they are closed when given back to a full pool. Only the
`max_origins` most recently used origins keep idle connections.

The server may have closed an idle connection while it sat in the pool. Before reuse, a
poll (one system call, ~2 µs measured) drops a connection the server has closed or sent
something unasked on (some servers send a 408 before closing an idle one, which would
otherwise be taken for the next answer). A close that crosses our request on the wire is
not seen by the poll: a request on a reused connection that fails before any byte of the
answer arrived is sent once more, at once, on a new connection (only GETs are sent here,
and they are idempotent).

Nothing here logs a URL: a blob URL's query string is a signature.
"""

from __future__ import annotations

import functools
import http.client
import logging
import re
import select
import socket
import ssl
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    import trio

log = logging.getLogger(__name__)

Origin = tuple[str, str, int]
C = TypeVar("C")  # a pooled connection

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Not allowed in a request line as it is: spaces, controls, anything not ASCII.
_UNSAFE = re.compile(r"[^!-~]")


class _Response(http.client.HTTPResponse):
    """An answer that knows its socket (for per-read timeouts) and where its connection
    goes back to; `home` is None once released, or when the connection is not poolable."""

    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        self.sock = sock
        self.home: tuple[Origin, http.client.HTTPConnection] | None = None


class IdlePool(Generic[C]):
    """Idle keep-alive connections by origin: last in, first out, at most `per_origin` each,
    kept only for the `max_origins` origins given one most recently. The one set of pooling
    rules for both transports (this one and async_transport.py); not thread-safe. Closing
    is left to the caller, so a lock around these calls is never held across a close."""

    def __init__(self, per_origin: int, max_origins: int) -> None:
        self._per_origin = per_origin
        self._max_origins = max_origins
        self._idle: OrderedDict[Origin, list[C]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def holds(self, origin: Origin) -> bool:
        return bool(self._idle.get(origin))

    def pop(self, origin: Origin) -> C | None:
        """The connection given back last for `origin`, if any."""
        idle = self._idle.get(origin)
        return idle.pop() if idle else None

    def put(self, origin: Origin, connection: C) -> list[C]:
        """Keep `connection`; return those to close: an evicted origin's, or this one when
        its origin's list is full."""
        idle = self._idle.get(origin)
        surplus: list[C] = []
        if idle is None:
            idle = self._idle[origin] = []
            if len(self._idle) > self._max_origins:
                surplus = self._idle.popitem(last=False)[1]
        else:
            self._idle.move_to_end(origin)
        if len(idle) < self._per_origin:
            idle.append(connection)
        else:
            surplus.append(connection)
        return surplus

    def drain(self) -> list[C]:
        """Take every idle connection out."""
        idle = [connection for pool in self._idle.values() for connection in pool]
        self._idle.clear()
        return idle


class Transport:
    """Sends GETs on pooled keep-alive connections; see the module docstring."""

    def __init__(
        self,
        pool_size: int,
        *,
        max_origins: int = 8,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._pool: IdlePool[http.client.HTTPConnection] = IdlePool(pool_size, max_origins)

    def request(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> http.client.HTTPResponse:
        """Send a GET and return the answer once its headers are in, body unread.

        Raises http.client.InvalidURL for a URL that cannot be sent (not http or https, no
        host); otherwise OSError or http.client.HTTPException as http.client does. No retry,
        except a reused connection that turns out closed (see the module docstring).
        """
        origin, target = split_url(url)
        connection = self._take(origin)
        if connection is not None:
            try:
                return self._exchange(connection, origin, target, headers, read_timeout)
            except (ConnectionResetError, BrokenPipeError, http.client.BadStatusLine) as exc:
                # RemoteDisconnected, the usual one, is a reset. Any other status line that
                # is not empty came from a live server: its answer stands.
                if not isinstance(exc, OSError) and str(exc).strip():
                    raise
                log.debug("%s://%s:%d closed an idle connection; sending again", *origin)
        connection = self._connect(origin, connect_timeout)
        return self._exchange(connection, origin, target, headers, read_timeout)

    def settimeout(self, response: http.client.HTTPResponse, seconds: float) -> None:
        """Bound the next socket read of `response`'s body to `seconds`."""
        if isinstance(response, _Response):
            response.sock.settimeout(seconds)

    def release(self, response: http.client.HTTPResponse) -> None:
        """Close `response`; its connection goes back to the pool only when the body was
        read to the end and the server did not say it will close (never with unread bytes,
        which would be taken for the next answer). Calling it again does nothing."""
        if not isinstance(response, _Response) or response.home is None:
            response.close()
            return
        origin, connection = response.home
        response.home = None
        clean = not response.will_close and (
            response.isclosed() if response.chunked else response.length == 0
        )
        response.close()
        if not clean:
            connection.close()
            return
        with self._lock:
            surplus = self._pool.put(origin, connection)
        for extra in surplus:
            extra.close()

    def idle(self) -> int:
        """How many idle connections the pool holds, all origins together."""
        with self._lock:
            return len(self._pool)

    def close(self) -> None:
        """Close every idle connection; connections in use are closed or pooled on release."""
        with self._lock:
            idle = self._pool.drain()
        for connection in idle:
            connection.close()

    def _take(self, origin: Origin) -> http.client.HTTPConnection | None:
        """The most recently used idle connection that still looks usable, if any."""
        while True:
            with self._lock:
                connection = self._pool.pop(origin)
            if connection is None or not dropped(connection.sock):
                return connection
            connection.close()

    def _connect(self, origin: Origin, timeout: float) -> http.client.HTTPConnection:
        scheme, host, port = origin
        connection: http.client.HTTPConnection
        if scheme == "https":
            connection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=self._context()
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        connection.response_class = _Response
        try:
            connection.connect()
        except UnicodeError:
            # The host name cannot be encoded (IDNA): no attempt can reach it.
            connection.close()
            raise http.client.InvalidURL("the host name is not valid") from None
        except BaseException:
            connection.close()
            raise
        return connection

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        origin: Origin,
        target: str,
        headers: Mapping[str, str],
        read_timeout: float,
    ) -> http.client.HTTPResponse:
        try:
            connection.sock.settimeout(read_timeout)
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
        except BaseException:
            connection.close()
            raise
        if isinstance(response, _Response) and not response.will_close:
            response.home = (origin, connection)
        return response

    def _context(self) -> ssl.SSLContext:
        # Made on first use: loading the system's CA certificates takes milliseconds.
        with self._lock:
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            return self._ssl_context


def dropped(sock: socket.socket | trio.socket.SocketType) -> bool:
    """Whether an idle connection's socket has anything to read: an end of file or bytes
    nobody asked for, and either way it cannot carry a request."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def split_url(url: str) -> tuple[Origin, str]:
    """The origin and the request target (path and query) of an absolute URL."""
    # The query differs from call to call, the rest seldom: only the rest is parsed. A
    # fragment is never sent.
    head, mark, query = url.partition("#")[0].partition("?")
    origin, path = _parse_head(head)
    target = f"{path}?{query}" if mark else path
    if _UNSAFE.search(target):
        # A Location header may hold them raw: percent-encoded, as browsers send them.
        target = _UNSAFE.sub(lambda m: quote(m.group(), safe=""), target)
    return origin, target


@functools.lru_cache(maxsize=256)
def _parse_head(head: str) -> tuple[Origin, str]:
    """The origin and path of a URL without its query."""
    try:
        parts = urlsplit(head)
        scheme = parts.scheme.lower()
        port = parts.port
    except ValueError as exc:  # a malformed port or IPv6 literal
        raise http.client.InvalidURL(f"malformed URL ({exc})") from None
    if scheme not in _DEFAULT_PORTS:
        raise http.client.InvalidURL(f"scheme {scheme!r} is not http or https")
    if not parts.hostname:
        raise http.client.InvalidURL("the URL names no host")
    return (scheme, parts.hostname, port or _DEFAULT_PORTS[scheme]), parts.path or "/"
