"""The server's request log: one dict per request, shared by every handler thread.

An entry is recorded *before* the first byte of its response leaves the server (and
updated when the body is done), so a client that has its answer can rely on the entry
being there. Entries never hold the Authorization header. Thread-safe.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class RequestLog:
    """A thread-safe list of request entries, optionally mirrored to a JSON-lines file.

    Only the newest `maxlen` entries are kept in memory (None = all). Entry keys: time
    (epoch seconds), method, path, endpoint, params (dict), range (the Range header or
    None), status (None when the connection was reset without an answer), bytes (body
    bytes sent), duration_ms.
    """

    def __init__(self, path: Path | None = None, *, maxlen: int | None = None) -> None:
        self._lock = threading.Lock()
        # Bounded so a long-running `cometfs serve` does not grow without limit.
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._path = path

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)

    def update(self, entry: dict[str, Any], **fields: Any) -> None:
        with self._lock:
            entry.update(fields)

    def finish(self, entry: dict[str, Any]) -> None:
        """Mirror a completed entry to the JSON-lines file, if any."""
        if self._path is None:
            return
        with self._lock:
            line = json.dumps(entry, sort_keys=True, default=str)
            try:
                with open(self._path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError as exc:
                logger.warning("request log %s: %s", self._path, exc)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def entries(
        self, endpoint: str | None = None, status: int | None = None
    ) -> list[dict[str, Any]]:
        """Copies of the entries, optionally only those for one endpoint and/or status."""
        with self._lock:
            return [
                dict(e)
                for e in self._entries
                if (endpoint is None or e["endpoint"] == endpoint)
                and (status is None or e["status"] == status)
            ]

    def count(self, endpoint: str | None = None, status: int | None = None) -> int:
        return len(self.entries(endpoint, status))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.entries())

    def __getitem__(self, index: int) -> dict[str, Any]:
        with self._lock:
            return dict(self._entries[index])
