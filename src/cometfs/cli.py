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

from cometfs import __version__
from cometfs.config import resolve
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cometfs", description="Mount Comet ML artifacts as a read-only filesystem."
    )
    parser.add_argument("--version", action="version", version=f"cometfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    m = commands.add_parser("mount", help="mount artifacts at MOUNTPOINT")
    m.add_argument("mountpoint", type=Path)
    m.add_argument("--server-url", help="Comet server (default: COMET_URL_OVERRIDE or comet.com)")
    m.add_argument("--workspace", action="append", default=[], help="show only this workspace")
    m.add_argument("--cache-dir", type=Path, help="disk cache (default: XDG cache dir)")
    m.add_argument("--cache-size", type=parse_size, default=parse_size("10G"))
    m.add_argument("--metadata-ttl", type=_non_negative_float, default=30.0, metavar="SECONDS")
    m.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C unmounts")
    m.add_argument("--log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning",
                            "error"])
    m.add_argument("--log-file", type=Path)
    m.add_argument("-o", dest="fuse_options", action="append", default=[],
                   metavar="FUSE_OPTION[,...]", help="extra FUSE mount options, e.g. allow_other")

    u = commands.add_parser("unmount", help="unmount (also a mount whose process died)")
    u.add_argument("mountpoint", type=Path)

    s = commands.add_parser("serve", help="run the local Comet-compatible server")
    s.add_argument("--store", type=Path, default=None,
                   help="store directory (default: $XDG_DATA_HOME/cometfs/store)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind; anything but loopback is warned about "
                        "(default: %(default)s)")
    s.add_argument("--port", type=int, default=18777,
                   help="port to bind, 0 for any free one (default: %(default)s)")
    s.add_argument("--api-key", action="append", default=[], metavar="KEY[:WS,WS...]",
                   help="an accepted key, optionally limited to workspaces; visible in ps, "
                        "prefer --api-key-file (default: COMET_API_KEY, all workspaces, "
                        "when neither this nor --api-key-file is given)")
    s.add_argument("--api-key-file", action="append", default=[], type=Path, metavar="FILE",
                   help="read keys from FILE: one KEY[:WS,WS...] per line, # comments; must "
                        "not be accessible by group or others (default: none)")
    s.add_argument("--demo", action="store_true",
                   help="seed demo artifacts (default: off)")
    s.add_argument("--no-range", action="store_true",
                   help="ignore Range on asset downloads (default: off, Range honoured)")
    s.add_argument("--redirect", action="store_true",
                   help="answer allow301=true with a redirect to a blob URL (default: off)")
    s.add_argument("--faults", metavar="SPEC",
                   help="inject faults, e.g. 'get-asset=500*2;get-asset=trickle:100'; grammar "
                        "in cometfs/server/faults.py (default: none)")
    s.add_argument("--latency", type=_non_negative_float, default=0.0, metavar="SECONDS",
                   help="wait this long before every answer, to model a WAN "
                        "(default: %(default)s)")
    s.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")

    store = commands.add_parser("store", help="manage the local server's store")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    a = store_commands.add_parser("add", help="add a version from a directory")
    a.add_argument("artifact", metavar="WORKSPACE/NAME")
    a.add_argument("source", type=Path, metavar="SOURCE_DIR")
    a.add_argument("--store", type=Path, default=None,
                   help="store directory (default: $XDG_DATA_HOME/cometfs/store)")
    a.add_argument("--version",
                   help="strict semver (default: 1.0.0, or the next major after the highest)")
    a.add_argument("--type", default="dataset", help="artifact type (default: %(default)s)")
    a.add_argument("--alias", action="append", default=[],
                   help="alias for this version, repeatable; moves off older ones "
                        "(default: none)")
    a.add_argument("--tag", action="append", default=[],
                   help="artifact tag, repeatable (default: none)")
    a.add_argument("--version-tag", action="append", default=[],
                   help="version tag, repeatable (default: none)")
    a.add_argument("--metadata", help="version metadata, a JSON object (default: {})")
    a.add_argument("--remote", action="append", default=[], metavar="LOGICAL_PATH=URI",
                   help="add a remote asset, repeatable (default: none)")
    a.add_argument("--follow-symlinks", action="store_true",
                   help="copy the targets of symbolic links inside SOURCE_DIR instead of "
                        "refusing them (default: off, any link is an error)")
    a.add_argument("--outside-symlinks", action="store_true",
                   help="with --follow-symlinks, also copy links that resolve outside "
                        "SOURCE_DIR (default: off)")
    d = commands.add_parser(
        "download", help="download an artifact version like the SDK's download(), in parallel")
    d.add_argument("artifact", metavar="WORKSPACE/NAME[:VERSION_OR_ALIAS]",
                   help="the version to fetch (default alias: latest)")
    d.add_argument("dest", type=Path, metavar="DEST", help="directory to write the assets into")
    d.add_argument("--overwrite-strategy", default="FAIL", type=str.upper,
                   choices=["FAIL", "PRESERVE", "OVERWRITE"],
                   help="an existing file with other content: fail, keep it, or replace it "
                        "(default: FAIL; identical files are always skipped)")
    d.add_argument("--include-remote", action="store_true",
                   help="also fetch remote assets whose link is http(s) (default: list, skip)")
    d.add_argument("--jobs", type=int, default=8, help="parallel downloads (default: 8)")
    d.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: only when stderr is a terminal)")
    d.add_argument("--server-url", help="Comet server (default: COMET_URL_OVERRIDE or comet.com)")
    d.add_argument("--cache-dir", type=Path,
                   help="disk cache, shared with mounts of the same server (default: XDG cache)")
    d.add_argument("--cache-size", type=parse_size, default=parse_size("10G"),
                   help="disk cache bound (default: 10G)")
    return parser


def _download(args: argparse.Namespace) -> None:
    from cometfs.download import DownloadError, Strategy, download
    from cometfs.engine import Engine

    if args.jobs < 1:
        raise ValueError("--jobs must be at least 1")
    config = resolve(server_url=args.server_url)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    with Engine(config, cache_dir=args.cache_dir.resolve() if args.cache_dir else None,
                cache_size=args.cache_size) as engine:
        try:
            result = download(
                engine, args.artifact, args.dest,
                strategy=Strategy.parse(args.overwrite_strategy),
                include_remote=args.include_remote, jobs=args.jobs, progress=progress,
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
            foreground=args.foreground,
            log_level=args.log_level.upper(),
            log_file=args.log_file.resolve() if args.log_file else None,
            fuse_options=tuple(args.fuse_options),
        )
    )


def _unmount(args: argparse.Namespace) -> None:
    from cometfs.mount import unmount

    unmount(args.mountpoint.resolve())


def _serve(args: argparse.Namespace) -> None:
    import logging

    from cometfs.server import load_api_key_file, parse_api_key, parse_faults, serve_forever

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = [parse_api_key(spec) for spec in args.api_key]
    for path in args.api_key_file:
        keys.extend(load_api_key_file(path))
    if not keys and os.environ.get("COMET_API_KEY"):
        keys.append(parse_api_key(os.environ["COMET_API_KEY"]))
    if not keys:
        raise CometFSError("serve needs an API key: --api-key-file FILE, --api-key "
                           "KEY[:WS,...] or COMET_API_KEY")
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
    from cometfs.server import Store

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
    version = Store(args.store or _default_store()).add_directory(
        workspace, name, args.source,
        follow_symlinks=args.follow_symlinks, outside_symlinks=args.outside_symlinks,
        version=args.version, artifact_type=args.type, aliases=args.alias, tags=args.tag,
        version_tags=args.version_tag, metadata=metadata, remotes=remotes,
    )
    print(f"added {workspace}/{name}:{version}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"mount": _mount, "unmount": _unmount, "serve": _serve, "store": _store_add,
                "download": _download}
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
