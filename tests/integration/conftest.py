"""Fixtures that mount cometfs for real (a `cometfs mount` process) against a local server.

Every mount is unmounted at teardown, also when the test fails, with a lazy
`fusermount3 -u -z` as the last resort. The mount's log must hold no WARNING or ERROR
record unless the test says it expects them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from cometfs.server import CometServer
from cometfs.testing import CLI, log_problems, mount_pid, unmount, wait_until

from .data import Dataset, start_world


def fuse_usable() -> str | None:
    """None when FUSE mounts can work here, else why not."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible"
    return None


@pytest.fixture(scope="session", autouse=True)
def _require_fuse() -> None:
    reason = fuse_usable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"FUSE integration tests cannot run in CI: {reason}")
    pytest.skip(f"FUSE unavailable: {reason}")


@dataclass
class Mount:
    path: Path
    log_file: Path
    cache_dir: Path
    args: list[str]
    env: dict[str, str]
    expect_warnings: bool = False
    mounted: bool = field(default=False)

    def start(self) -> None:
        result = subprocess.run(
            [*CLI, "mount", str(self.path), *self.args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"mount failed ({result.returncode}): {result.stderr.strip()}")
        self.mounted = True

    def stop(self) -> None:
        if not self.mounted:
            return
        self.mounted = False
        pid = mount_pid(self.path)
        if not unmount(self.path, self.env):
            raise AssertionError(f"{self.path} still mounted after unmounting")
        # The daemon writes its log from a thread of its own, so the log is whole only once
        # the daemon has exited (a zombie's cmdline is empty: mount_pid no longer sees it).
        if pid is not None and not wait_until(lambda: mount_pid(self.path) is None, 20):
            raise AssertionError(f"the mount process {pid} of {self.path} did not exit")

    def pid(self) -> int:
        """The pid of this mount's daemon (a test failure if it is not running)."""
        pid = mount_pid(self.path)
        assert pid is not None, f"no mount process for {self.path}"
        return pid

    def log_problems(self) -> list[str]:
        return log_problems(self.log_file)


class MountFactory(Protocol):
    """The type of the `mount_factory` fixture, for annotating tests that use it."""

    def __call__(
        self,
        server: CometServer,
        *extra: str,
        expect_warnings: bool = False,
        cache_dir: Path | None = None,
        key: str | None = None,
    ) -> Mount: ...


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CometServer, Dataset]]:
    """The standard dataset on a local server, one per test module (modules that need
    another server define their own `world`)."""
    server, dataset = start_world(tmp_path_factory.mktemp("store"))
    try:
        yield server, dataset
    finally:
        server.close()


@pytest.fixture
def mount_factory(tmp_path: Path, api_key: str) -> Iterator[MountFactory]:
    """mount_factory(server, *extra_args, expect_warnings=False) -> a started Mount."""
    mounts: list[Mount] = []

    def make(
        server: CometServer,
        *extra: str,
        expect_warnings: bool = False,
        cache_dir: Path | None = None,
        key: str | None = None,
    ) -> Mount:
        index = len(mounts)
        path = tmp_path / f"mnt{index}"
        path.mkdir()
        log_file = tmp_path / f"mount{index}.log"
        cache = cache_dir or tmp_path / f"cache{index}"
        env = {**os.environ, "COMET_API_KEY": key or api_key, "HOME": str(tmp_path)}
        env.pop("COMET_URL_OVERRIDE", None)
        args = [
            "--server-url",
            server.url,
            "--cache-dir",
            str(cache),
            "--log-file",
            str(log_file),
            "--log-level",
            "INFO",
            *extra,
        ]
        mount = Mount(path, log_file, cache, args, env, expect_warnings)
        mounts.append(mount)
        mount.start()
        return mount

    try:
        yield make
    finally:
        problems: list[str] = []
        for mount in mounts:
            mount.stop()
            if not mount.expect_warnings:
                problems += mount.log_problems()
            if mount.log_file.exists() and mount.env["COMET_API_KEY"] in mount.log_file.read_text(
                errors="replace"
            ):
                problems.append(f"the API key appears in {mount.log_file}")
        assert not problems, "unexpected WARNING/ERROR in the mount log:\n" + "\n".join(problems)
