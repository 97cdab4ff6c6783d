"""Turn Comet names and asset logical paths into safe POSIX names; pure functions, any thread.

Workspace, artifact, alias and version names are escaped reversibly (escape_name/unescape_name);
file_name also shortens an escaped name over NAME_MAX bytes the way over-long asset path
components are shortened (a prefix, '~' and a hash of the whole), so the name is still unique
and deterministic; a shortened name is resolved through the listing that produced it.
Asset logical paths are not under our control and may be hostile ("../x", "/etc/passwd",
"a//b", NUL, over-long components, a file that is also a directory, duplicates, ".comet/..."):
map_asset_paths gives every asset a safe, deterministic relative path that stays inside the
version directory, and reports what it changed so the tree can publish path-map.json.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

NAME_MAX = 255
PATH_MAX = 4095
RESERVED = ".comet"
NOT_A_URI = "remote link is not a URI"

_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_CODE = re.compile("%u(D[89A-F][0-9A-F]{2})")


def _surrogate_code(match: re.Match[str]) -> str:
    return f"%u{ord(match.group()):04X}"


# RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then ':'.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def escape_name(name: str) -> str:
    """Reversible file name for a workspace/artifact/alias name.

    '%' '/' and NUL are percent-encoded; a leading '.' too, so no name can be '.', '..'
    or collide with the reserved '.comet' directory. A lone surrogate (JSON allows
    "\\ud800", a file name cannot hold it) becomes '%uD800'.
    """
    out = name.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    out = _SURROGATE.sub(_surrogate_code, out)
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
        if escaped.startswith("%u", i) and _SURROGATE_CODE.fullmatch(escaped[i : i + 6]):
            out.append(chr(int(escaped[i + 2 : i + 6], 16)))
            i += 6
        elif escaped[i] == "%":
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


def file_name(name: str) -> str:
    """The directory entry for a workspace/artifact/alias/version name: escaped, and
    shortened when the escaped form is over NAME_MAX bytes."""
    escaped = escape_name(name)
    if len(escaped.encode("utf-8", "surrogatepass")) > NAME_MAX:
        return _short(escaped)
    return escaped


def name_of(entry: str) -> str | None:
    """Inverse of file_name for names that were not shortened; None otherwise (a shortened
    name is found only in the listing that produced it)."""
    if len(entry.encode("utf-8", "surrogatepass")) > NAME_MAX:
        return None
    name = unescape_name(entry)
    return name if name is not None and file_name(name) == entry else None


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
    if _SURROGATE.search(component):
        component = _SURROGATE.sub(_surrogate_code, component)
        reason = "; ".join(filter(None, [reason, "not valid UTF-8"]))
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
        # The hash covers the suffix, so the shortened loser still differs from the winner.
        last = _short(last)
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


def remote_link_refusal(link: str | None, directory: str = "") -> str | None:
    """Why a remote asset's link may not become a symlink at `directory` (the symlink's
    directory, relative to the version directory), or None when it may.

    The rule: a symlink is published only for a URI (RFC 3986 `scheme:`, e.g. s3://, gs://,
    https://) of at most PATH_MAX bytes without NUL and without '.' or '..' segments. The
    kernel reads such a target as a relative path whose first component ("s3:") lies inside
    the symlink's own directory, and without '..' it can only descend from there; the lexical
    check below (normpath against `directory`) restates that it never leaves the version.
    The tree additionally refuses a target whose first component names a real entry of that
    directory, so every published link dangles: following it reads nothing at all, and it
    cannot loop (ELOOP) or make `cp -rL` copy anything. Any other link is not shown on disk;
    it stays listed in `.comet/assets.json` and `.comet/path-map.json` with the reason.
    """
    if not isinstance(link, str) or not link or "\0" in link or _SURROGATE.search(link):
        return NOT_A_URI
    if len(link.encode("utf-8", "surrogatepass")) > PATH_MAX:
        return f"remote link longer than {PATH_MAX} bytes"
    if not _URI.match(link):
        return NOT_A_URI
    if any(part in (".", "..") for part in link.split("/")):
        return "remote link has '.' or '..' segments"
    resolved = posixpath.normpath(posixpath.join("/version", directory, link))
    if not resolved.startswith("/version/"):
        return "remote link leaves the version directory"
    return None
