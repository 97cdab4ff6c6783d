"""The tree over a fake Comet (no FUSE, no HTTP) with an injected clock: hostile remote links,
outages, bad versions and assets, long names, forget and negative lookups."""

from __future__ import annotations

import json
import posixpath
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pyfuse3
import pytest
import trio

from cometfs.errors import NotFound, TransientError
from cometfs.fs import CometFS
from cometfs.model import Artifact, ArtifactVersion, Asset
from cometfs.names import NAME_MAX, NOT_A_URI
from cometfs.store import Store
from cometfs.tree import AssetFile, Directory, Node, Symlink, Tree, VirtualFile

WS = "ws"


def version(name: str, number: str, aliases: Iterable[str] = ()) -> ArtifactVersion:
    return ArtifactVersion(
        version_id=f"vid-{name}-{number}",
        artifact_id=f"aid-{name}",
        workspace=WS,
        name=name,
        artifact_type="dataset",
        version=number,
        aliases=tuple(aliases),
        artifact_tags=(),
        version_tags=(),
        size=0,
        source_experiment_key=None,
        created_ms=1_700_000_000_000,
    )


def asset(
    path: str, asset_id: str, *, size: int = 3, link: str | None = None, problem: str | None = None
) -> Asset:
    return Asset(
        asset_id=asset_id,
        artifact_version_id="vid",
        logical_path=path,
        size=size,
        remote=link is not None,
        link=link,
        asset_type="asset",
        problem=problem,
    )


class FakeComet:
    """A blocking client over in-memory listings; `down` makes every call an outage."""

    def __init__(self) -> None:
        self.artifacts_by_name: dict[str, Artifact] = {}
        self.assets_by_version: dict[tuple[str, str], list[Asset]] = {}
        self.workspace_names = [WS]
        self.calls: Counter[str] = Counter()
        self.down = False
        self._lock = threading.Lock()

    def add(
        self,
        name: str,
        versions: list[ArtifactVersion],
        assets: dict[str, list[Asset]],
        latest: str | None = None,
    ) -> None:
        self.artifacts_by_name[name] = Artifact(
            artifact_id=f"aid-{name}",
            workspace=WS,
            name=name,
            artifact_type="dataset",
            description=None,
            tags=(),
            latest_version=latest,
            is_public=False,
            size=0,
            versions=tuple(versions),
        )
        for number, listed in assets.items():
            self.assets_by_version[(name, number)] = listed

    def _call(self, what: str) -> None:
        with self._lock:
            self.calls[what] += 1
        if self.down:
            raise TransientError("server down")

    def workspaces(self) -> list[str]:
        self._call("workspaces")
        return list(self.workspace_names)

    def artifacts(self, workspace: str, artifact_type: str | None = None) -> list[Artifact]:
        self._call("artifacts")
        if workspace not in self.workspace_names:
            raise NotFound(workspace)
        return [replace(a, versions=()) for a in self.artifacts_by_name.values()]

    def artifact(self, workspace: str, name: str) -> Artifact:
        self._call("artifact")
        if workspace not in self.workspace_names or name not in self.artifacts_by_name:
            raise NotFound(name)
        return self.artifacts_by_name[name]

    def artifact_version(
        self, workspace: str, name: str, *, version: str | None = None, alias: str | None = None
    ) -> ArtifactVersion:
        self._call("artifact_version")
        if name not in self.artifacts_by_name:
            raise NotFound(name)
        for listed in self.artifacts_by_name[name].versions:
            if listed.version == version or (alias is not None and alias in listed.aliases):
                return listed
        raise NotFound(f"{version or alias}")

    def assets(self, workspace: str, name: str, number: str) -> list[Asset]:
        self._call("assets")
        try:
            return self.assets_by_version[(name, number)]
        except KeyError:
            raise NotFound(number) from None

    def experiment_metadata(self, experiment_key: str) -> dict[str, Any]:
        raise NotFound(experiment_key)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_tree(comet: FakeComet, clock: Clock | None = None, ttl: float = 30.0) -> Tree:
    clock = clock or Clock()
    store = Store(comet, metadata_ttl=ttl, clock=clock)  # type: ignore[arg-type]
    return Tree(store, metadata_ttl=ttl, clock=clock, mount_time_ns=0)


async def walk_path(tree: Tree, path: str) -> Node:
    """Resolve `path` from the root the way the kernel does, following symlinks."""
    node: Node = tree.root
    stack: list[Node] = [tree.root]
    parts = [p for p in path.split("/") if p]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            stack.pop()
            node = stack[-1]
            continue
        child = await tree.lookup(node, part)
        if isinstance(child, Symlink):
            hops += 1
            assert hops < 40, "symlink loop"
            parts = [p for p in child.target.split("/") if p] + parts
            continue
        node = child
        stack.append(node)
    return node


async def read_json(tree: Tree, path: str) -> Any:
    node = await walk_path(tree, path)
    assert isinstance(node, VirtualFile)
    return json.loads(await tree.content(node))


async def every_path(tree: Tree, directory: Directory, prefix: str = "") -> dict[str, Node]:
    found: dict[str, Node] = {}
    for name, child in (await tree.children(directory)).items():
        path = f"{prefix}{name}"
        found[path] = child
        if isinstance(child, Directory):
            found.update(await every_path(tree, child, path + "/"))
    return found


def resolves_inside(link_path: str, target: str) -> bool:
    """Lexically resolve a symlink at `link_path` (relative to its version dir)."""
    resolved = posixpath.normpath(posixpath.join("/v", posixpath.dirname(link_path), target))
    return resolved.startswith("/v/")


HOSTILE_LINKS = {
    "train/cat/1.jpg": "/root/.bashrc",
    "train/cat/2.jpg": "../../../../../../../../etc/shadow",
    "train/cat/3.jpg": "../../..",
    "train/cat/4.jpg": "",
    "train/cat/5.jpg": "s3://bucket/" + "x" * 4100,
    "train/cat/6.jpg": "s3://b/../../../..",
    "train/cat/7.jpg": "s3:/..",
    "train/cat/8.jpg": "s3:\0x",
    "train/cat/9.jpg": "relative/path.jpg",
    "train/s3:": "s3:",  # would be a symlink to itself (ELOOP)
    "train/real.jpg": "train:x",  # would not loop, but names a real entry ("train:x" below)
    "train/train:x": "gs://fine/too",
}
GOOD_LINKS = {
    "remote/full.csv": "https://example.com/datasets/full.csv",
    "remote/gs.bin": "gs://bucket/a/b.bin",
    "remote/odd": "s3+x-y.z://b//double//slashes",
}


def hostile_comet() -> FakeComet:
    comet = FakeComet()
    assets = [asset("train/cat/0.jpg", "real0")]
    for i, (path, link) in enumerate({**HOSTILE_LINKS, **GOOD_LINKS}.items()):
        assets.append(asset(path, f"remote{i:02d}", size=0, link=link))
    comet.add("cats", [version("cats", "1.0.0", ["production"])], {"1.0.0": assets})
    return comet


def test_only_uri_links_that_stay_inside_become_symlinks() -> None:
    comet = hostile_comet()
    tree = make_tree(comet)

    async def main() -> None:
        version_dir = await walk_path(tree, f"{WS}/cats/1.0.0")
        assert isinstance(version_dir, Directory)
        paths = await every_path(tree, version_dir)
        links = {p: n.target for p, n in paths.items() if isinstance(n, Symlink)}
        assert links == GOOD_LINKS | {"train/train:x": "gs://fine/too"}
        for path, target in links.items():
            assert resolves_inside(path, target)
            with pytest.raises(NotFound):  # every published link dangles
                await walk_path(tree, f"{WS}/cats/1.0.0/{path}")
        for path in HOSTILE_LINKS:
            if path != "train/train:x":
                assert path not in paths

        listed = await read_json(tree, f"{WS}/cats/latest/.comet/assets.json")
        assert {a["logical_path"] for a in listed} == {
            "train/cat/0.jpg",
            *HOSTILE_LINKS,
            *GOOD_LINKS,
        }
        by_path = {a["logical_path"]: a for a in listed}
        assert by_path["train/cat/1.jpg"] == {
            **by_path["train/cat/1.jpg"],
            "path": None,
            "remote": True,
            "link": "/root/.bashrc",
        }
        path_map = await read_json(tree, f"{WS}/cats/production/.comet/path-map.json")
        reasons = {m["logical_path"]: m["reason"] for m in path_map}
        assert set(reasons) == set(HOSTILE_LINKS) - {"train/train:x"}
        assert reasons["train/cat/1.jpg"] == NOT_A_URI
        assert reasons["train/cat/2.jpg"] == NOT_A_URI
        assert reasons["train/cat/4.jpg"] == NOT_A_URI
        assert "4095" in reasons["train/cat/5.jpg"]
        assert (
            reasons["train/s3:"]
            == reasons["train/real.jpg"]
            == ("remote link would resolve to an entry of the version")
        )

    trio.run(main)


def test_a_cached_file_stays_reachable_after_the_ttl_with_the_server_down() -> None:
    comet = FakeComet()
    comet.add(
        "data",
        [version("data", "1.0.0", ["prod"]), version("data", "2.0.0")],
        {"1.0.0": [asset("a.txt", "a1")], "2.0.0": [asset("b.txt", "b2")]},
    )
    clock = Clock()
    tree = make_tree(comet, clock)

    async def main() -> None:
        paths = [f"{WS}/data/latest/b.txt", f"{WS}/data/2.0.0/b.txt", f"{WS}/data/prod/a.txt"]
        for path in paths:
            assert isinstance(await walk_path(tree, path), AssetFile)
        comet.down = True
        for step in range(1, 4):
            clock.now = 30.0 * step + 1
            for path in paths:
                found = await walk_path(tree, path)
                assert isinstance(found, AssetFile) and found.asset.logical_path in path
            await read_json(tree, f"{WS}/data/2.0.0/.comet/aliases.json")
        status = await read_json(tree, ".comet/status.json")
        assert status["metadata"]["stale_served"] > 0 and status["metadata"]["inodes"] > 5
        with pytest.raises(TransientError):  # nothing stale to serve: the outage shows
            await walk_path(tree, "other-ws")

    trio.run(main)


def test_a_bad_version_or_asset_is_skipped_not_an_error_for_its_neighbours() -> None:
    comet = FakeComet()
    numbers = ["1.0.0", "v1", "1.0", "01.0.0", "2.0.0", "1.0.0"]
    comet.add(
        "mixed",
        [version("mixed", n, ["good"] if n == "2.0.0" else ["bad"]) for n in numbers],
        {
            "2.0.0": [
                asset("ok.bin", "ok"),
                asset("neg.bin", "neg", size=0, problem="fileSize -1 is not a size"),
            ]
        },
        latest="v1",
    )
    tree = make_tree(comet)

    async def main() -> None:
        artifact = await walk_path(tree, f"{WS}/mixed")
        assert isinstance(artifact, Directory)
        names = set(await tree.children(artifact))
        assert names == {".comet", "1.0.0", "2.0.0", "latest", "good", "bad"}
        assert isinstance(await walk_path(tree, f"{WS}/mixed/latest/ok.bin"), AssetFile)
        summary = await read_json(tree, f"{WS}/mixed/.comet/artifact.json")
        assert summary["latest_version"] == "v1"
        assert [v["version"] for v in summary["versions"]] == ["1.0.0", "2.0.0"]
        assert summary["skipped"] == [
            {"version": "v1", "reason": "not a semver version"},
            {"version": "1.0", "reason": "not a semver version"},
            {"version": "01.0.0", "reason": "not a semver version"},
            {"version": "1.0.0", "reason": "duplicate version"},
        ]
        with pytest.raises(NotFound):
            await walk_path(tree, f"{WS}/mixed/2.0.0/neg.bin")
        path_map = await read_json(tree, f"{WS}/mixed/2.0.0/.comet/path-map.json")
        assert path_map == [
            {
                "logical_path": "neg.bin",
                "path": None,
                "id": "neg",
                "reason": "fileSize -1 is not a size",
            }
        ]
        workspace = await read_json(tree, f"{WS}/.comet/artifacts.json")
        assert workspace[0]["latest_version"] == "v1"

    trio.run(main)


def test_names_over_255_bytes_are_shortened_and_resolvable() -> None:
    long_artifact = "a" * 300
    long_alias = "é" * 200
    long_version = "1.0.0-" + "r" * 300
    comet = FakeComet()
    comet.workspace_names = ["w" * 256]
    comet.add(
        long_artifact,
        [version(long_artifact, long_version, [long_alias])],
        {long_version: [asset("x.txt", "x")]},
    )

    async def main() -> None:
        tree = make_tree(comet)
        # Every name the tree shows fits NAME_MAX, and looking it up reaches the same node.
        seen: list[str] = []
        node: Node = tree.root
        for _ in range(3):
            assert isinstance(node, Directory)
            entries = await tree.children(node)
            seen += list(entries)
            name = next(
                n
                for n in sorted(entries)
                if n not in (".comet", "latest") and not isinstance(entries[n], Symlink)
            )
            node = await tree.lookup(node, name)
            assert node is entries[name]
        assert isinstance(await tree.lookup(node, "x.txt"), AssetFile)
        assert all(len(n.encode()) <= NAME_MAX for n in seen)
        artifact_dir = await tree.lookup(
            await tree.lookup(tree.root, next(n for n in seen if n.startswith("w"))),
            next(n for n in seen if n.startswith("aaa")),
        )
        assert isinstance(artifact_dir, Directory)
        links = {
            n: c for n, c in (await tree.children(artifact_dir)).items() if isinstance(c, Symlink)
        }
        assert len(links) == 2  # latest and the shortened alias, both onto the version dir
        versions = [
            n
            for n, c in (await tree.children(artifact_dir)).items()
            if isinstance(c, Directory) and n != ".comet"
        ]
        assert {c.target for c in links.values()} == set(versions)
        assert all(len(n.encode()) <= NAME_MAX for n in [*links, *versions])
        # Deterministic: a second tree shows the same names.
        again = make_tree(comet)
        ws_name = next(iter(n for n in await tree.children(tree.root) if n != ".comet"))
        assert ws_name in await again.children(again.root)

    trio.run(main)


def test_two_hundred_stats_of_a_missing_name_cost_one_request() -> None:
    comet = FakeComet()
    comet.add("data", [version("data", "1.0.0")], {"1.0.0": []})
    tree = make_tree(comet)

    async def main() -> None:
        for path in ("nope", f"{WS}/nope", f"{WS}/data/nope", f"{WS}/data/9.9.9"):
            parent = await walk_path(tree, path.rpartition("/")[0])
            assert isinstance(parent, Directory)
            await tree.children(parent)
            before = sum(comet.calls.values())
            for _ in range(200):
                with pytest.raises(NotFound):
                    await walk_path(tree, path)
            assert sum(comet.calls.values()) - before <= 1, path

    trio.run(main)


def test_forgotten_nodes_leave_the_inode_table() -> None:
    """100,000 entries walked and many alias moves: once the kernel forgets them, the table
    is back to a few nodes (it grew by one inode per entry and per move before)."""
    comet = FakeComet()
    assets = [asset(f"d{i // 1000}/f{i}.bin", f"id{i}") for i in range(100_000)]
    comet.add(
        "big",
        [version("big", "1.0.0", ["a0"]), version("big", "2.0.0")],
        {"1.0.0": assets, "2.0.0": []},
    )
    clock = Clock()
    tree = make_tree(comet, clock)
    held: Counter[int] = Counter()

    async def lookup(parent: Node, name: str) -> Node:
        node = await tree.lookup(parent, name)
        held[node.inode] += 1
        return node

    async def main() -> None:
        baseline = tree.inode_count
        ws = await lookup(tree.root, WS)
        artifact = await lookup(ws, "big")
        version_dir = await lookup(artifact, "1.0.0")
        assert isinstance(version_dir, Directory)
        for name in await tree.children(version_dir):
            sub = await lookup(version_dir, name)
            if isinstance(sub, Directory) and name != ".comet":
                for child in (await tree.children(sub)).values():
                    await tree.attributes(child)  # readdirplus: uncounted by the tree
                    held[child.inode] += 1
        for move in range(300):  # the alias moves between versions
            target = "1.0.0" if move % 2 else "2.0.0"
            comet.add(
                "big",
                [
                    version("big", "1.0.0", [f"a{move}"] if target == "1.0.0" else []),
                    version("big", "2.0.0", [f"a{move}"] if target == "2.0.0" else []),
                ],
                {},
            )
            clock.now += 31
            await lookup(artifact, f"a{move}")
        assert tree.inode_count > 100_000
        # The kernel forgets children before their parents (a dentry pins its parent), in
        # batches, through the FUSE handler; an unknown inode in a batch is harmless.
        fs = CometFS(tree, reader=None, uid=0, gid=0)  # type: ignore[arg-type]
        parents = (version_dir.inode, artifact.inode, ws.inode)
        children = sorted(((i, n) for i, n in held.items() if i not in parents), reverse=True)
        await fs.forget([(10**9, 1), *children])
        await fs.forget([(inode, held[inode]) for inode in parents])
        assert tree.inode_count <= baseline + 10
        assert tree.identity_count <= baseline + 10
        # What was released comes back on the next lookup.
        found = await walk_path(tree, f"{WS}/big/1.0.0/d7/f7007.bin")
        assert isinstance(found, AssetFile) and found.asset.asset_id == "id7007"

    trio.run(main)


def test_editable_comet_files_are_opened_with_direct_io() -> None:
    comet = FakeComet()
    comet.add("data", [version("data", "1.0.0", ["prod"])], {"1.0.0": [asset("a", "a")]})
    tree = make_tree(comet)
    fs = CometFS(tree, reader=None, uid=0, gid=0)  # type: ignore[arg-type]
    ctx = pyfuse3.RequestContext()

    async def open_file(path: str) -> pyfuse3.FileInfo:
        node = await walk_path(tree, path)
        return await fs.open(node.inode, 0, ctx)

    async def main() -> None:
        base = f"{WS}/data/1.0.0/.comet/"
        for name in ("aliases.json", "tags.json", "artifact.json", "metadata.json"):
            info = await open_file(base + name)
            assert info.direct_io and not info.keep_cache, name
        for path in (
            f"{WS}/.comet/artifacts.json",
            f"{WS}/data/.comet/artifact.json",
            ".comet/status.json",
        ):
            assert (await open_file(path)).direct_io, path
        assert not (await open_file(base + "assets.json")).direct_io
        # The document is fixed per handle: a change after open does not reach the reader.
        info = await open_file(base + "aliases.json")
        first = await fs.read(info.fh, 0, 1 << 20)
        comet.add("data", [version("data", "1.0.0", ["prod", "other"])], {})
        assert await fs.read(info.fh, 0, 1 << 20) == first
        assert json.loads(bytes(first)) == ["prod"]

    trio.run(main)
