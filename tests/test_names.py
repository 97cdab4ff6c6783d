"""Name escaping is reversible; hostile asset paths map to safe, unique, deterministic paths."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cometfs.names import escape_name, map_asset_paths, unescape_name


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
