"""Every fault kind of the local server, through a real mount, with every byte checked.

Each test stores assets, mounts, injects one kind of fault (`server.faults`, or a server
mutation: revoked key, deleted version, replaced bytes, a restart) and compares what a
reader sees with the sha256 of what was stored. A read either returns the stored bytes or
fails with an errno; it never returns other bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cometfs.server import ArtifactStore, AssetSource, CometServer, VersionSpec, parse_faults
from cometfs.testing import wait_for

from .conftest import MountFactory
from .test_deadlines_live import start_and_kill

pytestmark = pytest.mark.fuse

WS = "fault-ws"
MIB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add(store: ArtifactStore, name: str, files: dict[str, bytes], version: str = "1.0.0") -> None:
    store.add_version(
        VersionSpec(WS, name, [AssetSource(p, data=d) for p, d in files.items()], version=version)
    )


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def read_direct(path: Path, offset: int = 0, size: int | None = None) -> bytes:
    """Read through O_DIRECT, so the mount answers and not the kernel's page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        total = os.fstat(fd).st_size if size is None else size
        out = bytearray()
        buf = mmap.mmap(-1, MIB)  # page-aligned, as O_DIRECT wants
        with buf:
            while len(out) < total:
                n = os.preadv(fd, [buf], offset + len(out))
                if n == 0:
                    break
                out += buf[: min(n, total - len(out))]
        return bytes(out)
    finally:
        os.close(fd)


def errno_of(path: Path) -> int:
    with pytest.raises(OSError) as caught:
        read_direct(path)
    return caught.value.errno or 0


def streamed_when_idle(mount_path: Path) -> int:
    """The mount's `bytes_streamed` once no stream runs (a stream may go on after its read)."""

    def cache() -> dict[str, int]:
        doc = json.loads((mount_path / ".comet" / "status.json").read_text())
        return dict(doc["cache"])

    wait_for(lambda: cache()["active_streams"] == 0, 30, "the mount's streams to end")
    return cache()["bytes_streamed"]


def test_5xx_bursts_are_retried_and_bytes_are_right(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    files = {f"f{i}.bin": payload(3 * MIB + i, i) for i in range(3)}
    add(store, "data", files)
    server = make_server(
        store=store,
        faults=parse_faults("get-asset=500*2;artifacts/version/files=503*2;artifacts/get=502*1"),
    )
    mount = mount_factory(server, expect_warnings=True)
    for name, data in files.items():
        assert sha(read_direct(mount.path / WS / "data" / "1.0.0" / name)) == sha(data)
    assert server.request_log.count("get-asset", 500) == 2
    assert server.request_log.count("artifacts/version/files", 503) == 2


@pytest.mark.parametrize("spec", ["429:1*2", "429:date*1"])
def test_429_waits_for_retry_after_and_bytes_are_right(
    store: ArtifactStore,
    make_server: Callable[..., CometServer],
    mount_factory: MountFactory,
    spec: str,
) -> None:
    data = payload(2 * MIB, 7)
    add(store, "data", {"a.bin": data})
    server = make_server(store=store)
    mount = mount_factory(server, expect_warnings=True)
    path = mount.path / WS / "data" / "1.0.0" / "a.bin"
    assert path.stat().st_size == len(data)
    server.faults.add(parse_faults(f"get-asset={spec}").rules[0])
    assert sha(read_direct(path)) == sha(data)
    limited = server.request_log.entries("get-asset", 429)
    assert limited, "the 429 fault did not fire"
    # The retry of the refused range came no earlier than its Retry-After said (the date
    # form is 1-2 s ahead in whole seconds, so at least ~1 s). Other ranges (readahead)
    # may be fetched meanwhile: only the same range is the retry.
    last = limited[-1]
    retries = [
        e["time"]
        for e in server.request_log.entries("get-asset")
        if e["range"] == last["range"] and e["time"] > last["time"]
    ]
    assert retries and retries[0] - last["time"] >= 0.9


@pytest.mark.parametrize("kind", ["reset-mid", "short", "reset"])
def test_broken_bodies_are_retried_and_bytes_are_right(
    store: ArtifactStore,
    make_server: Callable[..., CometServer],
    mount_factory: MountFactory,
    kind: str,
) -> None:
    files = {"big.bin": payload(5 * MIB + 123, 1), "small.bin": payload(7000, 2)}
    add(store, "data", files)
    server = make_server(store=store, faults=parse_faults(f"get-asset={kind}*3"))
    mount = mount_factory(server, expect_warnings=True)
    version = mount.path / WS / "data" / "1.0.0"
    for name, data in files.items():
        assert sha(read_direct(version / name)) == sha(data)
        assert sha((version / name).read_bytes()) == sha(data)
    assert [r.fired for r in server.faults.rules] == [3]


@pytest.mark.parametrize("spec", ["get-asset=stall", "get-asset=trickle:2000"])
def test_stall_and_trickle_fail_within_the_timeout(
    store: ArtifactStore,
    make_server: Callable[..., CometServer],
    mount_factory: MountFactory,
    spec: str,
) -> None:
    data = payload(3 * MIB, 3)
    add(store, "data", {"slow.bin": data, "other.bin": b"x" * 5000})
    server = make_server(store=store)
    mount = mount_factory(server, "--timeout", "3", expect_warnings=True)
    path = mount.path / WS / "data" / "1.0.0" / "slow.bin"
    assert path.stat().st_size == len(data)
    server.faults.add(parse_faults(spec).rules[0])
    started = time.monotonic()
    assert errno_of(path) == errno.EIO
    assert time.monotonic() - started < 10
    # A reader killed while the fault holds it returns at once.
    assert (
        start_and_kill(["dd", f"if={path}", "of=/dev/null", "iflag=direct", "bs=1M"], after=1.0)
        < 2.5
    )
    server.faults.clear()
    # A read may join the fetch the killed reader left in flight (stalled until its own
    # --timeout); the one after that gets the right bytes.
    wait_for(lambda: _reads_right(path, data), 10, "reads to recover once the fault is gone")


def test_range_ignored_mid_read_still_gives_the_right_bytes(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    data = payload(12 * MIB, 4)
    add(store, "data", {"a.bin": data})
    server = make_server(store=store)
    mount = mount_factory(server, expect_warnings=True)
    path = mount.path / WS / "data" / "1.0.0" / "a.bin"
    assert read_direct(path, 0, MIB) == data[:MIB]
    server.faults.add(parse_faults("get-asset=norange*1").rules[0])
    for offset in (8 * MIB, 3 * MIB, 11 * MIB):
        assert read_direct(path, offset, MIB) == data[offset : offset + MIB]
    assert server.faults.rules[0].fired == 1
    assert sha(read_direct(path)) == sha(data)


def test_bytes_changed_under_the_same_id_are_estale_never_mixed(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    old = payload(6 * MIB, 5)
    new = payload(6 * MIB, 6)  # same length: the listing's size cannot tell them apart
    add(store, "data", {"a.bin": old, "b.bin": old[: 3 * MIB]})
    server = make_server(store=store)
    mount = mount_factory(server, "--metadata-ttl", "3600", expect_warnings=True)
    version = mount.path / WS / "data" / "1.0.0"
    assert read_direct(version / "a.bin", 0, MIB) == old[:MIB]
    store.replace_asset_bytes(WS, "data", "1.0.0", "a.bin", new)
    store.replace_asset_bytes(WS, "data", "1.0.0", "b.bin", new[: 3 * MIB])
    # a.bin was partly read before the change: the rest must not come from the new bytes.
    assert errno_of(version / "a.bin") == errno.ESTALE
    assert read_direct(version / "a.bin", 0, MIB) == old[:MIB]  # the cached block stays
    # b.bin was never read: the listing has no checksum, so the mount cannot know the bytes
    # changed; it must serve one whole version of them, never a mix.
    got = sha(read_direct(version / "b.bin"))
    assert got in (sha(old[: 3 * MIB]), sha(new[: 3 * MIB]))


def test_revoked_key_is_eacces_and_logged_once(
    store: ArtifactStore,
    make_server: Callable[..., CometServer],
    mount_factory: MountFactory,
    api_key: str,
) -> None:
    files = {f"f{i}.bin": payload(4000 + i, i) for i in range(6)}
    add(store, "data", files)
    server = make_server(store=store)
    mount = mount_factory(server, "--metadata-ttl", "1", expect_warnings=True)
    version = mount.path / WS / "data" / "1.0.0"
    assert sha(read_direct(version / "f0.bin")) == sha(files["f0.bin"])
    server.revoke_key(api_key)
    time.sleep(1.2)  # let the listing TTL pass, so lookups go to the server too
    for i in range(1, 6):
        assert errno_of(version / f"f{i}.bin") == errno.EACCES

    def refusals() -> list[str]:
        return [line for line in mount.log_problems() if "401" in line or "key" in line.lower()]

    # The mount writes its log from a thread of its own: the line may follow the answer.
    wait_for(lambda: bool(refusals()), 10, "the refusal in the mount log")
    assert len(refusals()) == 1, refusals()


def test_deleted_version_is_enoent_for_unread_files(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    files = {"read.bin": payload(5000, 1), "unread.bin": payload(6000, 2)}
    add(store, "data", files)
    add(store, "data", {"read.bin": b"v2"}, version="2.0.0")
    server = make_server(store=store)
    mount = mount_factory(server, "--metadata-ttl", "1")
    version = mount.path / WS / "data" / "1.0.0"
    assert sha(read_direct(version / "read.bin")) == sha(files["read.bin"])
    store.delete_version(WS, "data", "1.0.0")
    wait_for(
        lambda: "1.0.0" not in os.listdir(mount.path / WS / "data"),
        10,
        "the deleted version to leave the listing",
    )
    with pytest.raises(FileNotFoundError):
        read_direct(version / "unread.bin")
    # What was read before the delete may still be answered from the caches (the old bytes,
    # never others) until the kernel forgets the entry; then it is ENOENT too.
    with contextlib.suppress(FileNotFoundError):
        assert sha(read_direct(version / "read.bin")) == sha(files["read.bin"])
    assert (mount.path / WS / "data" / "latest" / "read.bin").read_bytes() == b"v2"


def test_not_finalized_version_is_a_clear_error(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    add(store, "data", {"a.bin": b"a" * 100})
    server = make_server(store=store, faults=parse_faults("artifacts/version/files=not-final"))
    mount = mount_factory(server, expect_warnings=True)
    with pytest.raises(OSError) as caught:
        os.listdir(mount.path / WS / "data" / "1.0.0")
    assert caught.value.errno == errno.EIO
    wait_for(
        lambda: any("not finalized" in line for line in mount.log_problems()),
        10,
        "the not-finalized warning in the mount log",
    )
    server.faults.clear()
    wait_for(
        lambda: "a.bin" in _listdir(mount.path / WS / "data" / "1.0.0"),
        10,
        "the version to list once finalized",
    )


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def test_server_killed_and_restarted_on_the_same_port(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    files = {f"f{i}.bin": payload(2 * MIB + i, i) for i in range(3)}
    add(store, "data", files)
    server = make_server(store=store)
    mount = mount_factory(server, "--timeout", "3", expect_warnings=True)
    version = mount.path / WS / "data" / "1.0.0"
    assert sha(read_direct(version / "f0.bin")) == sha(files["f0.bin"])
    assert (version / "f1.bin").stat().st_size == len(files["f1.bin"])
    port = server.port
    server.close()
    assert errno_of(version / "f1.bin") == errno.EIO
    assert sha(read_direct(version / "f0.bin")) == sha(files["f0.bin"])  # from the cache
    restarted = make_server(store=store, port=port)
    started = time.monotonic()
    wait_for(
        lambda: _reads_right(version / "f1.bin", files["f1.bin"]),
        15,
        "reads to recover after the restart",
    )
    recovered = time.monotonic() - started
    assert recovered < 10, recovered
    assert sha(read_direct(version / "f2.bin")) == sha(files["f2.bin"])
    assert restarted.request_log.count("get-asset") > 0


def _reads_right(path: Path, data: bytes) -> bool:
    try:
        return sha(read_direct(path)) == sha(data)
    except OSError:
        return False


def test_random_reads_against_a_server_ignoring_range_fetch_a_bounded_amount(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    size = 48 * MIB
    data = payload(size, 9)
    add(store, "data", {"a.bin": data})
    server = make_server(store=store, ranges=False)
    mount = mount_factory(server, "--cache-size", "8M", expect_warnings=True)
    path = mount.path / WS / "data" / "1.0.0" / "a.bin"
    rng = random.Random(1)
    reads = 40
    # Reads near the start: a stream must stop a readahead past them, not run to the end.
    for _ in range(reads):
        offset = rng.randrange(0, 4 * MIB) & ~4095
        assert read_direct(path, offset, 65536) == data[offset : offset + 65536]
    near = streamed_when_idle(mount.path)
    assert near <= size // 2, f"{near / MIB:.0f} MiB streamed for {reads} reads in 4 MiB"
    # Reads anywhere: each costs at most the bytes up to it plus the readahead.
    for _ in range(reads):
        offset = rng.randrange(0, size - 65536) & ~4095
        assert read_direct(path, offset, 65536) == data[offset : offset + 65536]
    total = streamed_when_idle(mount.path)
    assert total <= 8 * size, f"{total / MIB:.0f} MiB streamed for {2 * reads} reads"
    assert sha(read_direct(path)) == sha(data)


def test_a_reader_process_sees_every_fault_kind_and_no_wrong_byte(
    store: ArtifactStore, make_server: Callable[..., CometServer], mount_factory: MountFactory
) -> None:
    files = {f"f{i}.bin": payload(MIB + 4096 * i, 100 + i) for i in range(8)}
    add(store, "data", files)
    server = make_server(
        store=store,
        faults=parse_faults("get-asset=reset-mid@0.2;get-asset=short@0.2;get-asset=500@0.2;seed=3"),
    )
    mount = mount_factory(server, expect_warnings=True)
    version = mount.path / WS / "data" / "1.0.0"
    result = subprocess.run(
        ["sha256sum", *[str(version / n) for n in files]],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    got = {Path(line.split()[1]).name: line.split()[0] for line in result.stdout.splitlines()}
    for name, digest in got.items():
        assert digest == sha(files[name])


@pytest.mark.parametrize("kind", ["reset-mid", "short"])
def test_a_stream_broken_mid_body_is_restarted_for_its_readers(
    store: ArtifactStore,
    make_server: Callable[..., CometServer],
    mount_factory: MountFactory,
    kind: str,
) -> None:
    data = payload(6 * MIB + 5, 12)
    add(store, "data", {"probe.bin": b"p" * 5000, "a.bin": data})
    server = make_server(store=store, ranges=False)
    mount = mount_factory(server, expect_warnings=True)
    version = mount.path / WS / "data" / "1.0.0"
    # The first read teaches the mount that this server ignores Range: it streams from now on.
    assert read_direct(version / "probe.bin") == b"p" * 5000
    server.faults.add(parse_faults(f"get-asset={kind}*1").rules[0])
    assert read_direct(version / "a.bin", 5 * MIB, MIB) == data[5 * MIB : 6 * MIB]
    assert sha(read_direct(version / "a.bin")) == sha(data)
    assert server.faults.rules[0].fired == 1
