"""The server's store: validation, atomicity, version defaults, aliases, persistence."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, cast

import pytest

from cometfs.errors import StoreError
from cometfs.server import ArtifactStore, AssetSource, VersionSpec, seed_demo
from cometfs.server.store import ArtifactRec, VersionRec


def _art(store: ArtifactStore, ws: str, name: str) -> ArtifactRec:
    art = store.snapshot().artifact(ws, name)
    assert art is not None, f"{ws}/{name} missing"
    return art


def _aliases_of(ver: VersionRec | None) -> tuple[str, ...]:
    assert ver is not None
    return ver.aliases


def _version_of(ver: VersionRec | None) -> str:
    assert ver is not None
    return ver.version


def test_add_version_roundtrip(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello file")
    v = store.add_version(
        VersionSpec(
            "ws",
            "data",
            [
                AssetSource("a/f.bin", path=src),
                AssetSource("b.txt", data=b"xyz", metadata={"k": 1}),
            ],
            artifact_type="model",
            aliases=["prod"],
            tags=["t1"],
            version_tags=["vt"],
            metadata={"n": 1, "nested": {"x": [1, 2]}},
            remotes={"r.csv": "s3://b/r.csv"},
            description="desc",
            experiment_key="0123456789abcdef0123456789abcdef",
            created_ms=1234,
        )
    )
    assert v == "1.0.0"
    art = _art(store, "ws", "data")
    assert (art.artifact_type, art.description, art.tags) == ("model", "desc", ("t1",))
    ver = art.versions[0]
    assert ver.aliases == ("prod",)
    assert ver.tags == ("vt",)
    assert ver.metadata == {"n": 1, "nested": {"x": [1, 2]}}
    assert ver.added_ms == 1234
    assert ver.experiment_key == "0123456789abcdef0123456789abcdef"
    assert ver.state == "CLOSED"
    assert ver.size == len(b"hello file") + 3
    files = {a.file_name: a for a in ver.assets}
    assert set(files) == {"a/f.bin", "b.txt", "r.csv"}
    assert files["b.txt"].metadata == {"k": 1}
    assert files["r.csv"].remote and files["r.csv"].link == "s3://b/r.csv"
    assert files["r.csv"].file_size == 0
    blob = store.snapshot().blob_path(files["a/f.bin"].sha256 or "")
    assert blob.read_bytes() == b"hello file"
    assert files["a/f.bin"].sha256 == hashlib.sha256(b"hello file").hexdigest()
    assert len({a.asset_id for a in ver.assets}) == 3
    exp = store.snapshot().experiments[ver.experiment_key]
    assert exp["workspaceName"] == "ws" and exp["running"] is False


def test_hostile_logical_paths_are_kept_verbatim(store: ArtifactStore) -> None:
    paths = [
        "../x",
        "/abs",
        "a//b",
        "dup",
        "dup",
        "f",
        "f/g",
        ".comet/x",
        "n" * 300,
        "üñí/çødé ✓",
        "sp ace",
        "a\\b",
    ]
    store.add_version(
        VersionSpec("ws", "hostile", [AssetSource(p, data=p.encode()) for p in paths])
    )
    ver = _art(store, "ws", "hostile").versions[0]
    assert [a.file_name for a in ver.assets] == paths


@pytest.mark.parametrize("bad", ["1.0", "v1.0.0", "01.0.0", "1.0.0.0", "", "latest", " 1.0.0"])
def test_rejects_non_semver(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(StoreError, match="semver"):
        store.add_version(VersionSpec("ws", "a", [AssetSource("x", data=b"1")], version=bad))


def test_accepts_prerelease_and_build(store: ArtifactStore) -> None:
    assert store.add_version(VersionSpec("ws", "a", [], version="1.0.0-rc.1+b7")) == "1.0.0-rc.1+b7"
    # semver: the next major release after 1.0.0-rc.1 is 1.0.0 itself.
    assert store.add_version(VersionSpec("ws", "a", [])) == "1.0.0"
    assert store.add_version(VersionSpec("ws", "a", [])) == "2.0.0"


def test_duplicate_version(store: ArtifactStore) -> None:
    store.add_version(VersionSpec("ws", "a", [AssetSource("x", data=b"1")], version="1.2.3"))
    with pytest.raises(StoreError, match=r"already has version 1\.2\.3"):
        store.add_version(VersionSpec("ws", "a", [AssetSource("x", data=b"2")], version="1.2.3"))


@pytest.mark.parametrize(("ws", "name"), [("", "a"), ("ws", ""), ("a/b", "x"), ("ws", "x/y")])
def test_bad_names(store: ArtifactStore, ws: str, name: str) -> None:
    with pytest.raises(StoreError, match="name"):
        store.add_version(VersionSpec(ws, name, [AssetSource("x", data=b"1")]))


def test_bad_inputs(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="JSON object"):
        store.add_version(VersionSpec("ws", "a", [], metadata=cast(Any, [1, 2])))
    with pytest.raises(StoreError, match="JSON-serialisable"):
        store.add_version(VersionSpec("ws", "a", [], metadata={"x": object()}))
    with pytest.raises(StoreError, match="logical path"):
        store.add_version(VersionSpec("ws", "a", [AssetSource("", data=b"1")]))
    with pytest.raises(StoreError, match="exactly one"):
        AssetSource("x")
    with pytest.raises(StoreError, match="exactly one"):
        AssetSource("x", path=tmp_path, data=b"1")
    with pytest.raises(StoreError, match="reserved"):
        store.add_version(VersionSpec("ws", "a", [], aliases=["Latest"]))
    with pytest.raises(StoreError, match="cannot read"):
        store.add_version(VersionSpec("ws", "a", [AssetSource("x", path=tmp_path / "missing")]))
    with pytest.raises(StoreError, match="not a regular file"):
        store.add_version(VersionSpec("ws", "a", [AssetSource("x", path=tmp_path)]))
    with pytest.raises(StoreError, match="experiment key"):
        store.add_version(VersionSpec("ws", "a", [], experiment_key="../../etc"))
    assert store.snapshot().artifact("ws", "a") is None


def test_add_directory(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "b" / "c").mkdir(parents=True)
    (src / "z.txt").write_bytes(b"z")
    (src / "a.txt").write_bytes(b"a")
    (src / "b" / "c" / "deep.bin").write_bytes(b"deep")
    store.add_directory(VersionSpec("ws", "dir", aliases=["x"]), src)
    ver = _art(store, "ws", "dir").versions[0]
    assert [a.file_name for a in ver.assets] == ["a.txt", "b/c/deep.bin", "z.txt"]
    assert ver.aliases == ("x",)


def test_add_directory_errors(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        store.add_directory(VersionSpec("ws", "d"), tmp_path / "nope")
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_bytes(b"1")
    os.mkfifo(src / "fifo")
    with pytest.raises(StoreError, match="not a regular file"):
        store.add_directory(VersionSpec("ws", "d"), src)
    assert store.snapshot().artifact("ws", "d") is None


def test_no_half_written_version_when_a_source_vanishes(
    store: ArtifactStore, tmp_path: Path
) -> None:
    store.add_version(VersionSpec("ws", "a", [AssetSource("old", data=b"old")]))
    good = tmp_path / "good"
    good.write_bytes(b"good bytes")
    gone = tmp_path / "gone"  # listed but missing when the copy reaches it
    with pytest.raises(StoreError, match="gone"):
        store.add_version(
            VersionSpec(
                "ws",
                "a",
                [AssetSource("good", path=good), AssetSource("gone", path=gone)],
                aliases=["moved"],
                tags=["newtag"],
            )
        )
    art = _art(store, "ws", "a")
    assert [v.version for v in art.versions] == ["1.0.0"]
    assert art.tags == ()
    assert art.versions[0].aliases == ()
    assert list((store.root / "tmp").iterdir()) == []
    # A fresh ArtifactStore (another process) sees the same committed state.
    assert [v.version for v in _art(ArtifactStore(store.root), "ws", "a").versions] == ["1.0.0"]
    # And the version number is still free.
    gone.write_bytes(b"back")
    assert store.add_version(VersionSpec("ws", "a", [AssetSource("gone", path=gone)])) == "2.0.0"


def test_default_version_bumps_major_of_highest(store: ArtifactStore) -> None:
    assert store.add_version(VersionSpec("ws", "a", [])) == "1.0.0"
    assert store.add_version(VersionSpec("ws", "a", [], version="3.4.5")) == "3.4.5"
    assert store.add_version(VersionSpec("ws", "a", [], version="2.0.0")) == "2.0.0"
    assert store.add_version(VersionSpec("ws", "a", [])) == "4.0.0"
    assert [v.version for v in _art(store, "ws", "a").versions] == [
        "1.0.0",
        "2.0.0",
        "3.4.5",
        "4.0.0",
    ]


def test_alias_moves_to_newer_version(store: ArtifactStore) -> None:
    store.add_version(VersionSpec("ws", "a", [], aliases=["prod", "keep"]))
    store.add_version(VersionSpec("ws", "a", [], aliases=["prod"]))
    art = _art(store, "ws", "a")
    assert _aliases_of(art.find_version("1.0.0")) == ("keep",)
    assert _aliases_of(art.find_version("2.0.0")) == ("prod",)
    assert _version_of(art.find_alias("prod")) == "2.0.0"
    assert _version_of(art.find_alias("LATEST")) == "2.0.0"
    store.move_alias("ws", "a", "prod", "1.0.0")
    art = _art(store, "ws", "a")
    assert _version_of(art.find_alias("prod")) == "1.0.0"
    assert _aliases_of(art.find_version("2.0.0")) == ()
    with pytest.raises(StoreError, match=r"no version 9\.0\.0"):
        store.move_alias("ws", "a", "prod", "9.0.0")
    with pytest.raises(StoreError, match="no artifact"):
        store.move_alias("ws", "nope", "prod", "1.0.0")
    store.remove_alias("ws", "a", "prod")
    assert _art(store, "ws", "a").find_alias("prod") is None


def test_type_description_tags(store: ArtifactStore) -> None:
    store.add_version(
        VersionSpec("ws", "a", [], artifact_type="model", tags=["x"], description="first")
    )
    store.add_version(VersionSpec("ws", "a", [], artifact_type="dataset", tags=["y", "x"]))
    art = _art(store, "ws", "a")
    assert (art.artifact_type, art.description, art.tags) == ("model", "first", ("x", "y"))
    store.add_version(VersionSpec("ws", "a", [], description="second"))
    assert _art(store, "ws", "a").description == "second"
    store.set_version_tags("ws", "a", "1.0.0", ["new"])
    assert _art(store, "ws", "a").versions[0].tags == ("new",)


def test_persistence_and_cross_instance_visibility(tmp_path: Path) -> None:
    root = tmp_path / "s"
    reader = ArtifactStore(root)
    assert reader.snapshot().workspaces() == []
    writer = ArtifactStore(root)
    writer.add_version(VersionSpec("ws", "a", [AssetSource("x", data=b"1")], aliases=["p"]))
    # The reader's cached snapshot must notice the other instance's commit.
    assert reader.snapshot().workspaces() == ["ws"]
    writer.add_version(VersionSpec("ws", "a", [AssetSource("x", data=b"2")]))
    writer.move_alias("ws", "a", "p", "2.0.0")
    art = _art(reader, "ws", "a")
    assert [v.version for v in art.versions] == ["1.0.0", "2.0.0"]
    assert _version_of(art.find_alias("p")) == "2.0.0"
    # Ids are stable across instances.
    assert _art(ArtifactStore(root), "ws", "a") == art


def test_snapshot_is_cached_until_a_commit(store: ArtifactStore) -> None:
    store.add_version(VersionSpec("ws", "a", []))
    first = store.snapshot()
    assert store.snapshot() is first
    store.add_version(VersionSpec("ws", "a", []))
    assert store.snapshot() is not first


def test_odd_workspace_and_artifact_names(store: ArtifactStore) -> None:
    names = [".", "..", "my data+set", "~x", "%2E", "x" * 400, "ünï"]
    for n in names:
        store.add_version(VersionSpec(n, n, [AssetSource("f", data=n.encode())]))
    snap = store.snapshot()
    assert sorted(snap.workspaces()) == sorted(names)
    for n in names:
        assert snap.artifact(n, n) is not None


def test_concurrent_writers_do_not_lose_versions(tmp_path: Path) -> None:
    import threading

    root = tmp_path / "s"
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            ArtifactStore(root).add_version(
                VersionSpec("ws", "a", [AssetSource("x", data=str(i).encode())], version=f"1.0.{i}")
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(_art(ArtifactStore(root), "ws", "a").versions) == 8


def test_seed_demo_is_idempotent(store: ArtifactStore) -> None:
    seed_demo(store)
    snap = store.snapshot()
    ids = {name: art.artifact_id for name, art in snap.artifacts["demo"].items()}
    assert set(ids) == {"mnist-mini", "titanic", "tiny-net"}
    seed_demo(store)
    again = store.snapshot()
    assert {n: a.artifact_id for n, a in again.artifacts["demo"].items()} == ids
    mnist = again.artifacts["demo"]["mnist-mini"]
    assert [v.version for v in mnist.versions] == ["1.0.0", "2.0.0"]
    assert len([a for a in mnist.versions[0].assets if a.file_name.endswith(".png")]) == 100
    assert len([a for a in mnist.versions[1].assets if a.file_name.endswith(".png")]) == 150


# ---- symlinks in add_directory (issue 9 item 7) --------------------------------------------


def _tree_with_links(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "real.txt").write_bytes(b"real")
    secret = tmp_path / "outside-secret"
    secret.write_bytes(b"secret")
    return src, secret


def test_add_directory_refuses_a_symlink_and_adds_nothing(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src, secret = _tree_with_links(tmp_path)
    (src / "sub" / "passwd").symlink_to(secret)
    with pytest.raises(StoreError, match=r"sub/passwd is a symbolic link.*--follow-symlinks"):
        store.add_directory(VersionSpec("ws", "a"), src)
    assert store.snapshot().artifact("ws", "a") is None
    assert list((store.root / "blobs").iterdir()) == []
    # Also a link inside the tree, and a link to a directory (os.walk used to skip those).
    (src / "sub" / "passwd").unlink()
    (src / "inner").symlink_to(src / "real.txt")
    with pytest.raises(StoreError, match="inner is a symbolic link"):
        store.add_directory(VersionSpec("ws", "a"), src)
    (src / "inner").unlink()
    (src / "dirlink").symlink_to(src / "sub")
    with pytest.raises(StoreError, match="dirlink is a symbolic link"):
        store.add_directory(VersionSpec("ws", "a"), src)


def test_follow_symlinks_copies_targets_inside_only(store: ArtifactStore, tmp_path: Path) -> None:
    src, secret = _tree_with_links(tmp_path)
    (src / "inner").symlink_to("real.txt")
    (src / "dirlink").symlink_to("sub")
    (src / "sub" / "f").write_bytes(b"f")
    store.add_directory(VersionSpec("ws", "a"), src, follow_symlinks=True)
    ver = _art(store, "ws", "a").versions[0]
    blobs = {a.file_name: (store.root / "blobs" / str(a.sha256)).read_bytes() for a in ver.assets}
    assert blobs == {"dirlink/f": b"f", "inner": b"real", "real.txt": b"real", "sub/f": b"f"}
    (src / "escape").symlink_to(secret)
    with pytest.raises(StoreError, match=r"escape is a symbolic link to .*outside"):
        store.add_directory(VersionSpec("ws", "b"), src, follow_symlinks=True)
    assert store.snapshot().artifact("ws", "b") is None
    store.add_directory(VersionSpec("ws", "b"), src, follow_symlinks=True, outside_symlinks=True)
    names = {a.file_name for a in _art(store, "ws", "b").versions[0].assets}
    assert "escape" in names


def test_follow_symlinks_refuses_loops_and_dangling_links(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src, _ = _tree_with_links(tmp_path)
    (src / "sub" / "up").symlink_to("..")
    with pytest.raises(StoreError, match="symlink loop"):
        store.add_directory(VersionSpec("ws", "a"), src, follow_symlinks=True)
    (src / "sub" / "up").unlink()
    (src / "gone").symlink_to("nowhere")
    with pytest.raises(StoreError, match="dangling"):
        store.add_directory(VersionSpec("ws", "a"), src, follow_symlinks=True)


def test_cli_store_add_refuses_symlinks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cometfs.cli import main

    src, secret = _tree_with_links(tmp_path)
    (src / "passwd").symlink_to(secret)
    root = tmp_path / "cli-store"
    assert main(["store", "add", "ws/a", str(src), "--store", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cometfs store: ") and "passwd is a symbolic link" in err
    assert ArtifactStore(root).snapshot().artifact("ws", "a") is None
    assert main(["store", "add", "ws/a", str(src), "--store", str(root), "--follow-symlinks"]) == 1
    assert "outside the source directory" in capsys.readouterr().err
    assert main(["store", "add", "ws/a", str(src), "--store", str(root), "--outside-symlinks"]) == 1
    assert "needs --follow-symlinks" in capsys.readouterr().err
    assert (
        main(
            [
                "store",
                "add",
                "ws/a",
                str(src),
                "--store",
                str(root),
                "--follow-symlinks",
                "--outside-symlinks",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == "added ws/a:1.0.0\n"


# ---- stale temp files ---------------------------------------------------------------------


def test_stale_temp_blobs_are_removed_on_open(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "s"
    ArtifactStore(root)
    tmp = root / "tmp"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)  # that process has exited and been reaped
    (tmp / f"{dead_pid}.{'a' * 32}.blob").write_bytes(b"x" * 1000)  # killed writer
    old = tmp / f"{os.getpid()}.{'b' * 32}.blob"  # a live pid, but two hours old
    old.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    legacy_old = tmp / f"{'c' * 32}.blob"  # the name format before pids, old
    legacy_old.write_bytes(b"z")
    os.utime(legacy_old, (time.time() - 7200, time.time() - 7200))
    live = tmp / f"{os.getpid()}.{'d' * 32}.blob"  # a writer at work right now
    live.write_bytes(b"w")
    legacy_new = tmp / f"{'e' * 32}.blob"
    legacy_new.write_bytes(b"v")
    ArtifactStore(root)
    assert sorted(p.name for p in tmp.iterdir()) == sorted([live.name, legacy_new.name])


def test_temp_files_carry_the_writer_pid(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store.add_version(VersionSpec("ws", "a", [AssetSource("x", data=b"x")]))
    assert seen and all(name.startswith(f"{os.getpid()}.") for name in seen)


def test_version_spec_validates_and_normalises_without_a_store() -> None:
    spec = VersionSpec(
        "ws",
        "a",
        [AssetSource("x", data=b"1", metadata={"k": 1})],
        aliases=["prod", "prod"],
        tags=["t"],
        metadata={"m": [1]},
        remotes={"r": "s3://b/r"},
    )
    assert spec.aliases == ("prod",)
    assert spec.tags == ("t",) and spec.version_tags == ()
    assert spec.metadata == {"m": [1]} and spec.remotes == {"r": "s3://b/r"}
    assert spec.asset_metadata == ({"k": 1},)
    for bad in (
        {"version": "1.0"},
        {"aliases": ["latest"]},
        {"metadata": cast(Any, [1])},
        {"remotes": {"r": ""}},
        {"experiment_key": "../x"},
        {"artifact_type": ""},
    ):
        with pytest.raises(StoreError):
            VersionSpec("ws", "a", **bad)
    with pytest.raises(StoreError, match="name must not contain"):
        VersionSpec("ws", "a/b")


def test_add_directory_refuses_a_spec_with_assets(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="must list none"):
        store.add_directory(VersionSpec("ws", "a", [AssetSource("x", data=b"1")]), tmp_path)
