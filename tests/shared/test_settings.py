import pytest

from clawmesh.shared.settings import MeshSettings, SettingsError, load_settings


def test_defaults_need_no_configuration():
    s = load_settings({})
    assert s.ingest.port == 50051 and s.metrics.port == 50055
    assert s.ingest.max_content_bytes == 32 * 1024 and s.ingest.max_id_chars == 256
    assert s.memory.target() == "127.0.0.1:50054"


def test_env_sets_nested_values_and_ignores_other_variables():
    s = load_settings({
        "CLAWMESH_INGEST__PORT": "6000",
        "CLAWMESH_PROVIDER__MOCK_LATENCY_MS": "12.5",
        "CLAWMESH_MEMORY__ADDRESS": "dns:///memory:50054",
        "HOME": "/root",
    })
    assert s.ingest.port == 6000
    assert s.provider.mock_latency_ms == 12.5
    assert s.memory.target() == "dns:///memory:50054"


def test_bad_values_fail_fast_naming_each_variable():
    with pytest.raises(SettingsError) as err:
        load_settings({"CLAWMESH_INGEST__PORT": "abc", "CLAWMESH_ROUTING__NOPE": "1"})
    text = str(err.value)
    assert "CLAWMESH_INGEST__PORT" in text and "CLAWMESH_ROUTING__NOPE" in text


def test_yaml_file_then_env_override(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text("ingest:\n  port: 7000\n  max_content_bytes: 100\nlog_level: DEBUG\n")
    s = load_settings({"CLAWMESH_CONFIG": str(path), "CLAWMESH_INGEST__PORT": "7001"})
    assert s.ingest.port == 7001
    assert s.ingest.max_content_bytes == 100
    assert s.log_level == "DEBUG"


def test_yaml_unknown_key_is_an_error_prefixed_with_the_file(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text("ingest:\n  prot: 7000\n")
    with pytest.raises(SettingsError) as err:
        load_settings({}, path)
    assert f"{path}: ingest.prot" in str(err.value)


def test_unreadable_yaml_names_the_file(tmp_path):
    with pytest.raises(SettingsError, match="missing.yaml"):
        load_settings({}, tmp_path / "missing.yaml")


def test_json_values_in_env_are_parsed():
    s = load_settings({"CLAWMESH_TELEMETRY": '{"enabled": false}'})
    assert s.telemetry.enabled is False


def test_server_lookup_rejects_unknown_service():
    with pytest.raises(SettingsError, match="unknown service"):
        MeshSettings().server("gateway")


def test_streams_must_end_before_an_aged_connection_is_cut():
    with pytest.raises(SettingsError, match=r"ingest.max_connection_age_grace_s \(120\) must exceed"):
        load_settings({"CLAWMESH_STREAM_MAX_AGE_S": "200"})
    ok = load_settings({"CLAWMESH_STREAM_MAX_AGE_S": "200", "CLAWMESH_CALL_TIMEOUT_S": "10",
                        **{f"CLAWMESH_{s}__MAX_CONNECTION_AGE_GRACE_S": "300"
                           for s in ("INGEST", "ROUTING", "PROVIDER", "MEMORY", "METRICS")}})
    assert ok.stream_max_age_s == 200


def test_transport_setting_is_checked():
    assert load_settings({}).internal_transport == "stream"
    with pytest.raises(SettingsError, match="CLAWMESH_INTERNAL_TRANSPORT"):
        load_settings({"CLAWMESH_INTERNAL_TRANSPORT": "carrier-pigeon"})
