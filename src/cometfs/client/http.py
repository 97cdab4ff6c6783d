"""HTTP plumbing under CometClient: a requests.Session per thread, timeouts, bounded retries
with jittered exponential backoff, HTTP status → cometfs error, exact-length body reads and
request counters.

Used from the worker threads that call CometClient, several at once; everything here is
thread-safe. The API key lives only in this object and is added to a request's headers only
when it goes to the Comet API itself, never to a redirect target.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import requests

from cometfs import __version__
from cometfs.client.parse import parse_error_body
from cometfs.errors import (
    ApiError,
    NotFound,
    ProtocolError,
    RateLimited,
    TransientError,
    Unauthorized,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = f"cometfs/{__version__}"
_SERVER_ERRORS = frozenset({500, 502, 503, 504})
# The backend's codes for "no such artifact" and "no such artifact version" (spec section 4).
_NOT_FOUND_CODES = frozenset({624522, 624523})
_MAX_MESSAGE = 200


class Retryable(Exception):
    """One attempt failed in a way a later attempt may not; `error` is raised if none succeeds."""

    def __init__(self, error: ApiError, *, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class Http:
    """Sends GETs with per-thread sessions and runs attempts under the retry policy."""

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
    ) -> None:
        self._api_key = api_key
        self._timeout = (connect_timeout, read_timeout)
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._jitter = jitter
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: list[requests.Session] = []
        self._counters: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<Http retries={self._retries} timeout={self._timeout}>"

    def close(self) -> None:
        """Close every thread's session; threads that go on get fresh ones."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
            self._local = threading.local()
        for session in sessions:
            session.close()

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n

    def get(
        self,
        endpoint: str,
        url: str,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: bool = True,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> requests.Response:
        """Send one GET, no retry. Connection trouble and a cut JSON body raise Retryable.

        `auth=False` leaves the key out (for blob URLs on other hosts). Redirects are followed
        only on request; requests then drops the key itself when the host changes.
        """
        sent = dict(headers or {})
        if auth:
            sent["Authorization"] = self._api_key
        self.count(endpoint)
        try:
            response = self._session().get(
                url,
                params=params,
                headers=sent,
                timeout=self._timeout,
                stream=stream,
                allow_redirects=follow_redirects,
            )
        except requests.exceptions.ChunkedEncodingError:
            raise Retryable(ProtocolError(f"{what}: the response body was cut short")) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Retryable(
                TransientError(f"{what}: cannot reach the server ({type(exc).__name__})")
            ) from None
        except requests.RequestException as exc:  # a bad URL or redirect: retrying won't help
            raise ApiError(f"{what}: request failed ({type(exc).__name__})") from None
        # Only the endpoint and parameters: a blob URL may carry a signature.
        log.debug("GET %s %s -> %d", endpoint, params, response.status_code)
        if not stream:
            self.count("bytes_received", len(response.content))
        return response

    def call(self, attempt: Callable[[], T], what: str) -> T:
        """Run `attempt` until it returns, retrying only on Retryable, at most `retries` times."""
        for n in range(self._retries + 1):
            try:
                return attempt()
            except Retryable as exc:
                if n == self._retries:
                    raise exc.error from None
                delay = self._delay(n, exc.retry_after)
                log.info("%s; retry %d of %d in %.2fs", exc.error, n + 1, self._retries, delay)
                self.count("retries")
                self._sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

    def check_status(self, response: requests.Response, what: str) -> None:
        """Return for 2xx; otherwise raise Retryable (429, 5xx) or the mapped ApiError."""
        status = response.status_code
        if 200 <= status < 300:
            return
        if status == 429:
            retry_after = _retry_after(response)
            raise Retryable(
                RateLimited(f"{what}: rate limited (HTTP 429)", retry_after=retry_after),
                retry_after=retry_after,
            )
        if status in _SERVER_ERRORS:
            raise Retryable(TransientError(f"{what}: server error (HTTP {status})", status=status))
        msg, code = parse_error_body(response.text)
        detail = f"{what}: HTTP {status}" + (f": {self._redact(msg)[:_MAX_MESSAGE]}" if msg else "")
        if status in (401, 403):
            raise Unauthorized(
                f"{what}: the API key was refused (HTTP {status})",
                status=status,
                sdk_error_code=code,
            )
        if status == 404 or (status == 400 and code in _NOT_FOUND_CODES):
            raise NotFound(detail, status=status, sdk_error_code=code)
        raise ApiError(detail, status=status, sdk_error_code=code)

    def read_exact(self, response: requests.Response, size: int, what: str) -> bytes:
        """Read a streamed body that must be exactly `size` bytes; anything else is Retryable."""
        declared = content_length(response)
        if declared is not None and declared != size:
            raise Retryable(ProtocolError(f"{what}: Content-Length is {declared}, expected {size}"))
        chunks: list[bytes] = []
        got = 0
        try:
            for chunk in response.iter_content(1 << 20):
                chunks.append(chunk)
                got += len(chunk)
                if got > size:
                    break
        except requests.exceptions.ChunkedEncodingError:
            raise Retryable(
                ProtocolError(f"{what}: body cut short at {got} of {size} bytes")
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise Retryable(
                TransientError(f"{what}: connection lost while reading ({type(exc).__name__})")
            ) from None
        finally:
            self.count("bytes_received", got)
        if got != size:
            raise Retryable(ProtocolError(f"{what}: got {got} bytes, expected {size}"))
        return b"".join(chunks)

    def iter_body(
        self, response: requests.Response, chunk_size: int, size: int | None, what: str
    ) -> Iterator[bytes]:
        """Yield a streamed body; raise ProtocolError if it ends before `size` bytes.

        No retry: bytes already yielded cannot be taken back, so the caller restarts.
        """
        got = 0
        try:
            for chunk in response.iter_content(chunk_size):
                got += len(chunk)
                self.count("bytes_received", len(chunk))
                if size is not None and got > size:
                    raise ProtocolError(f"{what}: body longer than {size} bytes")
                yield chunk
        except requests.exceptions.ChunkedEncodingError:
            raise ProtocolError(f"{what}: body cut short at {got} bytes") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientError(
                f"{what}: connection lost while reading ({type(exc).__name__})"
            ) from None
        if size is not None and got != size:
            raise ProtocolError(f"{what}: body cut short at {got} of {size} bytes")

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            # requests.Session is not thread-safe, so each worker thread keeps its own
            # (and its own keep-alive connections).
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            with self._lock:
                self._sessions.append(session)
            self._local.session = session
        return session

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self._max_backoff, retry_after)
        # "Full jitter": spreads out the retries of many threads that failed together.
        return min(self._max_backoff, self._backoff * 2**attempt) * self._jitter()

    def _redact(self, text: str) -> str:
        # The server's message is its own text, but never echo the key even if it does.
        return text.replace(self._api_key, "***") if self._api_key else text


def content_length(response: requests.Response) -> int | None:
    """The Content-Length header as an int, or None when absent or malformed."""
    value = response.headers.get("Content-Length", "")
    return int(value) if value.strip().isdigit() else None


def is_json(response: requests.Response) -> bool:
    """Content-Type is application/json; unlike the SDK, parameters such as charset are fine."""
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return media_type == "application/json"


def _retry_after(response: requests.Response) -> float | None:
    # Only the delta-seconds form; an HTTP-date falls back to the normal backoff.
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None
