"""Fault injection for the local server, so tests can see how the mount copes with a bad day.

A `FaultPlan` holds `FaultRule`s. For every request the HTTP handler thread asks the plan
(`FaultPlan.pick`) what to do; the plan is thread-safe and can be changed while the server
runs (`server.faults.add(rule)`, `server.faults.clear()`).

Each rule matches an endpoint name (see `cometfs.wire.ENDPOINTS`, or `*` for all) and does one of:

    status    answer with that HTTP status and a JSON error body; `retry_after` (seconds)
              adds a Retry-After header (429 gets 1 s by default); `retry_date` sends it as
              an HTTP-date 1-2 s ahead instead (RFC 9110 allows either form)
    delay     sleep that many seconds, then answer normally
    truncate  answer normally, but send only the first half of the body after headers that
              announce the full Content-Length, then close the connection cleanly (FIN).
              `short` is an alias: a short body with a clean close is exactly this.
    reset     close the connection (with TCP RST) without answering
    reset-mid send the headers and the first half of the body, then reset (TCP RST)
    trickle   answer normally, but send the body at `rate` bytes per second (headers at once)
    stall     send the headers and the first half of the body, then hang until the server
              closes (at most `STALL_MAX` seconds), then close the connection
    norange   ignore a Range header for this request only: 200 with the whole body, as a
              backend that stops honouring Range in the middle of a read would
    gzip-bomb answer a JSON endpoint with `Content-Encoding: gzip` and a ~1 MB body that
              decompresses to the real answer padded with `size` spaces (default 1 GiB):
              still valid JSON, so only a client that caps decoded size survives it
    huge-size artifacts/version/files reports fileSize 2**64 for its first asset (the others
              stay intact); no effect on other endpoints
    not-final answer 400 with sdk_error_code 90402 (artifactVersionStateNotClosed), what the
              backend says about a version that is not finalized

A rule fires at most `count` times (None = unlimited) and, when `probability` < 1, only on
that share of matching requests (a seeded RNG, so runs are repeatable). Per request, every
matching delay rule that fires adds its delay; then the first matching non-delay rule that
fires decides the answer.

Spec grammar (`cometfs serve --faults SPEC`, `parse_faults`):

    SPEC   := RULE (";" RULE)*
    RULE   := ENDPOINT "=" ACTION ["*" COUNT] ["@" PROBABILITY]  |  "seed=" INT
    ACTION := STATUS [":" RETRY_AFTER_SECONDS | ":date"]  e.g. 500, 503, 429:2, 429:date
            | "delay:" SECONDS                          e.g. delay:1.5
            | "trickle:" BYTES_PER_SECOND               e.g. trickle:100
            | "gzip-bomb" [":" DECODED_BYTES]           e.g. gzip-bomb, gzip-bomb:1048576
            | "truncate" | "short" | "reset" | "reset-mid" | "stall" | "norange"
            | "huge-size" | "not-final"

Examples: `get-asset=500*2;artifacts/version=delay:1.5;get-asset=truncate*1`,
`*=503@0.1;seed=7`, `artifacts/version/files=429:3*1`, `get-asset=trickle:100*1`,
`workspaces=429:date*1`, `artifacts/version/files=gzip-bomb*1`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from cometfs.wire import ENDPOINTS

KINDS = (
    "status",
    "delay",
    "truncate",
    "reset",
    "reset-mid",
    "trickle",
    "stall",
    "norange",
    "gzip-bomb",
    "huge-size",
    "not-final",
)
# Kinds that take no argument in the spec; `short` is parsed as `truncate`.
_PLAIN_KINDS = ("truncate", "reset", "reset-mid", "stall", "norange", "huge-size", "not-final")
_ALIASES = {"short": "truncate"}
STALL_MAX = 120.0
GZIP_BOMB_SIZE = 1 << 30


@dataclass
class FaultRule:
    """One fault. Mutable on purpose: `count` is the remaining budget, `fired` a counter."""

    endpoint: str
    kind: str
    status: int | None = None
    seconds: float = 0.0
    retry_after: float | None = None
    retry_date: bool = False
    rate: float = 0.0
    size: int = GZIP_BOMB_SIZE
    count: int | None = None
    probability: float = 1.0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.endpoint != "*" and self.endpoint not in ENDPOINTS:
            raise ValueError(
                f"unknown endpoint {self.endpoint!r} in fault rule; "
                f"use '*' or one of {', '.join(sorted(ENDPOINTS))}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind == "status":
            if self.status is None or not 100 <= self.status <= 599:
                raise ValueError(f"fault status must be an HTTP status 100-599, got {self.status}")
            if self.retry_after is None and self.status == 429 and not self.retry_date:
                self.retry_after = 1.0
        if self.kind == "trickle" and not self.rate > 0:
            raise ValueError(f"trickle needs a rate > 0 bytes per second, got {self.rate}")
        if self.kind == "gzip-bomb" and self.size < 0:
            raise ValueError(f"gzip-bomb size must be >= 0 bytes, got {self.size}")
        if self.seconds < 0:
            raise ValueError(f"fault delay must be >= 0 seconds, got {self.seconds}")
        if self.count is not None and self.count < 0:
            raise ValueError(f"fault count must be >= 0, got {self.count}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability must be in [0, 1], got {self.probability}")

    def matches(self, endpoint: str) -> bool:
        return self.endpoint in ("*", endpoint)


class FaultPlan:
    """A thread-safe, mutable list of fault rules."""

    def __init__(self, rules: Iterable[FaultRule] = (), *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = list(rules)
        self._rng = random.Random(seed)

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def add(self, rule: FaultRule) -> FaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def seed(self, seed: int) -> None:
        with self._lock:
            self._rng.seed(seed)

    def pick(self, endpoint: str) -> tuple[float, FaultRule | None]:
        """Return (total delay in seconds, the terminal rule to apply or None)."""
        delay = 0.0
        chosen: FaultRule | None = None
        with self._lock:
            for rule in self._rules:
                if not rule.matches(endpoint) or rule.count == 0:
                    continue
                if rule.kind != "delay" and chosen is not None:
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                rule.fired += 1
                if rule.kind == "delay":
                    delay += rule.seconds
                else:
                    chosen = rule
        return delay, chosen


def _parse_number(text: str, what: str, rule: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"fault rule {rule!r}: {what} must be a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"fault rule {rule!r}: {what} must be finite")
    return value


def _parse_rule(text: str) -> FaultRule:
    endpoint, sep, action = text.partition("=")
    endpoint, action = endpoint.strip(), action.strip()
    if not sep or not endpoint or not action:
        raise ValueError(f"fault rule {text!r} must look like ENDPOINT=KIND[:ARG][*COUNT][@P]")
    probability = 1.0
    if "@" in action:
        action, _, ptext = action.rpartition("@")
        probability = _parse_number(ptext, "probability", text)
    count: int | None = None
    if "*" in action:
        action, _, ctext = action.rpartition("*")
        if not ctext.isdigit():
            raise ValueError(f"fault rule {text!r}: count must be a whole number, got {ctext!r}")
        count = int(ctext)
    kind, _, arg = action.partition(":")
    kind, arg = kind.strip(), arg.strip()
    kind = _ALIASES.get(kind, kind)
    try:
        if kind.isdigit():
            if arg == "date":
                return FaultRule(
                    endpoint,
                    "status",
                    status=int(kind),
                    retry_date=True,
                    count=count,
                    probability=probability,
                )
            retry = _parse_number(arg, "Retry-After", text) if arg else None
            return FaultRule(
                endpoint,
                "status",
                status=int(kind),
                retry_after=retry,
                count=count,
                probability=probability,
            )
        if kind == "delay":
            if not arg:
                raise ValueError("delay needs seconds, e.g. delay:1.5")
            return FaultRule(
                endpoint,
                "delay",
                seconds=_parse_number(arg, "delay", text),
                count=count,
                probability=probability,
            )
        if kind == "trickle":
            if not arg:
                raise ValueError("trickle needs bytes per second, e.g. trickle:100")
            return FaultRule(
                endpoint,
                "trickle",
                rate=_parse_number(arg, "rate", text),
                count=count,
                probability=probability,
            )
        if kind == "gzip-bomb":
            if arg and not arg.isdigit():
                raise ValueError(f"gzip-bomb size must be a whole number of bytes, got {arg!r}")
            return FaultRule(
                endpoint,
                "gzip-bomb",
                size=int(arg) if arg else GZIP_BOMB_SIZE,
                count=count,
                probability=probability,
            )
        if kind in _PLAIN_KINDS:
            if arg:
                raise ValueError(f"{kind} takes no argument")
            return FaultRule(endpoint, kind, count=count, probability=probability)
    except ValueError as exc:
        if str(exc).startswith("fault rule"):
            raise
        raise ValueError(f"fault rule {text!r}: {exc}") from None
    raise ValueError(
        f"fault rule {text!r}: unknown kind {kind!r}; use a status like 500 or 429:date, "
        "delay:SECONDS, trickle:BYTES_PER_S, truncate, short, reset, reset-mid, stall, "
        "norange, gzip-bomb, huge-size or not-final"
    )


def parse_faults(spec: str) -> FaultPlan:
    """Parse a `--faults` spec (grammar in the module docstring); ValueError on bad input."""
    rules: list[FaultRule] = []
    seed = 0
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        if part.startswith("seed="):
            value = part[len("seed=") :].strip()
            try:
                seed = int(value)
            except ValueError:
                raise ValueError(f"fault seed must be an integer, got {value!r}") from None
            continue
        rules.append(_parse_rule(part))
    return FaultPlan(rules, seed=seed)
