#!/usr/bin/env python3
"""A TCP proxy that adds a fixed delay to every request, for the benchmark's WAN rows.

Runs as its own process (started by scripts/bench_peers.py), one asyncio event loop on its
main thread. Bytes from the client are forwarded to the upstream `delay` seconds after they
arrived (in order, without adding up: a burst waits `delay` once), bytes back are forwarded at
once. With HTTP/1.1 a client sends each request as one burst, so this is a per-request
latency, like the local server's `delay` fault, not a per-packet one.

    python scripts/bench_proxy.py --port P --upstream UPSTREAM_PORT --delay 0.025
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys


async def pump_delayed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    sender = asyncio.create_task(forward())
    try:
        while True:
            data = await reader.read(1 << 16)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
    finally:
        await sender


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 18):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


async def handle(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, upstream: int, delay: float
) -> None:
    try:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(pump_delayed(client_r, up_w, delay), pump(up_r, client_w))
    except (ConnectionError, OSError):
        pass  # either side hung up; the other is closed below
    finally:
        for w in (up_w, client_w):
            w.close()


async def serve(port: int, upstream: int, delay: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream, delay), "127.0.0.1", port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description="per-request delaying TCP proxy")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--delay", type=float, required=True)
    args = ap.parse_args()
    asyncio.run(serve(args.port, args.upstream, args.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
