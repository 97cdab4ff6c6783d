"""The local Comet-compatible HTTP server: the plumbing around the endpoints.

`CometServer` wraps a stdlib `ThreadingHTTPServer`. Its accept loop runs on one background
thread (started by `start()`); every connection gets its own daemon handler thread, so
parallel downloads are served in parallel. The handler parses the request, applies latency
and faults, checks the key, calls the endpoint that endpoints.py's route table names, writes
its answer (JSON, a redirect, or blob bytes with Range and sendfile) and keeps the request
log. Endpoints read the store through `ArtifactStore.snapshot()`, which picks up commits made
by other processes on the next request.

Choices for behaviour the real backend does not document ([INFERRED] in the spec):

- An unknown artifact, version or alias answers 400 with sdk_error_code 624523 (the Java
  SDK's noArtifactVersionFound) for artifacts/get, artifacts/version and
  artifacts/version/files alike. The Python SDK maps only 624523 to `ArtifactNotFound`;
  624522 (noArtifactFound) would surface as a bare `CometRestApiException`.
- artifacts/get-all on an unknown, or not permitted, workspace answers
  404 {"msg": "Workspace not found", "code": 404, "sdk_error_code": 90219}. A key with a
  workspace list sees exactly those workspaces (listed by `workspaces` even while empty);
  anything in another workspace behaves as if it did not exist.
- get-asset: an unknown asset (or one whose artifactVersionId does not match) is 404; a
  remote asset is 400 (it has no bytes here). experiment/metadata of an unknown
  experiment is 404.
- A missing or wrong key on /api/rest/v2/* is 401 with sdk_error_code 90212
  (apiKeyNotRegistered). /clientlib/isAlive/ver and /blob/<token> need no key.
- get-asset honours a single `Range` (206/416) unless the server runs with ranges=False,
  sends `Accept-Ranges: bytes` and an `ETag` holding the blob's sha256. With
  redirect=True and allow301=true it answers 302 to /blob/<token> on this server, where
  the token is an HMAC (per-server secret) of the blob id and an expiry.
- Non-GET/HEAD methods answer 405 (the server is read-only).
- `latency` (seconds) is added before every answer, to model a WAN for benchmarks; it and
  the waiting fault kinds (trickle, stall) end early when the server closes.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import hmac
import json
import logging
import math
import os
import re
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

from cometfs.server import endpoints, render
from cometfs.server.auth import ApiKey, parse_api_key
from cometfs.server.bomb import gzip_bomb
from cometfs.server.endpoints import (
    SDK_BAD_KEY,
    HttpError,
    JsonResponse,
    RedirectResponse,
    Request,
    Response,
)
from cometfs.server.faults import STALL_MAX, FaultPlan, FaultRule
from cometfs.server.reqlog import RequestLog
from cometfs.server.store import ArtifactStore
from cometfs.wire import Endpoint, Field

logger = logging.getLogger(__name__)

SDK_NOT_FINAL = 90402
HUGE_SIZE = 2**64
JSON_TYPE = "application/json"
BYTES_TYPE = "application/octet-stream"
REDIRECT_TTL = 3600.0
_IDLE_TIMEOUT = 300.0
_BLOB_TOKEN_RE = re.compile(r"^([0-9a-f]{64})\.(\d+)\.([0-9a-f]{64})$")
_RANGE_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")

_UNSATISFIABLE = (-1, -1)


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse one `bytes=` range against `size`.

    Returns (first, last) inclusive, `_UNSATISFIABLE`, or None to ignore the header
    (malformed or multi-range: RFC 9110 lets a server answer those with the full body).
    """
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    m = _RANGE_RE.match(spec)
    if m is None:
        return None
    first_s, last_s = m.groups()
    if not first_s and not last_s:
        return None
    if not first_s:
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            return _UNSATISFIABLE
        return max(0, size - suffix), size - 1
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None
    if first >= size:
        return _UNSATISFIABLE
    last = min(int(last_s), size - 1) if last_s else size - 1
    return first, last


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, app: CometServer, address: tuple[str, int]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self._conn_lock = threading.Lock()
        self._active: set[socket.socket] = set()
        self._to_reset: set[int] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup we do not want.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._active.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._conn_lock:
                self._active.discard(request)

    def mark_reset(self, request: socket.socket) -> None:
        with self._conn_lock:
            self._to_reset.add(id(request))

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            reset = id(request) in self._to_reset
            self._to_reset.discard(id(request))
        if reset:
            # Skip the orderly shutdown(SHUT_WR): with SO_LINGER 0, close() sends an RST.
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections so they exit."""
        with self._conn_lock:
            active = list(self._active)
        for sock in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            # A client dropping or resetting an idle keep-alive connection is routine.
            logger.debug("server: connection from %s ended: %s", client_address, exc)
        else:
            logger.exception("server: unhandled error on a connection from %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cometfs-local"
    timeout = _IDLE_TIMEOUT
    # Headers and body go out in separate writes; with Nagle on, every small answer would
    # wait ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _HTTPServer

    # ---- plumbing --------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON instead of the stdlib's HTML for requests it rejects itself (malformed ones)."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        body = json.dumps(render.error_body(message or phrase, code, None)).encode()
        self.send_response(code, message)
        self.send_header("Content-Type", JSON_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _not_allowed(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)  # keep the keep-alive stream in sync
        self._dispatch(head=False, method_allowed=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _dispatch(self, *, head: bool, method_allowed: bool = True) -> None:
        app = self.server.app
        split = urlsplit(self.path)
        path = split.path
        params = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        route = endpoints.route(path)
        endpoint = route.name
        self._head = head
        self._fault: FaultRule | None = None
        self._bytes = 0
        self._entry: dict[str, Any] = {
            "time": time.time(),
            "method": self.command,
            "path": path,
            "endpoint": endpoint,
            "params": params,
            "range": self.headers.get("Range"),
            "status": None,
            "bytes": 0,
            "duration_ms": None,
        }
        self._recorded = False
        started = time.monotonic()
        try:
            if app.latency > 0:
                app.closing.wait(app.latency)
            delay, rule = app.faults.pick(endpoint)
            if delay > 0:
                time.sleep(delay)
            if rule is not None and self._apply_fault(rule):
                return
            if not method_allowed:
                raise HttpError(
                    405,
                    f"method {self.command} not allowed: the server is read-only",
                    headers=[("Allow", "GET, HEAD")],
                )
            key = None
            if route.needs_key:
                key = app.authenticate(self.headers.get("Authorization"))
                if key is None:
                    raise HttpError(401, "Invalid or missing API key", SDK_BAD_KEY)
            request = Request(
                path=path,
                params=params,
                store=app.store,
                signer=app,
                key=key,
                host=self.headers.get("Host") or app.url.split("://", 1)[1],
                ranges=app.ranges,
                redirect=app.redirect,
            )
            self._respond(endpoint, route.endpoint(request))
        except HttpError as exc:
            self._send_json(
                exc.status, render.error_body(exc.msg, exc.status, exc.sdk_error_code), exc.headers
            )
        except (ConnectionError, TimeoutError):
            logger.debug("server: client went away during %s", endpoint)
            self.close_connection = True
        except Exception:
            logger.exception("server: internal error on %s %s", self.command, path)
            if self._recorded:
                self.close_connection = True  # headers already went out; cannot recover
            else:
                self._send_json(500, render.error_body("internal server error", 500, None))
        finally:
            self._entry_done(started)

    def _entry_done(self, started: float) -> None:
        log = self.server.app.request_log
        if not self._recorded:
            log.record(self._entry)
            self._recorded = True
        log.update(
            self._entry,
            bytes=self._bytes,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
        )
        log.finish(self._entry)

    def _begin(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """Record the log entry, then send the status line and headers."""
        self._entry["status"] = status
        self.server.app.request_log.record(self._entry)
        self._recorded = True
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()

    def _fault_kind(self) -> str | None:
        return self._fault.kind if self._fault is not None else None

    def _body_length(self, length: int) -> int:
        """How many of `length` body bytes to send under the current fault."""
        if self._fault_kind() in ("truncate", "reset-mid", "stall"):
            return length // 2
        return length

    def _after_body(self) -> None:
        """What the cutting faults do once their part of the body is out."""
        kind = self._fault_kind()
        if kind == "truncate":
            self.close_connection = True
        elif kind == "reset-mid":
            self._reset()
        elif kind == "stall":
            app = self.server.app
            logger.info(
                "server: stalling a %s body until close (at most %gs)",
                self._entry["endpoint"],
                STALL_MAX,
            )
            app.closing.wait(STALL_MAX)
            self.close_connection = True

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.mark_reset(self.connection)
        self.close_connection = True

    def _emit(self, data: bytes | memoryview) -> None:
        """Write body bytes, paced when the trickle fault is on."""
        if self._fault_kind() != "trickle":
            self.wfile.write(data)
            self._bytes += len(data)
            return
        assert self._fault is not None
        rate = self._fault.rate
        step = max(1, int(rate / 10))  # about ten writes a second
        view = memoryview(data)
        closing = self.server.app.closing
        for start in range(0, len(view), step):
            piece = view[start : start + step]
            self.wfile.write(piece)
            self._bytes += len(piece)
            if closing.wait(len(piece) / rate):
                raise ConnectionAbortedError("server closing during a trickled body")

    def _write(self, data: bytes) -> None:
        if self._head:
            return
        self._emit(data[: self._body_length(len(data))])
        self._after_body()

    def _send_json(self, status: int, obj: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        body = json.dumps(obj).encode("utf-8")
        extra = list(headers)
        if self._fault_kind() == "gzip-bomb":
            assert self._fault is not None
            body = gzip_bomb(body, self._fault.size)
            extra.append(("Content-Encoding", "gzip"))
        self._begin(
            status, [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body))), *extra]
        )
        self._write(body)

    def _apply_fault(self, rule: FaultRule) -> bool:
        """Apply a terminal fault; True when the request is fully handled by it."""
        logger.info("server: injecting %s fault on %s", rule.kind, self._entry["endpoint"])
        if rule.kind == "status":
            status = int(rule.status or 500)
            headers = []
            if rule.retry_date:
                # HTTP-dates have whole seconds: the next second but one is 1-2 s ahead.
                when = math.floor(time.time()) + 2
                headers.append(("Retry-After", email.utils.formatdate(when, usegmt=True)))
            elif rule.retry_after is not None:
                headers.append(("Retry-After", f"{rule.retry_after:g}"))
            self._send_json(
                status, render.error_body(f"injected fault {status}", status, None), headers
            )
            return True
        if rule.kind == "not-final":
            self._send_json(
                400,
                render.error_body(
                    "Artifact version is not in a finalized state (injected fault)",
                    400,
                    SDK_NOT_FINAL,
                ),
            )
            return True
        if rule.kind == "reset":
            self._reset()
            return True
        # The others change how the normal answer goes out.
        self._fault = rule
        return False

    def _respond(self, endpoint: str, response: Response) -> None:
        if isinstance(response, JsonResponse):
            body = response.body
            if (
                self._fault_kind() == "huge-size"
                and endpoint == Endpoint.VERSION_FILES
                and body[Field.FILES]
            ):
                body[Field.FILES][0][Field.FILE_SIZE] = HUGE_SIZE
            self._send_json(response.status, body, response.headers)
        elif isinstance(response, RedirectResponse):
            self._begin(302, [("Location", response.location), ("Content-Length", "0")])
        else:
            self._send_blob(response.path, response.sha256, response.ranges)

    # ---- bytes -------------------------------------------------------------------------

    def _send_blob(self, path: Path, sha256: str, ranges: bool) -> None:
        try:
            f: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed below, after sendfile
        except FileNotFoundError:
            logger.error("server: blob %s is missing from the store", sha256)
            raise HttpError(500, "asset bytes are missing from the store") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            first, last, status = 0, size - 1, 200
            honour = ranges and self._fault_kind() != "norange"
            header = self.headers.get("Range") if honour else None
            if header is not None:
                window = parse_range(header, size)
                if window == _UNSATISFIABLE:
                    raise HttpError(
                        416, "Range Not Satisfiable", headers=[("Content-Range", f"bytes */{size}")]
                    )
                if window is not None:
                    first, last = window
                    status = 206
            length = last - first + 1 if size else 0
            headers = [
                ("Content-Type", BYTES_TYPE),
                ("Content-Length", str(length)),
                ("ETag", f'"{sha256}"'),
            ]
            if ranges:
                headers.append(("Accept-Ranges", "bytes"))
            if status == 206:
                headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
            self._begin(status, headers)
            if self._head or length == 0:
                return
            length = self._body_length(length)
            if self._fault_kind() == "trickle":
                f.seek(first)
                remaining = length
                while remaining > 0 and (chunk := f.read(min(remaining, 1 << 16))):
                    self._emit(chunk)
                    remaining -= len(chunk)
                sent = length - remaining
            else:
                # socket.sendfile uses os.sendfile: the bytes never pass through Python.
                sent = self.connection.sendfile(f, first, length)
                self._bytes += sent
            if sent < length:
                self.close_connection = True
            self._after_body()


class CometServer:
    """A Comet-compatible REST server over a `ArtifactStore`, on a background thread.

    `request_log` records every request (the newest `request_log_max` in memory; all of
    them in `request_log_path` when given); `faults` can be changed while it runs.
    `redirect_ttl` is how long a /blob/<token> URL from a redirect stays valid.
    """

    def __init__(
        self,
        store: ArtifactStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Sequence[ApiKey | str],
        ranges: bool = True,
        redirect: bool = False,
        faults: FaultPlan | None = None,
        request_log_path: Path | None = None,
        request_log_max: int | None = 100_000,
        redirect_ttl: float = REDIRECT_TTL,
        latency: float = 0.0,
    ) -> None:
        keys = [k if isinstance(k, ApiKey) else parse_api_key(k) for k in api_keys]
        if not keys:
            raise ValueError("a server needs at least one API key")
        if not latency >= 0:
            raise ValueError(f"latency must be >= 0 seconds, got {latency}")
        self.store = store
        self.host = host
        self.port = port
        # Replaced whole (never mutated) under _keys_lock, so handler threads read it lock-free.
        self.api_keys: tuple[ApiKey, ...] = tuple(keys)
        self._keys_lock = threading.Lock()
        self.latency = latency
        # Set by close(): ends latency waits, trickles and stalls on handler threads.
        self.closing = threading.Event()
        self.ranges = ranges
        self.redirect = redirect
        self.redirect_ttl = redirect_ttl
        self.faults = faults if faults is not None else FaultPlan()
        self.request_log = RequestLog(request_log_path, maxlen=request_log_max)
        self._secret = os.urandom(32)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> CometServer:
        """Bind, listen and serve on a background thread; returns once listening."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self.closing.clear()
        self._httpd = _HTTPServer(self, (self.host, self.port))
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"cometfs-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("server: listening on %s", self.url)
        return self

    def close(self) -> None:
        """Stop accepting, drop idle connections, wait for the accept loop, free the port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.closing.set()
        httpd.shutdown()
        httpd.drop_connections()
        if self._thread is not None:
            self._thread.join()
        httpd.server_close()

    def __enter__(self) -> CometServer:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_key(self, key: ApiKey | str) -> None:
        """Accept one more key (`KEY[:WS,...]` or an ApiKey) from the next request on."""
        new = key if isinstance(key, ApiKey) else parse_api_key(key)
        with self._keys_lock:
            self.api_keys = (*self.api_keys, new)

    def revoke_key(self, key: str) -> None:
        """Stop accepting `key` from the next request on (for tests of a revoked key).

        Connections stay open; their next request is a 401. ValueError (not naming the key)
        when the key was not accepted.
        """
        with self._keys_lock:
            kept = tuple(
                k
                for k in self.api_keys
                if not hmac.compare_digest(
                    k.key.encode("utf-8", "surrogateescape"), key.encode("utf-8", "surrogateescape")
                )
            )
            if len(kept) == len(self.api_keys):
                raise ValueError("revoke_key: that key is not accepted by this server")
            self.api_keys = kept

    def authenticate(self, header: str | None) -> ApiKey | None:
        if not header:
            return None
        for key in self.api_keys:
            if key.matches(header.strip()):
                return key
        return None

    def blob_token(self, sha256: str, now: float | None = None) -> str:
        expiry = int((time.time() if now is None else now) + self.redirect_ttl)
        mac = hmac.new(self._secret, f"{sha256}.{expiry}".encode(), hashlib.sha256).hexdigest()
        return f"{sha256}.{expiry}.{mac}"

    def check_blob_token(self, token: str) -> str | None:
        """The blob id a token grants, or None when it is forged or expired."""
        m = _BLOB_TOKEN_RE.match(token)
        if m is None:
            return None
        sha, expiry, mac = m.groups()
        good = hmac.new(self._secret, f"{sha}.{expiry}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(good, mac) or int(expiry) < time.time():
            return None
        return sha
