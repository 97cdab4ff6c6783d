"""The peers cometfs is measured against in scripts/bench.py: nginx + `rclone mount :http:`
(optionally behind a per-request delaying proxy), `curl`, and the comet_ml SDK's download().

Runs on the benchmark's main thread. Every process started here is a child of the benchmark,
registered with the `Cleanup` it is given and stopped by its pid (never by name). nginx serves a
document root of hard links to the local server's blob files, so every contender reads the
same bytes from the same inodes. The API key goes to curl in a 0600 config file and to the SDK
child in its environment, never in an argv.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import PYTHON, Cleanup, pid_alive
from cometfs.testing import is_mounted, wait_until

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    def up() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    return wait_until(up, timeout, 0.05)


@dataclass
class ChildProc:
    """A long-running child process (nginx, the proxy, rclone) stopped on cleanup."""

    name: str
    argv: Sequence[str]
    log: Path
    cleanup: Cleanup
    env: dict[str, str] | None = None
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = None
    _undo: Callable[[], None] | None = None

    def start(self) -> ChildProc:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self._undo = self.cleanup.add(self.name, self._stop)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def _stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self.stop_signal)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ---- nginx -------------------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 2;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    log_format bench '$request_method $status $body_bytes_sent $uri';
    access_log {work}/nginx-access.log bench;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;
        autoindex_exact_size on;
    }}
}}
"""


class Nginx:
    """nginx in the foreground (`daemon off`) with a generated config on a loopback port."""

    def __init__(self, root: Path, work: Path, cleanup: Cleanup) -> None:
        self.root = root
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        (work / "tmp").mkdir(exist_ok=True)
        self.port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(work=work, port=self.port, root=root))
        self.access_log = work / "nginx-access.log"
        self.access_log.write_text("")
        # SIGQUIT: graceful shutdown of master and workers.
        self.child = ChildProc(
            "nginx",
            ["nginx", "-c", str(conf), "-p", str(work)],
            work / "nginx.out",
            cleanup,
            stop_signal=signal.SIGQUIT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        self.child.start()
        if not wait_port(self.port, 20):
            raise RuntimeError(f"nginx did not listen; see {self.work}/nginx-error.log")
        return self

    def stop(self) -> None:
        self.child.stop()

    def mark(self) -> int:
        return self.access_log.stat().st_size

    def requests_since(self, mark: int) -> dict[str, Any]:
        """Counts per method and body bytes sent since `mark` (nginx logs after each reply)."""
        time.sleep(0.05)  # nginx writes its access line after the reply has been sent
        with open(self.access_log, "rb") as f:
            f.seek(mark)
            lines = f.read().decode(errors="replace").splitlines()
        methods: Counter[str] = Counter()
        sent = 0
        for line in lines:
            parts = line.split(" ", 3)
            if len(parts) == 4:
                methods[parts[0]] += 1
                sent += int(parts[2]) if parts[2].isdigit() else 0
        return {"total": sum(methods.values()), "by_method": dict(methods), "bytes": sent}


class DelayProxy:
    """scripts/bench_proxy.py in its own process: adds `delay` s to every request to nginx."""

    def __init__(self, upstream_port: int, delay: float, work: Path, cleanup: Cleanup) -> None:
        self.port = free_port()
        self.child = ChildProc(
            "delay proxy",
            [
                PYTHON,
                str(HERE / "bench_proxy.py"),
                "--port",
                str(self.port),
                "--upstream",
                str(upstream_port),
                "--delay",
                str(delay),
            ],
            work / f"proxy-{self.port}.log",
            cleanup,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DelayProxy:
        self.child.start()
        if not wait_port(self.port, 20):
            raise RuntimeError("the delay proxy did not listen")
        return self

    def stop(self) -> None:
        self.child.stop()


def link_tree(files: dict[str, Path], root: Path) -> None:
    """Hard-link each blob to root/<relative path> (same inode: the same bytes as the server)."""
    for rel, blob in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.link(blob, dest)


# ---- mounts in child processes (rclone; the ceiling in bench_ceiling.py) -------------------


class ChildMount:
    """A file system served by a child process at `path`: mounted once `start` returns;
    stopping sends SIGTERM, then unmounts lazily if the child left the mount behind."""

    def __init__(
        self,
        name: str,
        path: Path,
        argv: Sequence[str],
        log_file: Path,
        cleanup: Cleanup,
        *,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = env
        self.path = path
        self.argv = list(argv)
        self.log_file = log_file
        self.cleanup = cleanup
        self.child: ChildProc | None = None
        self._undo: Callable[[], None] | None = None

    def start(self) -> ChildMount:
        self.path.mkdir(parents=True, exist_ok=True)
        self._undo = self.cleanup.add(f"{self.name} {self.path}", self._stop)
        out = self.log_file.with_suffix(".out")
        child = self.child = ChildProc(
            f"{self.name} process {self.path}", self.argv, out, self.cleanup, env=self.env
        ).start()
        if not wait_until(lambda: is_mounted(self.path) or not child.running(), 30):
            raise RuntimeError(f"{self.name} did not mount {self.path}")
        if not child.running():
            raise RuntimeError(f"{self.name} exited; see {self.log_file} and {out}")
        return self

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    def stop(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def _stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        if is_mounted(self.path):
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.path)],
                check=False,
                capture_output=True,
                timeout=30,
            )
        wait_until(lambda: not is_mounted(self.path), 20)


class RcloneMount(ChildMount):
    """`rclone mount :http: PATH` in the foreground; SIGTERM makes it unmount and exit."""

    def __init__(
        self,
        path: Path,
        url: str,
        cache_dir: Path,
        log_file: Path,
        cleanup: Cleanup,
        *,
        full_cache: bool = False,
    ) -> None:
        argv = [
            "rclone",
            "mount",
            ":http:",
            str(path),
            "--http-url",
            url + "/",
            "--read-only",
            "--config",
            "/dev/null",
            "--cache-dir",
            str(cache_dir),
            "--log-file",
            str(log_file),
            "--log-level",
            "NOTICE",
        ]
        if full_cache:
            argv += ["--vfs-cache-mode", "full"]
        super().__init__("rclone", path, argv, log_file, cleanup)


# ---- curl ----------------------------------------------------------------------------------------


def curl_config(path: Path, headers: dict[str, str], urls: Sequence[str]) -> Path:
    """A curl -K file: the headers (the API key never goes into argv) and one url per line."""
    lines = [f'header = "{k}: {v}"' for k, v in headers.items()]
    for url in urls:
        lines += [f'url = "{url}"', 'output = "/dev/null"']
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def run_curl(config: Path, *, parallel: int = 0, extra: Sequence[str] = ()) -> float:
    """Run curl on a -K file; return wall seconds. Fails on any HTTP error."""
    argv = ["curl", "-sS", "--fail", "-K", str(config), *extra]
    if parallel:
        argv += ["--parallel", "--parallel-max", str(parallel)]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def curl_ttfb(config: Path) -> float:
    """Seconds to the first byte of one request (curl's time_starttransfer)."""
    out = subprocess.run(
        ["curl", "-sS", "--fail", "-K", str(config), "-w", "%{time_starttransfer}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return float(out.strip())


# ---- the comet_ml SDK ------------------------------------------------------------------------


def sdk_download(
    env: dict[str, str],
    server_url: str,
    workspace: str,
    name: str,
    version: str,
    dest: Path,
    log: Path,
) -> dict[str, Any]:
    """Run scripts/bench_sdk.py (Artifact.download()) in a child; it reports its own timing."""
    child_env = {
        **env,
        "COMET_URL_OVERRIDE": f"{server_url}/clientlib/",
        "COMET_HTTP_SESSION_RETRY_TOTAL": "0",
        "COMET_ERROR_TRACKING_ENABLE": "false",
    }
    with open(log, "ab") as err:
        out = subprocess.run(
            [
                PYTHON,
                str(HERE / "bench_sdk.py"),
                "--workspace",
                workspace,
                "--name",
                name,
                "--version",
                version,
                "--dest",
                str(dest),
            ],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=900,
            check=False,
        )
    if out.returncode != 0:
        raise RuntimeError(f"SDK download failed ({out.returncode}); see {log}")
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def proc_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class PeakSampler:
    """Polls VmHWM of a pid on a thread; rclone's final peak is gone once it exits, and
    cometfs's too, so the reading is taken while the process is still up."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if pid_alive(self.pid):
                self.peak_kib = max(self.peak_kib, proc_hwm_kib(self.pid))

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()
