"""API keys of the local server and the workspaces each may see.

Keys come from `--api-key`, from a key file (`load_api_key_file`: keeps them out of `ps`),
or from COMET_API_KEY.

Parsed once at start-up on the main thread; `ApiKey.matches` is called from handler
threads and only reads. The key is never part of a repr, log line or response.
"""

from __future__ import annotations

import hmac
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ApiKey:
    """A key and, optionally, the only workspaces it may see (None = every workspace)."""

    key: str = field(repr=False)
    workspaces: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError("an API key must be a non-empty string")
        if self.workspaces is not None and not self.workspaces:
            raise ValueError("an API key's workspace list must not be empty")

    def matches(self, header: str) -> bool:
        """True for the raw key, or for an enhanced `KEY*base64` whose KEY part is ours."""
        # compare_digest needs equal types; encode so non-ASCII headers cannot raise.
        mine = self.key.encode("utf-8", "surrogateescape")
        whole = header.encode("utf-8", "surrogateescape")
        prefix = header.partition("*")[0].encode("utf-8", "surrogateescape")
        return hmac.compare_digest(whole, mine) or hmac.compare_digest(prefix, mine)

    def sees(self, workspace: str) -> bool:
        return self.workspaces is None or workspace in self.workspaces


def parse_api_key(spec: str) -> ApiKey:
    """Parse `KEY[:WS,WS...]` as given to `cometfs serve --api-key`.

    The key is everything before the first ':' (Comet keys, enhanced ones included, never
    contain one). Raises ValueError with a message that does not repeat the key.
    """
    key, sep, ws_part = spec.partition(":")
    key = key.strip()
    if not key:
        raise ValueError("--api-key needs a non-empty key before any ':'")
    if not sep:
        return ApiKey(key, None)
    names = [w.strip() for w in ws_part.split(",") if w.strip()]
    if not names:
        raise ValueError("--api-key KEY:WS,... needs at least one workspace after ':'")
    for name in names:
        if "/" in name:
            raise ValueError(f"workspace name {name!r} in --api-key must not contain '/'")
    return ApiKey(key, frozenset(names))


def load_api_key_file(path: Path) -> list[ApiKey]:
    """Read keys from a file: one `KEY[:WS,WS...]` per line; blank lines and `#` comments skip.

    The file must not grant group or other users any access (a key file others can read
    leaks every key; one they can write lets them add keys). Errors name the file and line,
    never a key.
    """
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ValueError(
                    f"API key file {path} is accessible by group or others "
                    f"(mode {stat.S_IMODE(mode):04o}): run chmod 600 {path}"
                )
            lines = f.read().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read API key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"API key file {path} is not UTF-8 text") from None
    keys: list[ApiKey] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            keys.append(parse_api_key(text))
        except ValueError as exc:
            raise ValueError(f"API key file {path}, line {number}: {exc}") from None
    if not keys:
        raise ValueError(f"API key file {path} holds no keys")
    return keys
