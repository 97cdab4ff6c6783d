"""Resolve the API key, server URL and workspaces the way the comet_ml SDK does.

Order, first hit wins: explicit flags, then the environment (COMET_API_KEY,
COMET_URL_OVERRIDE, COMET_WORKSPACE), then the ini file named by COMET_CONFIG, then
./.comet.config, then ~/.comet.config. Only scheme://host:port of the URL counts. Runs on
the main thread at start-up.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cometfs.errors import ConfigError

DEFAULT_SERVER_URL = "https://www.comet.com"
# How long listings and mutable metadata are trusted (seconds); the one default of the
# store, the tree, the read path, the mount options and --metadata-ttl.
DEFAULT_METADATA_TTL = 30.0
# The disk cache's bound (bytes): the default of --cache-size, the Engine and comet://.
DEFAULT_CACHE_SIZE = 10 << 30


@dataclass(frozen=True)
class Config:
    """Resolved settings. The key is kept out of repr so it never lands in a log."""

    server_url: str
    api_key: str | None = field(default=None, repr=False)
    workspaces: tuple[str, ...] = ()
    default_workspace: str | None = None

    def require_key(self) -> str:
        if not self.api_key:
            raise ConfigError("no Comet API key: set COMET_API_KEY or api_key in ~/.comet.config")
        return self.api_key


def root_url(url: str) -> str:
    """Keep only scheme://host[:port], as the SDK does with COMET_URL_OVERRIDE.

    A URL with `user:password@` is refused, and the message does not repeat it: the
    password would land in the terminal and in logs, and requests would send it as Basic
    auth in place of the API key.
    """
    parts = urlsplit(url.strip())
    if "@" in parts.netloc:
        raise ConfigError(
            "the server URL must not carry credentials (user:password@host); "
            "give the API key with COMET_API_KEY or ~/.comet.config instead"
        )
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"server URL must look like http(s)://host[:port], got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"server URL has a bad port: {url!r}") from None
    return f"{parts.scheme}://{parts.netloc}"


def _ini_files(environ: Mapping[str, str], cwd: Path, home: Path) -> list[Path]:
    files: list[Path] = []
    named = environ.get("COMET_CONFIG") or environ.get("COMET_INI")
    if named:
        path = Path(named).expanduser()
        files.append(path / ".comet.config" if path.is_dir() else path)
    files.append(cwd / ".comet.config")
    files.append(home / ".comet.config")
    return files


def _read_ini(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        return {}
    except (OSError, configparser.Error) as exc:
        raise ConfigError(f"cannot read {path}: {exc.__class__.__name__}") from None
    return dict(parser["comet"]) if parser.has_section("comet") else {}


def resolve(
    *,
    api_key: str | None = None,
    server_url: str | None = None,
    workspaces: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
) -> Config:
    """Merge flags, environment and ini files into one Config."""
    env = os.environ if environ is None else environ
    sources: list[Mapping[str, str]] = [
        {
            k: v
            for k, v in {
                "api_key": env.get("COMET_API_KEY"),
                "url_override": env.get("COMET_URL_OVERRIDE"),
                "workspace": env.get("COMET_WORKSPACE"),
            }.items()
            if v
        }
    ]
    for path in _ini_files(env, cwd or Path.cwd(), home or Path.home()):
        sources.append(_read_ini(path))

    def first(key: str) -> str | None:
        for source in sources:
            if source.get(key):
                return source[key]
        return None

    key = api_key or first("api_key")
    url = root_url(server_url or first("url_override") or DEFAULT_SERVER_URL)
    # --workspace limits what a mount shows; COMET_WORKSPACE is only a default, as in the SDK.
    return Config(
        server_url=url,
        api_key=key,
        workspaces=tuple(workspaces),
        default_workspace=first("workspace"),
    )
