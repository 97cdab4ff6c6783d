"""cometfs: Comet ML artifacts as a read-only filesystem."""

from cometfs.api import mounted
from cometfs.errors import (
    ApiError,
    CometFSError,
    ConfigError,
    NotFound,
    ProtocolError,
    RangeNotSupported,
    RateLimited,
    StaleError,
    StoreError,
    TransientError,
    Unauthorized,
)
from cometfs.model import Artifact, ArtifactVersion, Asset

__all__ = [
    "ApiError",
    "Artifact",
    "ArtifactVersion",
    "Asset",
    "CometFSError",
    "ConfigError",
    "NotFound",
    "ProtocolError",
    "RangeNotSupported",
    "RateLimited",
    "StaleError",
    "StoreError",
    "TransientError",
    "Unauthorized",
    "mounted",
]
__version__ = "0.1.0"
