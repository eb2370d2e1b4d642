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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    max_connection_age_s: float = Field(300.0, gt=0, description="clients re-resolve after")
    max_connection_age_grace_s: float = Field(
        120.0, gt=0,
        description="an aged connection's streams may finish within this; must exceed "
        "stream_max_age_s + call_timeout_s so an Exchange stream is never cut mid-call",
    )
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)

    def target(self) -> str:
        return self.address or f"{self.host}:{self.port}"


class IngestSettings(ServerSettings):
    port: int = 50051
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


class ProviderSettings(ServerSettings):
    port: int = 50053
    default_backend: str = "mock"
    mock_model: str = "mock-1"
    mock_latency_ms: float = Field(0.0, ge=0, description="added per mock generation")
    mock_chunk_words: int = Field(3, ge=1, description="words per streamed mock chunk")


class MemorySettings(ServerSettings):
    """The memory service; its tenant fallback is ``ingest.default_tenant``."""

    port: int = 50054
    data_dir: Path = Path("data")
    max_messages_per_session: int = Field(
        200, ge=1, description="window: older messages of a session are dropped"
    )
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


class MetricsSettings(ServerSettings):
    port: int = 50055


class TelemetrySettings(_Strict):
    enabled: bool = True
    export_interval_s: float = Field(5.0, gt=0)
    export_timeout_s: float = Field(2.0, gt=0)


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
