"""The cometfs exception tree; every layer raises these, only fs.py turns them into errno.

    CometFSError
    ├── ConfigError            settings missing or malformed (no key, bad URL)
    ├── ApiError               the Comet REST API answered with an error
    │   ├── NotFound           404, or a "no such artifact/version" sdk_error_code
    │   ├── Unauthorized       401/403: bad, revoked or under-privileged key
    │   ├── RateLimited        429 after retries (carries retry_after)
    │   ├── TransientError     5xx, connection trouble or a deadline passed, after retries
    │   ├── NotFinalized       the version is not finalized yet (sdk_error_code 90402/90403)
    │   └── ProtocolError      an answer that breaks the API contract (bad JSON,
    │                          wrong Content-Type, short or over-long body)
    │       └── RangeNotSupported  the server ignored a Range request
    ├── StaleError             a version's bytes no longer match what was listed
    └── StoreError             the local server's store refused an operation

Messages never contain the API key.
"""

from __future__ import annotations


class CometFSError(Exception):
    """Base of every error cometfs raises on purpose."""


class ConfigError(CometFSError):
    """Settings are missing or malformed."""


class ApiError(CometFSError):
    """The REST API answered with an error."""

    def __init__(
        self, message: str, *, status: int | None = None, sdk_error_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.sdk_error_code = sdk_error_code


class NotFound(ApiError):
    """The workspace, artifact, version or asset does not exist (or is not visible)."""


class Unauthorized(ApiError):
    """The API key was refused."""


class RateLimited(ApiError):
    """The server kept answering 429."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after


class TransientError(ApiError):
    """A 5xx or network failure that outlived the retries."""


class ProtocolError(ApiError):
    """The server's answer does not follow the API contract."""


class RangeNotSupported(ProtocolError):
    """The server answered a Range request with the whole body."""


class StaleError(CometFSError):
    """Bytes of an immutable version changed under us; never serve them."""


class StoreError(CometFSError):
    """The local server's store refused an operation (bad input, duplicate version)."""


class NotFinalized(ApiError):
    """The artifact version is not finalized (state OPEN or ERROR: sdk_error_code 90402/90403),
    so its contents cannot be read yet."""
