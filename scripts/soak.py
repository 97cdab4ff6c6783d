"""A long soak of one mount under faults, every byte checked, then 50 mount/unmount cycles.

    PYTHONPATH=src python scripts/soak.py [--seconds 150] [--readers 32] [--cycles 50]
    make soak                                  # the same, with the defaults

What it does (everything on loopback, in a temporary directory it deletes afterwards):

1. builds a store whose assets (large files, small files) are larger together than the
   mount's `--cache-size`, so blocks are evicted and fetched again all the time;
2. starts `cometfs serve` in a child process with faults on (`--faults`, default
   `*=503@0.02;get-asset=reset-mid@0.01`) and mounts it;
3. runs `--readers` threads for `--seconds`: sequential whole-file reads (sha256 of the
   file), random preads, mmap slices and small whole files, each compared with the bytes of
   the blob the server sends (read from the store directly); half the sequential and random
   readers use O_DIRECT, so the page cache cannot absorb the load;
4. samples the mount process's RSS and open fds every second;
5. unmounts, then mounts and unmounts `--cycles` times (one read each), checking that no
   mount and no process is left and that fds and RSS per mount do not grow.

Prints a summary and writes bench-results/soak.json. Exits 1 on any wrong byte, a leaked
mount or process, or a peak RSS over the reader's memory budget plus RSS_OVERHEAD_MIB.
Runs on its main thread plus the reader and sampler threads; never imports the mount code.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import mmap
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import Cleanup, MountProc, pid_alive, proc_memory_kib, stop_pid
from cometfs.server import ArtifactStore, AssetSource, VersionSpec
from cometfs.testing import CLI, is_mounted

MIB = 1 << 20
API_KEY = "soak-key-0123456789abcdef"
WS = "soak"
# The reader's default memory budget (AssetReader memory_budget) ...
READER_BUDGET_MIB = 128
# ... plus what the mount process holds besides its buffers: the interpreter, pyfuse3, trio
# and cachetools (~45 MiB measured idle, with urllib3 then), worker-thread stacks and
# allocator slack.
RSS_OVERHEAD_MIB = 96
DEFAULT_FAULTS = "*=503@0.02;get-asset=reset-mid@0.01;seed=11"
RESULTS = Path(__file__).resolve().parent.parent / "bench-results" / "soak.json"


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Source:
    """One stored asset: where the mount shows it and where its bytes are in the store."""

    path: Path
    blob: Path
    size: int
    sha256: str


@dataclass
class Tally:
    """What the readers saw; guarded by `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    bytes_read: int = 0
    reads: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)

    def ok(self, kind: str, n: int) -> None:
        with self.lock:
            self.bytes_read += n
            self.reads[kind] += 1

    def error(self, kind: str, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        with self.lock:
            self.errors[f"{kind}:{name}"] += 1

    def mismatch(self, what: str) -> None:
        with self.lock:
            self.wrong.append(what)


def build_store(root: Path, large: int, large_mib: int, small: int) -> ArtifactStore:
    store = ArtifactStore(root)
    rng = random.Random(1)
    big = [
        AssetSource(f"big/{i:02d}.bin", data=rng.randbytes(large_mib * MIB + 4099 * i))
        for i in range(large)
    ]
    store.add_version(VersionSpec(WS, "big", big, version="1.0.0"))
    files = [
        AssetSource(f"c{i % 10}/{i:04d}.dat", data=rng.randbytes(rng.randrange(1, 96 << 10)))
        for i in range(small)
    ]
    store.add_version(VersionSpec(WS, "small", files, version="1.0.0", aliases=["prod"]))
    return store


def sources(store: ArtifactStore, mountpoint: Path) -> tuple[list[Source], list[Source]]:
    snap = store.snapshot()
    out: dict[str, list[Source]] = {"big": [], "small": []}
    for name, mount_name in (("big", "1.0.0"), ("small", "prod")):
        art = snap.artifact(WS, name)
        assert art is not None
        version = art.find_version("1.0.0")
        assert version is not None
        for asset in version.assets:
            assert asset.sha256 is not None
            out[name].append(
                Source(
                    mountpoint / WS / name / mount_name / asset.file_name,
                    snap.blob_path(asset.sha256),
                    asset.file_size,
                    asset.sha256,
                )
            )
    return out["big"], out["small"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    store: Path, faults: str, no_range: bool, workdir: Path, env: dict[str, str], cleanup: Cleanup
) -> str:
    port = free_port()
    err = open(workdir / "server.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--store",
            str(store),
            "--port",
            str(port),
            "--faults",
            faults,
            "--log-level",
            "WARNING",
            *(["--no-range"] if no_range else []),
        ],
        stdin=subprocess.DEVNULL,
        stdout=err,
        stderr=err,
        env=env,
    )
    err.close()
    cleanup.add("server", lambda: stop_pid(proc.pid))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url + "/clientlib/isAlive/ver", timeout=1) as r,
        ):
            if r.status == 200:
                return url
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"server did not start; see {workdir / 'server.log'}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def expected(src: Source, offset: int, size: int) -> bytes:
    with open(src.blob, "rb") as f:
        return os.pread(f.fileno(), size, offset)


def read_whole(src: Source, tally: Tally, *, direct: bool = False) -> None:
    """Read a file start to end; with `direct`, through O_DIRECT so the mount answers every
    read (the page cache would otherwise serve most rereads of a small working set)."""
    sha = hashlib.sha256()
    n = 0
    fd = os.open(src.path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        with mmap.mmap(-1, MIB) as buf:  # page-aligned, as O_DIRECT wants
            while got := os.preadv(fd, [buf], n):
                sha.update(buf[:got])
                n += got
    finally:
        os.close(fd)
    if n != src.size or sha.hexdigest() != src.sha256:
        tally.mismatch(f"whole {src.path}: {n} bytes, sha256 {sha.hexdigest()[:12]}")
    tally.ok(("sequential" if src.size > MIB else "small") + ("-direct" if direct else ""), n)


def read_random(src: Source, rng: random.Random, tally: Tally, *, direct: bool = False) -> None:
    fd = os.open(src.path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    try:
        with mmap.mmap(-1, 1 << 18) as buf:
            for _ in range(16):
                size = rng.choice((4096, 65536, 1 << 18))
                # O_DIRECT wants offsets aligned to the page size.
                offset = rng.randrange(0, max(1, src.size - size)) & ~4095
                n = os.preadv(fd, [memoryview(buf)[:size]], offset)
                if buf[:n] != expected(src, offset, size):
                    tally.mismatch(f"pread {src.path} [{offset}, +{size})")
                tally.ok("random-direct" if direct else "random", n)
    finally:
        os.close(fd)


def read_mmap(src: Source, rng: random.Random, tally: Tally) -> None:
    with open(src.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        for _ in range(8):
            size = rng.choice((4096, 1 << 18))
            offset = rng.randrange(0, max(1, src.size - size))
            got = m[offset : offset + size]
            if got != expected(src, offset, size):
                tally.mismatch(f"mmap {src.path} [{offset}, +{size})")
            tally.ok("mmap", len(got))


def reader(
    index: int, big: list[Source], small: list[Source], stop: threading.Event, tally: Tally
) -> None:
    rng = random.Random(index)
    # Half the sequential and random readers use O_DIRECT, half go through the page cache.
    direct = (index // 4) % 2 == 0
    while not stop.is_set():
        kind = ("sequential", "random", "mmap", "small")[index % 4]
        try:
            if kind == "sequential":
                read_whole(rng.choice(big), tally, direct=direct)
            elif kind == "random":
                read_random(rng.choice(big), rng, tally, direct=direct)
            elif kind == "mmap":
                read_mmap(rng.choice(big), rng, tally)
            else:
                for src in rng.sample(small, 8):
                    read_whole(src, tally)
        except OSError as exc:
            tally.error(kind, exc)
        except ValueError as exc:  # mmap of a file the mount failed to size
            with tally.lock:
                tally.errors[f"{kind}:{type(exc).__name__}"] += 1


def sample(pid: int, stop: threading.Event, samples: list[dict[str, float]]) -> None:
    started = time.monotonic()
    while not stop.wait(1.0):
        with contextlib.suppress(OSError):
            mem = proc_memory_kib(pid)
            samples.append(
                {
                    "t": round(time.monotonic() - started, 1),
                    "rss_mib": mem["VmRSS"] / 1024,
                    "fds": fd_count(pid),
                }
            )


def soak(
    args: argparse.Namespace,
    workdir: Path,
    env: dict[str, str],
    cleanup: Cleanup,
    url: str,
    big: list[Source],
    small: list[Source],
) -> dict[str, Any]:
    mount = MountProc(
        workdir / "mnt",
        url,
        workdir / "cache",
        workdir / "mount.log",
        env,
        cleanup,
        extra_args=["--cache-size", f"{args.cache_mib}M", "--timeout", "10"],
    ).start()
    assert mount.pid is not None
    pid = mount.pid
    fds_start = fd_count(pid)
    rss_start = proc_memory_kib(pid)["VmRSS"] / 1024
    tally = Tally()
    stop = threading.Event()
    samples: list[dict[str, float]] = []
    threads = [
        threading.Thread(target=reader, args=(i, big, small, stop, tally), daemon=True)
        for i in range(args.readers)
    ]
    sampler = threading.Thread(target=sample, args=(pid, stop, samples), daemon=True)
    log(
        f"soak: {args.readers} readers for {args.seconds:g} s against {url} "
        f"(faults {args.faults!r}, --cache-size {args.cache_mib}M)"
    )
    started = time.monotonic()
    sampler.start()
    for t in threads:
        t.start()
    next_report = started + 15
    while time.monotonic() - started < args.seconds:
        time.sleep(0.5)
        if time.monotonic() >= next_report and samples:
            next_report += 15
            last = samples[-1]
            log(
                f"  {last['t']:5.0f} s  {tally.bytes_read / MIB:8.0f} MiB read  "
                f"rss {last['rss_mib']:.0f} MiB  fds {last['fds']:.0f}  "
                f"errors {sum(tally.errors.values())}  wrong {len(tally.wrong)}"
            )
    stop.set()
    # A reader blocked on a read ends within the mount's --timeout (10 s) plus retries.
    for t in threads:
        t.join(60)
    stuck = sum(t.is_alive() for t in threads)
    elapsed = time.monotonic() - started
    sampler.join(5)
    status = mount.status()
    fds_end = fd_count(pid)
    vm_hwm = proc_memory_kib(pid)["VmHWM"] / 1024
    mount.stop()
    log_text = mount.log_file.read_text(errors="replace") if mount.log_file.exists() else ""
    peak_rss = max([s["rss_mib"] for s in samples], default=rss_start)
    return {
        "seconds": round(elapsed, 1),
        "readers": args.readers,
        "bytes_read": tally.bytes_read,
        "mib_per_s": round(tally.bytes_read / MIB / elapsed, 1),
        "reads": dict(tally.reads),
        "errors": dict(tally.errors),
        "wrong_bytes": len(tally.wrong),
        "wrong_examples": tally.wrong[:10],
        "stuck_readers": stuck,
        "rss_mib": {
            "start": round(rss_start, 1),
            "peak": round(peak_rss, 1),
            "vm_hwm": round(vm_hwm, 1),
        },
        "fds": {
            "start": fds_start,
            "peak": max([int(s["fds"]) for s in samples], default=fds_start),
            "end": fds_end,
        },
        "mount_status": {"cache": status.get("cache"), "metadata": status.get("metadata")},
        "mount_log_problems": len(mount.problems),
        # Evidence the faults fired: the client logs each retry it makes at INFO.
        "client_retries": sum(" retry " in line for line in log_text.splitlines()),
        "samples": samples,
    }


def cycles(
    args: argparse.Namespace,
    workdir: Path,
    env: dict[str, str],
    cleanup: Cleanup,
    url: str,
    small: list[Source],
) -> dict[str, Any]:
    """Mount, read one file, unmount, `args.cycles` times; what each mount held at the end."""
    per_mount: list[dict[str, float]] = []
    leftover = 0
    own_fds_start = fd_count(os.getpid())
    mountpoint = workdir / "cycle-mnt"
    tally = Tally()
    for i in range(args.cycles):
        mount = MountProc(
            mountpoint, url, workdir / "cache", workdir / f"cycle{i}.log", env, cleanup
        ).start()
        assert mount.pid is not None
        src = small[i % len(small)]
        src = Source(
            mountpoint / src.path.relative_to(workdir / "mnt"), src.blob, src.size, src.sha256
        )
        try:
            read_whole(src, tally)
        except OSError as exc:
            tally.error("cycle", exc)
        per_mount.append(
            {"fds": fd_count(mount.pid), "rss_mib": proc_memory_kib(mount.pid)["VmRSS"] / 1024}
        )
        pid = mount.pid
        mount.stop()
        if is_mounted(mountpoint) or pid_alive(pid):
            leftover += 1
    own_fds_end = fd_count(os.getpid())
    return {
        "cycles": args.cycles,
        "leftover_mounts_or_processes": leftover,
        "wrong_bytes": len(tally.wrong),
        "errors": dict(tally.errors),
        "mount_fds": {
            "first": per_mount[0]["fds"],
            "last": per_mount[-1]["fds"],
            "max": max(m["fds"] for m in per_mount),
        }
        if per_mount
        else {},
        "mount_rss_mib": {
            "first": round(per_mount[0]["rss_mib"], 1),
            "last": round(per_mount[-1]["rss_mib"], 1),
        }
        if per_mount
        else {},
        "soak_process_fds": {"start": own_fds_start, "end": own_fds_end},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=150.0)
    ap.add_argument("--readers", type=int, default=32)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--faults", default=DEFAULT_FAULTS)
    ap.add_argument("--large", type=int, default=6, help="large files (default: 6)")
    ap.add_argument("--large-mib", type=int, default=24, help="MiB each (default: 24)")
    ap.add_argument("--small", type=int, default=400, help="small files (default: 400)")
    ap.add_argument(
        "--cache-mib", type=int, default=64, help="the mount's --cache-size in MiB (default: 64)"
    )
    ap.add_argument(
        "--no-range",
        action="store_true",
        help="the server ignores Range, so the mount must stream (default: off)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cleanup = Cleanup()
    workdir = Path(tempfile.mkdtemp(prefix="cometfs-soak-"))
    cleanup.add("workdir", lambda: shutil.rmtree(workdir, ignore_errors=True))
    env = {**os.environ, "COMET_API_KEY": API_KEY, "HOME": str(workdir)}
    env.pop("COMET_URL_OVERRIDE", None)
    try:
        log(f"soak: building the store in {workdir}")
        store = build_store(workdir / "store", args.large, args.large_mib, args.small)
        big, small = sources(store, workdir / "mnt")
        working_set = sum(s.size for s in big + small)
        url = start_server(workdir / "store", args.faults, args.no_range, workdir, env, cleanup)
        result: dict[str, Any] = {
            "faults": args.faults,
            "no_range": args.no_range,
            "cache_size_mib": args.cache_mib,
            "working_set_mib": round(working_set / MIB, 1),
            "files": {"large": len(big), "small": len(small)},
            "rss_budget_mib": READER_BUDGET_MIB + RSS_OVERHEAD_MIB,
        }
        result["soak"] = soak(args, workdir, env, cleanup, url, big, small)
        log(f"cycles: {args.cycles} mount/unmount cycles")
        result["cycles"] = cycles(args, workdir, env, cleanup, url, small)
    finally:
        cleanup.run()
    s, c = result["soak"], result["cycles"]
    failures = []
    if s["wrong_bytes"] or c["wrong_bytes"]:
        failures.append(f"{s['wrong_bytes'] + c['wrong_bytes']} reads returned wrong bytes")
    if c["leftover_mounts_or_processes"]:
        failures.append(f"{c['leftover_mounts_or_processes']} mounts or processes were left")
    if s["rss_mib"]["vm_hwm"] > result["rss_budget_mib"]:
        failures.append(
            f"peak RSS {s['rss_mib']['vm_hwm']:.0f} MiB is over the "
            f"{result['rss_budget_mib']} MiB budget"
        )
    if s["stuck_readers"]:
        failures.append(f"{s['stuck_readers']} readers were still blocked after 60 s")
    if not s["bytes_read"]:
        failures.append("nothing was read")
    result["failures"] = failures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(json.dumps({k: v for k, v in s.items() if k != "samples"}, indent=2))
    log(json.dumps(c, indent=2))
    log(f"wrote {args.out}")
    for failure in failures:
        log(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
