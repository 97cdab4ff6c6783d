"""The README's front door, followed as a new user would on a clean copy of the checkout:
the demo start, `source .demo/env`, then the quick start's ```sh blocks run verbatim (read
from README.md, not copied here), with HOME in a temp dir so `~/comet` is a temp mount point.
Also the demo script's port check and its refusal to kill a PID it cannot verify."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuse

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUICK_START = "Quick start"


def quick_start_commands(readme: str) -> list[str]:
    """The ```sh blocks of the README section whose level-2 heading is QUICK_START."""
    blocks: list[str] = []
    section: str | None = None
    language: str | None = None  # inside a fence: its info string
    body: list[str] = []
    for line in readme.splitlines():
        stripped = line.strip()
        if language is not None:
            if stripped == "```":
                if language == "sh" and section == QUICK_START and any(body):
                    blocks.append("\n".join(body))
                language = None
            else:
                body.append(line)
        elif stripped.startswith("```"):
            language, body = stripped[3:].strip(), []
        elif heading := re.match(r"^## (.+?)\s*$", line):
            section = heading.group(1)
    return blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_copy(dest: Path) -> Path:
    """The checkout's tracked files (with their working-tree content), nothing else."""
    listed = (
        subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def user_env(home: Path, checkout: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMET_", "XDG_")) and k != "PYTHONPATH"
    }
    env.update(
        HOME=str(home), PYTHONPATH=str(checkout / "src"), COMET_ERROR_TRACKING_ENABLE="false"
    )  # no telemetry from the SDK in tests
    return env


def demo_env(env: dict[str, str], port: int) -> dict[str, str]:
    return {**env, "DEMO_DIR": ".demo", "DEMO_PORT": str(port), "MNT": "mnt", "BIN": str(BIN)}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return clean_copy(tmp_path / "cometfs")


def _force_unmount(path: Path) -> None:
    try:
        mounted = os.path.ismount(path)
    except OSError:
        mounted = True
    if mounted or _stale(path):
        subprocess.run(
            ["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False, timeout=30
        )


def _stale(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == 107
    return False


@pytest.fixture
def demo(checkout: Path, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    home = tmp_path / "home"
    home.mkdir()
    env = demo_env(user_env(home, checkout), free_port())
    try:
        yield checkout, env
    finally:
        subprocess.run(
            ["scripts/demo.sh", "stop"],
            cwd=checkout,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        for path in (home / "comet", checkout / "mnt"):
            _force_unmount(path)
        pid_file = checkout / ".demo" / "server.pid"
        if pid_file.exists():  # stop did not get to it: end our own server, verified
            pid = int(pid_file.read_text())
            with contextlib.suppress(OSError):
                if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGTERM)


def test_the_quick_start_works_verbatim_after_make_demo(demo: tuple[Path, dict[str, str]]) -> None:
    checkout, env = demo
    start = subprocess.run(
        ["scripts/demo.sh", "start"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert start.returncode == 0, start.stderr + start.stdout[-2000:]
    assert "source .demo/env" in start.stdout
    env_file = checkout / ".demo" / "env"
    assert env_file.stat().st_mode & 0o077 == 0
    assert (checkout / ".demo" / "api_key").read_text().strip() not in env_file.read_text()

    commands = quick_start_commands((checkout / "README.md").read_text())
    assert any(
        c.startswith("cometfs mount ~/comet") or "\ncometfs mount ~/comet" in c for c in commands
    ), commands
    script = "set -eo pipefail\nsource .demo/env\n" + "\n".join(commands) + "\n"
    # PATH comes from .demo/env alone: cometfs must not be reachable without it
    env = {**env, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n--- stdout\n{result.stdout[-3000:]}"
    assert "production" in result.stdout  # ls of mnist-mini through the mount
    home = Path(env["HOME"])
    assert not os.path.ismount(home / "comet")  # the quick start ends with the unmount


def test_quick_start_extraction_takes_only_sh_blocks_of_that_section() -> None:
    readme = (
        "# x\n```sh\nnot-this\n```\n## Quick start\n```\nmake demo\n```\n"
        "```sh\necho one\n```\ntext\n```python\nprint(2)\n```\n```sh\necho two\n```\n"
        "## Commands\n```sh\nnot-this-either\n```\n"
    )
    assert quick_start_commands(readme) == ["echo one", "echo two"]


def test_demo_names_a_busy_port_and_what_to_do(checkout: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = demo_env(user_env(home, checkout), port)
        result = subprocess.run(
            ["scripts/demo.sh", "start"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert f"DEMO_PORT={port + 1}" in result.stderr
    assert "API key" not in result.stderr
    assert not (checkout / ".demo" / "server.pid").exists()


def test_demo_stop_kills_only_a_verified_server(checkout: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = demo_env(user_env(home, checkout), free_port())
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (checkout / ".demo").mkdir()
        (checkout / ".demo" / "server.pid").write_text(f"{stranger.pid}\n")
        result = subprocess.run(
            ["scripts/demo.sh", "stop"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert stranger.poll() is None, "demo-stop killed a process that is not its server"
        assert f"not stopping PID {stranger.pid}" in result.stderr
    finally:
        stranger.kill()
        stranger.wait()
