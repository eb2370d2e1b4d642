"""provider.backends settings: the default mock, the discriminated union, validation, build_backends,
and each backend's breaker and retries."""

import pytest

from clawmesh.services.provider.backends import MockBackend, OpenAIBackend, Turn, build_backends
from clawmesh.services.provider.core import Provider
from clawmesh.services.provider.resilience import RetryPolicy
from clawmesh.shared.breaker import BreakerConfig
from clawmesh.shared.settings import (
    MeshSettings,
    MockBackendConfig,
    OpenAIBackendConfig,
    ProviderSettings,
    RateLimitFault,
    SettingsError,
    load_settings,
)

YAML = """
provider:
  default_backend: deepseek
  backends:
    mock:
      kind: mock
      latency_s: 0.05
      seed: 7
      faults:
        - {kind: rate_limit, rate: 0.05, retry_after_s: 2}
    deepseek:
      kind: openai
      base_url: https://api.deepseek.com/v1
      model: deepseek-chat
      api_key_env: DEEPSEEK_API_KEY
      max_concurrency: 16
      stall_timeout_s: 20
"""


def test_default_is_one_mock_from_the_mock_fields():
    cfg = ProviderSettings(mock_latency_ms=250, mock_chunk_words=2)
    assert cfg.backend_configs() == {"mock": MockBackendConfig(latency_s=0.25, chunk_words=2)}
    settings = MeshSettings()
    settings.provider.mock_latency_ms = 300  # tests elsewhere change it after construction
    assert settings.provider.backend_configs()["mock"].latency_s == 0.3


async def test_the_default_mock_is_built_and_replies_as_before():
    backends = build_backends(ProviderSettings(mock_model="m-2"), env={})
    assert list(backends) == ["mock"] and isinstance(backends["mock"], MockBackend)
    gen = await backends["mock"].generate([Turn("user", "hi")], "", 0)
    assert (gen.content, gen.model) == ('mock reply 1: you said "hi"; 0 earlier turn(s)', "m-2")


async def test_yaml_backends_with_env_overrides(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(YAML)
    settings = load_settings({"CLAWMESH_PROVIDER__BACKENDS__DEEPSEEK__MODEL": "deepseek-reasoner"}, path)
    mock, deepseek = settings.provider.backends["mock"], settings.provider.backends["deepseek"]
    assert mock.faults == [RateLimitFault(rate=0.05, retry_after_s=2)] and mock.seed == 7
    assert (deepseek.model, deepseek.max_concurrency, deepseek.stall_timeout_s) == (
        "deepseek-reasoner", 16, 20)
    backends = build_backends(settings.provider, env={"DEEPSEEK_API_KEY": "sk-x"})
    try:
        assert isinstance(backends["deepseek"], OpenAIBackend) and isinstance(backends["mock"], MockBackend)
        assert backends["deepseek"].info.models == ["deepseek-reasoner"]
        assert backends["deepseek"].limits.max_concurrency == 16
    finally:
        await backends["deepseek"].aclose()


def test_unknown_kind_names_the_backend():
    with pytest.raises(SettingsError) as err:
        load_settings({"CLAWMESH_PROVIDER__BACKENDS__X__KIND": "anthropic"})
    expected = "CLAWMESH_PROVIDER__BACKENDS__X: Value error, kind must be one of 'mock', 'openai'"
    assert expected in str(err.value)


def test_errors_name_the_real_variable_or_key(tmp_path):
    with pytest.raises(SettingsError) as err:
        load_settings({"CLAWMESH_PROVIDER__DEFAULT_BACKEND": "x",
                       "CLAWMESH_PROVIDER__BACKENDS__X__KIND": "openai"})
    assert "CLAWMESH_PROVIDER__BACKENDS__X__BASE_URL: Field required" in str(err.value)
    path = tmp_path / "mesh.yaml"
    path.write_text("provider:\n  backends:\n    mock: {kind: mock, latency_s: -1}\n")
    with pytest.raises(SettingsError, match=f"{path}: provider.backends.mock.latency_s: Input should be"):
        load_settings({}, path)


def test_default_backend_must_be_configured(tmp_path):
    with pytest.raises(SettingsError, match="default_backend 'gpt' is not configured; backends: mock"):
        load_settings({"CLAWMESH_PROVIDER__DEFAULT_BACKEND": "gpt"})
    path = tmp_path / "mesh.yaml"
    path.write_text("provider:\n  backends:\n    local: {kind: openai, base_url: 'http://h/v1', model: m}\n")
    with pytest.raises(SettingsError, match="default_backend 'mock' is not configured; backends: local"):
        load_settings({}, path)
    settings = load_settings({"CLAWMESH_PROVIDER__DEFAULT_BACKEND": "local"}, path)
    assert settings.provider.default_backend == "local"


@pytest.mark.parametrize("bad", [
    {"kind": "openai", "base_url": "http://h/v1", "model": "m", "api_key": "sk-secret"},  # never the key
    {"kind": "openai", "base_url": "http://h/v1", "model": "m", "api_key_env": "sk-secret-123"},
    {"kind": "openai", "base_url": "h/v1", "model": "m"},
    {"kind": "openai", "base_url": "http://h/v1"},
    {"kind": "mock", "faults": [{"kind": "error", "rate": 0.7}, {"kind": "malformed", "rate": 0.5}]},
    {"kind": "mock", "faults": [{"kind": "explode"}]},
    {"kind": "mock", "max_concurrency": 0},
    {"model": "m"},
])
def test_strict_backend_configs(bad):
    with pytest.raises(ValueError):
        ProviderSettings(default_backend="b", backends={"b": bad})


def test_configs_can_be_built_directly():
    cfg = ProviderSettings(default_backend="o", backends={
        "o": OpenAIBackendConfig(base_url="http://127.0.0.1:8000/v1", model="qwen"),
        "m": MockBackendConfig(),
    })
    assert [c.kind for c in cfg.backend_configs().values()] == ["openai", "mock"]


BREAKER_YAML = """
provider:
  default_backend: local
  backends:
    local:
      kind: openai
      base_url: http://127.0.0.1:11434/v1
      model: llama3.2
      breaker: {preset: strict, open_timeout_s: 20}
      retry: {max_attempts: 3, backoff_base_s: 0.2}
    mock: {kind: mock}
"""


async def test_breakers_and_retries_per_backend(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(BREAKER_YAML)
    settings = load_settings({"CLAWMESH_PROVIDER__BACKENDS__MOCK__BREAKER__FAILURE_THRESHOLD": "7"}, path)
    provider = Provider.from_settings(settings.provider, env={})
    try:
        local, mock = provider.backends["local"], provider.backends["mock"]
        assert local.breaker.config == BreakerConfig.preset("strict", open_timeout_s=20.0)
        assert local.retry == RetryPolicy(max_attempts=3, backoff_base_s=0.2)
        assert mock.breaker.config == BreakerConfig.preset("fast_fail", failure_threshold=7)  # the default
        assert mock.retry == RetryPolicy(max_attempts=2)
        assert (local.breaker.name, mock.breaker.name) == ("local", "mock")
    finally:
        await provider.aclose()


@pytest.mark.parametrize("env, problem", [
    ({"PRESET": "gentle"}, "__BREAKER__PRESET: Input should be 'fast_fail', 'lenient' or 'strict'"),
    ({"WINDOW_CALLS": "5"}, "__BREAKER: Value error, invalid breaker config: minimum_calls must not exceed"),
    ({"OPEN_TIMEOUT_S": "0"}, "__BREAKER__OPEN_TIMEOUT_S: Input should be greater than 0"),
])
def test_bad_breaker_settings_name_the_variable(env, problem):
    prefix = "CLAWMESH_PROVIDER__BACKENDS__MOCK__BREAKER__"
    with pytest.raises(SettingsError) as err:
        load_settings({"CLAWMESH_PROVIDER__BACKENDS__MOCK__KIND": "mock",
                       **{prefix + k: v for k, v in env.items()}})
    assert "CLAWMESH_PROVIDER__BACKENDS__MOCK" + problem in str(err.value)


def test_retry_needs_at_least_one_attempt():
    with pytest.raises(ValueError, match="max_attempts"):
        MockBackendConfig(retry={"max_attempts": 0})
