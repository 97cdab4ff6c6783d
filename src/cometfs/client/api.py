"""CometClient: the synchronous Comet REST client, one method per endpoint (E1-E9 of
comet-rest-api.md), returning model objects and raising cometfs errors.

Called from store.py's worker threads, several at once; thread-safe. Comet's download
endpoint is not known to honour Range, so the byte reads find out per server which of three
things it does and remember it in `byte_mode`:

- "redirect": get-asset with allow301=True answers 3xx to a blob URL that honours Range;
- "range":    get-asset answers a Range request with a 206;
- "stream":   get-asset ignores Range (a 200 with the whole body): read_range then raises
              RangeNotSupported at once and the caller reads the asset through stream().
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import quote, urljoin

import requests
from cachetools import TTLCache

from cometfs.client import parse
from cometfs.client.http import Http, Retryable, content_length, is_json
from cometfs.errors import ProtocolError, RangeNotSupported, StaleError, TransientError
from cometfs.model import Artifact, ArtifactVersion, Asset

log = logging.getLogger(__name__)

ByteMode = Literal["unknown", "redirect", "range", "stream"]

# Endpoints are named as in the spec, except these two (named as in the local server's log).
ASSET = "get-asset"  # experiment/asset/get-asset
BLOB = "blob"  # a redirect target of get-asset, counted apart from the API endpoints
# Signed blob URLs expire; reuse one only briefly, then ask get-asset again.
BLOB_URL_TTL = 300.0
# Answers that mean "this blob URL no longer works", not "this asset does not exist".
_BLOB_GONE = frozenset({403, 404, 410})


class CometClient:
    """The Comet REST API, as far as cometfs reads it. The key never leaves this object."""

    def __init__(
        self,
        server_url: str,
        api_key: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = server_url.rstrip("/")
        self._rest = self._root + "/api/rest/v2/"
        self._http = Http(
            api_key,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            sleep=sleep,
            jitter=jitter,
        )
        self._mode: ByteMode = "unknown"
        self._lock = threading.Lock()  # guards _mode and _blob_urls (TTLCache is not thread-safe)
        self._blob_urls: TTLCache[tuple[str, str], str] = TTLCache(
            maxsize=4096, ttl=BLOB_URL_TTL, timer=clock
        )

    def __repr__(self) -> str:
        return f"<CometClient {self._root} byte_mode={self._mode}>"

    def close(self) -> None:
        self._http.close()

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
        endpoint = "isAlive"
        body = self._get_json(endpoint, endpoint, url=self._root + "/clientlib/isAlive/ver")
        return parse.parse_server_version(body, endpoint)

    def account_details(self) -> dict[str, Any]:
        """E2: the key owner's account (userName, defaultWorkspaceName)."""
        endpoint = "account-details"
        return parse.parse_account_details(self._get_json(endpoint, endpoint), endpoint)

    def workspaces(self) -> list[str]:
        """E3: the workspaces this key can see."""
        endpoint = "workspaces"
        return parse.parse_workspaces(self._get_json(endpoint, endpoint), endpoint)

    def artifacts(self, workspace: str, artifact_type: str | None = None) -> list[Artifact]:
        """E4: a workspace's artifacts (without versions), optionally of one type only."""
        endpoint = "artifacts/get-all"
        what = f"{endpoint} for workspace {workspace!r}"
        params = {"workspace": workspace}
        if artifact_type is not None:
            params["type"] = artifact_type
        return parse.parse_artifact_list(self._get_json(endpoint, what, params), workspace, what)

    def artifact(self, workspace: str, name: str) -> Artifact:
        """E5: one artifact with all its versions."""
        endpoint = "artifacts/get"
        what = f"{endpoint} for {workspace}/{name}"
        params = {"workspace": workspace, "artifactName": _artifact_name(name)}
        return parse.parse_artifact_details(self._get_json(endpoint, what, params), workspace, what)

    def artifact_version(
        self, workspace: str, name: str, *, version: str | None = None, alias: str | None = None
    ) -> ArtifactVersion:
        """E6: one version by version string or alias; neither means alias "latest", as the SDK
        does. When both are given the version wins and the alias is not sent (as the SDK)."""
        endpoint = "artifacts/version"
        params = {"workspace": workspace, "artifactName": _artifact_name(name)}
        if version is not None:
            params["version"] = version
        else:
            params["alias"] = alias if alias is not None else "latest"
        what = f"{endpoint} for {workspace}/{name}:{params.get('version', params.get('alias'))}"
        return parse.parse_artifact_version(self._get_json(endpoint, what, params), what)

    def assets(self, workspace: str, name: str, version: str) -> list[Asset]:
        """E7: every file of one version."""
        endpoint = "artifacts/version/files"
        what = f"{endpoint} for {workspace}/{name}:{version}"
        params = {"workspace": workspace, "artifactName": _artifact_name(name), "version": version}
        return parse.parse_assets(self._get_json(endpoint, what, params), what)

    def experiment_metadata(self, experiment_key: str) -> dict[str, Any]:
        """E9: the metadata of an experiment (the one that created a version)."""
        endpoint = "experiment/metadata"
        what = f"{endpoint} for experiment {experiment_key}"
        body = self._get_json(endpoint, what, {"experimentKey": experiment_key})
        return parse.parse_experiment_metadata(body, what)

    # Bytes (E8)

    def read_range(
        self,
        asset_id: str,
        version_id: str,
        start: int,
        end: int,
        *,
        expected_size: int | None = None,
    ) -> bytes:
        """Exactly the bytes [start, end) of an asset.

        Raises RangeNotSupported once the server is known to ignore Range (use stream()),
        StaleError when the asset's size is not `expected_size`.
        """
        if not 0 <= start < end:
            raise ValueError(f"need 0 <= start < end, got [{start}, {end})")
        if expected_size is not None and end > expected_size:
            raise ValueError(f"range [{start}, {end}) ends past the asset's {expected_size} bytes")
        what = f"{ASSET} for asset {asset_id} of version {version_id}, bytes [{start}, {end})"
        if self._mode == "stream":
            raise RangeNotSupported(f"{what}: the server ignores Range; stream the asset instead")
        headers = {
            "Range": f"bytes={start}-{end - 1}",
            # A Range applies to the encoded body; ask for none so lengths mean raw bytes.
            "Accept-Encoding": "identity",
        }
        return self._http.call(
            lambda: self._read_range_once(
                asset_id, version_id, start, end, expected_size, headers, what
            ),
            what,
        )

    @contextlib.contextmanager
    def stream(
        self,
        asset_id: str,
        version_id: str,
        *,
        chunk_size: int = 1 << 20,
        expected_size: int | None = None,
    ) -> Iterator[Iterator[bytes]]:
        """A context manager giving the whole asset body as an iterator of chunks.

        The first request is retried; a failure mid-body is not (the caller restarts).
        Raises StaleError before yielding anything when the size is not `expected_size`.
        """
        what = f"{ASSET} for asset {asset_id} of version {version_id}"

        def attempt() -> requests.Response:
            response = self._open_asset(
                asset_id, version_id, {"Accept-Encoding": "identity"}, what, allow301=False
            )
            if response.status_code != 200:
                with response:
                    self._http.check_status(response, what)
                    raise ProtocolError(f"{what}: expected HTTP 200, got {response.status_code}")
            return response

        with self._http.call(attempt, what) as response:
            declared = content_length(response)
            if declared is not None and expected_size is not None and declared != expected_size:
                raise self._stale(what, declared, expected_size)
            size = declared if declared is not None else expected_size
            yield self._http.iter_body(response, chunk_size, size, what)

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

        def attempt() -> Any:
            response = self._http.get(
                endpoint, full_url, what, params=params, follow_redirects=True
            )
            self._http.check_status(response, what)
            if response.status_code != 200:
                raise ProtocolError(f"{what}: expected HTTP 200, got {response.status_code}")
            if not is_json(response):
                content_type = response.headers.get("Content-Type")
                raise ProtocolError(f"{what}: expected JSON, got Content-Type {content_type!r}")
            try:
                return response.json()
            except ValueError:
                raise ProtocolError(f"{what}: the body is not valid JSON") from None

        return self._http.call(attempt, what)

    def _read_range_once(
        self,
        asset_id: str,
        version_id: str,
        start: int,
        end: int,
        expected_size: int | None,
        headers: Mapping[str, str],
        what: str,
    ) -> bytes:
        key = (asset_id, version_id)
        with self._lock:
            blob_url = self._blob_urls.get(key)
        if blob_url is not None:
            response = self._http.get(
                BLOB, blob_url, what, headers=headers, auth=False, stream=True
            )
            if response.status_code not in _BLOB_GONE:
                return self._take_range(response, start, end, expected_size, what)
            response.close()
            log.debug("%s: blob URL answered %d, resolving it again", what, response.status_code)
            with self._lock:
                self._blob_urls.pop(key, None)
        allow301 = self._mode in ("unknown", "redirect")
        response = self._open_asset(asset_id, version_id, headers, what, allow301=allow301)
        return self._take_range(response, start, end, expected_size, what)

    def _open_asset(
        self,
        asset_id: str,
        version_id: str,
        headers: Mapping[str, str],
        what: str,
        *,
        allow301: bool,
    ) -> requests.Response:
        """Send get-asset (streamed); if it redirects, GET the target without the key."""
        params = {
            "assetId": asset_id,
            "allow301": str(allow301),  # "True"/"False", as the SDK sends them
            "experimentKey": "",  # as API.get_artifact sends it; the server looks up by ids
            "artifactVersionId": version_id,
        }
        response = self._http.get(
            ASSET,
            self._rest + "experiment/asset/get-asset",
            what,
            params=params,
            headers=headers,
            stream=True,
        )
        if not response.is_redirect:
            return response
        location = urljoin(response.url, response.headers["Location"])
        response.close()
        self._detect("redirect")
        blob = self._http.get(BLOB, location, what, headers=headers, auth=False, stream=True)
        if blob.status_code in _BLOB_GONE:
            # get-asset already vouched for the asset and the key, so a URL it has just
            # handed out failing is the storage's trouble: worth a retry, not a 401/404.
            blob.close()
            raise Retryable(
                TransientError(f"{what}: the redirect target answered HTTP {blob.status_code}")
            )
        with self._lock:
            self._blob_urls[(asset_id, version_id)] = location
        return blob

    def _take_range(
        self,
        response: requests.Response,
        start: int,
        end: int,
        expected_size: int | None,
        what: str,
    ) -> bytes:
        """Check a streamed answer to a Range request and read exactly [start, end) from it."""
        with response:
            self._http.check_status(response, what)
            if response.status_code == 206:
                first, stop, total = parse.parse_content_range(
                    response.headers.get("Content-Range"), what
                )
                if expected_size is not None and total is not None and total != expected_size:
                    raise self._stale(what, total, expected_size)
                if (first, stop) != (start, end):
                    raise ProtocolError(f"{what}: the server sent bytes [{first}, {stop})")
                self._detect("range")
            elif response.status_code == 200:
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
            else:
                raise ProtocolError(f"{what}: unexpected HTTP {response.status_code}")
            return self._http.read_exact(response, end - start, what)

    def _detect(self, mode: ByteMode) -> None:
        """Record what get-asset does; "stream" overrides anything, the rest only "unknown"."""
        with self._lock:
            if self._mode == mode or (self._mode != "unknown" and mode != "stream"):
                return
            self._mode = mode
        log.info("%s byte mode: %s", self._root, mode)

    def _stale(self, what: str, size: int, expected: int) -> StaleError:
        return StaleError(f"{what}: the asset is {size} bytes, but was listed with {expected}")


def _artifact_name(name: str) -> str:
    # SDK >= 3.56 quotes the name itself and requests encodes it again; the server unquotes
    # twice, so a name holding "%" or "+" only survives if we do the same.
    return quote(name, safe="")
