"""Every config in loadtest/configs is valid for the real ghz and for clawmesh load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clawmesh.loadtest.config import KEYS, load_config
from clawmesh.loadtest.parallel import prepare

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "loadtest" / "configs").rglob("*.json")
                 if not p.name.endswith(".manifest.json"))
MANIFESTS = sorted((ROOT / "loadtest" / "configs").rglob("*.manifest.json"))


def test_there_is_a_config_per_service_and_scenario():
    names = {p.stem for p in CONFIGS}
    assert {"ingest-submit", "routing-dispatch", "provider-generate", "memory-gethistory",
            "metrics-getsnapshot", "a-health-check", "b-unary-submit",
            "c-streaming-submit"} <= names
    assert MANIFESTS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
async def test_config_is_ghz_valid(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    raw = json.loads(path.read_text())
    assert set(raw) <= set(KEYS), f"keys ghz does not know: {set(raw) - set(KEYS)}"
    assert raw["insecure"] is True and raw["host"].startswith("127.0.0.1:")
    assert raw["metadata"]["x-clawmesh-synthetic"] == "true"
    assert raw["metadata"]["x-clawmesh-tenant"]
    if "proto" in raw:
        assert (ROOT / raw["proto"]).exists() and raw["import-paths"] == ["protos"]
    else:
        assert raw["call"].startswith("grpc.health.v1.")  # resolved by reflection
    cfg = load_config(str(path.relative_to(ROOT)))
    if cfg["proto"]:
        await prepare(cfg)  # compiles the proto and encodes the data: field names exist
    if raw["call"].startswith("clawmesh.ingest.v1."):
        msg = raw["data"]["message"]
        assert all(msg[k] for k in ("session_id", "content", "channel", "sender"))
        assert msg["channel_message_id"] == "{{.UUID}}"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_manifests_list_existing_configs(path):
    entries = json.loads(path.read_text())["configs"]
    assert len(entries) >= 2
    for entry in entries:
        target = entry if isinstance(entry, str) else entry["config"]
        assert (ROOT / target) in CONFIGS
