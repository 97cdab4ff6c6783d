#!/usr/bin/env python3
"""Download one artifact version with the comet_ml SDK and print its timing as JSON.

Runs as a child of scripts/bench.py (its own process, main thread), so the SDK's import and
threads do not share the benchmark's interpreter. The server URL and API key come from the
environment (COMET_URL_OVERRIDE, COMET_API_KEY), never from argv. Only `download()` is timed.

    python scripts/bench_sdk.py --workspace WS --name NAME --version 1.0.0 --dest DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description="time comet_ml Artifact.download()")
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--dest", type=Path, required=True)
    args = ap.parse_args()
    os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
    import comet_ml

    api = comet_ml.API(cache=False)  # type: ignore[no-untyped-call]
    artifact = api.get_artifact(args.workspace, args.name, version=args.version)
    t0 = time.perf_counter()
    artifact.download(str(args.dest))
    seconds = time.perf_counter() - t0
    files = [p for p in args.dest.rglob("*") if p.is_file()]
    print(
        json.dumps(
            {"seconds": seconds, "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
