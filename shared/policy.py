"""The edge's policy file: dedup, rate limits and admission, validated strictly.

One YAML file (``ingest.policy_file``; the embedded defaults when unset), checked by
``clawmesh config check``. Unknown keys and bad values are errors naming the file and
the key. Every policy has ``enforce``: false is shadow mode — it counts what it would
have refused and lets everything through. Example::

    backend: {kind: redis, redis_url: "redis://redis:6379/0", op_timeout_ms: 50,
              on_error: fail_open}
    dedup: {strategy: exact, ttl_s: 86400}
    rate_limits:
      rules:
        - match: {tenant: "*", sender: "*"}          # "*": each value its own quota
          limits:
            - {name: sender-burst, rate: 1, per: second, burst: 10}
            - {name: sender-minute, rate: 60, per: minute}
    admission: {limit: gradient, initial_limit: 32, max_queue: 256, max_wait_services: 1.0}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DESCRIPTOR_KEYS = ("tenant", "channel", "sender", "priority", "method")
PER_S = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file and each bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendPolicy(_Strict):
    """Where shared state lives: this process, or Redis (shared by every replica)."""

    kind: Literal["memory", "redis"] = "memory"
    redis_url: str = ""
    op_timeout_ms: float = Field(50.0, gt=0, description="per Redis operation")
    on_error: Literal["fail_open", "fail_closed"] = "fail_open"

    @model_validator(mode="after")
    def _url_for_redis(self) -> BackendPolicy:
        if self.kind == "redis" and not self.redis_url:
            raise ValueError("redis_url is required when kind is redis")
        return self


class DedupPolicy(_Strict):
    enforce: bool = True
    strategy: Literal["exact", "sliding", "bloom", "combined"] = "exact"
    ttl_s: float = Field(86_400.0, gt=0, description="how long a finished reply is replayed")
    wait_timeout_s: float = Field(30.0, gt=0, description="longest wait for an in-flight original")
    bloom_capacity: int = Field(1_000_000, ge=1)
    bloom_fp_rate: float = Field(0.001, gt=0, lt=1)
    content_window_s: float = Field(
        0.0, ge=0, le=300,
        description="opt-in for channels without message ids: a message with the same sender "
        "and content in the same session within this window is a copy (answered with the "
        "replay); 0: never by content",
    )


class LimitPolicy(_Strict):
    name: str = Field(..., min_length=1)
    rate: float = Field(..., gt=0)
    per: Literal["second", "minute", "hour"] = "second"
    burst: int = Field(0, ge=0, description="0: ceil(rate)")


class RateLimitRule(_Strict):
    match: dict[str, str] = Field(..., min_length=1)
    limits: list[LimitPolicy] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _known_keys(self) -> RateLimitRule:
        unknown = [k for k in self.match if k not in DESCRIPTOR_KEYS]
        if unknown:
            raise ValueError(f"unknown descriptor key(s) {unknown}; expected some of {DESCRIPTOR_KEYS}")
        return self


class RateLimitPolicy(_Strict):
    enforce: bool = True
    rules: list[RateLimitRule] = []


class AdmissionPolicy(_Strict):
    enforce: bool = True
    limit: Literal["gradient", "aimd", "fixed"] = Field(
        "gradient", description="gradient: backs off when calls get slower than their reference "
        "latency (see reference; no target to tune); aimd: backs off above target_latency_ms; "
        "fixed: initial_limit")
    reference: Literal["average", "min"] = Field(
        "average", description="gradient: 1.5x the long-term average latency, or 2x the least "
        "latency of the last 600-1200 calls (stricter on latency, sheds more on a busy host)")
    initial_limit: int = Field(32, ge=1)
    min_limit: int = Field(8, ge=1)
    max_limit: int = Field(1024, ge=1)
    target_latency_ms: float | None = Field(
        None, gt=0, description="aimd: required; gradient: a fixed reference instead of the average")
    max_queue: int = Field(256, ge=0)
    max_wait_ms: float | None = Field(5.0, ge=0, description="a call may wait in the queue this long")
    max_wait_services: float | None = Field(
        1.0, gt=0, description="... or this many expected service times, the longer of the two; "
        "both null: calls wait up to their deadline")

    @model_validator(mode="after")
    def _ordered(self) -> AdmissionPolicy:
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("need min_limit <= initial_limit <= max_limit")
        if self.limit == "aimd" and self.target_latency_ms is None:
            raise ValueError("limit: aimd needs target_latency_ms")
        return self


class EdgePolicy(_Strict):
    backend: BackendPolicy = BackendPolicy()
    dedup: DedupPolicy = DedupPolicy()
    rate_limits: RateLimitPolicy = RateLimitPolicy()
    admission: AdmissionPolicy = AdmissionPolicy()


def load_policy(path: str | Path | None) -> EdgePolicy:
    """The policy in ``path`` (the defaults when None); PolicyError names file and keys."""
    if path is None:
        return EdgePolicy()
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{path}: cannot read policy file: {exc}") from exc
    if not isinstance(tree, dict):
        raise PolicyError(f"{path}: top level must be a mapping")
    try:
        return EdgePolicy.model_validate(tree)
    except ValidationError as exc:
        problems = [f"{path}: {'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
                    for e in exc.errors()]
        raise PolicyError("invalid policy:\n  " + "\n  ".join(problems)) from None
