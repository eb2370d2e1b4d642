"""Typed settings for every service, loaded once at start.

Sources, later wins: built-in defaults < YAML file (``CLAWMESH_CONFIG``) <
environment variables. Environment names are ``CLAWMESH_`` + the path in
upper case joined by ``__``: ``CLAWMESH_INGEST__PORT=6000`` sets
``ingest.port``. Unknown keys and bad values fail fast, naming the variable
(or the file and key)::

    settings = load_settings(os.environ)       # only main() passes os.environ
    settings = MeshSettings(memory={"data_dir": tmp_path})   # tests build directly

(Nested env parsing is a few lines here rather than pydantic-settings because
settings must be loadable from an injected mapping, never the process env.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

ENV_PREFIX = "CLAWMESH_"
CONFIG_ENV = "CLAWMESH_CONFIG"


class SettingsError(ValueError):
    """Configuration is invalid; the message names each offending variable."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerSettings(_Strict):
    """What every gRPC server has."""

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(..., ge=0, le=65535, description="listen port (0: any free port)")
    address: str = Field("", description="how other services reach it; default host:port")
    grace_period_s: float = Field(10.0, gt=0, description="SIGTERM drain time")
    max_concurrent_rpcs: int | None = Field(None, ge=1, description="hard in-flight cap")
    max_pending_requests: int = Field(
        1000, ge=1, description="calls gRPC core holds before the event loop takes them; "
        "beyond it new calls are dropped at once (CANCELLED), never queued")
    max_connection_age_s: float = Field(300.0, gt=0, description="clients re-resolve after")
    max_connection_age_grace_s: float = Field(
        120.0, gt=0,
        description="an aged connection's streams may finish within this; must exceed "
        "stream_max_age_s + call_timeout_s so an Exchange stream is never cut mid-call",
    )
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    prometheus_port: int | None = Field(
        None, ge=0, le=65535,
        description="HTTP port of the Prometheus /metrics endpoint, on host (0: any free port). "
        "None, the default: off, so services and replicas on one host never clash; the "
        "Kubernetes manifests set 9464 (shared/prometheus.py)")

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerSettings:
        if self.prometheus_port and self.prometheus_port == self.port:
            raise ValueError(f"prometheus_port and port are both {self.port}")
        return self

    def target(self) -> str:
        return self.address or f"{self.host}:{self.port}"


class IngestSettings(ServerSettings):
    port: int = 50051
    # The edge: a short hidden backlog, so a call gRPC core cannot hand over soon is
    # dropped at once instead of waiting unseen (README, "The edge").
    max_pending_requests: int = 128
    max_content_bytes: int = Field(32 * 1024, ge=1)
    max_id_chars: int = Field(256, ge=1)
    max_attributes: int = Field(64, ge=0)
    default_tenant: str = "default"
    converse_max_in_flight: int = Field(64, ge=1, description="per Converse stream")
    policy_file: Path | None = Field(
        None, description="edge policy YAML (dedup, rate limits, admission); none: the defaults"
    )


class RoutingSettings(ServerSettings):
    port: int = 50052
    default_backend: str = "mock"
    default_model: str = ""
    history_limit: int = Field(20, ge=0, description="history messages sent to the model")
    history_cache_sessions: int = Field(
        10_000, ge=0, description="sessions whose history routing caches (0: no cache)"
    )
    history_cache_ttl_s: float = Field(600.0, gt=0, description="idle time before an entry goes")
    rules_file: Path | None = Field(
        None, description="routing rules YAML (routes, fallback chains, affinity, agents); none: "
        "one route to default_backend (README, \"Routing, failover and agents\"); SIGHUP re-reads it")
    affinity_sessions: int = Field(
        100_000, ge=1, description="sessions whose backend pin routing keeps (least recently used go)")
    affinity_ttl_s: float = Field(86_400.0, gt=0, description="an idle session's pin is forgotten after")


def _by_kind(*classes: type[_Strict]) -> BeforeValidator:
    """Validate a mapping as the class its ``kind`` names. (Pydantic's own tagged union puts the
    tag into error locations, which would then name an environment variable that does not exist.)"""
    kinds = {cls.model_fields["kind"].default: cls for cls in classes}

    def pick(value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        cls = kinds.get(value.get("kind"))
        if cls is None:
            raise ValueError(f"kind must be one of {', '.join(map(repr, kinds))}, not {value.get('kind')!r}")
        return cls.model_validate(value)

    return BeforeValidator(pick)


class _Fault(_Strict):
    rate: float = Field(1.0, ge=0, le=1, description="share of calls that get this fault")


class ErrorFault(_Fault):
    """The call fails as an unavailable backend (a 5xx)."""

    kind: Literal["error"] = "error"


class RateLimitFault(_Fault):
    """The call fails as a 429 with this Retry-After."""

    kind: Literal["rate_limit"] = "rate_limit"
    retry_after_s: float = Field(1.0, ge=0)


class SlowFirstTokenFault(_Fault):
    """The first chunk (or the whole reply) comes ``delay_s`` late."""

    kind: Literal["slow_first_token"] = "slow_first_token"
    delay_s: float = Field(..., ge=0)


class StallFault(_Fault):
    """The stream stops for ``delay_s`` after ``after_chunks`` chunks (a reply: delayed)."""

    kind: Literal["stall"] = "stall"
    after_chunks: int = Field(1, ge=0)
    delay_s: float = Field(..., ge=0)


class MalformedFault(_Fault):
    """Chunk ``after_chunks`` of the stream (or the reply) does not parse."""

    kind: Literal["malformed"] = "malformed"
    after_chunks: int = Field(0, ge=0)


_FAULTS = (ErrorFault, RateLimitFault, SlowFirstTokenFault, StallFault, MalformedFault)
MockFault = Annotated[
    ErrorFault | RateLimitFault | SlowFirstTokenFault | StallFault | MalformedFault,
    Field(discriminator="kind"), _by_kind(*_FAULTS),
]


class ToolCallConfig(_Strict):
    name: str = Field(..., min_length=1)
    arguments: dict[str, Any] | str = Field(default_factory=dict, description="object or JSON text")
    id: str = Field("", description="empty: call_<round>_<index>")


class BackendBreakerSettings(_Strict):
    """A backend's circuit breaker: a ``shared.breaker`` preset with the overrides that are set."""

    preset: Literal["fast_fail", "lenient", "strict"] = "fast_fail"
    failure_threshold: int | None = Field(None, ge=1, description="override: consecutive failures")
    failure_rate_threshold: float | None = Field(None, gt=0, le=1, description="override")
    window_s: float | None = Field(None, gt=0, description="override: the failure-rate window")
    window_calls: int | None = Field(None, ge=1, description="override: a window of calls, not seconds")
    minimum_calls: int | None = Field(None, ge=1, description="override")
    open_timeout_s: float | None = Field(None, gt=0, description="override: open before a probe")
    success_threshold: int | None = Field(None, ge=1, description="override")
    count_resource_exhausted: bool | None = Field(None, description="override: a 429 counts as a failure")

    def config(self):
        """The ``shared.breaker.BreakerConfig``: the preset with the overrides that are set."""
        from clawmesh.shared.breaker import BreakerConfig

        overrides = self.model_dump(exclude={"preset", "enabled"}, exclude_none=True)
        return BreakerConfig.preset(self.preset, **overrides)

    @model_validator(mode="after")
    def _consistent(self) -> BackendBreakerSettings:
        self.config()  # ValueError naming the problem, e.g. minimum_calls > window_calls
        return self


class BackendRetrySettings(_Strict):
    """Retries of a failed backend call inside the provider, within the call's deadline.

    Only failures that are the backend's fault are retried, and a stream only before its
    first token. The wait before attempt n+1 is uniform(0, min(backoff_max_s,
    backoff_base_s * 2**(n-1))), at least the backend's Retry-After.
    """

    max_attempts: int = Field(2, ge=1, description="attempts per call, the first included (1: none)")
    backoff_base_s: float = Field(0.1, ge=0, description="the first retry's backoff bound; doubles")
    backoff_max_s: float = Field(2.0, ge=0, description="largest backoff bound")
    max_wait_s: float = Field(
        10.0, ge=0, description="a longer wait (a long Retry-After) fails the call at once instead")


class _BackendBase(_Strict):
    max_concurrency: int | None = Field(None, ge=1, description="calls at once; more wait")
    first_token_timeout_s: float | None = Field(60.0, gt=0, description="request to first token")
    stall_timeout_s: float | None = Field(30.0, gt=0, description="gap between streamed chunks")
    total_timeout_s: float | None = Field(600.0, gt=0, description="a whole call")
    breaker: BackendBreakerSettings = Field(default_factory=BackendBreakerSettings)
    retry: BackendRetrySettings = Field(default_factory=BackendRetrySettings)
    temperature: float | None = Field(
        None, ge=0, le=2, description="sampling temperature when a request sets none (an openai "
        "backend sends it); none: the server's default. 0 lets the response cache keep its replies")


class MockBackendConfig(_BackendBase):
    """The embedded deterministic backend, with latency and injected faults."""

    kind: Literal["mock"] = "mock"
    model: str = "mock-1"
    latency_s: float = Field(0.0, ge=0, description="before the reply or its first chunk")
    jitter_s: float = Field(0.0, ge=0, description="plus uniform(0, jitter_s), seeded")
    chunk_words: int = Field(3, ge=1, description="words per streamed chunk")
    chunk_delay_s: float = Field(0.0, ge=0, description="between streamed chunks")
    seed: int | None = Field(None, description="same seed, same jitter and faults")
    faults: list[MockFault] = Field(
        default_factory=list, description="at most one per call, drawn by rate, in this order"
    )
    tool_script: list[list[ToolCallConfig]] = Field(
        default_factory=list,
        description="tool calls of the model's first turns after a user message, then the answer",
    )

    @model_validator(mode="after")
    def _rates_fit(self) -> MockBackendConfig:
        if sum(f.rate for f in self.faults) > 1 + 1e-9:
            raise ValueError("fault rates add up to more than 1")
        return self


class OpenAIBackendConfig(_BackendBase):
    """An OpenAI-compatible chat-completions server (OpenAI, DeepSeek, vLLM, Ollama, llama.cpp)."""

    kind: Literal["openai"] = "openai"
    base_url: str = Field(..., pattern=r"^https?://", description="e.g. https://api.openai.com/v1")
    model: str = Field(..., min_length=1, description="used when a request names none")
    models: list[str] = Field(default_factory=list, description="other models to list")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="NAME of the environment variable holding the key (none: no auth header)",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="sent with every request")
    connect_timeout_s: float = Field(5.0, gt=0)


BackendConfig = Annotated[
    MockBackendConfig | OpenAIBackendConfig, Field(discriminator="kind"),
    _by_kind(MockBackendConfig, OpenAIBackendConfig),
]


class ResponseCacheSettings(_Strict):
    """The provider's response cache: in process (L1), then Redis shared by every replica (L2)."""

    enabled: bool = True
    ttl_s: float = Field(3600.0, gt=0, description="an entry's lifetime, in L1 and in Redis")
    l1_max_entries: int = Field(10_000, ge=1, description="in-process entries; least recently used go")
    redis_url: str = Field("", pattern=r"^(rediss?://.+)?$", description="L2; empty: L1 only")
    op_timeout_ms: float = Field(
        50.0, gt=0, description="a Redis operation's bound; past it the call goes on without L2")


class ProviderSettings(ServerSettings):
    """The provider service. No ``backends``: one mock named "mock" from the ``mock_*`` fields."""

    port: int = 50053
    default_backend: str = "mock"
    mock_model: str = "mock-1"
    mock_latency_ms: float = Field(0.0, ge=0, description="added per mock generation")
    mock_chunk_words: int = Field(3, ge=1, description="words per streamed mock chunk")
    backends: dict[str, BackendConfig] = Field(
        default_factory=dict, description="by name; a discriminated union on `kind`"
    )
    cache: ResponseCacheSettings = Field(default_factory=ResponseCacheSettings)

    def backend_configs(self) -> dict[str, MockBackendConfig | OpenAIBackendConfig]:
        """The configured backends, or the default mock when none are."""
        if self.backends:
            return dict(self.backends)
        return {"mock": MockBackendConfig(
            model=self.mock_model, latency_s=self.mock_latency_ms / 1000.0,
            chunk_words=self.mock_chunk_words,
        )}

    @model_validator(mode="after")
    def _default_is_configured(self) -> ProviderSettings:
        names = self.backend_configs()
        if self.default_backend not in names:
            raise ValueError(f"default_backend {self.default_backend!r} is not configured; "
                             f"backends: {', '.join(names)}")
        return self


class MemorySettings(ServerSettings):
    """The memory service; its tenant fallback is ``ingest.default_tenant``.

    ``backend`` ``sqlite`` keeps history in ``data_dir`` (one process); ``redis``
    in ``redis_url``, shared by every memory replica (README "Memory backends").
    """

    port: int = 50054
    backend: Literal["sqlite", "redis"] = Field("sqlite", description="where history is kept")
    data_dir: Path = Path("data")
    redis_url: str = Field("", description="the Redis of backend redis, e.g. redis://redis:6379/0")
    redis_key_prefix: str = Field("clawmesh:memory:", min_length=1, description="prefix of every key")
    redis_durability: Literal["always", "everysec", "none"] = Field(
        "always", description="weakest Redis AOF fsync policy accepted at start (none: AOF not required)")
    redis_configure: bool = Field(
        False, description="CONFIG SET a less durable Redis to redis_durability instead of refusing it")
    redis_timeout_s: float = Field(2.0, gt=0, description="connect and reply timeout of Redis calls")
    redis_max_connections: int = Field(
        32, ge=1, description="Redis connections per memory process; more concurrent calls wait")
    max_messages_per_session: int = Field(
        200, ge=1, description="window: older messages of a session are dropped"
    )
    max_tokens_per_session: int = Field(
        200_000, ge=1, description="a session's stored tokens; older messages are dropped beyond")
    session_ttl_s: float = Field(
        30 * 86400, ge=0, description="an idle session expires after this (0: never)")
    idempotency_ttl_s: float = Field(86400, gt=0, description="how long an idempotency key is remembered")
    sweep_interval_s: float = Field(60, ge=0, description="expired sessions and keys are removed this often "
                                    "(0: no sweeper)")
    sweep_batch: int = Field(500, ge=1, description="sessions removed per sweeper step")
    default_search_results: int = Field(10, ge=1, description="Search results when limit is 0")
    max_search_results: int = Field(100, ge=1, description="largest Search limit allowed")
    max_query_chars: int = Field(1000, ge=1, description="length of a Search query")
    max_id_chars: int = Field(256, ge=1, description="session id and idempotency key length")
    max_content_bytes: int = Field(
        256 * 1024, ge=1, description="UTF-8 size of one message's content"
    )
    max_batch_messages: int = Field(100, ge=1, description="messages in one BatchAppend")
    default_page_size: int = Field(100, ge=1, description="ListSessions page size when 0")
    max_page_size: int = Field(1000, ge=1, description="largest ListSessions page size allowed")
    inline_reads: bool = Field(
        True, description="run reads on the event loop (bounded, WAL: no thread hop per read)"
    )

    @model_validator(mode="after")
    def _url_for_redis(self) -> MemorySettings:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("redis_url is required when backend is redis")
        return self


class MetricsSettings(ServerSettings):
    port: int = 50055
    max_traces: int = Field(2000, ge=1, description="traces kept in memory; the oldest goes first")
    max_spans_per_trace: int = Field(500, ge=1, description="spans kept per trace; more are dropped")


class TelemetrySettings(_Strict):
    enabled: bool = True
    export_interval_s: float = Field(5.0, gt=0)
    export_timeout_s: float = Field(2.0, gt=0)
    tracing_enabled: bool = Field(
        True, description="spans over OTLP to the metrics service (OTEL_* variables override)")
    trace_sample_ratio: float = Field(
        0.1, ge=0, le=1, description="share of new traces recorded; a caller's sampled traceparent "
        "is always followed (parent-based)")


class RetrySettings(BackendRetrySettings):
    """Retries of the mesh's own idempotent calls (``shared/rpc/interceptors/retry.py``)."""

    enabled: bool = True
    max_attempts: int = Field(3, ge=1, description="attempts per call, the first included")
    backoff_base_s: float = Field(0.05, ge=0, description="the first retry's backoff bound; doubles")
    backoff_max_s: float = Field(1.0, ge=0, description="largest backoff bound")
    throttle_max_tokens: float = Field(10.0, gt=0, description="retry throttling per target (gRFC A6)")
    throttle_token_ratio: float = Field(0.1, gt=0, description="tokens regained per success")


class BreakerSettings(BackendBreakerSettings):
    """Circuit breakers of the mesh's own hops (one per target and method)."""

    enabled: bool = True
    # A mesh peer that restarts is back within a second or two: probe it soon.
    open_timeout_s: float | None = Field(2.0, gt=0, description="open before a probe")


class ApiKeySettings(_Strict):
    """One API key of a tenant: its hash (``clawmesh keys hash``), never the key itself."""

    hash: str = Field(..., pattern=r"^(sha256|hmac-sha256):[0-9a-f]{64}$",
                      description="sha256:<hex> (no pepper) or hmac-sha256:<hex> (with key_pepper)")
    not_after: AwareDatetime | None = Field(
        None, description="the key stops working at this time (a rotation's old key)")
    label: str = Field("", max_length=64, description="a name for operators and logs, e.g. 2026-11")

    def expires(self) -> float | None:
        return None if self.not_after is None else self.not_after.timestamp()


class SecuritySettings(_Strict):
    """Who may call (README "Security"): API keys at the edge, TLS outside, mTLS inside.

    The defaults are the insecure dev mode: no keys (any caller may claim any tenant),
    plaintext everywhere, internal services open to whoever reaches their ports.
    """

    auth: Literal["dev", "api_key"] = Field(
        "dev", description="api_key: every ingest call needs `authorization: Bearer <key>` and its "
        "tenant comes from the key; dev: none needed, the tenant is what the caller claims")
    api_keys: dict[str, list[ApiKeySettings]] = Field(
        default_factory=dict, description="by tenant: its valid keys (two at once during a rotation)")
    api_keys_file: Path | None = Field(
        None, description="YAML of the same shape as api_keys (e.g. a mounted Secret), added to them; "
        "re-read when it changes")
    keys_reload_s: float = Field(5.0, gt=0, description="how often api_keys_file is checked for changes")
    key_pepper: SecretStr = Field(
        SecretStr(""), description="secret key of the keys' HMAC-SHA256 hashes; empty: plain SHA-256")
    key_pepper_file: Path | None = Field(None, description="the pepper read from this file instead")
    tls: bool = Field(False, description="ingest's external port serves TLS (cert_dir/ingest)")
    mtls: bool = Field(
        False, description="routing, memory, provider and metrics serve TLS and accept only clients "
        "with a certificate of the mesh CA; every mesh call presents cert_dir/<service>")
    cert_dir: Path = Field(
        Path("certs"), description="one directory per identity: <service>/ and client/ (the CLI), "
        "each with tls.crt, tls.key, ca.crt (cert-manager's names); re-read when they change")
    mesh_token: SecretStr = Field(
        SecretStr(""), description="when set, internal services refuse calls without it "
        "(x-clawmesh-mesh-token); the mesh identity when TLS is off")
    mesh_token_file: Path | None = Field(None, description="the mesh token read from this file instead")
    health_port: int | None = Field(
        None, ge=0, le=65535, description="with TLS on: a plaintext port serving only grpc.health.v1 "
        "(Kubernetes gRPC probes speak no TLS); the same in every pod; none: off")
    max_metadata_bytes: int = Field(
        8192, ge=1024, description="a call's metadata (headers) larger than this is refused "
        "(RESOURCE_EXHAUSTED) by gRPC itself")
    max_concurrent_streams: int | None = Field(
        None, ge=1, description="calls open at once per connection (HTTP/2); a client's extra calls "
        "wait on its side; none: gRPC's default (no limit)")

    @model_validator(mode="after")
    def _keys_match_auth(self) -> SecuritySettings:
        has_keys = bool(self.api_keys) or self.api_keys_file is not None
        if self.auth == "api_key" and not has_keys:
            raise ValueError("auth is api_key but no api_keys or api_keys_file is set")
        if self.auth == "dev" and has_keys:
            raise ValueError("api keys are set but auth is dev (no key is checked): set auth: api_key")
        if self.key_pepper.get_secret_value() and self.key_pepper_file is not None:
            raise ValueError("set key_pepper or key_pepper_file, not both")
        if self.mesh_token.get_secret_value() and self.mesh_token_file is not None:
            raise ValueError("set mesh_token or mesh_token_file, not both")
        return self


class MeshSettings(_Strict):
    """All of the mesh's settings; each service reads its own section."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    call_timeout_s: float = Field(30.0, gt=0, description="outbound call cap")
    deadline_reserve_ms: float = Field(5.0, ge=0, description="kept back per hop")
    internal_transport: Literal["stream", "unary"] = Field(
        "stream", description="mesh hops: calls multiplexed on Exchange streams, or one RPC each"
    )
    streams_per_target: int = Field(4, ge=1, description="Exchange streams kept open per target")
    stream_max_age_s: float = Field(
        60.0, gt=0, description="a stream takes no new calls after this (re-balancing)"
    )
    use_uvloop: bool = True
    breaker: BreakerSettings = BreakerSettings()
    security: SecuritySettings = SecuritySettings()
    retry: RetrySettings = RetrySettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    ingest: IngestSettings = IngestSettings()
    routing: RoutingSettings = RoutingSettings()
    provider: ProviderSettings = ProviderSettings()
    memory: MemorySettings = MemorySettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="after")
    def _streams_outlive_their_calls(self) -> MeshSettings:
        needed = self.stream_max_age_s + self.call_timeout_s
        for name in type(self).model_fields:
            section = getattr(self, name)
            if isinstance(section, ServerSettings) and section.max_connection_age_grace_s <= needed:
                raise ValueError(
                    f"{name}.max_connection_age_grace_s ({section.max_connection_age_grace_s:g}) "
                    f"must exceed stream_max_age_s + call_timeout_s ({needed:g})")
        return self

    def server(self, service: str) -> ServerSettings:
        """The server section of ``service`` (``ingest``, ``memory`` ...)."""
        section = getattr(self, service, None) if service in type(self).model_fields else None
        if not isinstance(section, ServerSettings):
            raise SettingsError(f"unknown service {service!r}")
        return section


def env_name(path: tuple) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in path)


def _env_tree(env: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                pass
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SettingsError(f"{name}: conflicts with another CLAWMESH_ variable")
        node[path[-1]] = value
    return tree


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(env: Mapping[str, str], config_file: str | Path | None = None) -> MeshSettings:
    """Build settings from a YAML file (if any) and an environment mapping."""
    path = config_file or env.get(CONFIG_ENV)
    file_tree: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"{path}: cannot read config file: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"{path}: top level must be a mapping")
        file_tree = loaded
    env_tree = _env_tree(env)
    try:
        return MeshSettings.model_validate(_merge(file_tree, env_tree))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            where = env_name(loc) if loc else "settings"
            if path and _lookup(file_tree, loc) is not None and _lookup(env_tree, loc) is None:
                where = f"{path}: {'.'.join(map(str, loc))}"
            problems.append(f"{where}: {err['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None


def _lookup(tree: dict, loc: tuple):
    node: Any = tree
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
