"""The rules file: strict validation naming file and key, matching, Explain, reload."""

import os
import subprocess
import sys

import pytest

from clawmesh.common.v1 import common_pb2
from clawmesh.routing.v1 import routing_pb2
from clawmesh.services.routing.rules import RulesError, load_rules, parse_rules
from clawmesh.shared.settings import MockBackendConfig, RoutingSettings
from tests.conftest import ROOT
from tests.services.routing.conftest import routing_mesh

CFG = RoutingSettings()
BACKENDS = {"a", "b", "mock"}
TOOLS = {"calculator", "current_time", "search_history"}

RULES = """
routes:
  - name: vip
    match: {tenant: [acme, "big-*"], priority: [critical, high]}
    primary: [{backend: a}]
    fallbacks: [{backend: b, model: small}]
  - name: long
    match: {channel: "discord:*", min_chars: 100}
    primary: [{backend: b}]
    system_prompt: "Summarise."
    token_budget: 500
  - name: sums
    match: {pattern: "(?i)\\\\bcalculate\\\\b", max_chars: 50}
    primary: [{backend: mock}]
    agent: maths
agents:
  maths: {tools: [calculator]}
default: {primary: [{backend: mock}], fallbacks: [{backend: a}]}
"""


def message(content="hi", tenant="acme", channel="telegram", priority=common_pb2.PRIORITY_NORMAL):
    return common_pb2.InboundMessage(tenant=tenant, channel=channel, sender="u", session_id="s",
                                     content=content, priority=priority)


@pytest.fixture
def rules():
    return parse_rules(RULES, "rules.yaml", CFG, BACKENDS, TOOLS)


@pytest.mark.parametrize("msg, route, because", [
    (message(priority=common_pb2.PRIORITY_HIGH), "vip",
     "tenant 'acme' matches ['acme', 'big-*']; priority high"),
    (message(tenant="big-co", priority=common_pb2.PRIORITY_CRITICAL), "vip", "tenant 'big-co'"),
    (message(), "default", "no rule matched"),  # acme at normal priority
    (message("x" * 100, channel="discord:42"), "long", "content 100 chars in [100, ∞]"),
    (message("x" * 99, channel="discord:42"), "default", "no rule matched"),
    (message("please CALCULATE 2+2"), "sums", "pattern '(?i)\\\\bcalculate\\\\b' found"),
    (message("calculate " + "x" * 50), "default", "no rule matched"),  # longer than max_chars
])
def test_the_first_route_whose_conditions_all_hold_takes_the_message(rules, msg, route, because):
    chosen, why = rules.select(msg, msg.tenant)
    assert chosen.name == route and because in why, why


def test_targets_inherit_the_routes_prompt_and_budget_and_the_agent_is_resolved(rules):
    long = rules.routes[1]
    assert (long.primary[0].system_prompt, long.primary[0].token_budget) == ("Summarise.", 500)
    assert rules.routes[2].agent.tools == ["calculator"] and rules.routes[2].agent.max_iterations == 5
    assert [t.key for t in rules.default.targets] == ["mock", "a"]
    assert rules.routes[0].fallbacks[0].key == "b/small"


@pytest.mark.parametrize("text, problem", [
    ("routes: [{name: r, primary: [{backend: a}], colour: red}]",
     "rules.yaml: routes.0.colour: Extra inputs"),
    ("routes: [{name: r, primary: []}]", "rules.yaml: routes.0.primary: List should have at least 1 item"),
    ("routes: [{name: r, match: {pattern: '(unclosed'}, primary: [{backend: a}]}]",
     "rules.yaml: routes.0.match.pattern: Value error, not a valid regular expression"),
    ("routes: [{name: r, match: {min_chars: 9, max_chars: 3}, primary: [{backend: a}]}]",
     "rules.yaml: routes.0.match: Value error, min_chars (9) is above max_chars (3)"),
    ("routes: [{name: r, match: {priority: urgent}, primary: [{backend: a}]}]",
     "rules.yaml: routes.0.match.priority.0: Input should be 'critical'"),
    ("routes: [{name: r, primary: [{backend: a}], balance: random}]", "rules.yaml: routes.0.balance:"),
    ("routes: [{name: r, primary: [{backend: nope}]}]",
     "rules.yaml: routes.0.primary.0.backend: backend 'nope' is not configured "
     "(provider.backends: a, b, mock)"),
    ("default: {primary: [{backend: a}], fallbacks: [{backend: zz}]}",
     "rules.yaml: default.fallbacks.0.backend: backend 'zz' is not configured"),
    ("routes: [{name: r, primary: [{backend: a}], agent: ghost}]",
     "rules.yaml: routes.0.agent: unknown agent 'ghost'; defined: (none)"),
    ("agents: {x: {tools: [calculator, shell]}}", "rules.yaml: agents.x.tools.1: unknown tool 'shell'"),
    ("agents: {x: {tools: [calculator], max_iterations: 50}}",
     "rules.yaml: agents.x.max_iterations: Input should be less than or equal to 10"),
    ("routes: [{name: r, primary: [{backend: a}]}, {name: r, primary: [{backend: b}]}]",
     "rules.yaml: routes.1.name: 'r' is the name of an earlier route"),
    ("routes: [{name: r, primary: [{backend: a}], fallbacks: [{backend: a}]}]",
     "rules.yaml: routes.0.fallbacks.0: a is already in the route's chain"),
    ("default: {match: {tenant: x}, primary: [{backend: a}]}", "rules.yaml: default.match: Extra inputs"),
    ("health: {cooldown_s: 0}", "rules.yaml: health.cooldown_s: Input should be greater than 0"),
    ("- just a list", "rules.yaml: top level must be a mapping"),
    ("routes: [", "rules.yaml: not valid YAML"),
])
def test_bad_rules_are_rejected_naming_the_file_and_the_key(text, problem):
    with pytest.raises(RulesError) as err:
        parse_rules(text, "rules.yaml", CFG, BACKENDS, TOOLS)
    assert problem in str(err.value), str(err.value)


def test_every_problem_is_listed_and_a_missing_file_is_named(tmp_path):
    text = "routes: [{name: r, primary: [{backend: nope}], agent: ghost}]"
    with pytest.raises(RulesError) as err:
        parse_rules(text, "r.yaml", CFG, BACKENDS, TOOLS)
    assert "r.yaml: routes.0.agent" in str(err.value)
    assert "r.yaml: routes.0.primary.0.backend" in str(err.value)
    with pytest.raises(RulesError, match="missing.yaml: cannot read routing rules"):
        load_rules(tmp_path / "missing.yaml", CFG)


def test_config_check_validates_the_rules_file(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("routes: [{name: r, match: {channel: web}, primary: [{backend: mock}]}]\n")
    bad.write_text("routes: [{name: r, primary: [{backend: openai}]}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWMESH_")}
    done = {}
    for path in (good, bad):
        done[path] = subprocess.run([sys.executable, "-m", "clawmesh.launcher.cli", "config", "check"],
                                    cwd=ROOT, env={**env, "CLAWMESH_ROUTING__RULES_FILE": str(path)},
                                    capture_output=True, text=True, timeout=60)
    assert done[good].returncode == 0 and f"settings OK; rules {good} OK" in done[good].stdout, done[good]
    assert done[bad].returncode == 2, done[bad]
    assert f"{bad}: routes.0.primary.0.backend: backend 'openai' is not configured" in done[bad].stderr


async def test_explain_shows_the_decision_and_reload_replaces_the_rules(settings, tmp_path):
    backends = {"mock": MockBackendConfig(), "a": MockBackendConfig(model="a-1")}
    rules = ("routes: [{name: web, match: {channel: test}, primary: [{backend: a}],"
             " fallbacks: [{backend: mock}]}]")
    async with routing_mesh(settings, tmp_path, rules, backends) as mesh:
        route = await mesh.explain("hello")
        assert (route.route_name, route.backend, list(route.fallback_backends)) == ("web", "a", ["mock"])
        assert "rule 'web' matched: channel 'test' matches ['test']" in route.reason
        assert "new session: home will be a" in route.reason
        assert [(t.backend, t.primary, t.available, t.note) for t in route.targets] == [
            ("a", True, True, "primary"), ("mock", False, True, "fallback")]
        assert route.affinity.status == routing_pb2.AFFINITY_STATUS_NEW and route.balance == "first"
        await mesh.dispatch("hello")
        route = await mesh.explain("hello")  # Explain itself changes nothing; the dispatch pinned s1
        assert (route.affinity.status, route.affinity.home) == (routing_pb2.AFFINITY_STATUS_HELD, "a")
        assert route.targets[0].latency_ewma_ms > 0

        path = settings.routing.rules_file
        path.write_text("routes: [{name: web, primary: [{backend: nowhere}]}]")
        await mesh.server.reload()  # what SIGHUP runs: a bad file keeps the running rules
        assert (await mesh.explain("hello")).route_name == "web"
        path.write_text("default: {primary: [{backend: mock}], system_prompt: Be brief.}")
        await mesh.server.reload()
        route = await mesh.explain("hello")
        assert (route.route_name, route.backend) == ("default", "mock")
        assert route.reason == "no rule matched: the default route"
        assert route.targets[0].system_prompt == "Be brief."
        reply = await mesh.dispatch("again")
        assert reply.reply.backend == "mock" and reply.route.route_name == "default"
