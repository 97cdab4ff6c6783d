"""The Comet REST client: the only code in cometfs that speaks HTTP.

Its methods block, so callers run them on worker threads (store.py does, via to_thread),
except read_range, which is async and runs on the caller's trio thread.
"""

from cometfs.client.api import CometClient

__all__ = ["CometClient"]
