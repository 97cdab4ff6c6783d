"""Name escaping is reversible; hostile asset paths map to safe, unique, deterministic paths."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from cometfs.names import (
    NAME_MAX,
    NOT_A_URI,
    escape_name,
    file_name,
    map_asset_paths,
    name_of,
    remote_link_refusal,
    unescape_name,
)


@given(st.text())
def test_escape_round_trips_and_is_a_single_safe_component(name: str) -> None:
    escaped = escape_name(name)
    assert unescape_name(escaped) == name
    assert "/" not in escaped and "\0" not in escaped
    assert escaped not in (".", "..", ".comet", "") and not escaped.startswith(".")


def test_unescape_rejects_what_escape_never_produces() -> None:
    assert unescape_name("%zz") is None
    assert unescape_name(".hidden") is None


def test_clean_paths_are_kept() -> None:
    paths = ["a.txt", "dir/b.txt", "dir/sub/c.txt", "ünï/日本.txt"]
    mapped = map_asset_paths(paths, ["1", "2", "3", "4"])
    assert [(m.path, m.reason) for m in mapped] == [(p, None) for p in paths]


def test_hostile_paths_are_mapped_with_reasons() -> None:
    paths = ["../x", "/etc/passwd", "a//b", ".comet/x", "x" * 300, "n\0ul", "d/", "./y"]
    mapped = map_asset_paths(paths, [f"id{i}" for i in range(len(paths))])
    for m in mapped:
        assert m.reason, m
        parts = m.path.split("/")
        assert all(part not in ("", ".", "..") for part in parts), m
        assert parts[0] != ".comet" and "\0" not in m.path
        assert all(len(part.encode()) <= 255 for part in parts)


def test_clean_paths_win_conflicts_and_losers_get_unique_names() -> None:
    paths = ["/etc/passwd", "etc/passwd", "dup", "dup", "file", "file/inner"]
    ids = ["aaaaaaaa1", "bbbbbbbb2", "cccccccc3", "dddddddd4", "eeeeeeee5", "ffffffff6"]
    mapped = map_asset_paths(paths, ids)
    assert mapped[1].path == "etc/passwd" and mapped[1].reason is None
    assert mapped[0].path != "etc/passwd"
    assert mapped[5].path == "file/inner"
    assert mapped[4].path.startswith("file~")
    assert len({m.path for m in mapped}) == len(paths)


@given(st.lists(st.text(min_size=1, max_size=40), max_size=30))
def test_mapping_is_unique_deterministic_and_never_file_under_file(paths: list[str]) -> None:
    ids = [f"{i:032x}" for i in range(len(paths))]
    first = map_asset_paths(paths, ids)
    assert first == map_asset_paths(paths, ids)
    placed = [m.path for m in first]
    assert len(set(placed)) == len(placed)
    directories = {"/".join(p.split("/")[:d]) for p in placed for d in range(1, p.count("/") + 1)}
    assert not directories & set(placed)
    for path in placed:
        assert all(part not in ("", ".", "..") for part in path.split("/"))


@given(st.text(max_size=400))
def test_file_names_fit_name_max_and_short_ones_resolve_back(name: str) -> None:
    entry = file_name(name)
    assert len(entry.encode("utf-8", "surrogatepass")) <= NAME_MAX
    assert "/" not in entry and not entry.startswith(".") and entry == file_name(name)
    if len(escape_name(name).encode("utf-8", "surrogatepass")) <= NAME_MAX:
        assert entry == escape_name(name) and name_of(entry) == name
    else:
        assert name_of(entry) is None  # found through the listing that made it


def test_long_names_that_differ_late_get_different_file_names() -> None:
    one, two = "w" * 300 + "1", "w" * 300 + "2"
    assert file_name(one) != file_name(two)
    assert file_name("é" * 200) != file_name("é" * 201)


def test_only_uris_that_stay_inside_may_become_symlinks() -> None:
    for good in ("s3://bucket/key", "gs://b//c", "https://h/x?y=1#z", "a+b-c.d:x"):
        assert remote_link_refusal(good, "sub/dir") is None, good
    for bad in (
        None,
        "",
        "/root/.bashrc",
        "../../etc/shadow",
        "../../..",
        "relative/x",
        "1x:/y",
        ":x",
        "s3:\0x",
        "-s3://x",
    ):
        assert remote_link_refusal(bad) == NOT_A_URI, bad
    assert "4095" in str(remote_link_refusal("s3://" + "x" * 4091))
    assert remote_link_refusal("s3://" + "x" * 4090) is None
    for dotted in ("s3://b/../../..", "s3:/..", "s3://b/./x", "a:/.."):
        assert remote_link_refusal(dotted) is not None, dotted


@given(st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=8))
def test_lone_surrogates_become_encodable_names(name: str) -> None:
    """JSON can carry "\\ud800"; a name the kernel gets must encode, or readdir fails."""
    assert unescape_name(escape_name(name)) == name
    os.fsencode(file_name(name))
    for mapped in map_asset_paths([f"dir/{name}x"], ["id"]):
        os.fsencode(mapped.path)
    assert remote_link_refusal("s3://b/\ud800") == NOT_A_URI


def test_a_long_duplicate_still_fits_name_max() -> None:
    long = "a" * 300
    mapped = map_asset_paths([long, long, "d/" + long, "d/" + long], ["i1", "i2", "x" * 300, "y"])
    assert len({m.path for m in mapped}) == 4
    assert all(len(part.encode()) <= NAME_MAX for m in mapped for part in m.path.split("/"))
