"""What is mounted and what is cached on this machine: `cometfs status` and `cometfs cache`.

Runs on the CLI's main thread. The kernel's mount table (/proc/self/mountinfo) says which
cometfs mounts belong to this user; each mount's own MOUNT/.comet/status.json says the rest
(server, pid, cache directory, counters). Nothing here talks to a Comet server.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cometfs.errors import CometFSError

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
FSTYPE = "fuse.cometfs"


@dataclass(frozen=True)
class MountEntry:
    mountpoint: Path
    user_id: int | None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The cometfs mounts listed in a mountinfo text, in mount order."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        if not sep:
            continue
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] != FSTYPE:
            continue
        user_id: int | None = None
        for option in tail[2].split(","):
            if option.startswith("user_id="):
                user_id = int(option.removeprefix("user_id="))
        entries.append(MountEntry(Path(_unescape(fields[4])), user_id))
    return entries


def cometfs_mounts(mountinfo: str | None = None, uid: int | None = None) -> list[MountEntry]:
    """This user's cometfs mounts (root sees everyone's)."""
    text = MOUNTINFO.read_text() if mountinfo is None else mountinfo
    me = os.getuid() if uid is None else uid
    return [m for m in parse_mountinfo(text) if me == 0 or m.user_id in (None, me)]


def mount_of(path: Path, mounts: Iterable[MountEntry] | None = None) -> Path | None:
    """The cometfs mount point that holds `path`, or None."""
    absolute = Path(os.path.abspath(path))
    best: Path | None = None
    for entry in cometfs_mounts() if mounts is None else mounts:
        inside = absolute == entry.mountpoint or entry.mountpoint in absolute.parents
        if inside and (best is None or len(entry.mountpoint.parts) > len(best.parts)):
            best = entry.mountpoint
    return best


def read_status(mountpoint: Path) -> dict[str, Any]:
    """A mount's live figures; {"error": ...} when the mount does not answer."""
    try:
        status: dict[str, Any] = json.loads((mountpoint / ".comet" / "status.json").read_bytes())
    except OSError as exc:
        dead = exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        hint = f" (clear it with: cometfs unmount {mountpoint})" if dead else ""
        return {"mountpoint": str(mountpoint), "error": f"{exc.strerror}{hint}"}
    except ValueError as exc:
        return {"mountpoint": str(mountpoint), "error": f"unreadable status.json: {exc}"}
    status["mountpoint"] = str(mountpoint)
    return status


def hit_rate(cache: dict[str, Any]) -> float | None:
    """Share of block lookups answered from memory or disk, or None before the first read.

    A miss is a fetch or a stream from the server (one may carry several blocks), so this
    leans low on big sequential reads; it answers "is the cache doing its job", not more.
    """
    hits = int(cache.get("hits_memory", 0)) + int(cache.get("hits_disk", 0))
    misses = int(cache.get("fetches", 0)) + int(cache.get("streams", 0))
    total = hits + misses
    return hits / total if total else None


def error_count(status: dict[str, Any]) -> int:
    cache = status.get("cache", {})
    requests = status.get("requests", {})
    return int(requests.get("retries", 0)) + sum(
        int(cache.get(k, 0)) for k in ("fetch_errors", "stream_errors", "disk_errors")
    )


def request_count(status: dict[str, Any]) -> int:
    requests = status.get("requests", {})
    return sum(int(v) for k, v in requests.items() if k not in ("retries", "bytes_received"))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_status(status: dict[str, Any]) -> str:
    """A few aligned lines per mount, for people; --json gives scripts the whole record."""
    lines = [f"{status['mountpoint']}"]
    if "error" in status:
        return "\n".join([*lines, f"  error:      {status['error']}"])
    cache = status.get("cache", {})
    requests = status.get("requests", {})
    rate = hit_rate(cache)
    lines += [
        f"  server:     {status.get('server')}",
        f"  workspaces: {', '.join(status.get('workspaces') or []) or '(all)'}",
        f"  pid:        {status.get('pid')}",
        f"  cache dir:  {status.get('cache_dir')}",
        f"  disk cache: {human_bytes(cache.get('disk_bytes', 0))} of "
        f"{human_bytes(cache.get('disk_capacity', 0))}",
        f"  hit rate:   {'-' if rate is None else f'{rate:.0%}'}",
        f"  requests:   {request_count(status)} "
        f"({human_bytes(requests.get('bytes_received', 0))} received), "
        f"errors and retries: {error_count(status)}",
        f"  byte mode:  {status.get('byte_mode')}",
        f"  mounted at: {status.get('mounted_at')}",
    ]
    return "\n".join(lines)


# -- the disk cache directories ---------------------------------------------------------------


def directory_bytes(path: Path) -> int:
    """The disk space the files under `path` take, as `du` counts it: cache files are sparse,
    so their length says little."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue  # evicted while we looked
    return total


def cache_users(statuses: Iterable[dict[str, Any]]) -> dict[Path, list[str]]:
    """cache dir -> the mount points that use it."""
    users: dict[Path, list[str]] = {}
    for status in statuses:
        if status.get("cache_dir"):
            users.setdefault(Path(status["cache_dir"]), []).append(status["mountpoint"])
    return users


def cache_info(base: Path, statuses: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per cache directory under `base`, and per mount's cache dir elsewhere."""
    users = cache_users(statuses)
    dirs = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    dirs += sorted(d for d in users if d not in dirs and d.is_dir())
    return [
        {"cache_dir": str(d), "bytes": directory_bytes(d), "used_by": users.get(d, [])}
        for d in dirs
    ]


def clear_caches(targets: list[Path], statuses: Iterable[dict[str, Any]]) -> list[Path]:
    """Remove the cache dirs in `targets`; refuse all of them if a mount uses any."""
    users = cache_users(statuses)
    busy = [f"{d} (used by {', '.join(users[d])})" for d in targets if d in users]
    if busy:
        raise CometFSError(
            "refusing to clear a cache a mount is using: " + "; ".join(busy) + "; unmount first"
        )
    cleared = []
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
            log.info("cleared %s", target)
            cleared.append(target)
    return cleared
