"""The local Comet-compatible server (`cometfs serve`) and its store (`cometfs store add`).

Never imported by the mount side. `serve_forever` runs on the main thread (it installs
signal handlers); the server itself serves from background threads (see app.py).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from cometfs.errors import CometFSError
from cometfs.server.app import CometServer
from cometfs.server.auth import ApiKey, load_api_key_file, parse_api_key
from cometfs.server.demo import seed_demo
from cometfs.server.faults import FaultPlan, FaultRule, parse_faults
from cometfs.server.store import ArtifactStore, AssetSource, VersionSpec

logger = logging.getLogger(__name__)

__all__ = [
    "ApiKey",
    "ArtifactStore",
    "AssetSource",
    "CometServer",
    "FaultPlan",
    "FaultRule",
    "VersionSpec",
    "load_api_key_file",
    "parse_api_key",
    "parse_faults",
    "seed_demo",
    "serve_forever",
]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_forever(
    store_root: Path,
    *,
    host: str,
    port: int,
    api_keys: Sequence[ApiKey],
    demo: bool,
    ranges: bool,
    redirect: bool,
    faults: FaultPlan | None,
    latency: float = 0.0,
) -> None:
    """Serve until SIGINT/SIGTERM; prints one 'listening' line to stdout once ready.

    A port in use raises CometFSError with one line saying what to do.
    """
    store = ArtifactStore(store_root)
    if demo:
        seed_demo(store)
    if not _is_loopback(host):
        logger.warning(
            "serving on non-loopback address %s: anyone who can reach it and "
            "knows a key can read the store",
            host,
        )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("server: signal %d, shutting down", signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = CometServer(
        store,
        host=host,
        port=port,
        api_keys=api_keys,
        ranges=ranges,
        redirect=redirect,
        faults=faults,
        latency=latency,
    )
    try:
        try:
            server.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise CometFSError(
                f"port {port} on {host} is in use: stop the other server or pass --port N"
            ) from None
        print(f"cometfs serve: listening on {server.url} (store {store_root})", flush=True)
        stop.wait()
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
