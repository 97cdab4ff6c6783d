"""The local server's store: artifact versions and their bytes in one directory on disk.

Writers (`cometfs store add`, `seed_demo`, tests) call `ArtifactStore.add_version` with a
validated `VersionSpec`, and friends; the HTTP endpoints read through
`ArtifactStore.snapshot()`. Both may live in different processes at once.

Layout under the root (every JSON file is written to a temporary name and renamed):

    store.json                                   {"format": 1}
    lock                                         fcntl.flock target that serialises writers
    generation                                   a fresh id after every commit; readers read it
    tmp/<pid>.<uuid>.<kind>                      half-written files; never read. Opening a
                                                 store deletes those whose writer is dead or
                                                 that are older than `STALE_TMP_SECONDS`, so a
                                                 killed `store add` leaves nothing for long
    blobs/<sha256>                               asset bytes, content addressed, mode 0444
    experiments/<key>.json                       source experiment records (E9)
    workspaces/<ws>/workspace.json               {"name", "workspaceId"}
    workspaces/<ws>/<artifact>/artifact.json     the COMMIT POINT: type, tags, the list of
                                                 committed versions and the alias map
    workspaces/<ws>/<artifact>/versions/<v>.json one version: id, metadata, tags, assets

Directory names are the workspace/artifact names percent-encoded (dots and tildes too), or
`%h<sha256>` when that would be too long. A version becomes visible only when artifact.json
lists it, so a failure half-way through `add_version` leaves at most orphan blobs and an
unlisted version file behind, never a half-written version. Aliases live in artifact.json
(not in the version files) so that moving an alias from one version to another is a single
atomic rename.

Readers: `snapshot()` returns an immutable `Snapshot`; it is rebuilt only when the generation
file's content (a fresh id per commit) changes, so another process's commit shows up on the
next request. Safe to call from any thread; writers take a process-level file lock.

Mutations for tests of a running mount (each one commit, under the write lock, so safe from
any thread or process while a server reads): `move_alias`, `remove_alias`,
`set_version_tags`, `set_version_metadata`, `delete_version`, `replace_asset_bytes`.

`add_directory` refuses symbolic links unless asked (see its docstring): a link to
/etc/passwd in a source tree must not quietly become an asset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import semantic_version

from cometfs.errors import StoreError
from cometfs.processes import pid_exists

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
OWNER = "local"
PROJECT_NAME = "cometfs-store"
_COPY_CHUNK = 4 << 20
_MAX_DIRNAME = 200
_EXPERIMENT_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
STALE_TMP_SECONDS = 3600.0


@dataclass(frozen=True)
class AssetSource:
    """One asset to add: its logical path (kept verbatim) and its bytes from a file or memory.

    Exactly one of `path` and `data` must be given. `metadata` (a JSON object) and
    `asset_type` are optional extras that end up in the files listing (E7).
    """

    logical_path: str
    path: Path | None = None
    data: bytes | None = None
    metadata: Mapping[str, Any] | None = None
    asset_type: str = "asset"
    # True when `path` must not be a symbolic link at open time (add_directory checked it was
    # a regular file; O_NOFOLLOW keeps a link swapped in since then from being followed).
    no_follow: bool = False

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise StoreError(f"asset {self.logical_path!r}: give exactly one of path= and data=")


@dataclass(frozen=True)
class VersionSpec:
    """Everything `ArtifactStore.add_version` needs to add one version, checked in one place.

    Construction validates (StoreError naming the bad field) and normalises: label lists
    become duplicate-free tuples, metadata a detached JSON object, remotes a dict of
    logical path -> link. `asset_metadata` holds each asset's checked metadata, in order.
    Without `version` the store picks one (see add_version); `created_ms` defaults to now.
    """

    workspace: str
    name: str
    assets: Sequence[AssetSource] = ()
    version: str | None = None
    artifact_type: str = "dataset"
    aliases: Sequence[str] = ()
    tags: Sequence[str] = ()
    version_tags: Sequence[str] = ()
    metadata: Mapping[str, Any] | None = None
    remotes: Mapping[str, str] | None = None
    description: str | None = None
    experiment_key: str | None = None
    created_ms: int | None = None
    asset_metadata: tuple[dict[str, Any] | None, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        _check_name("workspace", self.workspace)
        _check_name("artifact", self.name)
        if self.version is not None:
            _check_version(self.version)
        if not isinstance(self.artifact_type, str) or not self.artifact_type:
            raise StoreError(
                f"artifact type must be a non-empty string, got {self.artifact_type!r}"
            )
        aliases = _check_aliases(self.aliases)
        tags = _check_labels("tags", self.tags)
        version_tags = _check_labels("version tags", self.version_tags)
        metadata = _check_metadata("version", self.metadata)
        remotes = dict(self.remotes or {})
        for logical, uri in remotes.items():
            if not isinstance(logical, str) or not logical:
                raise StoreError(f"remote asset logical path must be non-empty, got {logical!r}")
            if not isinstance(uri, str) or not uri:
                raise StoreError(f"remote asset {logical!r}: link must be a non-empty string")
        assets = tuple(self.assets)
        for src in assets:
            if not isinstance(src, AssetSource):
                raise StoreError(f"assets must be AssetSource objects, got {type(src).__name__}")
            if not isinstance(src.logical_path, str) or not src.logical_path:
                raise StoreError("asset logical path must be a non-empty string")
        if self.experiment_key is not None and not _EXPERIMENT_KEY_RE.match(self.experiment_key):
            raise StoreError(
                f"experiment key must be 1-128 characters of [A-Za-z0-9_-], "
                f"got {self.experiment_key!r}"
            )
        # Frozen: normalised values go in through object.__setattr__, once, here.
        normalised = {
            "assets": assets,
            "aliases": aliases,
            "tags": tags,
            "version_tags": version_tags,
            "metadata": metadata,
            "remotes": remotes,
            "asset_metadata": tuple(
                None if src.metadata is None else _check_metadata(src.logical_path, src.metadata)
                for src in assets
            ),
        }
        for key, value in normalised.items():
            object.__setattr__(self, key, value)


@dataclass(frozen=True)
class AssetRec:
    """One stored asset of a version."""

    asset_id: str
    file_name: str
    file_size: int
    remote: bool
    link: str | None
    asset_type: str
    metadata: Mapping[str, Any] | None
    sha256: str | None


@dataclass(frozen=True)
class VersionRec:
    """One committed version. `aliases` are the stored ones (no automatic "Latest")."""

    version_id: str
    version: str
    aliases: tuple[str, ...]
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    added_ms: int
    experiment_key: str
    owner: str
    state: str
    size: int
    assets: tuple[AssetRec, ...]


@dataclass(frozen=True)
class ArtifactRec:
    """One artifact with its committed versions, sorted by ascending semver."""

    artifact_id: str
    workspace: str
    workspace_id: str
    name: str
    artifact_type: str
    description: str | None
    tags: tuple[str, ...]
    versions: tuple[VersionRec, ...]

    @property
    def latest(self) -> VersionRec | None:
        return self.versions[-1] if self.versions else None

    def find_version(self, version: str) -> VersionRec | None:
        for v in self.versions:
            if v.version == version:
                return v
        return None

    def find_alias(self, alias: str) -> VersionRec | None:
        """Resolve an alias; `latest` (any case) always means the highest version."""
        if alias.lower() == "latest":
            return self.latest
        for v in self.versions:
            if alias in v.aliases:
                return v
        return None


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the whole store at one generation."""

    root: Path
    artifacts: Mapping[str, Mapping[str, ArtifactRec]]
    experiments: Mapping[str, Mapping[str, Any]]
    by_artifact_id: Mapping[str, ArtifactRec] = field(default_factory=dict)
    by_asset_id: Mapping[str, tuple[ArtifactRec, VersionRec, AssetRec]] = field(
        default_factory=dict
    )

    def workspaces(self) -> list[str]:
        return sorted(self.artifacts)

    def artifact(self, workspace: str, name: str) -> ArtifactRec | None:
        return self.artifacts.get(workspace, {}).get(name)

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256


def _dirname(name: str) -> str:
    """Reversible-enough, collision-free directory name for a workspace or artifact name."""
    enc = quote(name, safe="").replace(".", "%2E").replace("~", "%7E")
    if len(enc) > _MAX_DIRNAME:
        return "%h" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return enc


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name:
        raise StoreError(f"{kind} name must be a non-empty string, got {name!r}")
    if "/" in name:
        raise StoreError(f"{kind} name must not contain '/': {name!r}")


def _check_version(version: str) -> str:
    if not isinstance(version, str):
        raise StoreError(f"version must be a string, got {version!r}")
    try:
        parsed = semantic_version.Version(version)
    except ValueError as exc:
        raise StoreError(
            f"version {version!r} is not strict semver (MAJOR.MINOR.PATCH[-pre][+build]): {exc}"
        ) from None
    if str(parsed) != version:
        raise StoreError(f"version {version!r} is not in canonical form ({parsed})")
    return version


def _check_labels(kind: str, labels: Sequence[str] | None) -> tuple[str, ...]:
    if labels is None:
        return ()
    if isinstance(labels, str):
        raise StoreError(f"{kind} must be a list of strings, not a single string")
    out: list[str] = []
    for label in labels:
        if not isinstance(label, str) or not label:
            raise StoreError(f"{kind} must be non-empty strings, got {label!r}")
        if label not in out:
            out.append(label)
    return tuple(out)


def _check_aliases(aliases: Sequence[str] | None) -> tuple[str, ...]:
    out = _check_labels("aliases", aliases)
    for alias in out:
        # "latest" is resolved by the server to the highest version; storing it would make
        # the alias ambiguous.
        if alias.lower() == "latest":
            raise StoreError(f"alias {alias!r} is reserved (it always means the highest version)")
    return out


def _check_metadata(kind: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise StoreError(f"{kind} metadata must be a JSON object, got {type(metadata).__name__}")
    try:
        # A round trip both validates JSON-ability and detaches the caller's objects.
        parsed = json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{kind} metadata is not JSON-serialisable: {exc}") from None
    if not isinstance(parsed, dict):  # pragma: no cover - guarded above
        raise StoreError(f"{kind} metadata must be a JSON object")
    return parsed


def _version_key(v: str) -> semantic_version.Version:
    return semantic_version.Version(v)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class ArtifactStore:
    """A store directory. Cheap to construct; several instances may share one root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._snap_lock = threading.Lock()
        self._snap_key: bytes | None = None
        self._snap: Snapshot | None = None
        self._init_layout()

    # ---- layout and locking ------------------------------------------------------------

    def _init_layout(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in ("blobs", "tmp", "experiments", "workspaces"):
                (self.root / sub).mkdir(exist_ok=True)
            self._clean_stale_tmp()
            marker = self.root / "store.json"
            if not marker.exists():
                self._write_json(marker, {"format": STORE_FORMAT})
            else:
                fmt = _read_json(marker).get("format")
                if fmt != STORE_FORMAT:
                    raise StoreError(f"{self.root}: unsupported store format {fmt!r}")
        except OSError as exc:
            raise StoreError(f"cannot use store directory {self.root}: {exc}") from None
        except ValueError as exc:
            raise StoreError(f"{self.root}/store.json is corrupt: {exc}") from None

    def _clean_stale_tmp(self, now: float | None = None) -> None:
        """Delete temp files of dead writers, and any older than STALE_TMP_SECONDS."""
        now = time.time() if now is None else now
        for entry in os.scandir(self.root / "tmp"):
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue  # its writer just renamed or removed it
            pid_text = entry.name.partition(".")[0]
            dead = pid_text.isdigit() and not pid_exists(int(pid_text))
            if dead or age > STALE_TMP_SECONDS:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                logger.info(
                    "store: removed stale temp file %s (%s)",
                    entry.name,
                    "its writer is gone" if dead else f"{age:.0f}s old",
                )

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        # flock locks belong to the open file description, so this serialises threads of
        # one process as well as separate processes.
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _tmp_path(self, hint: str) -> Path:
        # The pid lets the next store open tell a dead writer's leftovers from live work.
        return self.root / "tmp" / f"{os.getpid()}.{uuid.uuid4().hex}.{hint}"

    def _write_json(self, path: Path, obj: Any) -> None:
        tmp = self._tmp_path("json")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _bump_generation(self) -> None:
        # Renamed into place, so a reader sees the old or the new id, never a torn file.
        self._write_json(
            self.root / "generation", {"id": uuid.uuid4().hex, "time_ns": time.time_ns()}
        )

    def _artifact_dir(self, workspace: str, name: str) -> Path:
        return self.root / "workspaces" / _dirname(workspace) / _dirname(name)

    # ---- writing -------------------------------------------------------------------------

    def _put_blob(self, source: AssetSource) -> tuple[str, int]:
        """Copy one source into blobs/ and return (sha256, size)."""
        tmp = self._tmp_path("blob")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                if source.data is not None:
                    data = bytes(source.data)
                    digest.update(data)
                    out.write(data)
                    size = len(data)
                else:
                    assert source.path is not None
                    size = self._copy_file(
                        source.logical_path,
                        Path(source.path),
                        out,
                        digest,
                        no_follow=source.no_follow,
                    )
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            dest = self.root / "blobs" / sha
            if dest.exists():
                tmp.unlink()
            else:
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
            return sha, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @staticmethod
    def _copy_file(logical: str, path: Path, out: Any, digest: Any, *, no_follow: bool) -> int:
        flags = os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if no_follow else 0)
        try:
            # O_NONBLOCK so that a FIFO cannot hang us before the S_ISREG check.
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP and no_follow:
                raise StoreError(f"asset {logical!r}: {path} became a symbolic link") from None
            raise StoreError(f"asset {logical!r}: cannot read {path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"asset {logical!r}: {path} is not a regular file")
        with os.fdopen(fd, "rb") as src:
            size = 0
            try:
                while chunk := src.read(_COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            except OSError as exc:
                raise StoreError(f"asset {logical!r}: reading {path} failed: {exc}") from None
            return size

    def add_version(self, spec: VersionSpec) -> str:
        """Add one version atomically and return its version string.

        Without `spec.version`, a new artifact gets 1.0.0 and an existing one the next major
        version after its highest. Aliases given here move off older versions. `spec.tags` are
        merged into the artifact's tags; type and description are set by the first version
        (a later non-None description replaces it).
        """
        now_ms = int(time.time() * 1000) if spec.created_ms is None else int(spec.created_ms)
        try:
            with self._write_lock():
                return self._add_version_locked(spec, now_ms)
        except OSError as exc:
            raise StoreError(f"adding {spec.workspace}/{spec.name} failed: {exc}") from None

    def _add_version_locked(self, spec: VersionSpec, now_ms: int) -> str:
        workspace, name, version = spec.workspace, spec.name, spec.version
        art_dir = self._artifact_dir(workspace, name)
        art_file = art_dir / "artifact.json"
        art: dict[str, Any] | None = _read_json(art_file) if art_file.exists() else None
        committed: list[str] = list(art["versions"]) if art else []
        if version is None:
            if committed:
                highest = max(committed, key=_version_key)
                version = str(_version_key(highest).next_major())
            else:
                version = "1.0.0"
        if version in committed:
            raise StoreError(f"{workspace}/{name} already has version {version}")

        records = self._asset_records(spec)
        key = spec.experiment_key or uuid.uuid4().hex
        version_id = str(uuid.uuid4())
        vrec = {
            "artifactVersionId": version_id,
            "version": version,
            "tags": list(spec.version_tags),
            "metadata": dict(spec.metadata or {}),
            "added": now_ms,
            "experimentKey": key,
            "owner": OWNER,
            "state": "CLOSED",
            "assets": records,
        }
        (art_dir / "versions").mkdir(parents=True, exist_ok=True)
        self._write_json(art_dir / "versions" / f"{version}.json", vrec)

        ws_dir = art_dir.parent
        if not (ws_dir / "workspace.json").exists():
            self._write_json(
                ws_dir / "workspace.json", {"name": workspace, "workspaceId": uuid.uuid4().hex}
            )
        self._ensure_experiment(key, workspace, f"{name}-{version}", now_ms)

        if art is None:
            art = {
                "artifactId": str(uuid.uuid4()),
                "workspace": workspace,
                "name": name,
                "type": spec.artifact_type,
                "description": spec.description,
                "tags": [],
                "created": now_ms,
                "versions": [],
                "aliases": {},
            }
        elif spec.description is not None:
            art["description"] = spec.description
        art["tags"] = list(dict.fromkeys([*art["tags"], *spec.tags]))
        art["versions"] = [*committed, version]
        for alias in spec.aliases:
            art["aliases"][alias] = version
        self._write_json(art_file, art)  # the commit point
        self._bump_generation()
        logger.info("store: added %s/%s %s (%d assets)", workspace, name, version, len(records))
        return version

    def _asset_records(self, spec: VersionSpec) -> list[dict[str, Any]]:
        """Store the spec's bytes in blobs/ and return the version file's asset records."""
        records: list[dict[str, Any]] = []
        for src, ameta in zip(spec.assets, spec.asset_metadata, strict=True):
            sha, size = self._put_blob(src)
            records.append(
                {
                    "assetId": uuid.uuid4().hex,
                    "fileName": src.logical_path,
                    "fileSize": size,
                    "remote": False,
                    "link": None,
                    "type": src.asset_type or "asset",
                    "metadata": ameta,
                    "sha256": sha,
                }
            )
        for logical, uri in (spec.remotes or {}).items():
            records.append(
                {
                    "assetId": uuid.uuid4().hex,
                    "fileName": logical,
                    "fileSize": 0,
                    "remote": True,
                    "link": uri,
                    "type": "asset",
                    "metadata": None,
                    "sha256": None,
                }
            )
        return records

    def _ensure_experiment(self, key: str, workspace: str, name: str, now_ms: int) -> None:
        """Write the source experiment's record (E9) unless an earlier version did."""
        exp_file = self.root / "experiments" / f"{key}.json"
        if exp_file.exists():
            return
        self._write_json(
            exp_file,
            {
                "experimentKey": key,
                "experimentName": name,
                "projectName": PROJECT_NAME,
                "projectId": hashlib.sha256(workspace.encode()).hexdigest()[:32],
                "workspaceName": workspace,
                "archived": False,
                "durationMillis": 1000,
                "startTimeMillis": now_ms - 1000,
                "endTimeMillis": now_ms,
                "running": False,
                "fileName": None,
                "filePath": None,
                "optimizationId": None,
                "throttle": False,
            },
        )

    def add_directory(
        self,
        spec: VersionSpec,
        source_dir: Path,
        *,
        follow_symlinks: bool = False,
        outside_symlinks: bool = False,
    ) -> str:
        """Add every regular file under `source_dir` (sorted, posix relative paths) as the
        assets of `spec` (which must list none itself) and return the version string.

        A symbolic link anywhere in the tree is refused (nothing is added, the error names
        the link) unless `follow_symlinks`: then a link to a file adds the target's bytes under
        the link's path and a link to a directory is walked. Even then a link whose target
        resolves outside `source_dir` is refused unless `outside_symlinks` is also set, so
        only an explicit second opt-in can pull in files like /etc/passwd.
        """
        if spec.assets:
            raise StoreError(
                "add_directory takes its assets from the directory; the spec must list none"
            )
        source_dir = Path(source_dir)
        if not source_dir.is_dir():
            raise StoreError(f"source directory {source_dir} does not exist or is not a directory")
        root = Path(os.path.realpath(source_dir))
        sources: list[AssetSource] = []
        self._collect(
            source_dir, "", root, (root,), sources, follow=follow_symlinks, outside=outside_symlinks
        )
        sources.sort(key=lambda s: s.logical_path)
        return self.add_version(dataclasses.replace(spec, assets=sources))

    @classmethod
    def _collect(
        cls,
        directory: Path,
        prefix: str,
        root: Path,
        chain: tuple[Path, ...],
        out: list[AssetSource],
        *,
        follow: bool,
        outside: bool,
    ) -> None:
        """Walk one directory into `out`; `chain` holds the real paths being walked (loops)."""
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise StoreError(f"cannot read {exc.filename}: {exc.strerror}") from None
        for entry in entries:
            full = Path(entry.path)
            logical = prefix + entry.name
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                raise StoreError(f"cannot stat {full}: {exc.strerror}") from None
            target = full
            if stat.S_ISLNK(mode):
                target, mode = cls._follow_link(full, root, follow=follow, outside=outside)
            if stat.S_ISDIR(mode):
                real = Path(os.path.realpath(target))
                if real in chain:
                    raise StoreError(f"{full} leads back into {real}: a symlink loop")
                cls._collect(
                    full, logical + "/", root, (*chain, real), out, follow=follow, outside=outside
                )
            elif stat.S_ISREG(mode):
                out.append(AssetSource(logical, path=target, no_follow=True))
            else:
                raise StoreError(f"{full} is not a regular file (special files are refused)")

    @staticmethod
    def _follow_link(full: Path, root: Path, *, follow: bool, outside: bool) -> tuple[Path, int]:
        """(resolved target, its mode) of a link the options allow; StoreError otherwise."""
        try:
            link = os.readlink(full)
        except OSError as exc:
            raise StoreError(f"cannot read symlink {full}: {exc.strerror}") from None
        if not follow:
            raise StoreError(
                f"{full} is a symbolic link (to {link}); nothing was added. Remove it, or pass "
                f"--follow-symlinks to copy what it points to"
            )
        target = Path(os.path.realpath(full))
        if not outside and not target.is_relative_to(root):
            raise StoreError(
                f"{full} is a symbolic link to {target}, outside the source directory; "
                f"nothing was added (pass --outside-symlinks as well to copy it anyway)"
            )
        try:
            mode = target.stat().st_mode
        except OSError:
            raise StoreError(f"{full} is a dangling symlink (to {link})") from None
        return target, mode

    def move_alias(self, workspace: str, name: str, alias: str, version: str) -> None:
        """Point `alias` at `version` of workspace/name, taking it off any other version."""
        _check_aliases([alias])
        with self._write_lock():
            art_file = self._existing_artifact_file(workspace, name)
            art = _read_json(art_file)
            if version not in art["versions"]:
                raise StoreError(f"{workspace}/{name} has no version {version}")
            art["aliases"][alias] = version
            self._write_json(art_file, art)
            self._bump_generation()

    def remove_alias(self, workspace: str, name: str, alias: str) -> None:
        """Drop an alias; a missing alias is an error so typos do not pass silently."""
        with self._write_lock():
            art_file = self._existing_artifact_file(workspace, name)
            art = _read_json(art_file)
            if alias not in art["aliases"]:
                raise StoreError(f"{workspace}/{name} has no alias {alias!r}")
            del art["aliases"][alias]
            self._write_json(art_file, art)
            self._bump_generation()

    def set_version_tags(
        self, workspace: str, name: str, version: str, tags: Sequence[str]
    ) -> None:
        """Replace a version's tags."""
        tag_list = _check_labels("version tags", tags)
        with self._write_lock():
            art_file = self._existing_artifact_file(workspace, name)
            art = _read_json(art_file)
            if version not in art["versions"]:
                raise StoreError(f"{workspace}/{name} has no version {version}")
            vfile = art_file.parent / "versions" / f"{version}.json"
            vrec = _read_json(vfile)
            vrec["tags"] = list(tag_list)
            self._write_json(vfile, vrec)
            self._bump_generation()

    def set_version_metadata(
        self, workspace: str, name: str, version: str, metadata: Mapping[str, Any]
    ) -> None:
        """Replace a version's metadata (a JSON object)."""
        meta = _check_metadata("version", metadata)
        with self._write_lock():
            vfile, vrec = self._existing_version(workspace, name, version)
            vrec["metadata"] = meta
            self._write_json(vfile, vrec)
            self._bump_generation()

    def delete_version(self, workspace: str, name: str, version: str) -> None:
        """Delete a committed version and the aliases on it (blobs stay: others may share them).

        Deleting the last version makes the artifact disappear from listings.
        """
        with self._write_lock():
            art_file = self._existing_artifact_file(workspace, name)
            art = _read_json(art_file)
            if version not in art["versions"]:
                raise StoreError(f"{workspace}/{name} has no version {version}")
            art["versions"] = [v for v in art["versions"] if v != version]
            art["aliases"] = {a: v for a, v in art["aliases"].items() if v != version}
            self._write_json(art_file, art)  # the commit point
            self._bump_generation()
            with contextlib.suppress(FileNotFoundError):
                (art_file.parent / "versions" / f"{version}.json").unlink()

    def replace_asset_bytes(
        self, workspace: str, name: str, version: str, logical_path: str, data: bytes
    ) -> str:
        """Give an asset new bytes under the same asset id (a backend that changed content).

        Returns the asset id. The size follows `data`; pass bytes of the same length to model
        content changed behind an unchanged listing.
        """
        sha, size = self._put_blob(AssetSource(logical_path, data=data))
        with self._write_lock():
            vfile, vrec = self._existing_version(workspace, name, version)
            for rec in vrec["assets"]:
                if rec["fileName"] == logical_path and not rec["remote"]:
                    rec["sha256"], rec["fileSize"] = sha, size
                    self._write_json(vfile, vrec)
                    self._bump_generation()
                    return str(rec["assetId"])
        raise StoreError(f"{workspace}/{name} {version} has no stored asset {logical_path!r}")

    def _existing_version(
        self, workspace: str, name: str, version: str
    ) -> tuple[Path, dict[str, Any]]:
        art_file = self._existing_artifact_file(workspace, name)
        if version not in _read_json(art_file)["versions"]:
            raise StoreError(f"{workspace}/{name} has no version {version}")
        vfile = art_file.parent / "versions" / f"{version}.json"
        return vfile, _read_json(vfile)

    def _existing_artifact_file(self, workspace: str, name: str) -> Path:
        _check_name("workspace", workspace)
        _check_name("artifact", name)
        art_file = self._artifact_dir(workspace, name) / "artifact.json"
        if not art_file.exists():
            raise StoreError(f"no artifact {workspace}/{name}")
        return art_file

    # ---- reading -------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The current committed state; reloaded from disk when another writer committed."""
        key = self._generation_key()
        with self._snap_lock:
            if self._snap is None or key != self._snap_key:
                # Take the key before loading: a commit racing with the load only makes the
                # next call reload again, never hides the commit.
                self._snap = self._load()
                self._snap_key = key
            return self._snap

    def _generation_key(self) -> bytes | None:
        # The content holds a fresh uuid per commit; stat() fields could repeat (inode
        # reuse within one mtime tick), the uuid cannot.
        try:
            return (self.root / "generation").read_bytes()
        except FileNotFoundError:
            return None

    def _load(self) -> Snapshot:
        artifacts: dict[str, dict[str, ArtifactRec]] = {}
        by_artifact_id: dict[str, ArtifactRec] = {}
        by_asset_id: dict[str, tuple[ArtifactRec, VersionRec, AssetRec]] = {}
        ws_root = self.root / "workspaces"
        for ws_dir in sorted(ws_root.iterdir()):
            try:
                ws_info = _read_json(ws_dir / "workspace.json")
            except (OSError, ValueError) as exc:
                logger.debug("store: skipping %s: %s", ws_dir, exc)
                continue
            ws_name = ws_info["name"]
            arts: dict[str, ArtifactRec] = {}
            for art_dir in sorted(p for p in ws_dir.iterdir() if p.is_dir()):
                rec = self._load_artifact(art_dir, ws_name, ws_info["workspaceId"])
                if rec is None or not rec.versions:
                    continue
                arts[rec.name] = rec
                by_artifact_id[rec.artifact_id] = rec
                for v in rec.versions:
                    for a in v.assets:
                        by_asset_id[a.asset_id] = (rec, v, a)
            if arts:
                artifacts[ws_name] = arts
        experiments: dict[str, Mapping[str, Any]] = {}
        for exp_file in (self.root / "experiments").glob("*.json"):
            try:
                exp = _read_json(exp_file)
            except (OSError, ValueError) as exc:
                logger.warning("store: unreadable experiment record %s: %s", exp_file, exc)
                continue
            experiments[exp["experimentKey"]] = exp
        return Snapshot(
            root=self.root,
            artifacts=artifacts,
            experiments=experiments,
            by_artifact_id=by_artifact_id,
            by_asset_id=by_asset_id,
        )

    def _load_artifact(self, art_dir: Path, ws_name: str, ws_id: str) -> ArtifactRec | None:
        try:
            art = _read_json(art_dir / "artifact.json")
        except FileNotFoundError:
            return None  # created by a writer that failed before its first commit
        except (OSError, ValueError) as exc:
            logger.warning("store: unreadable artifact record in %s: %s", art_dir, exc)
            return None
        alias_map: dict[str, str] = art.get("aliases", {})
        versions: list[VersionRec] = []
        for vstr in art["versions"]:
            try:
                raw = _read_json(art_dir / "versions" / f"{vstr}.json")
            except (OSError, ValueError) as exc:
                logger.warning("store: unreadable version %s in %s: %s", vstr, art_dir, exc)
                continue
            assets = tuple(
                AssetRec(
                    asset_id=a["assetId"],
                    file_name=a["fileName"],
                    file_size=a["fileSize"],
                    remote=a["remote"],
                    link=a["link"],
                    asset_type=a["type"],
                    metadata=a["metadata"],
                    sha256=a["sha256"],
                )
                for a in raw["assets"]
            )
            versions.append(
                VersionRec(
                    version_id=raw["artifactVersionId"],
                    version=vstr,
                    aliases=tuple(sorted(al for al, v in alias_map.items() if v == vstr)),
                    tags=tuple(raw["tags"]),
                    metadata=raw["metadata"],
                    added_ms=raw["added"],
                    experiment_key=raw["experimentKey"],
                    owner=raw["owner"],
                    state=raw["state"],
                    size=sum(a.file_size for a in assets if not a.remote),
                    assets=assets,
                )
            )
        versions.sort(key=lambda v: _version_key(v.version))
        return ArtifactRec(
            artifact_id=art["artifactId"],
            workspace=ws_name,
            workspace_id=ws_id,
            name=art["name"],
            artifact_type=art["type"],
            description=art["description"],
            tags=tuple(art["tags"]),
            versions=tuple(versions),
        )
