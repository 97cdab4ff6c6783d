"""Command line: `cometfs mount | unmount | serve | store add`. Argument parsing and exit codes.

Runs on the main thread. Errors the user can fix print one line to stderr and exit 1
(2 for bad usage); the API key is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cometfs import __version__
from cometfs.config import DEFAULT_CACHE_SIZE, DEFAULT_METADATA_TTL, resolve
from cometfs.errors import CometFSError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'512M', '10G', '1.5GiB', '1048576' → bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512M or 10G)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " KMGT".index(unit.upper() or " "))


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _default_store() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cometfs" / "store"


def _add_cache_options(command: argparse.ArgumentParser) -> None:
    """--cache-dir and --cache-size, the same for every command that reads through the cache."""
    command.add_argument(
        "--cache-dir",
        type=Path,
        help="disk cache directory, shared by everything reading from the same server "
        "(default: $XDG_CACHE_HOME/cometfs/<server hash>)",
    )
    command.add_argument(
        "--cache-size",
        type=parse_size,
        default=DEFAULT_CACHE_SIZE,
        metavar="SIZE",
        help=f"disk cache bound, LRU eviction, e.g. 512M or 50G "
        f"(default: {DEFAULT_CACHE_SIZE >> 30}G)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cometfs", description="Mount Comet ML artifacts as a read-only filesystem."
    )
    parser.add_argument("--version", action="version", version=f"cometfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    m = commands.add_parser("mount", help="mount artifacts at MOUNTPOINT")
    m.add_argument("mountpoint", type=Path, help="an existing, empty directory")
    m.add_argument(
        "--server-url",
        help="Comet server (default: COMET_URL_OVERRIDE, the config file, "
        "or https://www.comet.com)",
    )
    m.add_argument(
        "--workspace",
        action="append",
        default=[],
        help="show only this workspace; repeat for more (default: every workspace the key sees)",
    )
    _add_cache_options(m)
    m.add_argument(
        "--metadata-ttl",
        type=_non_negative_float,
        default=DEFAULT_METADATA_TTL,
        metavar="SECONDS",
        help="how long lists of artifacts, versions, aliases and tags are trusted "
        "(default: %(default)g)",
    )
    m.add_argument(
        "--timeout",
        type=_non_negative_float,
        default=20.0,
        metavar="SECONDS",
        help="total deadline of one server request, retries included; a read "
        "waiting longer fails with EIO (default: %(default)s)",
    )
    m.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached; Ctrl-C unmounts (default: run in the background)",
    )
    m.add_argument(
        "--allow-non-empty",
        action="store_true",
        help="mount over a directory that holds files, hiding them until the "
        "unmount (default: refuse)",
    )
    m.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default: WARNING)",
    )
    m.add_argument(
        "--log-file",
        type=Path,
        help="append the log here (default: none in the background, stderr in the foreground)",
    )
    m.add_argument(
        "-o",
        dest="fuse_options",
        action="append",
        default=[],
        metavar="FUSE_OPTION[,...]",
        help="extra FUSE mount options, e.g. allow_other (default: none)",
    )

    u = commands.add_parser("unmount", help="unmount (also a mount whose process died)")
    u.add_argument("mountpoint", type=Path, help="a cometfs mount point")
    u.add_argument(
        "--lazy",
        action="store_true",
        help="detach a busy mount now; it goes away when its last user lets go "
        "(default: refuse while busy)",
    )

    _add_tool_commands(commands)

    s = commands.add_parser("serve", help="run the local Comet-compatible server")
    s.add_argument(
        "--store",
        type=Path,
        default=None,
        help="store directory (default: $XDG_DATA_HOME/cometfs/store)",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind; anything but loopback is warned about (default: %(default)s)",
    )
    s.add_argument(
        "--port",
        type=int,
        default=18777,
        help="port to bind, 0 for any free one (default: %(default)s)",
    )
    s.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY[:WS,WS...]",
        help="an accepted key, optionally limited to workspaces; visible in ps, "
        "prefer --api-key-file (default: COMET_API_KEY, all workspaces, "
        "when neither this nor --api-key-file is given)",
    )
    s.add_argument(
        "--api-key-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="read keys from FILE: one KEY[:WS,WS...] per line, # comments; must "
        "not be accessible by group or others (default: none)",
    )
    s.add_argument("--demo", action="store_true", help="seed demo artifacts (default: off)")
    s.add_argument(
        "--no-range",
        action="store_true",
        help="ignore Range on asset downloads (default: off, Range honoured)",
    )
    s.add_argument(
        "--redirect",
        action="store_true",
        help="answer allow301=true with a redirect to a blob URL (default: off)",
    )
    s.add_argument(
        "--faults",
        metavar="SPEC",
        help="inject faults, e.g. 'get-asset=500*2;get-asset=trickle:100'; grammar "
        "in cometfs/server/faults.py (default: none)",
    )
    s.add_argument(
        "--latency",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before every answer, to model a WAN (default: %(default)s)",
    )
    s.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")

    store = commands.add_parser("store", help="manage the local server's store")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    a = store_commands.add_parser("add", help="add a version from a directory")
    a.add_argument("artifact", metavar="WORKSPACE/NAME")
    a.add_argument("source", type=Path, metavar="SOURCE_DIR")
    a.add_argument(
        "--store",
        type=Path,
        default=None,
        help="store directory (default: $XDG_DATA_HOME/cometfs/store)",
    )
    a.add_argument(
        "--version", help="strict semver (default: 1.0.0, or the next major after the highest)"
    )
    a.add_argument("--type", default="dataset", help="artifact type (default: %(default)s)")
    a.add_argument(
        "--alias",
        action="append",
        default=[],
        help="alias for this version, repeatable; moves off older ones (default: none)",
    )
    a.add_argument(
        "--tag", action="append", default=[], help="artifact tag, repeatable (default: none)"
    )
    a.add_argument(
        "--version-tag", action="append", default=[], help="version tag, repeatable (default: none)"
    )
    a.add_argument("--metadata", help="version metadata, a JSON object (default: {})")
    a.add_argument(
        "--remote",
        action="append",
        default=[],
        metavar="LOGICAL_PATH=URI",
        help="add a remote asset, repeatable (default: none)",
    )
    a.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="copy the targets of symbolic links inside SOURCE_DIR instead of "
        "refusing them (default: off, any link is an error)",
    )
    a.add_argument(
        "--outside-symlinks",
        action="store_true",
        help="with --follow-symlinks, also copy links that resolve outside "
        "SOURCE_DIR (default: off)",
    )
    d = commands.add_parser(
        "download", help="download an artifact version like the SDK's download(), in parallel"
    )
    d.add_argument(
        "artifact",
        metavar="WORKSPACE/NAME[:VERSION_OR_ALIAS]",
        help="the version to fetch (default alias: latest)",
    )
    d.add_argument("dest", type=Path, metavar="DEST", help="directory to write the assets into")
    d.add_argument(
        "--overwrite-strategy",
        default="FAIL",
        type=str.upper,
        choices=["FAIL", "PRESERVE", "OVERWRITE"],
        help="an existing file with other content: fail, keep it, or replace it "
        "(default: FAIL; identical files are always skipped)",
    )
    d.add_argument(
        "--include-remote",
        action="store_true",
        help="also fetch remote assets whose link is http(s) (default: list, skip)",
    )
    d.add_argument("--jobs", type=int, default=8, help="parallel downloads (default: 8)")
    d.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )
    d.add_argument("--server-url", help="Comet server (default: COMET_URL_OVERRIDE or comet.com)")
    _add_cache_options(d)
    return parser


def _download(args: argparse.Namespace) -> None:
    from cometfs.download import DownloadError, Strategy, download
    from cometfs.engine import Engine

    if args.jobs < 1:
        raise ValueError("--jobs must be at least 1")
    config = resolve(server_url=args.server_url)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    with Engine(
        config,
        cache_dir=args.cache_dir.resolve() if args.cache_dir else None,
        cache_size=args.cache_size,
    ) as engine:
        try:
            result = download(
                engine,
                args.artifact,
                args.dest,
                strategy=Strategy.parse(args.overwrite_strategy),
                include_remote=args.include_remote,
                jobs=args.jobs,
                progress=progress,
            )
        except DownloadError as exc:
            result = exc.result
            raise
        finally:
            if "result" in locals():
                for rel in result.preserved:
                    print(f"kept {args.dest / rel}: differs from the artifact", file=sys.stderr)
                for rel in result.overwritten:
                    print(f"replaced {args.dest / rel}", file=sys.stderr)
                for rel, link in result.remote_skipped:
                    print(f"skipped remote asset {rel} -> {link}", file=sys.stderr)
                print(result.summary())


def _add_tool_commands(commands: Any) -> None:
    """prefetch, status and cache: everyday tools around a running mount."""
    p = commands.add_parser("prefetch", help="fill the disk cache for mounted paths")
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="mounted version dirs, folders, files or globs"
    )
    p.add_argument(
        "--jobs", type=int, default=8, metavar="N", help="files read at once (default: 8)"
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only when stderr is a terminal)",
    )

    st = commands.add_parser("status", help="show this user's cometfs mounts")
    st.add_argument(
        "mountpoint",
        type=Path,
        nargs="?",
        help="one mount (default: every cometfs mount of this user)",
    )
    st.add_argument(
        "--json",
        action="store_true",
        help="print the figures of .comet/status.json as JSON (default: text)",
    )

    c = commands.add_parser("cache", help="inspect or clear the disk caches")
    cache_commands = c.add_subparsers(dest="cache_command", required=True)
    cache_commands.add_parser("info", help="cache directories, their size and their mounts")
    clear = cache_commands.add_parser("clear", help="delete disk caches no mount is using")
    clear.add_argument(
        "--server-url",
        help="clear only this server's cache (default: every cache directory "
        "under $XDG_CACHE_HOME/cometfs)",
    )


def _mount(args: argparse.Namespace) -> None:
    from cometfs.mount import MountOptions, default_cache_dir, mount

    config = resolve(server_url=args.server_url, workspaces=args.workspace)
    config.require_key()
    mount(
        MountOptions(
            mountpoint=args.mountpoint.resolve(),
            config=config,
            cache_dir=(args.cache_dir or default_cache_dir(config.server_url)).resolve(),
            cache_size=args.cache_size,
            metadata_ttl=args.metadata_ttl,
            timeout=args.timeout,
            foreground=args.foreground,
            log_level=args.log_level.upper(),
            log_file=args.log_file.resolve() if args.log_file else None,
            fuse_options=tuple(args.fuse_options),
            allow_non_empty=args.allow_non_empty,
        )
    )


def _unmount(args: argparse.Namespace) -> None:
    from cometfs.mount import unmount

    # abspath, not resolve(): resolving a dead mount point fails with ENOTCONN.
    mountpoint = Path(os.path.abspath(args.mountpoint))
    outcome = unmount(mountpoint, lazy=args.lazy)
    if outcome != "unmounted":
        print(f"{mountpoint}: {outcome}", file=sys.stderr)


def _prefetch(args: argparse.Namespace) -> None:
    from cometfs.prefetch import prefetch
    from cometfs.status import human_bytes

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = prefetch(args.paths, jobs=args.jobs, progress=progress)
    if progress:
        print(f"prefetched {result.files} files, {human_bytes(result.bytes)}", file=sys.stderr)
    if result.failed:
        for path, reason in result.failed:
            print(f"cometfs prefetch: {path}: {reason}", file=sys.stderr)
        raise CometFSError(f"{len(result.failed)} file(s) failed")


def _live_statuses() -> list[dict[str, Any]]:
    from cometfs.status import cometfs_mounts, read_status

    return [read_status(entry.mountpoint) for entry in cometfs_mounts()]


def _status(args: argparse.Namespace) -> None:
    from cometfs.status import format_status, mount_of, read_status

    if args.mountpoint is not None:
        mountpoint = Path(os.path.abspath(args.mountpoint))
        if mount_of(mountpoint) != mountpoint:
            raise CometFSError(f"{mountpoint} is not a cometfs mount")
        statuses = [read_status(mountpoint)]
    else:
        statuses = _live_statuses()
    if args.json:
        print(
            json.dumps(
                statuses if args.mountpoint is None else statuses[0], indent=2, sort_keys=True
            )
        )
    elif not statuses:
        print("no cometfs mounts")
    else:
        print("\n\n".join(format_status(status) for status in statuses))
    # Only a mount asked for by name fails the command: one stale mount among many is
    # reported in the listing, and must not break scripts that list the healthy ones.
    if args.mountpoint is not None and "error" in statuses[0]:
        raise CometFSError(f"{statuses[0]['mountpoint']} does not answer: {statuses[0]['error']}")


def _cache(args: argparse.Namespace) -> None:
    from cometfs.mount import default_cache_dir
    from cometfs.status import cache_info, clear_caches, human_bytes

    base = default_cache_dir("").parent  # the per-server directories' common parent
    statuses = _live_statuses()
    if args.cache_command == "info":
        records = cache_info(base, statuses)
        if not records:
            print(f"no disk caches under {base}")
        for record in records:
            users = ", ".join(record["used_by"]) or "no mount"
            print(f"{record['cache_dir']}  {human_bytes(record['bytes'])}  used by: {users}")
        return
    targets = (
        [default_cache_dir(resolve(server_url=args.server_url).server_url)]
        if args.server_url
        else sorted(d for d in base.iterdir() if d.is_dir())
        if base.is_dir()
        else []
    )
    cleared = clear_caches(targets, statuses)
    print(
        f"cleared {len(cleared)} cache director{'y' if len(cleared) == 1 else 'ies'}"
        + "".join(f"\n  {d}" for d in cleared)
    )


def _serve(args: argparse.Namespace) -> None:
    import logging

    from cometfs.server import load_api_key_file, parse_api_key, parse_faults, serve_forever

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    keys = [parse_api_key(spec) for spec in args.api_key]
    for path in args.api_key_file:
        keys.extend(load_api_key_file(path))
    if not keys and os.environ.get("COMET_API_KEY"):
        keys.append(parse_api_key(os.environ["COMET_API_KEY"]))
    if not keys:
        raise CometFSError(
            "serve needs an API key: --api-key-file FILE, --api-key KEY[:WS,...] or COMET_API_KEY"
        )
    serve_forever(
        args.store or _default_store(),
        host=args.host,
        port=args.port,
        api_keys=keys,
        demo=args.demo,
        ranges=not args.no_range,
        redirect=args.redirect,
        faults=parse_faults(args.faults) if args.faults else None,
        latency=args.latency,
    )


def _store_add(args: argparse.Namespace) -> None:
    from cometfs.server import ArtifactStore, VersionSpec

    workspace, slash, name = args.artifact.partition("/")
    if not slash or not workspace or not name:
        raise CometFSError(f"expected WORKSPACE/NAME, got {args.artifact!r}")
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise CometFSError(f"--metadata is not valid JSON: {exc}") from None
    remotes: dict[str, str] = {}
    for item in args.remote:
        logical, equals, uri = item.partition("=")
        if not equals or not logical or not uri:
            raise CometFSError(f"--remote expects LOGICAL_PATH=URI, got {item!r}")
        remotes[logical] = uri
    if args.outside_symlinks and not args.follow_symlinks:
        raise CometFSError("--outside-symlinks needs --follow-symlinks")
    spec = VersionSpec(
        workspace,
        name,
        version=args.version,
        artifact_type=args.type,
        aliases=args.alias,
        tags=args.tag,
        version_tags=args.version_tag,
        metadata=metadata,
        remotes=remotes,
    )
    version = ArtifactStore(args.store or _default_store()).add_directory(
        spec,
        args.source,
        follow_symlinks=args.follow_symlinks,
        outside_symlinks=args.outside_symlinks,
    )
    print(f"added {workspace}/{name}:{version}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "mount": _mount,
        "unmount": _unmount,
        "serve": _serve,
        "store": _store_add,
        "download": _download,
        "prefetch": _prefetch,
        "status": _status,
        "cache": _cache,
    }
    try:
        handlers[args.command](args)
    except (CometFSError, ValueError, OSError) as exc:
        print(f"cometfs {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
