"""Generated hostile listings against a reference model of what the tree must show.

Weird and duplicate asset paths, bad and duplicate versions, remote links of every shape,
assets with a `problem`: every valid entry is reachable, nothing is hidden (assets.json and
path-map.json account for every asset), no symlink resolves to anything, nothing crashes.
"""

from __future__ import annotations

import json
import os
import posixpath
import re

import semantic_version
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cometfs.errors import NotFound
from cometfs.model import Asset
from cometfs.names import NAME_MAX
from cometfs.tree import AssetFile, Directory, Symlink
from test_tree import WS, FakeComet, asset, every_path, make_tree, version, walk_path

URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

components = st.one_of(
    st.text(alphabet="ab.:~%é\0 \ud800", max_size=6),
    st.sampled_from(["", ".", "..", ".comet", "s3:", "gs:", "a" * 300]),
)
paths = st.lists(components, min_size=1, max_size=4).map("/".join)
links = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "",
            "/etc/passwd",
            "../../..",
            "s3:",
            "s3://b/../../..",
            "a:/..",
            "https://h/x",
            "gs://b//c",
            "s3:" + "x" * 5000,
            "s3:\0",
        ]
    ),
    st.builds(
        lambda scheme, rest: f"{scheme}:{rest}",
        st.sampled_from(["s3", "gs", "a", "1x", "x+y"]),
        paths,
    ),
)
versions = st.one_of(
    st.sampled_from(["1.0.0", "2.0.0", "1.0.0-rc.1", "v1", "1.0", "01.0.0", "", "1.0.0+b"]),
    st.text(alphabet="0123456789.-+a", max_size=8),
)


@st.composite
def assets(draw: st.DrawFn) -> list[Asset]:
    listed = []
    for i in range(draw(st.integers(0, 12))):
        path = draw(paths)
        asset_id = draw(st.sampled_from([f"id{i}", "dup"]))
        kind = draw(st.sampled_from(["file", "remote", "problem"]))
        if kind == "remote":
            listed.append(asset(path, asset_id, size=0, link=draw(links)))
            if listed[-1].link is None:  # remote with a null link
                listed[-1] = Asset(asset_id, "vid", path, 0, True, None, "asset")
        elif kind == "problem":
            listed.append(asset(path, asset_id, size=0, problem="fileSize is not a size"))
        else:
            listed.append(asset(path, asset_id, size=draw(st.integers(0, 2**40))))
    return listed


def strict_semver(value: str) -> bool:
    try:
        semantic_version.Version(value)
    except ValueError:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(versions, assets()), min_size=1, max_size=4))
def test_the_tree_matches_the_reference_model(listing: list[tuple[str, list[Asset]]]) -> None:
    comet = FakeComet()
    comet.add(
        "art",
        [version("art", number) for number, _ in listing],
        {number: listed for number, listed in reversed(listing)},
    )
    # The reference: the first strict-semver occurrence of each version is shown.
    expected: dict[str, list[Asset]] = {}
    for number, _ in listing:
        if strict_semver(number) and number not in expected:
            expected[number] = comet.assets_by_version[("art", number)]
    tree = make_tree(comet)

    async def main() -> None:
        artifact = await walk_path(tree, f"{WS}/art")
        assert isinstance(artifact, Directory)
        shown = {
            n
            for n, node in (await tree.children(artifact)).items()
            if isinstance(node, Directory) and n != ".comet"
        }
        assert shown == set(expected)
        summary = json.loads(
            await tree.content(await walk_path(tree, f"{WS}/art/.comet/artifact.json"))  # type: ignore[arg-type]
        )
        assert len(summary["versions"]) + len(summary["skipped"]) == len(listing)
        for number, listed in expected.items():
            await check_version(number, listed)

    async def check_version(number: str, listed: list[Asset]) -> None:
        base = f"{WS}/art/{number}"
        version_dir = await walk_path(tree, base)
        assert isinstance(version_dir, Directory)
        entries = await every_path(tree, version_dir)
        assert all(len(os.fsencode(p.rsplit("/", 1)[-1])) <= NAME_MAX for p in entries)

        assets_json = json.loads(await tree.content(entries[".comet/assets.json"]))  # type: ignore[arg-type]
        path_map = json.loads(await tree.content(entries[".comet/path-map.json"]))  # type: ignore[arg-type]
        # Nothing hidden: one assets.json entry per listed asset.
        assert sorted((a["logical_path"], a["id"]) for a in assets_json) == sorted(
            (a.logical_path, a.asset_id) for a in listed
        )
        unshown = {(m["logical_path"], m["id"], m["reason"]) for m in path_map if m["path"] is None}
        for entry in assets_json:
            source = next(
                a
                for a in listed
                if a.logical_path == entry["logical_path"]
                and a.asset_id == entry["id"]
                and a.link == entry["link"]
                and a.remote == entry["remote"]
                and (entry["path"] is None)
                == (a.problem is not None or (a.remote and entry["path"] is None))
            )
            if entry["path"] is None:
                assert (source.logical_path, source.asset_id) in {u[:2] for u in unshown}
                assert source.problem is not None or source.remote
                continue
            assert source.problem is None
            node = entries[str(entry["path"])]
            if source.remote:
                assert isinstance(node, Symlink) and node.target == source.link
                assert source.link is not None and URI.match(source.link)
                resolved = posixpath.normpath(
                    posixpath.join("/v", posixpath.dirname(str(entry["path"])), node.target)
                )
                assert resolved.startswith("/v/")
                try:
                    await walk_path(tree, f"{base}/{entry['path']}")
                except NotFound:
                    pass  # every published link dangles
                else:
                    raise AssertionError(f"{entry['path']} -> {node.target} resolves")
            else:
                assert isinstance(node, AssetFile) and node.asset.asset_id == source.asset_id
                assert node.asset.logical_path == source.logical_path
        # Every asset file on disk is one of the listing's.
        files = [n for n in entries.values() if isinstance(n, AssetFile)]
        assert len(files) == sum(
            1 for a in assets_json if a["path"] is not None and not a["remote"]
        )

    trio.run(main)
