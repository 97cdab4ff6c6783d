"""Keep-alive HTTP/1.1 GETs on trio sockets, pooled per origin: the byte fetches' transport.

Why not http.client in a worker thread, as transport.py does for everything else: on these
machines a trio worker-thread hop costs ~0.2 ms of CPU, and the GIL hand-offs of many
threads each blocking in a socket call cost as much again. For a walk over small files that
was half of the mount's CPU per file (3.6 -> 2.0 ms, measured with 8 readers). Here a fetch
is a send and a few receives on a non-blocking socket, run by the trio thread itself.

The pooling rules are transport.py's (one IdlePool class serves both): idle connections
last in, first out, at most `pool_size` per origin and only for the `max_origins` most
recent origins; an idle connection the server closed or wrote on is dropped before reuse; a
request on a reused connection that gets no byte of an answer (the server closed it as we
sent) is sent once more on a new connection, and only then. A connection is pooled again
only when its answer was read to the end and nothing more arrived. Anything that interrupts
an exchange, a cancellation included, closes its connection. Used from one trio run at a
time (the store's), so the pool needs no lock.

Answers: status line and headers (at most MAX_HEAD bytes), then a body framed by
Content-Length, chunked, or the end of the connection. Without TLS a body goes straight from
the socket into the caller's buffer. Timeouts raise TimeoutError, a malformed answer
http.client.HTTPException, a lost connection OSError: what http.client raises, so Http's
error mapping holds for both transports. Nothing here logs a URL.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import ssl
from collections.abc import Mapping

import trio

from cometfs.client.transport import IdlePool, Origin, dropped, split_url

log = logging.getLogger(__name__)

MAX_HEAD = 64 << 10
_RECEIVE = 64 << 10
_MAX_LINE = 4096  # a chunk-size or trailer line
_NO_BODY = frozenset({204, 304})


class _Connection:
    """One socket (TLS or not) and the bytes received from it but not yet consumed.

    Without TLS it sends and receives on the non-blocking socket directly and waits only
    when the socket cannot take or give bytes yet. trio's socket calls also yield to the
    scheduler after every call that did not block: 2.7 scheduler rounds per small GET
    instead of 1.
    """

    __slots__ = ("pending", "socket", "stream", "tls")

    def __init__(self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.tls = isinstance(stream, trio.SSLStream)
        tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        self.socket = tcp.socket
        self.pending = bytearray()

    def close(self) -> None:
        # The TCP socket alone: a TLS close_notify would need an await, and a peer that
        # loses one on a connection it no longer uses is fine.
        if trio.lowlevel.in_trio_run():
            self.socket.close()
            return
        # Outside a run (the client closing at exit) no task can wait on it, and trio's
        # close, which wakes such tasks, needs a run.
        fd = self.socket.detach()
        if fd >= 0:
            os.close(fd)

    async def send(self, data: bytes) -> None:
        if not self.tls:
            with contextlib.suppress(BlockingIOError):  # the socket's buffer is full
                data = data[os.write(self.socket.fileno(), data) :]
            if not data:
                return
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _os_error(exc) from None

    def take_pending(self, view: memoryview) -> int:
        """Move bytes already received into the start of `view`; how many."""
        n = min(len(view), len(self.pending))
        if n:
            view[:n] = self.pending[:n]
            del self.pending[:n]
        return n

    async def receive_into(self, view: memoryview) -> int:
        """Fill the start of `view` with bytes pending or, if none, with one receive; 0 at
        the end of the connection."""
        if self.pending:
            return self.take_pending(view)
        return await self._receive(view)

    async def receive_more(self) -> bool:
        """Append what arrives next to `pending`; False at the end of the connection."""
        chunk = bytearray(_RECEIVE)
        n = await self._receive(memoryview(chunk))
        if self.pending:
            self.pending += memoryview(chunk)[:n]
        else:
            del chunk[n:]
            self.pending = chunk
        return n > 0

    async def read_line(self, limit: int) -> bytes:
        """One CRLF-terminated line without its CRLF; HTTPException if longer than `limit`."""
        while True:
            end = self.pending.find(b"\r\n")
            if end >= 0:
                line = bytes(self.pending[:end])
                del self.pending[: end + 2]
                return line
            if len(self.pending) > limit:
                raise http.client.LineTooLong("chunked body line")
            if not await self.receive_more():
                raise http.client.IncompleteRead(bytes(self.pending))

    async def _receive(self, view: memoryview) -> int:
        try:
            if self.tls:
                data = await self.stream.receive_some(len(view))
                view[: len(data)] = data
                return len(data)
            while True:
                try:
                    return os.readv(self.socket.fileno(), [view])
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self.socket)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _os_error(exc) from None


class AsyncResponse:
    """An answer whose status line and headers are in; the body is read with `read_some`.

    `headers` is an http.client.HTTPMessage, as in http.client's own answers. `release`
    closes it and pools its connection when the body was read to the end.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        headers: http.client.HTTPMessage,
        will_close: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.will_close = will_close
        self.length: int | None = None  # body bytes left, when framed by Content-Length
        self.chunked = False
        self.done = False  # the whole body has been read
        self._chunk_left = 0
        self._home: tuple[AsyncTransport, Origin, _Connection] | None = None

    def read_pending(self, view: memoryview) -> int:
        """Copy body bytes already received into `view`, without waiting: a small body
        usually arrives with its head. Only for a body framed by Content-Length."""
        if self._home is None or self.length is None:
            return 0
        return self._counted(self._home[2].take_pending(view[: self.length]))

    async def read_some(self, view: memoryview) -> int:
        """Read body bytes into `view` (one receive, or a chunk-size line and one receive);
        0 once the body has ended. Interrupted (a timeout is a cancellation), it closes the
        connection: where the body stands is then unknown."""
        if self.done or not view:
            return 0
        if self._home is None:
            raise ValueError("the answer was released before its body was read")
        connection = self._home[2]
        try:
            if self.chunked:
                return await self._read_chunked(connection, view)
            if self.length is not None:
                n = await connection.receive_into(view[: self.length])
                if n == 0:
                    raise http.client.IncompleteRead(b"", self.length)
                return self._counted(n)
            n = await connection.receive_into(view)
            self.done = n == 0
            return n
        except BaseException:
            self._abandon()
            raise

    def _counted(self, n: int) -> int:
        """Book `n` bytes read of a Content-Length body."""
        assert self.length is not None
        self.length -= n
        self.done = self.length == 0
        return n

    async def _read_chunked(self, connection: _Connection, view: memoryview) -> int:
        if self._chunk_left == 0:
            line = await connection.read_line(_MAX_LINE)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise http.client.HTTPException("malformed chunk size") from None
            if size < 0:
                raise http.client.HTTPException("malformed chunk size")
            if size == 0:
                while await connection.read_line(_MAX_LINE):
                    pass  # trailer fields, up to the empty line
                self.done = True
                return 0
            self._chunk_left = size
        n = await connection.receive_into(view[: self._chunk_left])
        if n == 0:
            raise http.client.IncompleteRead(b"", self._chunk_left)
        self._chunk_left -= n
        if self._chunk_left == 0 and await connection.read_line(_MAX_LINE):
            raise http.client.HTTPException("chunk data longer than its size")
        return n

    def release(self) -> None:
        """Close the answer; calling it again does nothing."""
        home, self._home = self._home, None
        if home is None:
            return
        transport, origin, connection = home
        if self.done and not self.will_close and not connection.pending:
            transport.give_back(origin, connection)
        else:
            connection.close()

    def _abandon(self) -> None:
        home, self._home = self._home, None
        if home is not None:
            home[2].close()


class AsyncTransport:
    """Sends GETs on pooled keep-alive connections; see the module docstring."""

    def __init__(
        self,
        pool_size: int,
        *,
        max_origins: int = 8,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._ssl_context = ssl_context
        self._pool: IdlePool[_Connection] = IdlePool(pool_size, max_origins)

    async def request(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> AsyncResponse:
        """Send a GET and return the answer once its headers are in, body unread.

        Raises http.client.InvalidURL for a URL that cannot be sent; otherwise OSError
        (TimeoutError for a timeout) or http.client.HTTPException. No retry, except a
        reused connection that gets no answer at all (see the module docstring).
        """
        origin, target = split_url(url)
        request = _request_bytes(origin, target, headers)
        connection = self._take(origin)
        if connection is not None:
            try:
                return await self._exchange(connection, origin, request, read_timeout)
            except _NoAnswer:
                log.debug("%s://%s:%d closed an idle connection; sending again", *origin)
        connection = await self._connect(origin, connect_timeout)
        try:
            return await self._exchange(connection, origin, request, read_timeout)
        except _NoAnswer as exc:
            raise exc.error from None

    async def preconnect(self, url: str, *, connect_timeout: float) -> None:
        """Open a connection to `url`'s origin and pool it, unless one is idle already, so
        the first request there skips the connect (and TLS) round trips. Raises as
        `request` does."""
        origin, _ = split_url(url)
        if not self._pool.holds(origin):
            self.give_back(origin, await self._connect(origin, connect_timeout))

    def give_back(self, origin: Origin, connection: _Connection) -> None:
        """Pool a connection whose last answer was read to the end."""
        for extra in self._pool.put(origin, connection):
            extra.close()

    def idle(self) -> int:
        """How many idle connections the pool holds, all origins together."""
        return len(self._pool)

    def close(self) -> None:
        """Close every idle connection; connections in use are closed or pooled on release."""
        for connection in self._pool.drain():
            connection.close()

    def _take(self, origin: Origin) -> _Connection | None:
        while (connection := self._pool.pop(origin)) is not None:
            if not connection.pending and not dropped(connection.socket):
                return connection
            connection.close()
        return None

    async def _connect(self, origin: Origin, within: float) -> _Connection:
        scheme, host, port = origin
        tcp: trio.SocketStream | None = None
        try:
            with trio.fail_after(within):
                tcp = await trio.open_tcp_stream(host, port)
                if scheme != "https":
                    return _Connection(tcp)
                tls = trio.SSLStream(
                    tcp, self._context(), server_hostname=host, https_compatible=True
                )
                await tls.do_handshake()
                return _Connection(tls)
        except trio.TooSlowError:
            error: OSError = TimeoutError(f"no connection within {within:g} s")
        except UnicodeError:
            # The host name cannot be encoded (IDNA): no attempt can reach it.
            raise http.client.InvalidURL("the host name is not valid") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            error = _os_error(exc)
        except BaseException:
            if tcp is not None:
                tcp.socket.close()
            raise
        if tcp is not None:
            tcp.socket.close()
        raise error

    async def _exchange(
        self, connection: _Connection, origin: Origin, request: bytes, within: float
    ) -> AsyncResponse:
        """Send the request and read the answer's head, within `within` seconds."""
        try:
            try:
                with trio.move_on_after(within) as scope:
                    await connection.send(request)
                    response = await _read_head(connection)
                if scope.cancelled_caught:
                    raise TimeoutError(f"no answer within {within:g} s")
            except (ConnectionResetError, BrokenPipeError) as exc:
                if connection.pending:
                    raise
                raise _NoAnswer(exc) from None
        except BaseException:
            connection.close()
            raise
        response._home = (self, origin, connection)
        return response

    def _context(self) -> ssl.SSLContext:
        # Made on first use: loading the system's CA certificates takes milliseconds.
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context


class _NoAnswer(Exception):
    """The connection ended before any byte of the answer: the request may be sent again."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _request_bytes(origin: Origin, target: str, headers: Mapping[str, str]) -> bytes:
    scheme, host, port = origin
    default_port = 443 if scheme == "https" else 80
    authority = host if port == default_port else f"{host}:{port}"
    if ":" in host:  # an IPv6 literal
        authority = f"[{host}]" if port == default_port else f"[{host}]:{port}"
    lines = [f"GET {target} HTTP/1.1", f"Host: {authority}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(connection: _Connection) -> AsyncResponse:
    """Read a status line and headers (skipping 1xx interim answers) and frame the body."""
    while True:
        while (end := connection.pending.find(b"\r\n\r\n")) < 0:
            if len(connection.pending) > MAX_HEAD:
                break
            if not await connection.receive_more():
                if not connection.pending:
                    raise http.client.RemoteDisconnected("closed without an answer")
                raise http.client.IncompleteRead(bytes(connection.pending))
        if not 0 <= end <= MAX_HEAD:
            raise http.client.HTTPException(f"the answer's head is over {MAX_HEAD} bytes")
        head = bytes(connection.pending[:end]).decode("latin-1")
        del connection.pending[: end + 4]
        status_line, *lines = head.split("\r\n")
        version, status, reason = _parse_status_line(status_line)
        if not 100 <= status < 200:
            break
        if status == 101:
            raise http.client.HTTPException("unexpected protocol switch (HTTP 101)")
    headers = http.client.HTTPMessage()
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            if line[:1] in (" ", "\t"):
                continue  # obsolete line folding: its text is dropped, as the name stands
            raise http.client.HTTPException("malformed header line")
        headers[name] = value.strip()
    tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    will_close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
    response = AsyncResponse(status, reason, headers, will_close)
    encoding = headers.get("Transfer-Encoding", "").strip().lower()
    declared = headers.get("Content-Length")
    if status in _NO_BODY:
        response.length = 0
        response.done = True
    elif encoding:
        if encoding.rsplit(",", 1)[-1].strip() != "chunked":
            raise http.client.HTTPException(f"unsupported Transfer-Encoding {encoding!r}")
        response.chunked = True
    elif declared is not None:
        if not declared.strip().isdigit():
            raise http.client.HTTPException("malformed Content-Length")
        response.length = int(declared)
        response.done = response.length == 0
    else:
        response.will_close = True  # the body runs to the end of the connection
    return response


def _parse_status_line(line: str) -> tuple[str, int, str]:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise http.client.BadStatusLine(line[:100])
    return version, int(code), reason.strip()


def _os_error(exc: BaseException) -> OSError:
    """The OSError behind trio's Broken/ClosedResourceError (an ssl.SSLError is one)."""
    cause = exc.__cause__
    if isinstance(cause, OSError):
        return cause
    return ConnectionResetError(f"connection lost ({type(exc).__name__})")
