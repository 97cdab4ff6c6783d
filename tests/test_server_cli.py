"""`cometfs serve` and `cometfs store add` as a user runs them: key files, busy ports, help."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from cometfs.cli import build_parser
from cometfs.server import load_api_key_file

REST = "/api/rest/v2/"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMET_")}
    env.update(extra)
    return env


@contextmanager
def serving(args: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run `cometfs serve ARGS --port 0`, yield (process, url), always stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cometfs.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until listening (or the process exits)
        assert line.startswith("cometfs serve: listening on "), (line, proc.stderr)
        yield proc, line.split()[4]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "keys"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_key_file_keeps_keys_out_of_ps(tmp_path: Path, api_key: str) -> None:
    keys = _key_file(tmp_path, f"# local keys\n\n{api_key}:ws1\n  other-key-42  \n")
    args = ["--store", str(tmp_path / "store"), "--api-key-file", str(keys)]
    with serving(args, _env()) as (proc, url):
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert str(keys) in cmdline
        assert api_key not in cmdline and "other-key-42" not in cmdline
        r = requests.get(url + REST + "workspaces", headers={"Authorization": api_key}, timeout=10)
        assert r.json() == {"workspaceNames": ["ws1"]}  # the workspace list applies
        r = requests.get(
            url + REST + "workspaces", headers={"Authorization": "other-key-42"}, timeout=10
        )
        assert r.status_code == 200
        r = requests.get(url + REST + "workspaces", headers={"Authorization": "nope"}, timeout=10)
        assert r.status_code == 401


def test_comet_api_key_env_still_works(tmp_path: Path, api_key: str) -> None:
    with serving(["--store", str(tmp_path / "store")], _env(COMET_API_KEY=api_key)) as (_, url):
        r = requests.get(url + REST + "workspaces", headers={"Authorization": api_key}, timeout=10)
        assert r.status_code == 200


def test_key_file_readable_by_others_is_refused(tmp_path: Path, api_key: str) -> None:
    keys = _key_file(tmp_path, api_key + "\n", mode=0o644)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cometfs.cli",
            "serve",
            "--port",
            "0",
            "--store",
            str(tmp_path / "store"),
            "--api-key-file",
            str(keys),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"cometfs serve: API key file {keys} is accessible by group or "
        f"others (mode 0644): run chmod 600 {keys}\n"
    )
    assert api_key not in done.stderr


def test_load_api_key_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no keys"):
        load_api_key_file(_key_file(tmp_path, "# nothing\n\n"))
    with pytest.raises(ValueError, match=r"line 2: .*non-empty key") as info:
        load_api_key_file(_key_file(tmp_path, "secret-one\n:ws\n"))
    assert "secret-one" not in str(info.value)
    with pytest.raises(ValueError, match="cannot read"):
        load_api_key_file(tmp_path / "missing")
    with pytest.raises(ValueError, match="mode 0620"):
        load_api_key_file(_key_file(tmp_path, "k\n", mode=0o620))


def test_busy_port_is_one_clear_line(tmp_path: Path, api_key: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cometfs.cli",
                "serve",
                "--port",
                str(port),
                "--store",
                str(tmp_path / "store"),
            ],
            capture_output=True,
            text=True,
            env=_env(COMET_API_KEY=api_key),
            timeout=30,
        )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        f"cometfs serve: port {port} on 127.0.0.1 is in use: stop the other "
        f"server or pass --port N\n"
    )


def _subcommand(*names: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("names", [("serve",), ("store", "add")])
def test_every_flag_has_help_with_its_default(names: tuple[str, ...]) -> None:
    parser = _subcommand(*names)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert flags
    for action in flags:
        assert action.help and "(default: " in action.help, action.option_strings
    text = parser.format_help()
    assert "(default: 18777)" in text if names == ("serve",) else "(default: dataset)" in text


def test_serve_parses_latency_and_key_files(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--latency", "0.025", "--api-key-file", "a", "--api-key-file", "b"]
    )
    assert args.latency == 0.025 and args.api_key_file == [Path("a"), Path("b")]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--latency", "-1"])


def test_serve_latency_flag(tmp_path: Path, api_key: str) -> None:
    import time

    args = ["--store", str(tmp_path / "store"), "--latency", "0.3"]
    with serving(args, _env(COMET_API_KEY=api_key)) as (_, url):
        for _ in range(2):
            t0 = time.monotonic()
            r = requests.get(
                url + REST + "workspaces", headers={"Authorization": api_key}, timeout=10
            )
            assert r.status_code == 200 and time.monotonic() - t0 >= 0.3
