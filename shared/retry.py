"""Retry policy and retry throttling: how long to wait, and whether retrying is allowed now.

    policy = RetryPolicy(max_attempts=3, backoff_base_s=0.05, backoff_max_s=1.0)
    wait = policy.wait_s(failed_attempts=1, retry_after_s=None, rng=random.Random())
    throttle = RetryThrottle(max_tokens=10, token_ratio=0.1)
    if throttle.allows_retry(): ...          # after a failure: throttle.on_failure()

The semantics are gRPC's service-config ``retryPolicy`` and ``retryThrottling``
(gRFC A6): full-jitter exponential backoff (the wait before attempt n+1 is uniform in
[0, min(max, base × 2^(n-1))]), never shorter than a server's Retry-After; a token
bucket per target that loses a token per failed attempt and regains ``token_ratio`` per
success, and allows retries only while it holds more than half its tokens — so a peer
that is failing everywhere is not hammered by retries on top of the traffic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts and how long to wait between them (settings: ``RetrySettings``)."""

    max_attempts: int = 2
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    max_wait_s: float = 10.0  # a longer wait (a long Retry-After) ends the retries instead

    @classmethod
    def from_config(cls, cfg) -> RetryPolicy:
        return cls(**{f: getattr(cfg, f) for f in cls.__dataclass_fields__})

    def wait_s(self, failed_attempts: int, retry_after_s: float | None, rng: random.Random) -> float:
        """The pause after ``failed_attempts`` attempts: full-jitter backoff, at least the Retry-After."""
        bound = min(self.backoff_max_s, self.backoff_base_s * 2 ** (failed_attempts - 1))
        return max(rng.uniform(0.0, bound), retry_after_s or 0.0)


class RetryThrottle:
    """gRPC's retry throttling: a token bucket; retries only above half of ``max_tokens``."""

    def __init__(self, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        if max_tokens <= 0 or token_ratio <= 0:
            raise ValueError("max_tokens and token_ratio must be > 0")
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.tokens = max_tokens

    def on_success(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)

    def on_failure(self) -> None:
        self.tokens = max(0.0, self.tokens - 1.0)

    def allows_retry(self) -> bool:
        return self.tokens > self.max_tokens / 2
