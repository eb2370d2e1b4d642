"""README's OpenAI / Ollama / vLLM settings snippets work: each, with its base_url pointed at the
HTTP stand-in, answers a message through real provider and routing servers."""

import grpc
import pytest
import yaml

from clawmesh.routing.v1 import routing_pb2, routing_pb2_grpc
from clawmesh.shared.settings import load_settings
from tests.conftest import ROOT
from tests.inproc import inproc_mesh
from tests.openai_standin import OpenAIStandin, Reply
from tests.readme_blocks import fenced_blocks
from tests.services.routing.conftest import TENANT, inbound

README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("## Routing, failover and agents"):README.index("## When a hop fails")]
SNIPPETS = [yaml.safe_load(b.text) for b in fenced_blocks(SECTION) if b.lang == "yaml"
            and "backends" in (yaml.safe_load(b.text).get("provider") or {})]


def test_the_readme_has_a_snippet_for_each_server():
    urls = {name: cfg["base_url"] for tree in SNIPPETS for name, cfg in tree["provider"]["backends"].items()}
    assert urls == {"openai": "https://api.openai.com/v1", "ollama": "http://127.0.0.1:11434/v1",
                    "vllm": "http://127.0.0.1:8000/v1"}


@pytest.mark.parametrize("tree", SNIPPETS, ids=lambda t: t["provider"]["default_backend"])
async def test_a_readme_backend_snippet_answers_through_the_mesh(tree, tmp_path, monkeypatch):
    async with OpenAIStandin() as api:
        [(name, backend)] = tree["provider"]["backends"].items()
        backend["base_url"] = api.url  # the one change: where the server is
        config = tmp_path / "clawmesh.yaml"
        config.write_text(yaml.safe_dump(tree))
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the provider reads api_key_env's variable
        env = {f"CLAWMESH_{svc.upper()}__PORT": "0" for svc in ("memory", "provider", "routing")}
        settings = load_settings({**env, "CLAWMESH_MEMORY__DATA_DIR": str(tmp_path / "data"),
                                  "CLAWMESH_TELEMETRY__ENABLED": "false"}, config)
        settings.use_uvloop = False
        api.script(Reply(f"hello from {name}"))
        async with inproc_mesh(settings, services=("memory", "provider", "routing")) as servers:
            async with grpc.aio.insecure_channel(servers["routing"].address) as channel:
                routing = routing_pb2_grpc.RoutingServiceStub(channel)
                response = await routing.Dispatch(routing_pb2.DispatchRequest(message=inbound("hi")),
                                                  metadata=TENANT, timeout=10)
        assert (response.reply.content, response.reply.backend) == (f"hello from {name}", name)
        [request] = api.requests
        assert request.body["model"] == backend["model"]
        expected = "Bearer sk-test" if "api_key_env" in backend else None
        assert request.headers.get("authorization") == expected
