"""Whether a process id is still in use; safe on any thread.

Temporary files carry their writer's pid (the disk cache's blocks, the server store's
blobs), so a cleaner can tell an abandoned file from one still being written.
"""

from __future__ import annotations

import os


def pid_exists(pid: int) -> bool:
    """False only when no process has that pid (a live one we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
