"""CometClient: the Comet REST client, one method per endpoint (E1-E9 of comet-rest-api.md),
returning model objects and raising cometfs errors.

The blocking methods are called from store.py's worker threads, several at once; they are
thread-safe. read_range is async: it runs on the store's trio thread (async_transport.py
says why), so a client serves one trio run at most.

Comet's download endpoint is not known to honour Range, so the byte reads find out per
server which of three things it does and remember it in `byte_mode`:

- "redirect": get-asset with allow301=True answers 3xx to a blob URL that honours Range;
- "range":    get-asset answers a Range request with a 206;
- "stream":   get-asset ignores Range (a 200 with the whole body): read_range then raises
              RangeNotSupported at once and the caller reads the asset through stream().

Every call has a total deadline (`timeout`, retries and backoff included; see http.py).
When one answer carries a whole asset and an ETag that is a SHA-256 digest (the local
server's is), the bytes are checked against it and a mismatch is a StaleError. The first
SHA-256 ETag seen for an asset is remembered (`_etags`): a later answer with another one
is a StaleError too, so bytes changed under the same asset id are never mixed with
blocks read before the change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import quote, urljoin

import trio
from cachetools import LRUCache, TTLCache

from cometfs.client import parse
from cometfs.client.async_http import AsyncHttp
from cometfs.client.async_transport import AsyncResponse
from cometfs.client.buffers import Buffer
from cometfs.client.http import (
    Answer,
    Deadline,
    Http,
    Response,
    Retryable,
    content_length,
    is_json,
    sha256_etag,
)
from cometfs.errors import ProtocolError, RangeNotSupported, StaleError, TransientError
from cometfs.model import Artifact, ArtifactVersion, Asset
from cometfs.wire import IS_ALIVE_PATH, REST_PATHS, REST_PREFIX, Endpoint

log = logging.getLogger(__name__)

ByteMode = Literal["unknown", "redirect", "range", "stream"]

# Endpoint names (shared with the local server, see cometfs.wire); these two are used often.
ASSET = Endpoint.GET_ASSET  # experiment/asset/get-asset
BLOB = Endpoint.BLOB  # a redirect target of get-asset, counted apart from the API endpoints
# Signed blob URLs expire; reuse one only briefly, then ask get-asset again.
BLOB_URL_TTL = 300.0
ETAG_PINS = 16384
# A whole asset at least this big is hashed on a worker thread: the hop (~0.2 ms) costs less
# than holding up the trio thread (SHA-256 runs at ~1.3 GB/s here: 0.8 ms per MiB).
_HASH_IN_THREAD = 1 << 20
# Answers that mean "this blob URL no longer works", not "this asset does not exist".
_BLOB_GONE = frozenset({403, 404, 410})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class CometClient:
    """The Comet REST API, as far as cometfs reads it. The key never leaves this object."""

    def __init__(
        self,
        server_url: str,
        api_key: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        timeout: float = 20.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        pool_size: int = 48,
    ) -> None:
        """`timeout` is each call's total deadline in seconds, retries included (for
        stream(): the first request, then each chunk); `pool_size` is how many connections
        per host are kept open for reuse (at least the number of calling threads)."""
        self._root = server_url.rstrip("/")
        self._timeout = timeout
        self._rest = self._root + REST_PREFIX
        self._http = Http(
            api_key,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            sleep=sleep,
            jitter=jitter,
            clock=clock,
            pool_size=pool_size,
        )
        self._fetch = AsyncHttp(self._http, pool_size=pool_size, sleep=_async_sleep(sleep))
        self._mode: ByteMode = "unknown"
        self._lock = threading.Lock()  # guards _mode, _blob_urls, _etags (not thread-safe)
        self._blob_urls: TTLCache[tuple[str, str], str] = TTLCache(
            maxsize=4096, ttl=BLOB_URL_TTL, timer=clock
        )
        # Bounded: a forgotten pin only loses the check for an asset not read for a while.
        self._etags: LRUCache[tuple[str, str], str] = LRUCache(maxsize=ETAG_PINS)

    def __repr__(self) -> str:
        return f"<CometClient {self._root} byte_mode={self._mode}>"

    def close(self) -> None:
        self._http.close()
        self._fetch.close()

    @property
    def byte_mode(self) -> ByteMode:
        """What get-asset was found to do: "unknown", "redirect", "range" or "stream"."""
        return self._mode

    def counters(self) -> dict[str, int]:
        """Requests sent per endpoint, plus "retries" and "bytes_received"."""
        return self._http.counters()

    # JSON endpoints

    def server_version(self) -> str:
        """E1: the backend version."""
        endpoint = Endpoint.IS_ALIVE
        body = self._get_json(endpoint, endpoint, url=self._root + IS_ALIVE_PATH)
        return parse.parse_server_version(body, endpoint)

    def account_details(self) -> dict[str, Any]:
        """E2: the key owner's account (userName, defaultWorkspaceName)."""
        endpoint = Endpoint.ACCOUNT_DETAILS
        return parse.parse_account_details(self._get_json(endpoint, endpoint), endpoint)

    def workspaces(self) -> list[str]:
        """E3: the workspaces this key can see."""
        endpoint = Endpoint.WORKSPACES
        return parse.parse_workspaces(self._get_json(endpoint, endpoint), endpoint)

    def artifacts(self, workspace: str, artifact_type: str | None = None) -> list[Artifact]:
        """E4: a workspace's artifacts (without versions), optionally of one type only."""
        endpoint = Endpoint.ARTIFACT_LIST
        what = f"{endpoint} for workspace {workspace!r}"
        params = {"workspace": workspace}
        if artifact_type is not None:
            params["type"] = artifact_type
        return parse.parse_artifact_list(self._get_json(endpoint, what, params), workspace, what)

    def artifact(self, workspace: str, name: str) -> Artifact:
        """E5: one artifact with all its versions."""
        endpoint = Endpoint.ARTIFACT
        what = f"{endpoint} for {workspace}/{name}"
        params = {"workspace": workspace, "artifactName": _artifact_name(name)}
        return parse.parse_artifact_details(self._get_json(endpoint, what, params), workspace, what)

    def artifact_version(
        self, workspace: str, name: str, *, version: str | None = None, alias: str | None = None
    ) -> ArtifactVersion:
        """E6: one version by version string or alias; neither means alias "latest", as the SDK
        does. When both are given the version wins and the alias is not sent (as the SDK)."""
        endpoint = Endpoint.VERSION
        params = {"workspace": workspace, "artifactName": _artifact_name(name)}
        if version is not None:
            params["version"] = version
        else:
            params["alias"] = alias if alias is not None else "latest"
        what = f"{endpoint} for {workspace}/{name}:{params.get('version', params.get('alias'))}"
        return parse.parse_artifact_version(self._get_json(endpoint, what, params), what)

    def assets(self, workspace: str, name: str, version: str) -> list[Asset]:
        """E7: every file of one version."""
        endpoint = Endpoint.VERSION_FILES
        what = f"{endpoint} for {workspace}/{name}:{version}"
        params = {"workspace": workspace, "artifactName": _artifact_name(name), "version": version}
        return parse.parse_assets(self._get_json(endpoint, what, params), what)

    def experiment_metadata(self, experiment_key: str) -> dict[str, Any]:
        """E9: the metadata of an experiment (the one that created a version)."""
        endpoint = Endpoint.EXPERIMENT_METADATA
        what = f"{endpoint} for experiment {experiment_key}"
        body = self._get_json(endpoint, what, {"experimentKey": experiment_key})
        return parse.parse_experiment_metadata(body, what)

    # Bytes (E8)

    async def read_range(
        self,
        asset_id: str,
        version_id: str,
        start: int,
        end: int,
        *,
        expected_size: int | None = None,
    ) -> Buffer:
        """Exactly the bytes [start, end) of an asset, as one buffer of end - start bytes
        that the server's answer was read into (never copied; the caller owns it).

        Runs on the caller's trio thread, with no worker-thread hop (async_transport.py
        says why).

        Raises RangeNotSupported once the server is known to ignore Range (use stream()),
        StaleError when the asset's size is not `expected_size` or a whole-asset answer
        does not match its SHA-256 ETag.
        """
        if not 0 <= start < end:
            raise ValueError(f"need 0 <= start < end, got [{start}, {end})")
        if expected_size is not None and end > expected_size:
            raise ValueError(f"range [{start}, {end}) ends past the asset's {expected_size} bytes")
        what = f"{ASSET} for asset {asset_id} of version {version_id}, bytes [{start}, {end})"
        if self._mode == "stream":
            raise RangeNotSupported(f"{what}: the server ignores Range; stream the asset instead")
        # Http asks for no Content-Encoding: a Range applies to the encoded body.
        headers = {"Range": f"bytes={start}-{end - 1}"}
        deadline = self._http.deadline(self._timeout)
        return await self._fetch.call(
            lambda: self._read_range_once(
                asset_id, version_id, start, end, expected_size, headers, what, deadline
            ),
            what,
            deadline,
        )

    async def preconnect(self) -> None:
        """Open the connection the first byte read will use, while nothing waits for it:
        over a WAN the connect and TLS handshakes are a few round trips of that read's time
        to first byte. Never raises."""
        deadline = self._http.deadline(self._timeout)
        await self._fetch.preconnect(self._rest, "connection for byte reads", deadline)

    @contextlib.contextmanager
    def stream(
        self,
        asset_id: str,
        version_id: str,
        *,
        chunk_size: int = 1 << 20,
        expected_size: int | None = None,
    ) -> Iterator[Iterator[Buffer]]:
        """A context manager giving the whole asset body as an iterator of chunks (each a
        buffer of `chunk_size` bytes, recycled once nothing views it, the last one shorter).

        The first request is retried within the call's deadline; then each chunk must
        arrive within `timeout`. A failure mid-body is not retried (the caller restarts).
        Raises StaleError before yielding anything when the size is not `expected_size`,
        and after the last chunk when the body does not match a SHA-256 ETag (the caller
        must then drop what it received).
        """
        what = f"{ASSET} for asset {asset_id} of version {version_id}"
        deadline = self._http.deadline(self._timeout)

        def attempt() -> Response:
            response = self._open_asset(asset_id, version_id, what, deadline)
            if response.status != 200:
                self._http.check_status(response, what, deadline)
                self._http.release(response)
                raise ProtocolError(f"{what}: expected HTTP 200, got {response.status}")
            return response

        response = self._http.call(attempt, what, deadline)
        try:
            declared = content_length(response)
            if declared is not None and expected_size is not None and declared != expected_size:
                raise self._stale(what, declared, expected_size)
            size = declared if declared is not None else expected_size
            chunks = self._http.iter_body(response, chunk_size, size, what, self._timeout)
            digest = sha256_etag(response)
            self._pin_etag((asset_id, version_id), digest, what)
            yield chunks if digest is None else self._checked(chunks, digest, what)
        finally:
            self._http.release(response)

    def _checked(self, chunks: Iterator[Buffer], digest: str, what: str) -> Iterator[Buffer]:
        """Pass chunks through, hashing them; StaleError at the end if the hash differs."""
        sha = hashlib.sha256()
        for chunk in chunks:
            sha.update(chunk)
            yield chunk
        if sha.hexdigest() != digest:
            raise StaleError(f"{what}: the body does not match its SHA-256 ETag")

    def _get_json(
        self,
        endpoint: str,
        what: str,
        params: Mapping[str, str] | None = None,
        *,
        url: str | None = None,
    ) -> Any:
        """GET a JSON endpoint with retries; the decoded body of a 200 application/json."""
        full_url = url if url is not None else self._rest + endpoint
        deadline = self._http.deadline(self._timeout)

        def attempt() -> Any:
            response = self._http.get(
                endpoint, full_url, what, deadline, params=params, follow_redirects=True
            )
            self._http.check_status(response, what, deadline)
            if response.status != 200 or not is_json(response):
                self._http.discard(response, deadline)
                if response.status != 200:
                    raise ProtocolError(f"{what}: expected HTTP 200, got {response.status}")
                content_type = response.headers.get("Content-Type")
                raise ProtocolError(f"{what}: expected JSON, got Content-Type {content_type!r}")
            body = self._http.read_json(response, what, deadline)
            try:
                return json.loads(body)
            except ValueError:
                raise ProtocolError(f"{what}: the body is not valid JSON") from None

        return self._http.call(attempt, what, deadline)

    async def _read_range_once(
        self,
        asset_id: str,
        version_id: str,
        start: int,
        end: int,
        expected_size: int | None,
        headers: Mapping[str, str],
        what: str,
        deadline: Deadline,
    ) -> Buffer:
        key = (asset_id, version_id)
        with self._lock:
            blob_url = self._blob_urls.get(key)
        if blob_url is not None:
            response = await self._fetch.get(
                BLOB, blob_url, what, deadline, headers=headers, auth=False
            )
            if response.status not in _BLOB_GONE:
                return await self._take_range(
                    response, key, start, end, expected_size, what, deadline
                )
            await self._fetch.discard(response, deadline)
            log.debug("%s: blob URL answered %d, resolving it again", what, response.status)
            with self._lock:
                self._blob_urls.pop(key, None)
        allow301 = self._mode in ("unknown", "redirect")
        url = self._rest + REST_PATHS[ASSET]
        params = _asset_params(asset_id, version_id, allow301)
        response = await self._fetch.get(ASSET, url, what, deadline, params=params, headers=headers)
        location = response.headers.get("Location")
        if response.status in _REDIRECTS and location:
            location = urljoin(url, location)
            await self._fetch.discard(response, deadline)
            self._detect("redirect")
            response = await self._fetch.get(
                BLOB, location, what, deadline, headers=headers, auth=False
            )
            if response.status in _BLOB_GONE:
                await self._fetch.discard(response, deadline)
                raise _blob_gone(what, response.status)
            with self._lock:
                self._blob_urls[key] = location
        return await self._take_range(response, key, start, end, expected_size, what, deadline)

    def _open_asset(
        self, asset_id: str, version_id: str, what: str, deadline: Deadline
    ) -> Response:
        """Send get-asset for the whole asset (body unread); if it redirects, GET the target
        without the key."""
        url = self._rest + REST_PATHS[ASSET]
        params = _asset_params(asset_id, version_id, allow301=False)
        response = self._http.get(ASSET, url, what, deadline, params=params)
        location = response.headers.get("Location")
        if response.status not in _REDIRECTS or not location:
            return response
        self._http.discard(response, deadline)
        blob = self._http.get(BLOB, urljoin(url, location), what, deadline, auth=False)
        if blob.status in _BLOB_GONE:
            self._http.discard(blob, deadline)
            raise _blob_gone(what, blob.status)
        return blob

    async def _take_range(
        self,
        response: AsyncResponse,
        key: tuple[str, str],
        start: int,
        end: int,
        expected_size: int | None,
        what: str,
        deadline: Deadline,
    ) -> Buffer:
        """Check an answer to a Range request and read exactly [start, end) from it."""
        await self._fetch.check_status(response, what, deadline)
        try:
            digest = sha256_etag(response)
            self._pin_etag(key, digest, what)
            whole = self._range_answer(response, start, end, expected_size, what)
            data = await self._fetch.read_exact(response, end - start, what, deadline)
        finally:
            response.release()
        if whole and digest is not None:
            if len(data) >= _HASH_IN_THREAD:
                matches = await trio.to_thread.run_sync(_sha256_matches, data, digest)
            else:
                matches = _sha256_matches(data, digest)
            if not matches:
                raise StaleError(f"{what}: the body does not match its SHA-256 ETag")
        return data

    def _range_answer(
        self, response: Answer, start: int, end: int, expected_size: int | None, what: str
    ) -> bool:
        """Check a 2xx answer's head against the Range asked for; whether it is the whole
        asset. RangeNotSupported for a 200 that is more than was asked for."""
        if response.status == 206:
            first, stop, total = parse.parse_content_range(
                response.headers.get("Content-Range"), what
            )
            if expected_size is not None and total is not None and total != expected_size:
                raise self._stale(what, total, expected_size)
            if (first, stop) != (start, end):
                raise ProtocolError(f"{what}: the server sent bytes [{first}, {stop})")
            self._detect("range")
            return start == 0 and stop == total
        if response.status == 200:
            total = content_length(response)
            if expected_size is not None and total is not None and total != expected_size:
                raise self._stale(what, total, expected_size)
            if total is None:
                total = expected_size
            # A 200 is the whole asset. It answers the request only if that was the whole
            # asset; otherwise closing it unread saves downloading bytes nobody asked for.
            if start != 0 or total != end:
                self._detect("stream")
                raise RangeNotSupported(f"{what}: the server ignored Range (HTTP 200)")
            return True
        raise ProtocolError(f"{what}: unexpected HTTP {response.status}")

    def _pin_etag(self, key: tuple[str, str], digest: str | None, what: str) -> None:
        """Remember an asset's first SHA-256 ETag; StaleError when a later one differs."""
        if digest is None:
            return
        with self._lock:
            pinned = self._etags.get(key)
            if pinned is None:
                self._etags[key] = digest
        if pinned is not None and pinned != digest:
            raise StaleError(f"{what}: the asset's bytes changed since it was first read (ETag)")

    def _detect(self, mode: ByteMode) -> None:
        """Record what get-asset does; "stream" overrides anything, the rest only "unknown"."""
        if self._mode == mode:  # every answer says so again: no lock for that
            return
        with self._lock:
            if self._mode == mode or (self._mode != "unknown" and mode != "stream"):
                return
            self._mode = mode
        log.info("%s byte mode: %s", self._root, mode)

    def _stale(self, what: str, size: int, expected: int) -> StaleError:
        return StaleError(f"{what}: the asset is {size} bytes, but was listed with {expected}")


def _asset_params(asset_id: str, version_id: str, allow301: bool) -> dict[str, str]:
    return {
        "assetId": asset_id,
        "allow301": str(allow301),  # "True"/"False", as the SDK sends them
        "experimentKey": "",  # as API.get_artifact sends it; the server looks up by ids
        "artifactVersionId": version_id,
    }


def _blob_gone(what: str, status: int) -> Retryable:
    # get-asset already vouched for the asset and the key, so a URL it has just handed
    # out failing is the storage's trouble: worth a retry, not a 401/404.
    return Retryable(TransientError(f"{what}: the redirect target answered HTTP {status}"))


def _sha256_matches(data: Buffer, digest: str) -> bool:
    return hashlib.sha256(data).hexdigest() == digest


def _async_sleep(sleep: Callable[[float], None]) -> Callable[[float], Awaitable[None]]:
    """The retry sleep of read_range: trio.sleep for time.sleep; an injected one (tests
    record the delays) is called as it is, then trio is given a turn."""
    if sleep is time.sleep:
        return trio.sleep

    async def injected(seconds: float) -> None:
        sleep(seconds)
        await trio.lowlevel.checkpoint()

    return injected


def _artifact_name(name: str) -> str:
    # SDK >= 3.56 quotes the name itself and requests encodes it again (as our urlencode
    # does); the server unquotes twice, so a name holding "%" or "+" only survives so.
    return quote(name, safe="")
