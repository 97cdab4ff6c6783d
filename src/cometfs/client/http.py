"""HTTP plumbing under CometClient: one pool of keep-alive connections (transport.py, on
http.client) for the process, total deadlines, bounded retries with jittered exponential
backoff, HTTP status → cometfs error, bounded body reads (size-capped JSON, stream chunks)
and request counters. The byte-range reads on the trio thread (async_http.py) use the same
policy: the pieces they share are methods and functions here.

Used from the worker threads that call CometClient, several at once; everything here is
thread-safe (the transport is). The API key lives only in this object and is added
to a request's headers only when it goes to the Comet API itself, never to a redirect
target on another host.

Deadlines: every CometClient call gets one `Deadline` (default 20 s) that covers all its
attempts, their backoff sleeps and their body reads. Each attempt's connect and read
timeouts are cut to the time left, and body reads take one socket read at a time with the
socket timeout set to the time left, so a server that trickles a byte a second cannot hold
a call past its deadline.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Protocol, TypeVar
from urllib.parse import urlencode, urljoin, urlsplit

from cometfs import __version__
from cometfs.client.buffers import Buffer, allocate
from cometfs.client.parse import parse_error_body
from cometfs.client.transport import Transport
from cometfs.errors import (
    ApiError,
    NotFinalized,
    NotFound,
    ProtocolError,
    RateLimited,
    TransientError,
    Unauthorized,
)

# A redirect target's query is a signed blob URL: no line logged here may hold a URL. Debug
# lines name the endpoint and its parameters only.
log = logging.getLogger(__name__)

T = TypeVar("T")
Response = http.client.HTTPResponse


class Answer(Protocol):
    """An HTTP answer whose head is in: http.client's, or AsyncTransport's."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> http.client.HTTPMessage: ...


USER_AGENT = f"cometfs/{__version__}"
# A version listing of 100,000 assets with long paths and metadata is ~50 MB of JSON; an
# answer five times that is not a listing, and decoding it would cost gigabytes of memory.
MAX_JSON_BYTES = 256 << 20
# Error bodies are a short {"msg", "code", "sdk_error_code"}; read no more than this of them.
MAX_ERROR_BODY = 64 << 10
_JSON_CHUNK = 256 << 10
_SERVER_ERRORS = frozenset({500, 502, 503, 504})
# The backend's codes for "no such artifact" and "no such artifact version" (spec section 4).
_NOT_FOUND_CODES = frozenset({624522, 624523})
# artifactVersionStateNotClosed / ...ErrorOccurred: the version is still OPEN, or ERROR.
_NOT_FINAL_CODES = frozenset({90402, 90403})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_MAX_MESSAGE = 200
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class Retryable(Exception):
    """One attempt failed in a way a later attempt may not; `error` is raised if none succeeds."""

    def __init__(self, error: ApiError, *, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class Deadline:
    """The end of one call's time budget, on the injected monotonic clock."""

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self.seconds = seconds
        self._clock = clock
        self._end = clock() + seconds

    def left(self) -> float:
        return self._end - self._clock()

    def check(self, what: str) -> float:
        """The seconds left; Retryable (which the retry loop then gives up on) if none."""
        left = self.left()
        if left <= 0:
            raise Retryable(TransientError(f"{what}: no answer within {self.seconds:g} s"))
        return left


class Http:
    """Sends GETs through one shared connection pool and runs attempts under the retry policy."""

    def __init__(
        self,
        api_key: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        sleep: Callable[[float], None],
        jitter: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
        pool_size: int = 48,
    ) -> None:
        self._api_key = api_key
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._jitter = jitter
        self._clock = clock
        # Connections are kept per host (the API and any blob host), at most pool_size each:
        # enough for every worker thread of the store facade, so none is discarded after use.
        self._transport = Transport(pool_size)
        self._lock = threading.Lock()
        self._counters: Counter[str] = Counter()

    def __repr__(self) -> str:
        return (
            f"<Http retries={self._retries} timeout=({self._connect_timeout}, "
            f"{self._read_timeout})>"
        )

    def close(self) -> None:
        """Close every pooled connection; later requests open new ones."""
        self._transport.close()

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def deadline(self, seconds: float) -> Deadline:
        return Deadline(seconds, self._clock)

    def get(
        self,
        endpoint: str,
        url: str,
        what: str,
        deadline: Deadline,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        follow_redirects: bool = False,
    ) -> Response:
        """Send one GET, no retry, and return it with its body unread (see `release`).

        Connection trouble raises Retryable. `auth=False` leaves the key out (for blob URLs
        on other hosts). Redirects are followed only on request, and the key goes along only
        while the target stays on the host it was first sent to.
        """
        self.count(endpoint)
        url = with_params(url, params)
        origin = _origin(url)
        response = self._send(url, headers, auth, deadline, what)
        hops = 0
        while follow_redirects and response.status in _REDIRECTS:
            location = response.headers.get("Location")
            if not location or hops == _MAX_REDIRECTS:
                break
            self.discard(response, deadline)
            url = urljoin(url, location)
            auth = auth and _origin(url) == origin
            response = self._send(url, headers, auth, deadline, what)
            hops += 1
        # Only the endpoint and parameters: a blob URL may carry a signature.
        log.debug("GET %s %s -> %d", endpoint, params, response.status)
        return response

    def call(self, attempt: Callable[[], T], what: str, deadline: Deadline | None = None) -> T:
        """Run `attempt` until it returns, retrying only on Retryable, at most `retries` times
        and only while the deadline leaves time for the backoff sleep."""
        for n in range(self._retries + 1):
            try:
                return attempt()
            except Retryable as exc:
                self._sleep(self.backoff(n, exc, deadline))
        raise AssertionError("unreachable")  # the loop always returns or raises

    def backoff(self, attempt: int, exc: Retryable, deadline: Deadline | None) -> float:
        """How long to wait before retrying after `exc` failed attempt number `attempt`
        (from 0); raises its error instead when no retry or no time is left."""
        if attempt == self._retries:
            raise exc.error from None
        delay = self._delay(attempt, exc.retry_after)
        if deadline is not None and delay >= deadline.left():
            log.info("%s; no time left for another attempt", exc.error)
            raise exc.error from None
        log.info("%s; retry %d of %d in %.2fs", exc.error, attempt + 1, self._retries, delay)
        self.count("retries")
        return delay

    def check_status(self, response: Response, what: str, deadline: Deadline | None = None) -> None:
        """Return for 2xx; otherwise release the response and raise Retryable (429, 5xx) or
        the mapped ApiError."""
        if 200 <= response.status < 300:
            return
        retry = retryable_status(response, what)
        if retry is not None:
            self.discard(response, deadline)
            raise retry
        raise self.status_error(response.status, self.read_error_body(response, deadline), what)

    def status_error(self, status: int, body: str, what: str) -> ApiError:
        """The error for a final non-2xx answer, from its status and (error) body."""
        msg, code = parse_error_body(body)
        detail = f"{what}: HTTP {status}" + (f": {self._redact(msg)[:_MAX_MESSAGE]}" if msg else "")
        if status in (401, 403):
            return Unauthorized(
                f"{what}: the API key was refused (HTTP {status})",
                status=status,
                sdk_error_code=code,
            )
        if code in _NOT_FINAL_CODES:
            return NotFinalized(
                f"{what}: the artifact version is not finalized yet (sdk_error_code {code})",
                status=status,
                sdk_error_code=code,
            )
        if status == 404 or (status == 400 and code in _NOT_FOUND_CODES):
            return NotFound(detail, status=status, sdk_error_code=code)
        return ApiError(detail, status=status, sdk_error_code=code)

    def read_json(self, response: Response, what: str, deadline: Deadline) -> bytearray:
        """The body of a JSON answer, at most MAX_JSON_BYTES once decoded; released after.

        Bodies are asked for unencoded, but a gzip or deflate one is still taken, decoded
        incrementally so that a small bomb never expands past the cap.
        """
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
            self.discard(response, deadline)
            raise ProtocolError(f"{what}: unsupported Content-Encoding {encoding!r}")
        declared = content_length(response)
        if declared is not None and declared > MAX_JSON_BYTES:
            self.discard(response, deadline)
            raise ProtocolError(f"{what}: answer of {declared} bytes is over the JSON cap")
        # wbits 47: a zlib or gzip header, detected from the stream itself.
        decoder = zlib.decompressobj(47) if encoding not in ("identity", "") else None
        body = bytearray()
        chunk = bytearray(_JSON_CHUNK)
        view = memoryview(chunk)
        got = 0
        try:
            while True:
                n = self.read_some(response, view, what, deadline)
                if n == 0:
                    break
                got += n
                if decoder is None:
                    body += view[:n]
                else:
                    try:
                        body += decoder.decompress(view[:n], MAX_JSON_BYTES + 1 - len(body))
                    except zlib.error:
                        raise ProtocolError(f"{what}: the {encoding} body is corrupt") from None
                if len(body) > MAX_JSON_BYTES:
                    raise ProtocolError(
                        f"{what}: answer is over the JSON cap of {MAX_JSON_BYTES} bytes"
                    )
        finally:
            self.count("bytes_received", got)
            self.release(response)
        if declared is not None and got != declared:
            raise Retryable(ProtocolError(f"{what}: the response body was cut short"))
        if decoder is not None and not decoder.eof:
            raise Retryable(ProtocolError(f"{what}: the {encoding} body was cut short"))
        return body  # json.loads takes it as is: no copy of a large listing

    def iter_body(
        self,
        response: Response,
        chunk_size: int,
        size: int | None,
        what: str,
        timeout: float,
    ) -> Iterator[Buffer]:
        """Yield a body in chunks of `chunk_size` (the last may be shorter); raise
        ProtocolError if it ends before `size` bytes, TransientError if one chunk takes
        longer than `timeout` seconds to arrive.

        Each chunk is a recycled buffer from `allocate` that the caller owns (filled in
        place, never copied), no larger than what is left of `size`, so a small asset never
        maps a whole chunk. A whole asset may take far longer than one call's deadline, so
        each chunk gets its own. No retry: bytes already yielded cannot be taken back, so
        the caller restarts.
        """
        got = 0
        while True:
            deadline = self.deadline(timeout)
            # Past `size`, one more byte tells a body that runs on from one that ended.
            want = chunk_size if size is None else max(1, min(chunk_size, size - got))
            buffer = allocate(want, recycle=True)
            try:
                filled = self.fill(response, memoryview(buffer), what, deadline)
            except Retryable as exc:
                raise exc.error from None
            got += filled
            if size is not None and got > size:
                raise ProtocolError(f"{what}: body longer than {size} bytes")
            if filled:
                yield buffer if filled == want else memoryview(buffer)[:filled]
            if filled < want:
                break
        if size is not None and got != size:
            raise ProtocolError(f"{what}: body cut short at {got} of {size} bytes")

    def fill(self, response: Response, view: memoryview, what: str, deadline: Deadline) -> int:
        """Read into `view` until it is full or the body ends; count what arrived."""
        filled = 0
        try:
            while filled < len(view):
                n = self.read_some(response, view[filled:], what, deadline)
                if n == 0:
                    break
                filled += n
        finally:
            self.count("bytes_received", filled)
        return filled

    def read_some(
        self, response: Response, view: memoryview | bytearray, what: str, deadline: Deadline
    ) -> int:
        """One socket read into `view` (0 at the end of the body), under the deadline."""
        _, timeout = self.timeouts(deadline, what)
        if response.fp is None:
            return 0
        try:
            self._transport.settimeout(response, timeout)
            return _read_once(response, view)
        except (OSError, http.client.HTTPException) as exc:
            raise body_failure(what, exc, timeout) from None

    def read_error_body(self, response: Response, deadline: Deadline | None = None) -> str:
        """Up to MAX_ERROR_BODY bytes of an error answer as text; the response is released."""
        deadline = deadline or self.deadline(self._read_timeout)
        buffer = bytearray(MAX_ERROR_BODY)
        view = memoryview(buffer)
        got = 0
        try:
            while got < len(buffer):
                n = self.read_some(response, view[got:], "error body", deadline)
                if n == 0:
                    break
                got += n
        except Retryable:
            pass  # the status alone says enough
        finally:
            del view
            self.release(response)
        return buffer[:got].decode("utf-8", "replace")

    def discard(self, response: Response, deadline: Deadline | None = None) -> None:
        """Drop an answer we will not use; a short body is read so the connection is kept."""
        declared = content_length(response)
        if declared is not None and declared <= MAX_ERROR_BODY:
            self.read_error_body(response, deadline)
        else:
            self.release(response)

    def release(self, response: Response) -> None:
        """Close the answer; its connection goes back to the pool only if the body was read
        to the end (see Transport.release). Calling it again does nothing."""
        self._transport.release(response)

    def _send(
        self,
        url: str,
        headers: Mapping[str, str] | None,
        auth: bool,
        deadline: Deadline,
        what: str,
    ) -> Response:
        connect_timeout, read_timeout = self.timeouts(deadline, what)
        try:
            return self._transport.request(
                url,
                self.request_headers(headers, auth),
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
        except http.client.InvalidURL:
            raise invalid_url(what) from None
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(what, exc) from None

    def request_headers(self, headers: Mapping[str, str] | None, auth: bool) -> dict[str, str]:
        """What a request sends: ours, the caller's, and the key only with `auth`."""
        sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
        if auth:
            sent["Authorization"] = self._api_key
        return sent

    def timeouts(self, deadline: Deadline, what: str) -> tuple[float, float]:
        """Connect and read timeouts of the next attempt, cut to the time left."""
        left = deadline.check(what)
        return min(self._connect_timeout, left), min(self._read_timeout, left)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self._max_backoff, retry_after)
        # "Full jitter": spreads out the retries of many threads that failed together.
        return float(min(self._max_backoff, self._backoff * 2**attempt) * self._jitter())

    def _redact(self, text: str) -> str:
        # The server's message is its own text, but never echo the key even if it does.
        return text.replace(self._api_key, "***") if self._api_key else text


def _read_once(raw: http.client.HTTPResponse, view: memoryview | bytearray) -> int:
    """At most one recv of body bytes into `view`, keeping http.client's bookkeeping.

    http.client's own readinto loops until the buffer is full, so a trickling body would
    never come back to check the deadline; readinto1 of its buffered reader does one read.
    The body's remaining `length` is kept in step as http.client's readinto keeps it, so a
    fully read response leaves its connection clean for the pool. Chunked and
    read-until-close bodies go through http.client's read1, which does the framing.
    """
    if raw.fp is None:
        return 0
    if raw.chunked or raw.length is None:
        data = raw.read1(len(view))
        view[: len(data)] = data
        return len(data)
    if raw.length == 0:
        raw.read()  # marks the response complete and detaches it from the socket
        return 0
    target = view[: raw.length] if len(view) > raw.length else view
    n: int = raw.fp.readinto1(target)
    if n == 0:
        raw.read()  # EOF before the declared length: let http.client close
        return 0
    raw.length -= n
    if raw.length == 0:
        raw.read()
    return n


def with_params(url: str, params: Mapping[str, str] | None) -> str:
    """`url` with `params` added to its query string."""
    if not params:
        return url
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


def retryable_status(response: Answer, what: str) -> Retryable | None:
    """The Retryable for an answer worth another attempt (429, 5xx), else None."""
    status = response.status
    if status == 429:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        return Retryable(
            RateLimited(f"{what}: rate limited (HTTP 429)", retry_after=retry_after),
            retry_after=retry_after,
        )
    if status in _SERVER_ERRORS:
        # A 503 may say when to come back, as a 429 does.
        retry_after = (
            retry_after_seconds(response.headers.get("Retry-After")) if status == 503 else None
        )
        return Retryable(
            TransientError(f"{what}: server error (HTTP {status})", status=status),
            retry_after=retry_after,
        )
    return None


def invalid_url(what: str) -> ApiError:
    # A bad URL: retrying won't help. Its text may quote the URL: not repeated.
    return ApiError(f"{what}: request failed (InvalidURL)")


def unreachable(what: str, exc: BaseException) -> Retryable:
    """A request that got no answer (connect, send or head failed)."""
    return Retryable(TransientError(f"{what}: cannot reach the server ({type(exc).__name__})"))


def body_failure(what: str, exc: BaseException, waited: float) -> Retryable:
    """A body read that failed: stalled, cut short or connection lost."""
    if isinstance(exc, TimeoutError):
        return Retryable(TransientError(f"{what}: the body stalled (no byte for {waited:.1f} s)"))
    if isinstance(exc, http.client.IncompleteRead):
        return Retryable(ProtocolError(f"{what}: the response body was cut short"))
    return Retryable(
        TransientError(f"{what}: connection lost while reading ({type(exc).__name__})")
    )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def content_length(response: Answer) -> int | None:
    """The Content-Length header as an int, or None when absent or malformed."""
    value = response.headers.get("Content-Length", "")
    return int(value) if value.strip().isdigit() else None


def is_json(response: Answer) -> bool:
    """Content-Type is application/json; unlike the SDK, parameters such as charset are fine."""
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return media_type == "application/json"


def sha256_etag(response: Answer) -> str | None:
    """The ETag as a lowercase SHA-256 hex digest when it is one (the local server's is the
    asset's SHA-256); None for weak, absent or other ETags."""
    value = response.headers.get("ETag", "").strip()
    if value.startswith("W/"):
        return None
    value = value.strip('"')
    return value.lower() if _SHA256.fullmatch(value) else None


def retry_after_seconds(
    value: str | None, now: Callable[[], datetime] | None = None
) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date; None if unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
        when = when.replace(tzinfo=timezone.utc)
    current = now() if now is not None else datetime.now(timezone.utc)
    return max(0.0, (when - current).total_seconds())
