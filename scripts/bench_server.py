#!/usr/bin/env python3
"""Loopback throughput of the local server's byte path (get-asset, Range and redirect).

Builds a throw-away store with one asset (default 1 GiB, a repeated random 4 MiB block),
starts a server on 127.0.0.1 and downloads it with requests `iter_content(4 MiB)`:
one full 200 stream, a set of 206 range windows, and the 302 -> /blob/<token> path.
Runs on the main thread; the server runs on its own background threads.

    .venv/bin/python scripts/bench_server.py [--size-mib 1024] [--window-mib 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import requests

from cometfs.server import ApiKey, ArtifactStore, AssetSource, CometServer, VersionSpec
from cometfs.testing import write_random_file

KEY = "bench-key"
CHUNK = 4 << 20


def stream(
    session: requests.Session,
    url: str,
    params: dict[str, str] | None,
    headers: dict[str, str],
    expect: int,
) -> tuple[int, float]:
    t0 = time.perf_counter()
    total = 0
    with session.get(url, params=params, headers=headers, stream=True, timeout=60) as r:
        if r.status_code != expect:
            raise SystemExit(f"unexpected status {r.status_code} (wanted {expect}): {url}")
        for chunk in r.iter_content(chunk_size=CHUNK):
            total += len(chunk)
    return total, time.perf_counter() - t0


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--window-mib", type=int, default=64, help="size of each 206 window")
    ap.add_argument("--repeat", type=int, default=3, help="full downloads to time (best wins)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    size = args.size_mib << 20

    with tempfile.TemporaryDirectory(prefix="cometfs-bench-") as tmp:
        src = Path(tmp) / "asset.bin"
        write_random_file(src, size, repeat=True, chunk=CHUNK)
        store = ArtifactStore(Path(tmp) / "store")
        t0 = time.perf_counter()
        store.add_version(VersionSpec("bench", "big", [AssetSource("asset.bin", path=src)]))
        src.unlink()
        print(f"store add: {args.size_mib} MiB in {time.perf_counter() - t0:.2f} s")
        asset_id = store.snapshot().artifacts["bench"]["big"].versions[0].assets[0].asset_id
        params = {"assetId": asset_id, "allow301": "False", "experimentKey": ""}
        auth = {"Authorization": KEY}

        with (
            CometServer(store, api_keys=[ApiKey(KEY, None)], redirect=True) as srv,
            requests.Session() as session,
        ):
            url = srv.url + "/api/rest/v2/experiment/asset/get-asset"
            best = 0.0
            for i in range(args.repeat):
                n, secs = stream(session, url, params, auth, 200)
                if n != size:
                    raise SystemExit(f"short download: {n} of {size} bytes")
                best = max(best, mbps(n, secs))
                print(
                    f"200 full  #{i + 1}: {n / 2**20:.0f} MiB in {secs:.2f} s = "
                    f"{mbps(n, secs):.0f} MB/s"
                )

            window = args.window_mib << 20
            total, secs_sum = 0, 0.0
            for start in range(0, size, window):
                end = min(start + window, size) - 1
                n, secs = stream(
                    session, url, params, {**auth, "Range": f"bytes={start}-{end}"}, 206
                )
                total += n
                secs_sum += secs
            print(
                f"206 range: {total / 2**20:.0f} MiB in {size // window} windows of "
                f"{args.window_mib} MiB = {mbps(total, secs_sum):.0f} MB/s"
            )

            redirect_params = {**params, "allow301": "True"}
            n, secs = stream(session, url, redirect_params, auth, 200)
            print(f"302->blob: {n / 2**20:.0f} MiB in {secs:.2f} s = {mbps(n, secs):.0f} MB/s")
            print(
                f"best single-stream 200: {best:.0f} MB/s "
                f"({'meets' if best >= 1000 else 'BELOW'} the 1 GB/s target)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
