"""Http's half for byte fetches, on the trio thread: GETs over AsyncTransport.

The policy is Http's own, borrowed from the instance it is given rather than written twice:
which headers go out and when the key goes along, each attempt's timeouts cut to the call's
Deadline, the retry decision and backoff, how a status or a failed read maps to a cometfs
error, and the request counters. What is here is only what must await: sending, reading a
body under the deadline (one receive at a time, so a trickling server cannot hold a call
past it), and the retry loop's sleep.
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import trio

from cometfs.client.async_transport import AsyncResponse, AsyncTransport
from cometfs.client.buffers import Buffer, allocate
from cometfs.client.http import (
    MAX_ERROR_BODY,
    Deadline,
    Http,
    Retryable,
    body_failure,
    content_length,
    invalid_url,
    retryable_status,
    unreachable,
    with_params,
)
from cometfs.errors import ProtocolError

log = logging.getLogger(__name__)

T = TypeVar("T")


class AsyncHttp:
    """Sends GETs through one AsyncTransport under `http`'s policy (see the module doc)."""

    def __init__(
        self,
        http: Http,
        *,
        pool_size: int,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._http = http
        self._sleep = sleep
        self._transport = AsyncTransport(pool_size)

    def close(self) -> None:
        self._transport.close()

    async def get(
        self,
        endpoint: str,
        url: str,
        what: str,
        deadline: Deadline,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
    ) -> AsyncResponse:
        """Send one GET, no retry, redirects not followed; the answer's body is unread (see
        `release`). Connection trouble raises Retryable; `auth=False` leaves the key out."""
        self._http.count(endpoint)
        url = with_params(url, params)
        connect_timeout, read_timeout = self._http.timeouts(deadline, what)
        try:
            return await self._transport.request(
                url,
                self._http.request_headers(headers, auth),
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
        except http.client.InvalidURL:
            raise invalid_url(what) from None
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(what, exc) from None

    async def preconnect(self, url: str, what: str, deadline: Deadline) -> None:
        """Open a pooled connection to `url`'s origin ahead of the first request; a failure
        is only logged (that request will try again)."""
        connect_timeout, _ = self._http.timeouts(deadline, what)
        try:
            await self._transport.preconnect(url, connect_timeout=connect_timeout)
        except (OSError, http.client.HTTPException) as exc:
            log.debug("%s: no connection opened ahead (%s)", what, type(exc).__name__)

    async def call(self, attempt: Callable[[], Awaitable[T]], what: str, deadline: Deadline) -> T:
        """Http.call's loop: retry on Retryable while the policy and the deadline allow."""
        n = 0
        while True:
            try:
                return await attempt()
            except Retryable as exc:
                await self._sleep(self._http.backoff(n, exc, deadline))
            n += 1

    async def check_status(self, response: AsyncResponse, what: str, deadline: Deadline) -> None:
        """Return for 2xx; otherwise release the response and raise Retryable (429, 5xx) or
        the mapped ApiError."""
        if 200 <= response.status < 300:
            return
        retry = retryable_status(response, what)
        if retry is not None:
            await self.discard(response, deadline)
            raise retry
        body = await self.read_error_body(response, deadline)
        raise self._http.status_error(response.status, body, what)

    async def read_exact(
        self, response: AsyncResponse, size: int, what: str, deadline: Deadline
    ) -> Buffer:
        """Read a body that must be exactly `size` bytes into one buffer; else Retryable.

        Returns the buffer itself (a bytearray, or for a big body an anonymous mapping;
        never copied): the caller owns it.
        """
        declared = content_length(response)
        if declared is not None and declared != size:
            raise Retryable(ProtocolError(f"{what}: Content-Length is {declared}, expected {size}"))
        buffer = allocate(size)
        view = memoryview(buffer)
        got = response.read_pending(view)
        try:
            while got < size:
                n = await self.read_some(response, view[got:], what, deadline)
                if n == 0:
                    break
                got += n
            # Without a Content-Length nothing else says where the body ends.
            if (
                got == size
                and not response.done
                and await self.read_some(response, memoryview(bytearray(1)), what, deadline)
            ):
                raise Retryable(ProtocolError(f"{what}: body longer than {size} bytes"))
        finally:
            self._http.count("bytes_received", got)
        if got != size:
            raise Retryable(ProtocolError(f"{what}: body cut short at {got} of {size} bytes"))
        return buffer

    async def read_some(
        self, response: AsyncResponse, view: memoryview, what: str, deadline: Deadline
    ) -> int:
        """One receive of body bytes into `view` (0 at the end of the body), under the deadline."""
        _, within = self._http.timeouts(deadline, what)
        try:
            with trio.move_on_after(within):
                return await response.read_some(view)
            error: Exception = TimeoutError()
        except (OSError, http.client.HTTPException) as exc:
            error = exc
        raise body_failure(what, error, within) from None

    async def read_error_body(self, response: AsyncResponse, deadline: Deadline) -> str:
        """Up to MAX_ERROR_BODY bytes of an error answer as text; the response is released."""
        buffer = bytearray(MAX_ERROR_BODY)
        view = memoryview(buffer)
        got = 0
        try:
            while got < len(buffer):
                n = await self.read_some(response, view[got:], "error body", deadline)
                if n == 0:
                    break
                got += n
        except Retryable:
            pass  # the status alone says enough
        finally:
            del view
            response.release()
        return buffer[:got].decode("utf-8", "replace")

    async def discard(self, response: AsyncResponse, deadline: Deadline) -> None:
        """Drop an answer we will not use; a short body is read so the connection is kept."""
        declared = content_length(response)
        if declared is not None and declared <= MAX_ERROR_BODY:
            await self.read_error_body(response, deadline)
        else:
            response.release()
