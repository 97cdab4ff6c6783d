"""Turn Comet names and asset logical paths into safe POSIX names; pure functions, any thread.

Workspace, artifact and alias names are escaped reversibly (escape_name/unescape_name).
Asset logical paths are not under our control and may be hostile ("../x", "/etc/passwd",
"a//b", NUL, over-long components, a file that is also a directory, duplicates, ".comet/..."):
map_asset_paths gives every asset a safe, deterministic relative path that stays inside the
version directory, and reports what it changed so the tree can publish path-map.json.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

NAME_MAX = 255
RESERVED = ".comet"


def escape_name(name: str) -> str:
    """Reversible file name for a workspace/artifact/alias name.

    '%' '/' and NUL are percent-encoded; a leading '.' too, so no name can be '.', '..'
    or collide with the reserved '.comet' directory.
    """
    out = name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    if out.startswith("."):
        out = "%2E" + out[1:]
    return out or "%"


def unescape_name(escaped: str) -> str | None:
    """Inverse of escape_name; None for a string escape_name can never produce."""
    if escaped == "%":
        return ""
    out: list[str] = []
    i = 0
    codes = {"%25": "%", "%2F": "/", "%00": "\0", "%2E": "."}
    while i < len(escaped):
        if escaped[i] == "%":
            code = escaped[i : i + 3]
            if code not in codes:
                return None
            out.append(codes[code])
            i += 3
        else:
            out.append(escaped[i])
            i += 1
    name = "".join(out)
    return name if escape_name(name) == escaped else None


@dataclass(frozen=True)
class MappedPath:
    """Where one asset appears: `path` is relative to the version directory."""

    index: int
    logical_path: str
    path: str
    reason: str | None  # None when path == logical_path


def _short(component: str) -> str:
    """Cut an over-long component to fit NAME_MAX, keeping it unique with a hash."""
    digest = hashlib.sha256(component.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    head = component.encode("utf-8", "surrogatepass")[: NAME_MAX - 17]
    return head.decode("utf-8", "ignore") + "~" + digest


def _safe_component(component: str, first: bool) -> tuple[str, str | None]:
    if component == "":
        return "%empty", "empty path component"
    if component in (".", ".."):
        return component.replace(".", "%2E"), f"'{component}' component"
    if "\0" in component:
        component = component.replace("\0", "%00")
        reason: str | None = "NUL in name"
    else:
        reason = None
    if first and component == RESERVED:
        return "%2Ecomet", "collides with .comet"
    if len(component.encode("utf-8", "surrogatepass")) > NAME_MAX:
        return _short(component), "name longer than 255 bytes"
    return component, reason


def _safe_path(logical: str) -> tuple[list[str], str | None]:
    parts = logical.split("/")
    reasons: list[str] = []
    if logical.startswith("/"):
        parts = parts[1:]
        reasons.append("absolute path")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
        reasons.append("trailing slash")
    safe: list[str] = []
    for i, component in enumerate(parts):
        name, reason = _safe_component(component, first=(i == 0))
        safe.append(name)
        if reason:
            reasons.append(reason)
    return safe, "; ".join(dict.fromkeys(reasons)) or None


def _with_suffix(parts: list[str], suffix: str) -> list[str]:
    last = parts[-1] + suffix
    if len(last.encode("utf-8", "surrogatepass")) > NAME_MAX:
        last = _short(parts[-1]) + suffix
    return [*parts[:-1], last]


def map_asset_paths(logical_paths: Sequence[str], ids: Sequence[str]) -> list[MappedPath]:
    """Place each asset at a unique, safe path; returns one MappedPath per input, in order.

    Deterministic: clean paths are placed before mapped ones, then conflicts are settled
    in (logical_path, id) order; a losing file gets '~<id prefix>' appended, so the same
    listing always maps the same way.
    """
    candidates = [_safe_path(p) for p in logical_paths]
    directories: set[tuple[str, ...]] = set()
    for parts, _ in candidates:
        for depth in range(1, len(parts)):
            directories.add(tuple(parts[:depth]))

    taken: set[tuple[str, ...]] = set()
    result: list[MappedPath | None] = [None] * len(logical_paths)
    order = sorted(
        range(len(logical_paths)),
        key=lambda i: (candidates[i][1] is not None, logical_paths[i], ids[i]),
    )
    for i in order:
        parts, reason = candidates[i]
        if tuple(parts) in directories or tuple(parts) in taken:
            reason = "; ".join(filter(None, [reason, "path already taken"]))
            for suffix in (f"~{ids[i][:8]}", f"~{ids[i]}", f"~{ids[i]}~{i}"):
                moved = _with_suffix(parts, suffix)
                if tuple(moved) not in directories and tuple(moved) not in taken:
                    parts = moved
                    break
        taken.add(tuple(parts))
        result[i] = MappedPath(i, logical_paths[i], "/".join(parts), reason)
    return [m for m in result if m is not None]
