"""Plumbing for scripts/bench.py: server and mount processes, request logs, statistics.

The server always runs in its own process (`python scripts/benchlib.py serve ...`), never in
the process that reads through the mount: mmap page faults and FUSE reads block with the GIL
held, so a reader sharing a process with the server can deadlock it. Every process started
here is registered with a `Cleanup`, stopped by its pid (never by name), and the server also
exits by itself when its stdin closes, so it cannot outlive the benchmark.

    python scripts/benchlib.py serve --store DIR --mode range|stream|redirect --request-log F
        [--latency SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from cometfs.processes import pid_exists
from cometfs.testing import CLI, log_problems, mount_pid, unmount, wait_until

PYTHON = sys.executable
ASSET_ENDPOINTS = ("get-asset", "blob")
MODES = ("range", "stream", "redirect")


# ---- small helpers ---------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 500 samples is the 495th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def drop_page_cache() -> bool:
    """sync, then drop the page cache, dentries and inodes (`echo 3`; FUSE keep_cache pages
    included), so every contender's cold run starts from the same empty cache. Needs root."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS (KiB) of a process, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                out[name] = int(value.split()[0])
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int) -> bool:
    if not pid_exists(pid):
        return False
    # A zombie child of ours still answers kill(0); reap it if it is one.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM one process, then SIGKILL it if it has not gone after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        wait_until(lambda: not pid_alive(pid), wait)


class Cleanup:
    """Things to undo at the end, newest first; safe to run more than once (atexit + finally)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: dict[int, tuple[str, Callable[[], None]]] = {}
        self._next = 0

    def add(self, name: str, action: Callable[[], None]) -> Callable[[], None]:
        """Register `action`; the returned function runs it now (once) and unregisters it."""
        with self._lock:
            token = self._next
            self._next += 1
            self._actions[token] = (name, action)

        def undo() -> None:
            with self._lock:
                found = self._actions.pop(token, None)
            if found is not None:
                found[1]()

        return undo

    def run(self) -> None:
        while True:
            with self._lock:
                if not self._actions:
                    return
                name, action = self._actions.pop(max(self._actions))
            try:
                action()
            except Exception as exc:  # keep cleaning up the rest
                print(f"cleanup of {name} failed: {exc!r}", file=sys.stderr)


# ---- the server process ----------------------------------------------------------------------


@dataclass
class ServerProc:
    """A CometServer in a child process, its request log mirrored to a JSON-lines file."""

    store: Path
    mode: str
    workdir: Path
    env: dict[str, str]
    cleanup: Cleanup
    latency: float = 0.0  # seconds added to every request (a WAN round trip)
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    _undo: Callable[[], None] | None = None

    @property
    def tag(self) -> str:
        return self.mode + (f"-lat{self.latency * 1000:g}ms" if self.latency else "")

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"server-{self.tag}.requests.jsonl"

    def start(self) -> ServerProc:
        self.log_path.write_text("")
        stderr = open(self.workdir / f"server-{self.tag}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                PYTHON,
                str(Path(__file__).resolve()),
                "serve",
                "--store",
                str(self.store),
                "--mode",
                self.mode,
                "--request-log",
                str(self.log_path),
                "--latency",
                str(self.latency),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=self.env,
        )
        stderr.close()
        self._undo = self.cleanup.add(f"server {self.mode}", self._stop)
        stdout = self.proc.stdout
        assert stdout is not None
        ready: list[bytes] = []
        reader = threading.Thread(target=lambda: ready.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        line = ready[0].decode().strip() if ready else ""
        if not line.startswith("http://127.0.0.1:"):
            raise RuntimeError(
                f"server ({self.tag}) did not start: {line!r}; see "
                f"{self.workdir}/server-{self.tag}.log"
            )
        self.url = line
        if not wait_until(self._alive, 30, 0.1):
            raise RuntimeError(f"server ({self.mode}) at {self.url} does not answer isAlive")
        return self

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return proc_cpu_seconds(self.proc.pid)

    def _alive(self) -> bool:
        try:
            return requests.get(self.url + "/clientlib/isAlive/ver", timeout=1).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def _stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()  # the server exits when its stdin closes
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    # The log: a mark is a byte offset; entries are appended once their body is sent.

    def mark(self) -> int:
        return self.log_path.stat().st_size

    def entries_since(
        self, mark: int, settle: float = 0.15, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Entries logged after `mark`, once the log has stopped growing for `settle` s."""
        deadline = time.monotonic() + timeout
        size, since = self.log_path.stat().st_size, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.03)
            now = self.log_path.stat().st_size
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= settle:
                break
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]
        return [json.loads(line) for line in data.splitlines() if line.strip()]


def summarize_requests(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per endpoint, and bytes of asset bytes sent (get-asset + blob)."""
    by_endpoint = Counter(e["endpoint"] for e in entries)
    asset = [e for e in entries if e["endpoint"] in ASSET_ENDPOINTS]
    return {
        "total": len(entries),
        "asset_requests": len(asset),
        "asset_bytes": sum(int(e.get("bytes") or 0) for e in asset),
        "metadata_requests": len(entries) - len(asset) - by_endpoint.get("isAlive", 0),
        "by_endpoint": dict(sorted(by_endpoint.items())),
    }


def serve_main(argv: Sequence[str]) -> int:
    """The server child: serve until SIGTERM or until stdin closes (the parent went away)."""
    import logging

    from cometfs.server import ApiKey, ArtifactStore, CometServer
    from cometfs.server.faults import FaultPlan, parse_faults

    ap = argparse.ArgumentParser(prog="benchlib.py serve")
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--request-log", type=Path, required=True)
    ap.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds to add to every request (a delay fault on every endpoint)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())  # the parent handles Ctrl-C

    def watch_stdin() -> None:
        with contextlib.suppress(OSError):
            sys.stdin.buffer.read()
        stop.set()

    server = CometServer(
        ArtifactStore(args.store),
        api_keys=[ApiKey(os.environ["COMET_API_KEY"], None)],
        ranges=args.mode != "stream",
        redirect=args.mode == "redirect",
        request_log_path=args.request_log,
        request_log_max=100_000,
        faults=parse_faults(f"*=delay:{args.latency}") if args.latency else FaultPlan(),
    )
    server.start()
    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        print(server.url, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
    return 0


# ---- mounts -----------------------------------------------------------------------------------


@dataclass
class MountProc:
    """One `cometfs mount` (a daemonised process), found by its exact command line."""

    path: Path
    server_url: str
    cache_dir: Path
    log_file: Path
    env: dict[str, str]
    cleanup: Cleanup
    extra_args: Sequence[str] = ()
    discard_cache: bool = False  # delete cache_dir once unmounted (keeps disk use bounded)
    pid: int | None = None
    mounted: bool = False
    problems: list[str] = field(default_factory=list)
    _undo: Callable[[], None] | None = None

    def start(self) -> MountProc:
        self.path.mkdir(parents=True, exist_ok=True)
        argv = [
            *CLI,
            "mount",
            str(self.path),
            "--server-url",
            self.server_url,
            "--cache-dir",
            str(self.cache_dir),
            "--log-file",
            str(self.log_file),
            "--log-level",
            "INFO",
            *self.extra_args,
        ]
        # Registered before the attempt, so a half-started mount is cleaned up too.
        self._undo = self.cleanup.add(f"mount {self.path}", self._stop)
        result = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=90, check=False
        )
        self.mounted = True
        self.pid = mount_pid(self.path)
        if result.returncode != 0:
            raise RuntimeError(f"mount failed ({result.returncode}): {result.stderr.strip()}")
        if self.pid is None:
            raise RuntimeError(f"mounted {self.path} but found no mount process")
        return self

    def memory_kib(self) -> dict[str, int]:
        assert self.pid is not None
        return proc_memory_kib(self.pid)

    def cpu_seconds(self) -> float:
        assert self.pid is not None
        return proc_cpu_seconds(self.pid)

    def set_read_ahead_kb(self, kib: int) -> None:
        """Set the kernel readahead of this FUSE mount's bdi (root only); it caps the size of
        the read requests the kernel sends for sequential reads (default 128 KiB)."""
        st = os.stat(self.path)
        bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
        bdi.write_text(f"{kib}\n")

    def status(self) -> dict[str, Any]:
        with open(self.path / ".comet" / "status.json", "rb") as f:
            return dict(json.loads(f.read()))

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Until no block is in flight or streaming (queued disk writes included)."""

        def idle() -> bool:
            cache = self.status()["cache"]
            return not cache["inflight_blocks"] and not cache["active_streams"]

        return wait_until(idle, timeout, 0.05)

    def stop(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def _stop(self) -> None:
        if self.mounted:
            unmount(self.path, self.env)
            self.mounted = False
        if self.pid is not None:
            pid = self.pid
            if not wait_until(lambda: not pid_alive(pid), 15):
                stop_pid(pid)
        if self.discard_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.problems = log_problems(self.log_file)


@contextlib.contextmanager
def watchdog(
    seconds: float, mounts: Callable[[], Sequence[MountProc]], what: str
) -> Iterator[None]:
    """Bound a phase that reads through FUSE: past `seconds`, kill the mount processes, which
    makes every blocked read fail (ENOTCONN) instead of hanging the benchmark."""
    fired: list[bool] = []

    def fire() -> None:
        fired.append(True)
        print(f"\nwatchdog: {what} took over {seconds:.0f}s; killing its mount", file=sys.stderr)
        for mount in mounts():
            if mount.pid is not None:
                stop_pid(mount.pid, grace=2.0)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except OSError as exc:
        if fired:
            raise RuntimeError(f"{what}: timed out after {seconds:.0f}s") from exc
        raise
    finally:
        timer.cancel()


# ---- direct downloads --------------------------------------------------------------------------


def asset_params(asset_id: str, version_id: str, *, allow301: bool) -> dict[str, str]:
    return {
        "assetId": asset_id,
        "allow301": str(allow301),
        "experimentKey": "",
        "artifactVersionId": version_id,
    }


def download(
    session: requests.Session,
    url: str,
    params: dict[str, str],
    headers: dict[str, str],
    chunk: int = 1 << 20,
) -> int:
    """Stream one asset (redirects followed) and return its byte count."""
    total = 0
    with session.get(url, params=params, headers=headers, stream=True, timeout=(5, 120)) as r:
        r.raise_for_status()
        for part in r.iter_content(chunk_size=chunk):
            total += len(part)
    return total


def read_sequential(path: Path, chunk: int = 1 << 20) -> int:
    """Read a file front to back with `chunk`-sized unbuffered reads; return its byte count."""
    buf = bytearray(chunk)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return total
            total += n


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "serve":
        sys.exit("usage: benchlib.py serve --store DIR --mode MODE --request-log FILE")
    sys.exit(serve_main(sys.argv[2:]))
