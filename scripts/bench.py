#!/usr/bin/env python3
"""cometfs benchmarks (`make bench`): a real mount read side by side with direct downloads.

What runs: one throw-away store (a 256 MiB random asset, a version of 5,000 small files in
100 dirs x 50, and a 512 MiB asset for the memory check), one local Comet server process per
byte mode (range: 206 answers; stream: `--no-range`, Range ignored; redirect: 302 to a blob
URL), and `cometfs mount` processes reading from them. The server never runs in this process
(FUSE reads and mmap faults hold the GIL: a shared process can deadlock); this process reads
through the mount with plain Python reads and downloads with `requests` for the baseline.

Benchmarks (`--only NAME`, repeatable or comma-separated):

  seq     cold sequential read of the 256 MiB asset (fresh mount, empty cache dir, 1 MiB
          reads) vs a direct `requests` download of the same bytes (iter_content 1 MiB), for
          each byte mode. ratio = mount / direct throughput (1.0 = as fast as downloading).
  warm    re-reads after a cold read: the kernel page cache (same mount, keep_cache), the
          mount's own memory + disk cache (same mount after drop_caches), and the disk cache
          (a fresh mount on the same --cache-dir after drop_caches). ratio = warm / cold
          throughput; the cold read here also starts after drop_caches. Warm reads should
          send 0 asset requests.
  random  500 4 KiB reads at random 4 KiB-aligned offsets of the 256 MiB asset, cold (fresh
          mount, empty cache) vs 4 KiB Range requests straight to the server. ratio = mount /
          direct latency (p50, p99); amplification = bytes the server sent / bytes read.
  meta    `ls -lR` and `find` over the 5,000-file version, cold (fresh mount) and warm (again)
          vs the same tree on local disk. ratio = mount / local time; notes count the server
          requests (a handful of listings, never one per file).
  small   read all 5,000 small files (Python open/read, sorted by path) cold (fresh mount,
          empty cache) and warm (second pass) vs direct get-asset downloads of the same files
          with one requests.Session. ratio = mount / direct files per second.
  memory  peak RSS (VmHWM) of the mount process after a sequential read of the 256 MiB asset
          (per byte mode, from `seq` when it ran) and of a 512 MiB asset (2x the reader's
          256 MiB memory budget). ratio = peak / (RSS right after mounting + memory budget):
          about 1 or below means memory is bounded by the budget, not by the asset size.

`--read-ahead-kb N` overrides the kernel readahead of each mount (cometfs raises it to
1024 KiB itself where it may; the kernel default caps read requests at 128 KiB).

How to read it: every A/B pair is measured interleaved within one run (A then B, then B then
A, ...) and each number is the median of the repeats; the ratio is the ratio of the medians.
Ratios are what to compare across machines and runs (this machine is shared and noisy);
absolute numbers are context. Each table row says which way is better.

    .venv/bin/python scripts/bench.py [--quick] [--only seq,small] [--repeat N]
        [--size-mib 256] [--random-reads 500] [--read-ahead-kb KIB]

Results: a table on stdout and bench-results/latest.json (per-repeat samples, server request
counts, mount cache counters). Progress goes to stderr. Needs /dev/fuse and fusermount3;
`drop_caches` needs root (without it the drop_caches variants are skipped). Every mount and
server is stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from benchlib import (
    ASSET_ENDPOINTS,
    MODES,
    Cleanup,
    MountProc,
    ServerProc,
    asset_params,
    download,
    drop_page_cache,
    median,
    percentile,
    read_sequential,
    summarize_requests,
    watchdog,
)
from cometfs.server import AssetSource, Store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
BENCHES = ("seq", "warm", "random", "meta", "small", "memory")
WS = "bench"
MiB = 1 << 20
PHASE_TIMEOUT = 300.0  # any single read phase; past it the watchdog kills the mount


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Row:
    name: str
    a: float
    a_unit: str
    b: float
    b_unit: str
    meaning: str
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.a / self.b if self.b else float("nan")


@dataclass
class Asset:
    logical: str
    asset_id: str
    version_id: str
    size: int
    blob: Path


@dataclass
class Data:
    big: Asset
    huge: Asset | None
    small: list[tuple[Asset, bytes]]
    small_local: Path


def fmt(value: float, unit: str) -> str:
    if value != value:  # nan
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.3g} {unit}"


def random_file(path: Path, size: int, *, repeat_block: bool) -> None:
    block = os.urandom(4 * MiB) if repeat_block else b""
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 4 * MiB)
            f.write(block[:n] if repeat_block else os.urandom(n))
            left -= n


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, cleanup: Cleanup) -> None:
        self.args = args
        self.work = workdir
        self.cleanup = cleanup
        self.key = secrets.token_hex(16)
        home = workdir / "home"
        home.mkdir()
        self.env = {**os.environ, "COMET_API_KEY": self.key, "HOME": str(home),
                    "COMET_ERROR_TRACKING_ENABLE": "false"}
        for name in ("COMET_URL_OVERRIDE", "COMET_CONFIG", "COMET_WORKSPACE"):
            self.env.pop(name, None)
        self.auth = {"Authorization": self.key}
        self.servers: dict[str, ServerProc] = {}
        self.mounts: list[MountProc] = []
        self.rows: list[Row] = []
        self.seq_memory: dict[str, list[dict[str, float]]] = {}
        self.drop_ok: bool | None = None
        self.data = self._build_store()

    # -- setup -----------------------------------------------------------------------------

    def _build_store(self) -> Data:
        args = self.args
        t0 = time.perf_counter()
        store = Store(self.work / "store")
        src = self.work / "src"
        src.mkdir()
        big_file = src / "big.bin"
        random_file(big_file, args.size_mib * MiB, repeat_block=False)
        store.add_version(WS, "big", [AssetSource("big.bin", path=big_file)], version="1.0.0")
        big_file.unlink()
        if args.huge_mib:
            huge_file = src / "huge.bin"
            random_file(huge_file, args.huge_mib * MiB, repeat_block=True)
            store.add_version(WS, "huge", [AssetSource("huge.bin", path=huge_file)],
                              version="1.0.0")
            huge_file.unlink()
        rng = random.Random(42)
        local = src / "small"
        sources = []
        for d in range(args.dirs):
            (local / f"d{d:03d}").mkdir(parents=True)
            for i in range(args.files_per_dir):
                logical = f"d{d:03d}/f{i:03d}.bin"
                content = rng.randbytes(rng.randint(512, 16 * 1024))
                (local / logical).write_bytes(content)
                sources.append(AssetSource(logical, data=content))
        store.add_version(WS, "small", sources, version="1.0.0")
        snap = store.snapshot()

        def assets(name: str) -> list[Asset]:
            ver = snap.artifacts[WS][name].versions[0]
            return [Asset(a.file_name, a.asset_id, ver.version_id, a.file_size,
                          snap.blob_path(a.sha256 or "")) for a in ver.assets]

        contents = {s.logical_path: s.data or b"" for s in sources}
        small = sorted(((a, contents[a.logical]) for a in assets("small")),
                       key=lambda item: item[0].logical)
        log(f"store: {args.size_mib} MiB asset, {len(small)} small files"
            + (f", {args.huge_mib} MiB asset" if args.huge_mib else "")
            + f" in {time.perf_counter() - t0:.1f}s")
        return Data(assets("big")[0], assets("huge")[0] if args.huge_mib else None, small,
                    local)

    def server(self, mode: str) -> ServerProc:
        if mode not in self.servers:
            self.servers[mode] = ServerProc(self.work / "store", mode, self.work, self.env,
                                            self.cleanup).start()
        return self.servers[mode]

    def mount(self, mode: str, cache_dir: Path | None = None) -> MountProc:
        n = len(self.mounts)
        m = MountProc(self.work / f"mnt{n}", self.server(mode).url,
                      cache_dir or self.work / f"cache{n}", self.work / f"mount{n}.log",
                      self.env, self.cleanup, discard_cache=cache_dir is None)
        self.mounts.append(m)
        m.start()
        if self.args.read_ahead_kb:
            m.set_read_ahead_kb(self.args.read_ahead_kb)
        return m

    @contextlib.contextmanager
    def guarded(self, m: MountProc, what: str) -> Iterator[None]:
        with watchdog(PHASE_TIMEOUT, lambda: [m], what):
            yield

    def asset_url(self, mode: str) -> str:
        return self.server(mode).url + "/api/rest/v2/experiment/asset/get-asset"

    def drop(self) -> bool:
        ok = drop_page_cache()
        if self.drop_ok is None and not ok:
            log("drop_caches is not permitted here: drop_caches variants are skipped")
        self.drop_ok = ok if self.drop_ok is None else self.drop_ok and ok
        return ok

    def order(self, rep: int, a: Callable[[], None], b: Callable[[], None]) -> None:
        """Interleave: A then B on even repeats, B then A on odd ones."""
        for step in ((a, b) if rep % 2 == 0 else (b, a)):
            step()

    @staticmethod
    def asset_path(m: MountProc, artifact: str, asset: Asset) -> Path:
        return m.path / WS / artifact / "1.0.0" / asset.logical

    # -- 1. cold sequential read vs direct download, per byte mode --------------------------

    def bench_seq(self) -> None:
        for mode in MODES:
            self._seq_mode(mode)

    def _seq_mode(self, mode: str) -> None:
        big = self.data.big
        srv = self.server(mode)
        mount_mbs: list[float] = []
        direct_mbs: list[float] = []
        reqs: list[dict[str, Any]] = []
        memory: list[dict[str, float]] = []
        cpu: dict[str, list[float]] = {"mount": [], "mount_server": [], "direct_client": [],
                                       "direct_server": []}

        def via_mount() -> None:
            m = self.mount(mode)
            try:
                before = m.memory_kib()
                mark = srv.mark()
                cpu0 = m.cpu_seconds(), srv.cpu_seconds()
                with self.guarded(m, f"seq read ({mode})"):
                    t0 = time.perf_counter()
                    n = read_sequential(self.asset_path(m, "big", big))
                    secs = time.perf_counter() - t0
                cpu["mount"].append((m.cpu_seconds() - cpu0[0]) / n * (1 << 30))
                cpu["mount_server"].append((srv.cpu_seconds() - cpu0[1]) / n * (1 << 30))
                if n != big.size:
                    raise RuntimeError(f"mount read {n} of {big.size} bytes")
                m.wait_idle()
                after = m.memory_kib()
                budget = m.status()["cache"]["memory_budget"]
                reqs.append(summarize_requests(srv.entries_since(mark)))
                memory.append({"hwm_mib": after["VmHWM"] / 1024,
                               "rss_before_mib": before["VmRSS"] / 1024,
                               "budget_mib": budget / MiB})
                mount_mbs.append(n / secs / 1e6)
            finally:
                m.stop()

        def direct() -> None:
            params = asset_params(big.asset_id, big.version_id, allow301=mode == "redirect")
            with requests.Session() as s:
                cpu0 = time.process_time(), srv.cpu_seconds()
                t0 = time.perf_counter()
                n = download(s, self.asset_url(mode), params, self.auth)
                secs = time.perf_counter() - t0
                cpu["direct_client"].append((time.process_time() - cpu0[0]) / n * (1 << 30))
                cpu["direct_server"].append((srv.cpu_seconds() - cpu0[1]) / n * (1 << 30))
            if n != big.size:
                raise RuntimeError(f"direct download got {n} of {big.size} bytes")
            direct_mbs.append(n / secs / 1e6)

        for rep in range(self.args.repeat):
            self.order(rep, via_mount, direct)
            log(f"seq [{mode}] {rep + 1}/{self.args.repeat}: mount {mount_mbs[-1]:.0f} "
                f"MB/s, direct {direct_mbs[-1]:.0f} MB/s")
        self.seq_memory[mode] = memory
        endpoints = sorted({e for r in reqs for e in r["by_endpoint"] if e in ASSET_ENDPOINTS})
        self.rows.append(Row(
            f"seq cold {big.size // MiB}MiB [{mode}]", median(mount_mbs), "MB/s",
            median(direct_mbs), "MB/s",
            "mount/direct throughput (higher is better, 1 = parity)",
            f"per mount read, server asset requests ({'+'.join(endpoints)}) "
            f"{[r['asset_requests'] for r in reqs]} and MiB sent "
            f"{[round(r['asset_bytes'] / MiB) for r in reqs]}; CPU s/GiB: "
            f"mount process {median(cpu['mount']):.2f} + server "
            f"{median(cpu['mount_server']):.2f}, direct: client "
            f"{median(cpu['direct_client']):.2f} + server {median(cpu['direct_server']):.2f}",
            {"mount_mbs": mount_mbs, "direct_mbs": direct_mbs, "requests": reqs,
             "memory": memory, "cpu_s_per_gib": cpu},
        ))

    # -- 2. warm re-reads vs the cold read ----------------------------------------------------

    def bench_warm(self) -> None:
        big, mode = self.data.big, "range"
        srv = self.server(mode)
        samples: dict[str, list[float]] = {"cold": [], "kernel": [], "cometfs": [], "disk": []}
        reqs: dict[str, list[dict[str, Any]]] = {k: [] for k in samples}
        cache_stats: dict[str, list[dict[str, int]]] = {k: [] for k in samples}

        def timed_read(m: MountProc, phase: str, drop: bool) -> None:
            if drop and not self.drop():
                return
            before = m.status()["cache"]
            mark = srv.mark()
            with self.guarded(m, f"warm read ({phase})"):
                t0 = time.perf_counter()
                n = read_sequential(self.asset_path(m, "big", big))
                secs = time.perf_counter() - t0
            if n != big.size:
                raise RuntimeError(f"{phase} read {n} of {big.size} bytes")
            m.wait_idle()
            after = m.status()["cache"]
            samples[phase].append(n / secs / 1e6)
            reqs[phase].append(summarize_requests(srv.entries_since(mark)))
            cache_stats[phase].append({k: after[k] - before[k] for k in (
                "hits_memory", "hits_disk", "fetches", "bytes_fetched", "streams")})

        raw_disk: list[float] = []
        for rep in range(self.args.repeat):
            if self.drop():  # context: the disk itself, reading the same bytes uncached
                t0 = time.perf_counter()
                n = read_sequential(big.blob)
                raw_disk.append(n / (time.perf_counter() - t0) / 1e6)
            cache = self.work / f"warm-cache{rep}"
            m = self.mount(mode, cache)
            try:
                timed_read(m, "cold", drop=True)
                if not samples["cold"]:  # no drop_caches: cold without it
                    timed_read(m, "cold", drop=False)
                timed_read(m, "kernel", drop=False)
                timed_read(m, "cometfs", drop=True)
            finally:
                m.stop()
            m = self.mount(mode, cache)
            try:
                timed_read(m, "disk", drop=True)
                if len(samples["disk"]) <= rep:
                    timed_read(m, "disk", drop=False)
            finally:
                m.stop()
            log(f"warm {rep + 1}/{self.args.repeat}: " + ", ".join(
                f"{k} {v[-1]:.0f} MB/s" for k, v in samples.items() if v))

        labels = {
            "kernel": "warm re-read, same mount (kernel page cache)",
            "cometfs": "warm re-read, same mount, after drop_caches (cometfs caches)",
            "disk": "warm read, new mount, same cache dir" + (
                ", after drop_caches" if self.drop_ok else "") + " (disk cache)",
        }
        for phase, label in labels.items():
            if not samples[phase]:
                continue
            asset_reqs = [r["asset_requests"] for r in reqs[phase]]
            stats = cache_stats[phase][-1]
            disk_note = (f"; for scale, a plain read of the same bytes from local disk after "
                         f"drop_caches: {median(raw_disk):.0f} MB/s"
                         if phase == "disk" and raw_disk else "")
            self.rows.append(Row(
                label, median(samples[phase]), "MB/s", median(samples["cold"]), "MB/s",
                "warm/cold throughput (higher is better)",
                f"server asset requests during warm read: max {max(asset_reqs)} over "
                f"{len(asset_reqs)} repeats (should be 0); mount cache counters: {stats}"
                + disk_note,
                {"warm_mbs": samples[phase], "cold_mbs": samples["cold"],
                 "requests": reqs[phase], "cache": cache_stats[phase],
                 "raw_disk_mbs": raw_disk},
            ))

    # -- 3. random 4 KiB reads --------------------------------------------------------------

    def bench_random(self) -> None:
        big, mode = self.data.big, "range"
        srv = self.server(mode)
        count, size = self.args.random_reads, 4096
        m_p50: list[float] = []
        m_p99: list[float] = []
        d_p50: list[float] = []
        d_p99: list[float] = []
        fetched: list[int] = []
        reqs: list[dict[str, Any]] = []
        with open(big.blob, "rb") as f:
            truth = f.read()

        distinct: list[int] = []
        for rep in range(self.args.repeat):
            rng = random.Random(1000 + rep)
            offsets = [rng.randrange(big.size // size) * size for _ in range(count)]
            distinct.append(len({off // MiB for off in offsets}))

            def via_mount(offsets: list[int] = offsets) -> None:
                m = self.mount(mode)
                try:
                    lat: list[float] = []
                    got: list[bytes] = []
                    mark = srv.mark()
                    with self.guarded(m, "random reads"):
                        fd = os.open(self.asset_path(m, "big", big), os.O_RDONLY)
                        try:
                            for off in offsets:
                                t0 = time.perf_counter()
                                got.append(os.pread(fd, size, off))
                                lat.append(time.perf_counter() - t0)
                        finally:
                            os.close(fd)
                    r = summarize_requests(srv.entries_since(mark))
                finally:
                    m.stop()
                bad = sum(g != truth[o : o + size] for g, o in zip(got, offsets, strict=True))
                if bad:
                    raise RuntimeError(f"{bad} random reads through the mount returned wrong bytes")
                reqs.append(r)
                fetched.append(r["asset_bytes"])
                m_p50.append(percentile(lat, 50) * 1e3)
                m_p99.append(percentile(lat, 99) * 1e3)

            def direct(offsets: list[int] = offsets) -> None:
                lat: list[float] = []
                params = asset_params(big.asset_id, big.version_id, allow301=False)
                url = self.asset_url(mode)
                with requests.Session() as s:
                    for off in offsets:
                        headers = {**self.auth, "Range": f"bytes={off}-{off + size - 1}"}
                        t0 = time.perf_counter()
                        r = s.get(url, params=params, headers=headers, timeout=(5, 60))
                        body = r.content
                        lat.append(time.perf_counter() - t0)
                        if r.status_code != 206 or body != truth[off : off + size]:
                            raise RuntimeError(f"direct range read at {off}: {r.status_code}")
                d_p50.append(percentile(lat, 50) * 1e3)
                d_p99.append(percentile(lat, 99) * 1e3)

            self.order(rep, via_mount, direct)
            log(f"random {rep + 1}/{self.args.repeat}: mount p50 {m_p50[-1]:.2f} ms p99 "
                f"{m_p99[-1]:.2f} ms, direct p50 {d_p50[-1]:.2f} ms p99 {d_p99[-1]:.2f} ms, "
                f"fetched {fetched[-1] / MiB:.0f} MiB")

        requested = count * size
        extra = {"mount_p50_ms": m_p50, "mount_p99_ms": m_p99, "direct_p50_ms": d_p50,
                 "direct_p99_ms": d_p99, "fetched_bytes": fetched, "requests": reqs,
                 "distinct_1mib_blocks_touched": distinct}
        self.rows += [
            Row(f"random 4KiB x{count} cold: p50 latency", median(m_p50), "ms",
                median(d_p50), "ms", "mount/direct Range GET latency (lower is better)",
                "", extra),
            Row(f"random 4KiB x{count} cold: p99 latency", median(m_p99), "ms",
                median(d_p99), "ms", "mount/direct Range GET latency (lower is better)"),
            Row(f"random 4KiB x{count} cold: amplification", median(fetched) / MiB, "MiB",
                requested / MiB, "MiB", "bytes sent by server / bytes read (lower is better)",
                f"{median([r['asset_requests'] for r in reqs]):.0f} asset requests per run; "
                f"the offsets touch {median(distinct):.0f} distinct 1 MiB blocks"),
        ]

    # -- 4. metadata: ls -lR and find ------------------------------------------------------

    def bench_meta(self) -> None:
        mode = "range"
        srv = self.server(mode)
        local = self.data.small_local
        n_files = len(self.data.small)
        times: dict[str, list[float]] = {}
        reqs: dict[str, list[dict[str, Any]]] = {}
        tools = {"ls -lR": ["ls", "-lR"], "find": ["find"]}

        def run(tool: str, path: Path) -> float:
            t0 = time.perf_counter()
            out = subprocess.run([*tools[tool], str(path)], capture_output=True, timeout=120,
                                 check=True).stdout
            secs = time.perf_counter() - t0
            lines = out.count(b"\n")
            if lines < n_files:
                raise RuntimeError(f"{tool} {path} listed only {lines} lines")
            return secs

        for tool in tools:
            run(tool, local)  # the local tree is measured warm
        for rep in range(self.args.repeat):
            for tool in tools:

                def local_run(tool: str = tool) -> None:
                    times.setdefault(f"{tool} local", []).append(run(tool, local))

                def mount_run(tool: str = tool) -> None:
                    m = self.mount(mode)
                    try:
                        version = m.path / WS / "small" / "1.0.0"
                        for phase in ("cold", "warm"):
                            mark = srv.mark()
                            with self.guarded(m, f"{tool} {phase}"):
                                secs = run(tool, version)
                            times.setdefault(f"{tool} {phase}", []).append(secs)
                            reqs.setdefault(f"{tool} {phase}", []).append(
                                summarize_requests(srv.entries_since(mark)))
                    finally:
                        m.stop()

                self.order(rep, mount_run, local_run)
            log(f"meta {rep + 1}/{self.args.repeat}: " + ", ".join(
                f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()))

        for tool in tools:
            for phase in ("cold", "warm"):
                key = f"{tool} {phase}"
                r = reqs[key][-1]
                self.rows.append(Row(
                    f"{tool} {n_files} files, {phase}", median(times[key]) * 1e3, "ms",
                    median(times[f"{tool} local"]) * 1e3, "ms",
                    "mount/local-disk time (lower is better)",
                    f"server requests: {r['total']} ({r['by_endpoint']})",
                    {"mount_s": times[key], "local_s": times[f"{tool} local"],
                     "requests": reqs[key]},
                ))

    # -- 5. many small files ---------------------------------------------------------------

    def bench_small(self) -> None:
        mode = "range"
        srv = self.server(mode)
        files = self.data.small
        rates: dict[str, list[float]] = {"cold": [], "warm": [], "direct": []}
        reqs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}

        def via_mount() -> None:
            m = self.mount(mode)
            try:
                paths = [self.asset_path(m, "small", a) for a, _ in files]
                for phase in ("cold", "warm"):
                    mark = srv.mark()
                    with self.guarded(m, f"small files {phase}"):
                        t0 = time.perf_counter()
                        for path, (_, content) in zip(paths, files, strict=True):
                            with open(path, "rb", buffering=0) as f:
                                if f.read() != content:
                                    raise RuntimeError(f"wrong bytes in {path}")
                        secs = time.perf_counter() - t0
                    rates[phase].append(len(files) / secs)
                    reqs[phase].append(summarize_requests(srv.entries_since(mark)))
            finally:
                m.stop()

        def direct() -> None:
            url = self.asset_url(mode)
            with requests.Session() as s:
                t0 = time.perf_counter()
                for asset, content in files:
                    r = s.get(url, params=asset_params(asset.asset_id, asset.version_id,
                                                       allow301=False),
                              headers=self.auth, timeout=(5, 60))
                    if r.status_code != 200 or r.content != content:
                        raise RuntimeError(f"direct download of {asset.logical}: "
                                           f"{r.status_code}")
                secs = time.perf_counter() - t0
            rates["direct"].append(len(files) / secs)

        for rep in range(self.args.repeat):
            self.order(rep, via_mount, direct)
            log(f"small {rep + 1}/{self.args.repeat}: mount cold {rates['cold'][-1]:.0f}/s, "
                f"warm {rates['warm'][-1]:.0f}/s, direct {rates['direct'][-1]:.0f}/s")
        total = sum(len(c) for _, c in files)
        for phase in ("cold", "warm"):
            r = reqs[phase][-1]
            self.rows.append(Row(
                f"{len(files)} small files ({total / MiB:.0f} MiB), {phase}",
                median(rates[phase]), "files/s", median(rates["direct"]), "files/s",
                "mount/direct files per second (higher is better)",
                f"server requests during the mount read: {r['total']} ({r['by_endpoint']})",
                {"mount_files_per_s": rates[phase], "direct_files_per_s": rates["direct"],
                 "requests": reqs[phase]},
            ))

    # -- 6. memory -------------------------------------------------------------------------

    def _memory_read(self, mode: str, artifact: str, asset: Asset) -> dict[str, float]:
        m = self.mount(mode)
        try:
            before = m.memory_kib()
            with self.guarded(m, f"memory read {artifact} ({mode})"):
                n = read_sequential(self.asset_path(m, artifact, asset))
            if n != asset.size:
                raise RuntimeError(f"read {n} of {asset.size} bytes")
            m.wait_idle()
            after = m.memory_kib()
            budget = m.status()["cache"]["memory_budget"]
        finally:
            m.stop()
        return {"hwm_mib": after["VmHWM"] / 1024, "rss_before_mib": before["VmRSS"] / 1024,
                "budget_mib": budget / MiB}

    def bench_memory(self) -> None:
        cases: list[tuple[str, Asset, str, list[dict[str, float]]]] = []
        for mode in MODES:
            samples = self.seq_memory.get(mode) or [
                self._memory_read(mode, "big", self.data.big)
                for _ in range(min(3, self.args.repeat))]
            cases.append(("big", self.data.big, mode, samples))
        if self.data.huge is not None:
            for mode in ("range", "stream"):
                cases.append(("huge", self.data.huge, mode,
                              [self._memory_read(mode, "huge", self.data.huge)]))
        for _, asset, mode, samples in cases:
            hwm = median([s["hwm_mib"] for s in samples])
            base = median([s["rss_before_mib"] for s in samples])
            budget = samples[0]["budget_mib"]
            log(f"memory {asset.size // MiB} MiB [{mode}]: peak {hwm:.0f} MiB "
                f"(RSS after mount {base:.0f} MiB, budget {budget:.0f} MiB)")
            self.rows.append(Row(
                f"peak RSS after {asset.size // MiB}MiB read [{mode}]", hwm, "MiB",
                base + budget, "MiB",
                "VmHWM / (RSS after mount + memory budget) (<= ~1 is bounded)",
                f"RSS right after mount {base:.0f} MiB, reader budget {budget:.0f} MiB, max "
                f"peak over {len(samples)} reads {max(s['hwm_mib'] for s in samples):.0f} MiB",
                {"samples": samples},
            ))

    # -- output -----------------------------------------------------------------------------

    def problems(self) -> list[str]:
        return [f"{m.log_file.name}: {line}" for m in self.mounts for line in m.problems]


def print_table(rows: list[Row], elapsed: float, setup: str) -> None:
    header = ("benchmark", "A", "B", "A/B", "meaning")
    table = [(r.name, fmt(r.a, r.a_unit), fmt(r.b, r.b_unit),
              "n/a" if r.ratio != r.ratio else f"{r.ratio:.3g}", r.meaning) for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *table]) for i in range(4)]
    rule = "  ".join("-" * w for w in widths) + "  " + "-" * 20

    def line(cells: tuple[str, ...]) -> str:
        return (f"{cells[0]:<{widths[0]}}  {cells[1]:>{widths[1]}}  {cells[2]:>{widths[2]}}  "
                f"{cells[3]:>{widths[3]}}  {cells[4]}")

    print(setup)
    print(line(header))
    print(rule)
    for cells in table:
        print(line(cells))
    print(rule)
    print("A is the mount (or the warm read) and B the baseline; medians of the repeats,")
    print(f"ratio = median(A) / median(B). Total run time {elapsed:.0f}s.\n")
    for r in rows:
        if r.notes:
            print(f"* {r.name}: {r.notes}")


def describe_setup(args: argparse.Namespace, bench: Bench) -> str:
    parts = [
        f"cometfs {git_revision()}, {os.cpu_count()} CPUs, {args.repeat} repeats",
        f"read_ahead_kb {args.read_ahead_kb or 'kernel default'}",
        f"drop_caches {'ok' if bench.drop_ok else 'unused' if bench.drop_ok is None else 'no'}",
    ]
    return "; ".join(parts)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty-src" if dirty else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="64 MiB asset, 1,000 small files, 3 repeats, no 512 MiB asset")
    ap.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]",
                    help=f"run only these benchmarks: {', '.join(BENCHES)}")
    ap.add_argument("--repeat", type=int, help="repeats per measurement (default 5, quick 3)")
    ap.add_argument("--size-mib", type=int, help="sequential/random asset size (default 256)")
    ap.add_argument("--random-reads", type=int, help="random 4 KiB reads (default 500)")
    ap.add_argument("--workdir", type=Path, help="where the store, caches and mounts go "
                    "(default: a fresh temporary directory, removed afterwards)")
    ap.add_argument("--read-ahead-kb", type=int, default=0,
                    help="set each mount's kernel readahead (bdi read_ahead_kb; root only; "
                    "default: leave the kernel's 128)")
    ap.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = ap.parse_args(argv)
    only = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = sorted(set(only) - set(BENCHES))
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    args.selected = [b for b in BENCHES if not only or b in only]
    q = args.quick
    args.repeat = args.repeat or (3 if q else 5)
    args.size_mib = args.size_mib or (64 if q else 256)
    args.random_reads = args.random_reads or (200 if q else 500)
    args.dirs, args.files_per_dir = (20, 50) if q else (100, 50)
    args.huge_mib = 0 if q or "memory" not in args.selected else 512
    if args.repeat < 1 or args.size_mib < 2 or args.random_reads < 1:
        ap.error("--repeat, --random-reads must be >= 1 and --size-mib >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("fusermount3", "ls", "find"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        sys.exit("bench: /dev/fuse is missing or not accessible")

    cleanup = Cleanup()
    atexit.register(cleanup.run)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="cometfs-bench-", dir=args.workdir))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="cometfs-bench-"))
    cleanup.add("workdir", lambda: shutil.rmtree(workdir, ignore_errors=True))
    started = time.perf_counter()
    try:
        bench = Bench(args, workdir, cleanup)
        for name in args.selected:
            t0 = time.perf_counter()
            log(f"== {name}")
            getattr(bench, f"bench_{name}")()
            log(f"== {name} done in {time.perf_counter() - t0:.0f}s")
        for srv in bench.servers.values():
            srv.stop()
        elapsed = time.perf_counter() - started
        print_table(bench.rows, elapsed, describe_setup(args, bench))
        problems = bench.problems()
        if problems:
            print(f"\n{len(problems)} WARNING/ERROR lines in mount logs, e.g.:")
            for line in problems[:5]:
                print(f"  {line}")
        result = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git": git_revision(),
            "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                     "python": platform.python_version()},
            "args": {k: v for k, v in vars(args).items() if k not in ("workdir", "output")},
            "drop_caches": bench.drop_ok,
            "setup": describe_setup(args, bench),
            "elapsed_s": round(elapsed, 1),
            "mount_log_problems": problems,
            "rows": [{**asdict(r), "ratio": r.ratio} for r in bench.rows],
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {args.output}")
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        cleanup.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
