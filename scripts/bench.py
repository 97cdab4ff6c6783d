#!/usr/bin/env python3
"""cometfs benchmarks (`make bench`): the published side-by-side comparison (docs/benchmarks.md).

Every contender runs in the same process tree, on the same bytes, in one run: a cometfs
mount of the local server (a child process per byte mode: range, stream = `--no-range`,
redirect), direct `curl` and `requests` GETs against that server, `rclone mount :http:`
(default and `--vfs-cache-mode full`) over nginx serving hard links of the server's blob files,
and the comet_ml SDK's `Artifact.download()`. Before every cold run, for every contender, the
page cache is dropped (`sync; echo 3 > drop_caches`) after its mount is up, and cache dirs are
fresh; repeats are interleaved (the order of the contenders rotates each repeat) and each
figure is the median, with min/max kept in the JSON. WAN rows add 25 ms per request: a delay
fault on every endpoint of the local server, and a delaying TCP proxy in front of nginx.

Rows (the issue 6 table): 1,000 small files (4-64 KiB) cold with 8 reader threads and one
reader (`cat` all; `cp -r`), the same with 25 ms per request, cold sequential 1 GiB (Range and
`--no-range`), re-read from the disk cache after a remount, time to first byte, 1,000 random
4 KiB reads (1 and 8 threads, with bytes fetched per byte read), peak RSS streaming 4 GiB,
`cp -r` of a 200-file 500 MiB version vs the SDK, `find` / `ls -lR` of 10,000 assets, and
CPU-s/GiB of the mount process.

    .venv/bin/python scripts/bench.py [--quick | --smoke] [--repeat N] [--output FILE]

`--quick`: smaller sizes, 2 repeats. `--smoke`: seconds; cometfs against direct GETs only,
no docs written (tests/test_bench_smoke.py). Runs on the main thread (plus reader threads);
servers, mounts, nginx, the proxy and rclone are child processes, all stopped at the end,
also on error or Ctrl-C. Needs root (drop_caches, nginx), /dev/fuse, curl; rclone and nginx
for the peer rows (`make bench-deps`).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import os
import platform
import queue
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from bench_ceiling import CeilingMount, small_files
from bench_peers import (
    ChildMount,
    DelayProxy,
    Nginx,
    PeakSampler,
    RcloneMount,
    curl_config,
    curl_ttfb,
    link_tree,
    run_curl,
    sdk_download,
)
from bench_report import Result, chart, markdown
from benchlib import (
    Cleanup,
    MountProc,
    ServerProc,
    asset_params,
    drop_page_cache,
    median,
    proc_cpu_seconds,
    read_sequential,
    summarize_requests,
    watchdog,
)
from cometfs.server import ArtifactStore, AssetSource, VersionSpec
from cometfs.testing import write_random_file

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
DOCS = ROOT / "docs" / "benchmarks.md"
# Everything from this line on in docs/benchmarks.md is written by people (profiles, what
# bounds a missed goal) and kept when a run rewrites the tables above it.
ANALYSIS_MARKER = "<!-- analysis: kept across runs -->"
WS = "bench"
VERSION = "1.0.0"
MiB = 1 << 20
GiB = 1 << 30
LATENCY = 0.025
SMALL_SEED = 6
# The sequential ceilings' (MiB per piece, pieces ahead) by server mode: the fastest of
# 1x8, 2x16, 4x4, 4x8 and 8x4 (Range) and 1x8, 4x8 (no Range) on this machine.
SEQ_CEILING = {"range": (4, 4), "stream": (1, 8)}
PHASE_TIMEOUT = 600.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Sizes:
    repeat: int
    small_files: int
    big_mib: int
    huge_mib: int  # 0: no RSS rows
    version_files: int  # the cp -r vs SDK version (2.5 MiB each); 0: skipped
    meta_files: int
    random_reads: int
    ttfb_samples: int


def sizes_for(args: argparse.Namespace) -> Sizes:
    if args.smoke:
        s = Sizes(1, 60, 16, 0, 0, 0, 40, 1)
    elif args.quick:
        s = Sizes(2, 300, 256, 1024, 40, 2000, 300, 3)
    else:
        s = Sizes(3, 1000, 1024, 4096, 200, 10_000, 1000, 5)
    if args.repeat:
        s.repeat = args.repeat
    return s


@dataclass
class Asset:
    rel: str  # artifact/logical path, as nginx serves it
    logical: str
    asset_id: str
    version_id: str
    size: int
    blob: Path


def stats(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": median(values),
        "min": min(values, default=float("nan")),
        "max": max(values, default=float("nan")),
        "samples": list(values),
    }


def spread(values: Sequence[float], unit: str) -> str:
    if len(values) < 2:
        return ""
    return f"{min(values):.3g}–{max(values):.3g} {unit}"


class Bench:
    def __init__(
        self, args: argparse.Namespace, sizes: Sizes, work: Path, cleanup: Cleanup
    ) -> None:
        self.args = args
        self.sz = sizes
        self.work = work
        self.cleanup = cleanup
        self.key = secrets.token_hex(16)
        home = work / "home"
        home.mkdir()
        self.env = {
            **os.environ,
            "COMET_API_KEY": self.key,
            "HOME": str(home),
            "COMET_ERROR_TRACKING_ENABLE": "false",
        }
        for name in ("COMET_URL_OVERRIDE", "COMET_CONFIG", "COMET_WORKSPACE", "COMET_INI"):
            self.env.pop(name, None)
        self.auth = {"Authorization": self.key}
        self.peers = not args.smoke
        self.servers: dict[tuple[str, float], ServerProc] = {}
        self.mounts: list[MountProc] = []
        self.results: list[Result] = []
        self.n = 0
        self.assets: dict[str, list[Asset]] = {}
        self._build_store()
        self.nginx: Nginx | None = None
        self.proxy: DelayProxy | None = None
        if self.peers:
            docroot = work / "www"
            link_tree({a.rel: a.blob for group in self.assets.values() for a in group}, docroot)
            self.nginx = Nginx(docroot, work / "nginx", cleanup).start()
            self.proxy = DelayProxy(self.nginx.port, LATENCY, work, cleanup).start()

    # -- data -------------------------------------------------------------------------------

    def _build_store(self) -> None:
        t0 = time.perf_counter()
        store = ArtifactStore(self.work / "store")
        src = self.work / "src"
        src.mkdir()
        sz = self.sz

        def add(name: str, sources: list[AssetSource]) -> None:
            store.add_version(VersionSpec(WS, name, sources, version=VERSION))

        small = small_files(sz.small_files, SMALL_SEED)
        add("small", [AssetSource(path, data=data) for path, data in small.items()])
        path = src / "big.bin"
        write_random_file(path, sz.big_mib * MiB, repeat=False)
        add("big", [AssetSource("big.bin", path=path)])
        path.unlink()
        if sz.huge_mib:
            path = src / "huge.bin"
            write_random_file(path, sz.huge_mib * MiB, repeat=True)
            add("huge", [AssetSource("huge.bin", path=path)])
            path.unlink()
        if sz.version_files:
            block = os.urandom(5 * MiB)
            add(
                "version",
                [
                    AssetSource(f"part-{i:03d}.bin", data=block[i % MiB : i % MiB + 5 * MiB // 2])
                    for i in range(sz.version_files)
                ],
            )
        if sz.meta_files:
            add(
                "many",
                [
                    AssetSource(f"d{i // 100:03d}/a{i:05d}.txt", data=b"%d\n" % i)
                    for i in range(sz.meta_files)
                ],
            )
        snap = store.snapshot()
        for name, art in snap.artifacts[WS].items():
            ver = art.versions[0]
            self.assets[name] = sorted(
                (
                    Asset(
                        f"{name}/{a.file_name}",
                        a.file_name,
                        a.asset_id,
                        ver.version_id,
                        a.file_size,
                        snap.blob_path(a.sha256 or ""),
                    )
                    for a in ver.assets
                ),
                key=lambda a: a.logical,
            )
        log(f"store built in {time.perf_counter() - t0:.0f}s")

    # -- contenders ----------------------------------------------------------------------------

    def server(self, mode: str, latency: float = 0.0) -> ServerProc:
        if (mode, latency) not in self.servers:
            self.servers[(mode, latency)] = ServerProc(
                self.work / "store", mode, self.work, self.env, self.cleanup, latency=latency
            ).start()
        return self.servers[(mode, latency)]

    def _next(self) -> int:
        self.n += 1
        return self.n

    @contextlib.contextmanager
    def cometfs(
        self, mode: str = "range", latency: float = 0.0, cache_dir: Path | None = None
    ) -> Iterator[MountProc]:
        """A fresh mount (fresh cache dir unless given), page cache dropped once it is up."""
        n = self._next()
        m = MountProc(
            self.work / f"mnt{n}",
            self.server(mode, latency).url,
            cache_dir or self.work / f"cache{n}",
            self.work / f"mount{n}.log",
            self.env,
            self.cleanup,
            discard_cache=cache_dir is None,
        )
        self.mounts.append(m)
        try:
            m.start()
            drop_page_cache()
            with watchdog(PHASE_TIMEOUT, lambda: [m], f"cometfs mount {n}"):
                yield m
        finally:
            m.stop()

    @contextlib.contextmanager
    def rclone(
        self, full: bool = False, latency: bool = False, cache_dir: Path | None = None
    ) -> Iterator[RcloneMount]:
        assert self.nginx is not None and self.proxy is not None
        n = self._next()
        cache = cache_dir or self.work / f"rcache{n}"
        r = RcloneMount(
            self.work / f"rmnt{n}",
            self.proxy.url if latency else self.nginx.url,
            cache,
            self.work / f"rclone{n}.log",
            self.cleanup,
            full_cache=full,
        )
        try:
            r.start()
            drop_page_cache()
            yield r
        finally:
            r.stop()
            if cache_dir is None:
                shutil.rmtree(cache, ignore_errors=True)

    @contextlib.contextmanager
    def ceiling(self, options: Sequence[str]) -> Iterator[ChildMount]:
        """scripts/bench_ceiling.py mounted with `options`, page cache dropped once it is up."""
        n = self._next()
        c = CeilingMount(
            self.work / f"ceiling{n}",
            options,
            self.work / f"ceiling{n}.log",
            self.cleanup,
            env=self.env,
        ).start()
        try:
            drop_page_cache()
            yield c
        finally:
            c.stop()

    def cometfs_root(self, m: MountProc, artifact: str) -> Path:
        return m.path / WS / artifact / VERSION

    def url(self, mode: str, latency: float = 0.0) -> str:
        return self.server(mode, latency).url + "/api/rest/v2/experiment/asset/get-asset"

    def asset_url(self, a: Asset, mode: str = "range", latency: float = 0.0) -> str:
        params = asset_params(a.asset_id, a.version_id, allow301=mode == "redirect")
        return self.url(mode, latency) + "?" + urlencode(params)

    def interleave(self, contenders: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
        """Run every contender `repeat` times, rotating the order each repeat."""
        out: dict[str, list[Any]] = {k: [] for k in contenders}
        names = list(contenders)
        for rep in range(self.sz.repeat):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                out[name].append(contenders[name]())
            log(
                f"  repeat {rep + 1}/{self.sz.repeat}: "
                + ", ".join(
                    f"{k} {v[-1]:.3g}" if isinstance(v[-1], float) else k for k, v in out.items()
                )
            )
        return out

    def add(self, r: Result) -> None:
        self.results.append(r)

    # -- readers (same code for every mount) ------------------------------------------------

    @staticmethod
    def read_parallel(root: Path, files: Sequence[Asset], threads: int) -> float:
        """Read each file whole, `threads` workers taking the next file in listing order
        (a DataLoader without shuffle); sizes are checked. Returns seconds."""
        todo: queue.SimpleQueue[Asset] = queue.SimpleQueue()
        for a in files:
            todo.put(a)
        errors: list[str] = []

        def worker() -> None:
            while True:
                try:
                    a = todo.get_nowait()
                except queue.Empty:
                    return
                with open(root / a.logical, "rb", buffering=0) as f:
                    n = len(f.read())
                if n != a.size:
                    errors.append(f"{a.logical}: {n} of {a.size} bytes")

        t0 = time.perf_counter()
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        secs = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"short reads: {errors[:3]}")
        return secs

    @staticmethod
    def cat_all(root: Path, files: Sequence[Asset]) -> float:
        t0 = time.perf_counter()
        subprocess.run(
            ["cat", *[a.logical for a in files]],
            cwd=root,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=PHASE_TIMEOUT,
        )
        return time.perf_counter() - t0

    def cp_r(self, root: Path) -> float:
        dest = self.work / f"copy{self._next()}"
        try:
            t0 = time.perf_counter()
            subprocess.run(["cp", "-r", str(root), str(dest)], check=True, timeout=PHASE_TIMEOUT)
            return time.perf_counter() - t0
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    # -- 1. small files -----------------------------------------------------------------------

    def bench_small(self) -> None:
        files = self.assets["small"]
        n = len(files)
        total = sum(a.size for a in files)
        srv = self.server("range")
        reqs: list[dict[str, Any]] = []

        def mount8() -> float:
            with self.cometfs() as m:
                mark = srv.mark()
                secs = self.read_parallel(self.cometfs_root(m, "small"), files, 8)
                reqs.append(summarize_requests(srv.entries_since(mark)))
            return n / secs

        def mount_cat() -> float:
            with self.cometfs() as m:
                return n / self.cat_all(self.cometfs_root(m, "small"), files)

        def mount_cp() -> float:
            with self.cometfs() as m:
                return n / self.cp_r(self.cometfs_root(m, "small"))

        cfg = curl_config(self.work / "small.curl", self.auth, [self.asset_url(a) for a in files])

        def curl8() -> float:
            drop_page_cache()
            return n / run_curl(cfg, parallel=8)

        def curl1() -> float:
            drop_page_cache()
            return n / run_curl(cfg)

        def requests8() -> float:
            drop_page_cache()
            local = threading.local()

            def get(a: Asset) -> None:
                if not hasattr(local, "s"):
                    local.s = requests.Session()
                r = local.s.get(
                    self.url("range"),
                    params=asset_params(a.asset_id, a.version_id, allow301=False),
                    headers=self.auth,
                    timeout=60,
                )
                if r.status_code != 200 or len(r.content) != a.size:
                    raise RuntimeError(f"direct GET {a.logical}: {r.status_code}")

            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(get, files))
            return n / (time.perf_counter() - t0)

        contenders: dict[str, Callable[[], Any]] = {
            "cometfs 8": mount8,
            "curl 8": curl8,
            "requests 8": requests8,
        }
        if self.peers:
            contenders |= {"cometfs cat": mount_cat, "cometfs cp": mount_cp, "curl 1": curl1}

            def rclone8() -> float:
                with self.rclone() as r:
                    return n / self.read_parallel(r.path / "small", files, 8)

            def rclone_cat() -> float:
                with self.rclone() as r:
                    return n / self.cat_all(r.path / "small", files)

            def rclone_cp() -> float:
                with self.rclone() as r:
                    return n / self.cp_r(r.path / "small")

            manifest = self.work / "small-urls.json"
            manifest.write_text(json.dumps({a.logical: self.asset_url(a) for a in files}))

            def ceiling(urls: Path | None, readers: int) -> Callable[[], float]:
                options = ["--files", str(len(files)), "--seed", str(SMALL_SEED)]
                if urls is not None:
                    options += ["--urls", str(urls)]

                def run() -> float:
                    with self.ceiling(options) as c:
                        if readers == 1:
                            return len(files) / self.cat_all(c.path, files)
                        return len(files) / self.read_parallel(c.path, files, readers)

                return run

            contenders |= {
                "rclone 8": rclone8,
                "rclone cat": rclone_cat,
                "rclone cp": rclone_cp,
                "ceiling 8": ceiling(None, 8),
                "ceiling net 8": ceiling(manifest, 8),
                "ceiling net cat": ceiling(manifest, 1),
            }
        s = self.interleave(contenders)
        med = {k: median(v) for k, v in s.items()}
        what = f"{n} small files ({total / MiB:.0f} MiB, 4–64 KiB) cold"
        direct_best = max(("curl 8", "requests 8"), key=lambda k: med[k])
        req_note = (
            f"cometfs server requests per cold pass: {reqs[-1]['total']} "
            f"({reqs[-1]['by_endpoint']})"
        )
        if self.peers:
            self.add(
                Result(
                    "small8_rclone",
                    f"{what}, 8 reader threads",
                    med["cometfs 8"],
                    "files/s",
                    "rclone mount (default)",
                    med["rclone 8"],
                    goal_text="≥ 1.0× rclone",
                    notes=f"spread cometfs {spread(s['cometfs 8'], 'files/s')}, "
                    f"rclone {spread(s['rclone 8'], 'files/s')}; {req_note}",
                    samples=self._samples(s, "cometfs 8", "rclone 8"),
                )
            )
        self.add(
            Result(
                "small8_direct",
                f"{what}, 8 reader threads",
                med["cometfs 8"],
                "files/s",
                f"direct parallel GETs ({direct_best})",
                med[direct_best],
                goal=0.6,
                goal_text="≥ 0.6× direct parallel GETs",
                notes=f"curl --parallel-max 8: {med['curl 8']:.0f} files/s, requests "
                f"with 8 threads: {med['requests 8']:.0f} files/s; the faster is the "
                "peer",
                samples=self._samples(s, "cometfs 8", "curl 8", "requests 8"),
            )
        )
        if self.peers:
            self.add(
                Result(
                    "small8_ceiling",
                    f"{what}, 8 reader threads: a minimal pyfuse3 file system serving "
                    "them from memory (the ceiling of a Python FUSE file system here)",
                    med["ceiling 8"],
                    "files/s",
                    "rclone mount (default)",
                    med["rclone 8"],
                    goal_on="",
                    notes="scripts/bench_ceiling.py: lookup, open, read, release from a dict; "
                    f"no network, no cache; spread {spread(s['ceiling 8'], 'files/s')}",
                    samples=self._samples(s, "ceiling 8", "rclone 8"),
                )
            )
            self.add(
                Result(
                    "small8_ceiling_net",
                    f"{what}, 8 reader threads: the same minimal file system fetching each "
                    "file with one raw GET from the local server (the ceiling of a "
                    "network-backed Python FUSE file system here)",
                    med["ceiling net 8"],
                    "files/s",
                    "rclone mount (default)",
                    med["rclone 8"],
                    goal_on="",
                    notes="scripts/bench_ceiling.py --urls: a keep-alive GET per file on the "
                    "trio thread (cometfs's transport), nothing checked or cached; spread "
                    f"{spread(s['ceiling net 8'], 'files/s')}",
                    samples=self._samples(s, "ceiling net 8", "rclone 8"),
                )
            )
            for tool in ("cat", "cp"):
                label = "`cat` all" if tool == "cat" else "`cp -r`"
                self.add(
                    Result(
                        f"small1_{tool}_rclone",
                        f"{what}, one reader ({label})",
                        med[f"cometfs {tool}"],
                        "files/s",
                        "rclone mount (default)",
                        med[f"rclone {tool}"],
                        goal_text="≥ 1.0× rclone",
                        notes=f"direct sequential curl: {med['curl 1']:.0f} files/s; row 4's "
                        "minimal file system (one GET per file, no readahead across files) "
                        f"read by `cat`: {med['ceiling net cat']:.0f} files/s = "
                        f"{med['ceiling net cat'] / med[f'rclone {tool}']:.2f}× rclone",
                        samples=self._samples(
                            s, f"cometfs {tool}", f"rclone {tool}", "curl 1", "ceiling net cat"
                        ),
                    )
                )

    @staticmethod
    def _samples(s: dict[str, list[Any]], *names: str) -> dict[str, Any]:
        return {k: stats(s[k]) for k in names if k in s}

    # -- 2. small files over a 25 ms WAN --------------------------------------------------

    def bench_latency(self) -> None:
        files = self.assets["small"]
        n = len(files)

        def mount8() -> float:
            with self.cometfs(latency=LATENCY) as m:
                return n / self.read_parallel(self.cometfs_root(m, "small"), files, 8)

        def rclone8() -> float:
            with self.rclone(latency=True) as r:
                return n / self.read_parallel(r.path / "small", files, 8)

        def sdk() -> float:
            dest = self.work / f"sdk{self._next()}"
            drop_page_cache()
            try:
                out = sdk_download(
                    self.env,
                    self.server("range", LATENCY).url,
                    WS,
                    "small",
                    VERSION,
                    dest,
                    self.work / "sdk.log",
                )
            finally:
                shutil.rmtree(dest, ignore_errors=True)
            if out["files"] != n:
                raise RuntimeError(f"SDK downloaded {out['files']} of {n} files")
            return n / float(out["seconds"])

        s = self.interleave({"cometfs 8": mount8, "rclone 8": rclone8, "sdk": sdk})
        med = {k: median(v) for k, v in s.items()}
        what = f"{n} small files cold, 8 readers, +25 ms per request"
        self.add(
            Result(
                "lat8_rclone",
                what,
                med["cometfs 8"],
                "files/s",
                "rclone mount (default) via a 25 ms proxy",
                med["rclone 8"],
                goal=2.0,
                goal_text="≥ 2× rclone",
                notes="cometfs: delay fault of 25 ms on every server endpoint; rclone: "
                "a TCP proxy holding each request 25 ms in front of nginx",
                samples=self._samples(s, "cometfs 8", "rclone 8"),
            )
        )
        self.add(
            Result(
                "lat8_sdk",
                what,
                med["cometfs 8"],
                "files/s",
                "comet_ml SDK download()",
                med["sdk"],
                goal_text="≥ 1.0× SDK",
                notes="the SDK figure times download() only (not get_artifact)",
                samples=self._samples(s, "cometfs 8", "sdk"),
            )
        )

    # -- 3. cold sequential, re-read, CPU -------------------------------------------------

    def _cold_seq(self, m_path: Path, pid: int, size: int) -> tuple[float, float]:
        """(MB/s, CPU-s/GiB of `pid`) of a sequential 1 MiB-read pass over one file."""
        cpu0 = proc_cpu_seconds(pid)
        t0 = time.perf_counter()
        got = read_sequential(m_path)
        secs = time.perf_counter() - t0
        if got != size:
            raise RuntimeError(f"read {got} of {size} bytes from {m_path}")
        return size / secs / 1e6, (proc_cpu_seconds(pid) - cpu0) / size * GiB

    def bench_seq(self) -> None:
        big = self.assets["big"][0]
        cpu: dict[str, list[float]] = {}
        warm_dirs = {"cometfs": self.work / "warm-cometfs", "rclone": self.work / "warm-rclone"}

        def seq(mode: str) -> Callable[[], float]:
            def run() -> float:
                with self.cometfs(mode) as m:
                    mbs, c = self._cold_seq(
                        self.cometfs_root(m, "big") / big.logical, m.pid or 0, big.size
                    )
                cpu.setdefault(f"cometfs {mode}", []).append(c)
                return mbs

            return run

        def cometfs_reread() -> float:
            shutil.rmtree(warm_dirs["cometfs"], ignore_errors=True)
            with self.cometfs(cache_dir=warm_dirs["cometfs"]) as m:
                read_sequential(self.cometfs_root(m, "big") / big.logical)
                m.wait_idle()
            with self.cometfs(cache_dir=warm_dirs["cometfs"]) as m:
                mbs, _ = self._cold_seq(
                    self.cometfs_root(m, "big") / big.logical, m.pid or 0, big.size
                )
            shutil.rmtree(warm_dirs["cometfs"], ignore_errors=True)
            return mbs

        def rclone_seq(full: bool) -> Callable[[], float]:
            def run() -> float:
                with self.rclone(full=full) as r:
                    mbs, c = self._cold_seq(r.path / big.rel, r.pid, big.size)
                cpu.setdefault(f"rclone {'full' if full else 'default'}", []).append(c)
                return mbs

            return run

        def rclone_reread() -> float:
            shutil.rmtree(warm_dirs["rclone"], ignore_errors=True)
            with self.rclone(full=True, cache_dir=warm_dirs["rclone"]) as r:
                read_sequential(r.path / big.rel)
            with self.rclone(full=True, cache_dir=warm_dirs["rclone"]) as r:
                mbs, _ = self._cold_seq(r.path / big.rel, r.pid, big.size)
            shutil.rmtree(warm_dirs["rclone"], ignore_errors=True)
            return mbs

        def curl(mode: str) -> Callable[[], float]:
            cfg = curl_config(
                self.work / f"big-{mode}.curl", self.auth, [self.asset_url(big, mode)]
            )

            def run() -> float:
                drop_page_cache()
                return big.size / run_curl(cfg) / 1e6

            return run

        def ceiling(mode: str) -> Callable[[], float]:
            options = ["--url", self.asset_url(big, mode), "--size", str(big.size)]
            options += ["--stream"] if mode == "stream" else []
            chunk, window = SEQ_CEILING[mode]
            options += ["--chunk", str(chunk), "--window", str(window)]

            def run() -> float:
                with self.ceiling(options) as c:
                    mbs, used = self._cold_seq(c.path / "big.bin", c.pid, big.size)
                cpu.setdefault(f"ceiling {mode}", []).append(used)
                return mbs

            return run

        contenders: dict[str, Callable[[], Any]] = {
            "cometfs range": seq("range"),
            "curl range": curl("range"),
            "cometfs stream": seq("stream"),
            "curl stream": curl("stream"),
        }
        if self.peers:
            contenders |= {
                "rclone default": rclone_seq(False),
                "rclone full": rclone_seq(True),
                "ceiling range": ceiling("range"),
                "ceiling stream": ceiling("stream"),
                "cometfs reread": cometfs_reread,
                "rclone reread": rclone_reread,
            }
        s = self.interleave(contenders)
        med = {k: median(v) for k, v in s.items()}
        gib = f"{big.size / GiB:.3g} GiB" if big.size >= GiB else f"{big.size // MiB} MiB"
        cpu_note = ", ".join(f"{k} {median(v):.2f}" for k, v in cpu.items())
        ceiling_how = {
            "range": "--url: {1} ranged GETs of {0} MiB ahead".format(*SEQ_CEILING["range"]),
            "stream": "--url --stream: one GET, {1} pieces of {0} MiB ahead".format(
                *SEQ_CEILING["stream"]
            ),
        }
        for mode, label, rgoal, dgoal in (
            ("range", "Range server", 1.5, 0.5),
            ("stream", "`--no-range` server", 1.0, 0.0),
        ):
            what = f"cold sequential {gib}, {label}"
            if self.peers:
                self.add(
                    Result(
                        f"seq_{mode}_rclone",
                        what,
                        med[f"cometfs {mode}"],
                        "MB/s",
                        "rclone mount (default)",
                        med["rclone default"],
                        goal=rgoal,
                        goal_text=f"≥ {rgoal:g}× rclone",
                        notes=f"rclone --vfs-cache-mode full: {med['rclone full']:.0f} "
                        f"MB/s; spread cometfs {spread(s[f'cometfs {mode}'], 'MB/s')}",
                        samples=self._samples(
                            s, f"cometfs {mode}", "rclone default", "rclone full"
                        ),
                    )
                )
                self.add(
                    Result(
                        f"seq_{mode}_ceiling",
                        f"{what}: a minimal pyfuse3 file system fetching ahead of the "
                        "reader (the ceiling of a network-backed Python FUSE file system "
                        "here)",
                        med[f"ceiling {mode}"],
                        "MB/s",
                        "rclone mount (default)",
                        med["rclone default"],
                        goal_on="",
                        notes=f"scripts/bench_ceiling.py {ceiling_how[mode]}, received into "
                        "their own buffers and replied as views; nothing checked or cached; "
                        f"{median(cpu[f'ceiling {mode}']):.2f} CPU-s/GiB; "
                        f"spread {spread(s[f'ceiling {mode}'], 'MB/s')}",
                        samples=self._samples(s, f"ceiling {mode}", "rclone default"),
                    )
                )
            self.add(
                Result(
                    f"seq_{mode}_direct",
                    what,
                    med[f"cometfs {mode}"],
                    "MB/s",
                    "direct curl GET",
                    med[f"curl {mode}"],
                    goal=dgoal,
                    goal_on="ratio" if dgoal else "",
                    goal_text=f"≥ {dgoal:g}× direct" if dgoal else "",
                    samples=self._samples(s, f"cometfs {mode}", f"curl {mode}"),
                )
            )
            peer_cpu = cpu.get("rclone default", [])
            self.add(
                Result(
                    f"cpu_{mode}",
                    f"CPU of the mount process, {what}",
                    median(cpu[f"cometfs {mode}"]),
                    "CPU-s/GiB",
                    "rclone mount (default)" if peer_cpu else "—",
                    median(peer_cpu),
                    goal_on="",
                    notes=f"from /proc/PID/stat utime+stime: {cpu_note}",
                    samples={k: stats(v) for k, v in cpu.items()},
                )
            )
        if self.peers:
            self.add(
                Result(
                    "reread_rclone_full",
                    f"re-read {gib} from the disk cache after remount",
                    med["cometfs reread"],
                    "MB/s",
                    "rclone --vfs-cache-mode full, remounted",
                    med["rclone reread"],
                    goal=2.0,
                    goal_text="≥ 2× rclone full",
                    notes="page cache dropped after the remount; same cache dir",
                    samples=self._samples(s, "cometfs reread", "rclone reread"),
                )
            )

    # -- 4. time to first byte ---------------------------------------------------------------

    def bench_ttfb(self) -> None:
        big = self.assets["big"][0]
        cfg = curl_config(
            self.work / "ttfb.curl", {**self.auth, "Range": "bytes=0-4095"}, [self.asset_url(big)]
        )

        def mount() -> float:
            with self.cometfs() as m:
                path = self.cometfs_root(m, "big") / big.logical
                os.stat(path)  # the listing is not what this row measures
                drop_page_cache()
                t0 = time.perf_counter()
                with open(path, "rb", buffering=0) as f:
                    if len(f.read(4096)) != 4096:
                        raise RuntimeError("short first read")
                return (time.perf_counter() - t0) * 1e3

        def direct() -> float:
            drop_page_cache()
            return curl_ttfb(cfg) * 1e3

        old, self.sz.repeat = self.sz.repeat, self.sz.ttfb_samples
        try:
            s = self.interleave({"cometfs": mount, "direct": direct})
        finally:
            self.sz.repeat = old
        self.add(
            Result(
                "ttfb",
                "time to first byte, cold (open + 4 KiB read)",
                median(s["cometfs"]),
                "ms",
                "direct ranged GET (curl, new connection)",
                median(s["direct"]),
                goal_op="<=",
                goal=3.0,
                goal_text="≤ 3×",
                notes=f"{self.sz.ttfb_samples} samples each; file stat-ed before the "
                "timer (listing excluded), curl's time_starttransfer includes connect",
                samples=self._samples(s, "cometfs", "direct"),
            )
        )

    # -- 5. random 4 KiB reads ---------------------------------------------------------------

    def bench_random(self) -> None:
        big = self.assets["big"][0]
        rng = random.Random(4)
        offsets = [rng.randrange(big.size // 4096) * 4096 for _ in range(self.sz.random_reads)]
        with open(big.blob, "rb") as f:
            expected = {off: (f.seek(off), f.read(4096))[1] for off in offsets}
        srv = self.server("range")
        amp: list[float] = []

        def run_reads(read: Callable[[int], bytes], threads: int) -> float:
            def one(off: int) -> None:
                if read(off) != expected[off]:
                    raise RuntimeError(f"wrong bytes at offset {off}")

            t0 = time.perf_counter()
            if threads == 1:
                for off in offsets:
                    one(off)
            else:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(one, offsets))
            return len(offsets) / (time.perf_counter() - t0)

        def mount(threads: int) -> Callable[[], float]:
            def run() -> float:
                with self.cometfs() as m:
                    path = self.cometfs_root(m, "big") / big.logical
                    os.stat(path)
                    fd = os.open(path, os.O_RDONLY)
                    mark = srv.mark()
                    try:
                        rate = run_reads(lambda off: os.pread(fd, 4096, off), threads)
                    finally:
                        os.close(fd)
                    sent = summarize_requests(srv.entries_since(mark))["asset_bytes"]
                    amp.append(sent / (4096 * len(offsets)))
                return rate

            return run

        def direct(threads: int) -> Callable[[], float]:
            def run() -> float:
                drop_page_cache()
                local = threading.local()
                url = self.asset_url(big)

                def read(off: int) -> bytes:
                    if not hasattr(local, "s"):
                        local.s = requests.Session()
                    r = local.s.get(
                        url, headers={**self.auth, "Range": f"bytes={off}-{off + 4095}"}, timeout=60
                    )
                    return bytes(r.content)

                return run_reads(read, threads)

            return run

        s = self.interleave(
            {
                "cometfs 1": mount(1),
                "direct 1": direct(1),
                "cometfs 8": mount(8),
                "direct 8": direct(8),
            }
        )
        med = {k: median(v) for k, v in s.items()}
        what = f"{len(offsets)} random 4 KiB reads, cold {big.size // MiB} MiB asset"
        for t in (1, 8):
            self.add(
                Result(
                    f"random{t}_direct",
                    f"{what}, {t} thread{'s' if t > 1 else ''}",
                    med[f"cometfs {t}"],
                    "reads/s",
                    "direct ranged GETs (requests)",
                    med[f"direct {t}"],
                    goal=0.8,
                    goal_text="≥ 0.8× direct",
                    samples=self._samples(s, f"cometfs {t}", f"direct {t}"),
                )
            )
        self.add(
            Result(
                "random_amplification",
                f"{what}: bytes fetched per byte read",
                median(amp),
                "B/B",
                "direct ranged GETs",
                1.0,
                goal_on="figure",
                goal_op="<=",
                goal=16.0,
                goal_text="≤ 16",
                notes="asset bytes the server sent (its request log) / 4 KiB × reads, "
                f"median over the 1- and 8-thread runs: {[round(a, 1) for a in amp]}",
                samples={"amplification": stats(amp)},
            )
        )

    # -- 6. peak RSS streaming a large asset -------------------------------------------------

    def bench_rss(self) -> None:
        if not self.sz.huge_mib:
            return
        huge = self.assets["huge"][0]
        peaks: dict[str, float] = {}
        for mode in ("range", "redirect"):
            with self.cometfs(mode) as m:
                assert m.pid is not None
                with PeakSampler(m.pid) as p:
                    read_sequential(self.cometfs_root(m, "huge") / huge.logical)
                    m.wait_idle()
                peaks[mode] = p.peak_kib / 1024
            log(f"  rss cometfs {mode}: {peaks[mode]:.0f} MiB")
        with self.rclone() as r, PeakSampler(r.pid) as p:
            read_sequential(r.path / huge.rel)
        peaks["rclone"] = p.peak_kib / 1024
        log(f"  rss rclone: {peaks['rclone']:.0f} MiB")
        for mode in ("range", "redirect"):
            self.add(
                Result(
                    f"rss_{mode}",
                    f"peak RSS streaming {huge.size / GiB:.3g} GiB cold ({mode} server)",
                    peaks[mode],
                    "MiB",
                    "rclone mount (default)",
                    peaks["rclone"],
                    goal_on="figure",
                    goal_op="<=",
                    goal=200.0,
                    goal_text="≤ 200 MiB",
                    notes="VmHWM of the mount process, one run each, default settings",
                    samples={"peaks_mib": peaks},
                )
            )

    # -- 7. cp -r of a version vs the SDK --------------------------------------------------

    def bench_version(self) -> None:
        if not self.sz.version_files:
            return
        files = self.assets["version"]
        total = sum(a.size for a in files)

        def mount() -> float:
            with self.cometfs() as m:
                return total / self.cp_r(self.cometfs_root(m, "version")) / 1e6

        def sdk() -> float:
            dest = self.work / f"sdk{self._next()}"
            drop_page_cache()
            try:
                out = sdk_download(
                    self.env,
                    self.server("range").url,
                    WS,
                    "version",
                    VERSION,
                    dest,
                    self.work / "sdk.log",
                )
            finally:
                shutil.rmtree(dest, ignore_errors=True)
            if out["bytes"] != total:
                raise RuntimeError(f"SDK downloaded {out['bytes']} of {total} bytes")
            return total / float(out["seconds"]) / 1e6

        s = self.interleave({"cometfs cp": mount, "sdk": sdk})
        self.add(
            Result(
                "version_sdk",
                f"`cp -r` of a {len(files)}-file, {total / MiB:.0f} MiB version",
                median(s["cometfs cp"]),
                "MB/s",
                "comet_ml SDK download()",
                median(s["sdk"]),
                goal_text="≥ 1.0× SDK",
                samples=self._samples(s, "cometfs cp", "sdk"),
            )
        )

    # -- 8. listing ------------------------------------------------------------------------

    def bench_meta(self) -> None:
        if not self.sz.meta_files:
            return
        n = self.sz.meta_files
        srv = self.server("range")
        assert self.nginx is not None
        tools = {"find": ["find"], "ls -lR": ["ls", "-lR"]}
        reqs: dict[str, list[dict[str, Any]]] = {}

        def run(tool: str, path: Path) -> float:
            t0 = time.perf_counter()
            out = subprocess.run(
                [*tools[tool], str(path)], capture_output=True, check=True, timeout=PHASE_TIMEOUT
            ).stdout
            secs = time.perf_counter() - t0
            lines = out.count(b"\n")
            if lines < n:
                raise RuntimeError(f"{tool} {path} listed only {lines} lines")
            return secs

        def mount(tool: str) -> Callable[[], float]:
            def go() -> float:
                with self.cometfs() as m:
                    mark = srv.mark()
                    secs = run(tool, self.cometfs_root(m, "many"))
                    reqs.setdefault(f"cometfs {tool}", []).append(
                        summarize_requests(srv.entries_since(mark))
                    )
                return secs

            return go

        def rclone(tool: str) -> Callable[[], float]:
            def go() -> float:
                assert self.nginx is not None
                with self.rclone() as r:
                    mark = self.nginx.mark()
                    secs = run(tool, r.path / "many")
                    reqs.setdefault(f"rclone {tool}", []).append(self.nginx.requests_since(mark))
                return secs

            return go

        contenders: dict[str, Callable[[], Any]] = {}
        for tool in tools:
            contenders |= {f"cometfs {tool}": mount(tool), f"rclone {tool}": rclone(tool)}
        s = self.interleave(contenders)
        for tool in tools:
            c, r = reqs[f"cometfs {tool}"][-1], reqs[f"rclone {tool}"][-1]
            self.add(
                Result(
                    f"meta_{tool.split()[0]}",
                    f"`{tool}` of {n} assets, cold",
                    median(s[f"cometfs {tool}"]) * 1e3,
                    "ms",
                    "rclone mount (default)",
                    median(s[f"rclone {tool}"]) * 1e3,
                    goal_op="<=",
                    goal=1.0,
                    goal_text="≤ rclone's time",
                    notes=f"requests: cometfs {c['total']} ({c['by_endpoint']}), "
                    f"rclone {r['total']} ({r['by_method']})",
                    samples={
                        **self._samples(s, f"cometfs {tool}", f"rclone {tool}"),
                        "requests": {k: v for k, v in reqs.items() if tool in k},
                    },
                )
            )
        listing = [
            q["by_endpoint"].get("artifacts/version/files", 0)
            for k, v in reqs.items()
            if k.startswith("cometfs")
            for q in v
        ]
        rclone_total = [q["total"] for k, v in reqs.items() if k.startswith("rclone") for q in v]
        self.add(
            Result(
                "meta_requests",
                f"file-listing requests for {n} assets, cold",
                max(listing),
                "requests",
                "rclone (all requests)",
                median(rclone_total),
                goal_on="figure",
                goal_op="<=",
                goal=1.0,
                goal_text="one listing request",
                notes="cometfs: artifacts/version/files requests per cold pass (max); "
                "other metadata requests are in the find/ls rows",
                samples={"listing_requests": listing, "rclone_requests": rclone_total},
            )
        )

    # -- output --------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        return [f"{m.log_file.name}: {line}" for m in self.mounts for line in m.problems]


PHASES = ("small", "seq", "ttfb", "random", "latency", "version", "rss", "meta")
SMOKE_PHASES = ("small", "seq", "ttfb", "random")
ORDER = (
    "small8_rclone",
    "small8_direct",
    "small8_ceiling",
    "small8_ceiling_net",
    "small1_cat_rclone",
    "small1_cp_rclone",
    "lat8_rclone",
    "lat8_sdk",
    "seq_range_rclone",
    "seq_range_direct",
    "seq_range_ceiling",
    "seq_stream_rclone",
    "seq_stream_direct",
    "seq_stream_ceiling",
    "reread_rclone_full",
    "ttfb",
    "random1_direct",
    "random8_direct",
    "random_amplification",
    "rss_range",
    "rss_redirect",
    "version_sdk",
    "meta_find",
    "meta_ls",
    "meta_requests",
    "cpu_range",
    "cpu_stream",
)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mem_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB,
    }


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty-src" if dirty else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes, 2 repeats")
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: cometfs vs direct GETs only; docs are not written",
    )
    ap.add_argument("--repeat", type=int, help="repeats per measurement (default 3)")
    ap.add_argument("--only", default="", help=f"comma-separated phases: {', '.join(PHASES)}")
    ap.add_argument("--workdir", type=Path, help="parent of the temporary work directory")
    ap.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    ap.add_argument(
        "--docs", type=Path, default=DOCS, help="markdown report to write (not with --smoke)"
    )
    args = ap.parse_args(argv)
    phases = SMOKE_PHASES if args.smoke else PHASES
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = sorted(set(only) - set(phases))
    if bad:
        ap.error(f"unknown phase(s) {', '.join(bad)}; choose from {', '.join(phases)}")
    args.phases = [p for p in phases if not only or p in only]
    if args.repeat is not None and args.repeat < 1:
        ap.error("--repeat must be >= 1")
    return args


def check_tools(smoke: bool) -> None:
    needed = ["fusermount3", "curl", "cat", "cp", "find", "ls"]
    if not smoke:
        needed += ["rclone", "nginx"]
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)} (run `make bench-deps`)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        sys.exit("bench: /dev/fuse is missing or not accessible")
    if not drop_page_cache():
        sys.exit(
            "bench: cannot write /proc/sys/vm/drop_caches (needs root): cold runs would not be cold"
        )


def kept_analysis(docs: Path) -> str:
    """The hand-written part of the report, from ANALYSIS_MARKER on, or nothing."""
    try:
        old = docs.read_text()
    except FileNotFoundError:
        return ""
    at = old.find(ANALYSIS_MARKER)
    return "" if at < 0 else "\n" + old[at:]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools(args.smoke)
    sizes = sizes_for(args)
    cleanup = Cleanup()
    atexit.register(cleanup.run)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    parent = args.workdir
    if parent:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cometfs-bench-", dir=parent))
    cleanup.add("workdir", lambda: shutil.rmtree(work, ignore_errors=True))
    started = time.perf_counter()
    try:
        bench = Bench(args, sizes, work, cleanup)
        for phase in args.phases:
            t0 = time.perf_counter()
            log(f"== {phase}")
            getattr(bench, f"bench_{phase}")()
            log(f"== {phase} done in {time.perf_counter() - t0:.0f}s")
        elapsed = time.perf_counter() - started
        results = sorted(bench.results, key=lambda r: ORDER.index(r.key))
        command = (
            "make bench"
            if not (args.quick or args.smoke)
            else (f"python scripts/bench.py {'--quick' if args.quick else '--smoke'}")
        )
        meta = {
            **machine(),
            "command": command,
            "git": git_revision(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": elapsed,
            "problems": bench.problems(),
            "peers": "cometfs mount vs direct curl/requests GETs to the same local server"
            + (
                ""
                if args.smoke
                else "; rclone mount :http: (default and --vfs-cache-mode "
                "full) over nginx serving hard links of the same blob files; comet_ml SDK "
                "Artifact.download()"
            ),
            "method": f"medians of {sizes.repeat} interleaved repeats (order rotated each "
            "repeat; min/max in the JSON); page cache dropped (sync; echo 3 > drop_caches) "
            "before every cold run of every contender, after its mount is up; fresh cache "
            "dirs; default mount options for cometfs and rclone; 25 ms rows: a delay fault on "
            "the local server, a per-request delaying proxy in front of nginx",
            "sizes": f"{sizes.small_files} small files, {sizes.big_mib} MiB sequential/random "
            f"asset, {sizes.huge_mib} MiB RSS asset, {sizes.version_files}-file version of "
            f"2.5 MiB files, {sizes.meta_files} assets for find/ls, {sizes.random_reads} "
            "random reads",
        }
        doc = {**meta, "sizes_raw": vars(sizes), "results": [r.as_json() for r in results]}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        (args.output.parent / "ratios.png").write_bytes(chart(results))
        text = markdown(results, meta)
        if not args.smoke:
            args.docs.parent.mkdir(parents=True, exist_ok=True)
            args.docs.write_text(text + kept_analysis(args.docs))
        print(text)
        log(f"wrote {args.output}" + ("" if args.smoke else f" and {args.docs}"))
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        cleanup.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
