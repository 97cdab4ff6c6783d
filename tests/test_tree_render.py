"""The `.comet/` documents as plain functions, and the one default of each shared setting."""

from __future__ import annotations

import inspect
import json

from cometfs.config import DEFAULT_METADATA_TTL
from cometfs.engine import Engine
from cometfs.model import Artifact, ArtifactVersion, Asset
from cometfs.mount import MountOptions
from cometfs.names import MappedPath
from cometfs.reader import AssetReader
from cometfs.reader.disk import DEFAULT_BLOCK_SIZE
from cometfs.readpath import build_read_path
from cometfs.store import Store
from cometfs.tree import Tree
from cometfs.tree.render import (
    artifact_summary,
    artifacts_listing,
    assets_doc,
    path_map_doc,
    render_json,
    tags_doc,
)
from cometfs.tree.version import VERSION_FILES


def version(number: str, *, created_ms: int | None = None) -> ArtifactVersion:
    return ArtifactVersion(
        "vid",
        "aid",
        "ws",
        "data",
        "dataset",
        number,
        ("prod", "b"),
        ("t2", "t1"),
        ("v",),
        10,
        "exp",
        {"k": 1},
        created_ms=created_ms,
        state="CLOSED",
        owner="alice",
    )


def asset(asset_id: str, path: str) -> Asset:
    return Asset(asset_id, "vid", path, 3, False, None, "asset")


def test_path_map_lists_renamed_then_skipped_assets() -> None:
    assets = [asset("a1", "x/y"), asset("a2", "bad"), asset("a3", "z")]
    mapped = [MappedPath(0, "x/y", "x/y", None), MappedPath(2, "z", "z~a3", "clash")]
    skipped = {1: "problem"}
    assert path_map_doc(assets, mapped, skipped) == [
        {"logical_path": "z", "path": "z~a3", "id": "a3", "reason": "clash"},
        {"logical_path": "bad", "path": None, "id": "a2", "reason": "problem"},
    ]
    doc = assets_doc(version("1.0.0"), assets, mapped, skipped)
    assert [(d["id"], d["path"]) for d in doc] == [("a1", "x/y"), ("a3", "z~a3"), ("a2", None)]


def test_artifact_documents_sort_and_skip() -> None:
    artifact = Artifact(
        "aid",
        "ws",
        "data",
        "dataset",
        None,
        ("b", "a"),
        "2.0.0",
        False,
        20,
        (version("2.0.0", created_ms=1_500), version("nope"), version("1.0.0")),
    )
    summary = artifact_summary(artifact)
    assert [v["version"] for v in summary["versions"]] == ["1.0.0", "2.0.0"]
    assert summary["versions"][1]["created_at"] == "1970-01-01T00:00:01.500Z"
    assert summary["skipped"] == [{"version": "nope", "reason": "not a semver version"}]
    assert artifacts_listing([artifact])[0]["artifact_tags"] == ["a", "b"]
    # What the listings say is shown, not only parsed: visibility, state and owner.
    assert artifacts_listing([artifact])[0]["is_public"] is False
    assert summary["is_public"] is False
    assert (summary["versions"][0]["state"], summary["versions"][0]["owner"]) == ("CLOSED", "alice")
    assert tags_doc(version("1.0.0")) == {"artifact_tags": ["t1", "t2"], "version_tags": ["v"]}
    assert json.loads(render_json(summary)) == summary


def test_version_files_table_names_every_comet_file_once() -> None:
    names = [name for name, _, _ in VERSION_FILES]
    assert len(set(names)) == len(names) == 8
    assert {name for name, _, fixed in VERSION_FILES if not fixed} == {
        "artifact.json",
        "metadata.json",
        "tags.json",
        "aliases.json",
    }


def _default(callable_: object, name: str) -> object:
    return inspect.signature(callable_).parameters[name].default  # type: ignore[arg-type]


def test_every_default_metadata_ttl_is_the_one_constant() -> None:
    for owner in (Store, Tree, build_read_path, Engine, MountOptions):
        assert _default(owner, "metadata_ttl") == DEFAULT_METADATA_TTL, owner


def test_reader_and_disk_cache_default_to_one_block_size() -> None:
    assert _default(AssetReader, "block_size") == DEFAULT_BLOCK_SIZE
