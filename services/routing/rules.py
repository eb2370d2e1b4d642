"""Routing rules: which route a message takes, validated strictly when loaded.

One YAML file (``routing.rules_file``; none: one route to ``routing.default_backend``), checked
by ``clawmesh config check`` and re-read by a running routing on SIGHUP. Unknown keys, bad
values, and backends, agents or tools that do not exist are errors naming the file and the
key. Routes are tried in order; the first whose every condition holds takes the message,
else ``default``. Example::

    routes:
      - name: vip
        match: {tenant: [acme], priority: [critical, high]}
        primary:                                   # equivalent first targets
          - {backend: openai, model: gpt-4o-mini, weight: 3}
          - {backend: deepseek, weight: 1}
        balance: weighted                          # first | weighted | least_latency
        fallbacks: [{backend: local, model: llama3.2, token_budget: 2000}]
        system_prompt: "You are a concise assistant."
        token_budget: 6000
        affinity: {return_after_s: 30}
        first_token_timeout_s: 8
      - name: sums
        match: {pattern: "(?i)calculate|how much", max_chars: 2000}
        primary: [{backend: openai}]
        agent: maths
    agents:
      maths: {tools: [calculator, current_time], max_iterations: 4}
    default: {primary: [{backend: openai}], fallbacks: [{backend: local}]}

    rules = load_rules("rules.yaml", settings.routing, backends={"openai", "deepseek", "local"})
    rules = check_rules(settings)          # routing.rules_file, the provider's backends, the built-in tools
    route, why = rules.select(message, tenant="acme")
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from clawmesh.common.v1 import common_pb2
from clawmesh.services.routing.tools import ToolRegistry
from clawmesh.shared.settings import MeshSettings, RoutingSettings

PRIORITY_NAMES = {
    common_pb2.PRIORITY_CRITICAL: "critical", common_pb2.PRIORITY_HIGH: "high",
    common_pb2.PRIORITY_NORMAL: "normal", common_pb2.PRIORITY_LOW: "low",
    common_pb2.PRIORITY_BACKGROUND: "background",
}
Priority = Literal["critical", "high", "normal", "low", "background"]
DEFAULT = "default"


class RulesError(ValueError):
    """The rules file is invalid; the message names the file and each bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Names = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class MatchSpec(_Strict):
    """Conditions on a message; all that are set must hold. Names are globs (``discord:*``)."""

    tenant: Annotated[Names | None, BeforeValidator(_listed)] = None
    channel: Annotated[Names | None, BeforeValidator(_listed)] = None
    sender: Annotated[Names | None, BeforeValidator(_listed)] = None
    priority: Annotated[list[Priority] | None, BeforeValidator(_listed)] = None
    min_chars: int | None = Field(None, ge=0, description="content at least this many characters")
    max_chars: int | None = Field(None, ge=0, description="content at most this many characters")
    pattern: str | None = Field(None, min_length=1, description="a regular expression found in content")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _range(self) -> MatchSpec:
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        return self


class TargetSpec(_Strict):
    """One (backend, model, system prompt, token budget) of a route's chain."""

    backend: str = Field(..., min_length=1, description="a provider backend name")
    model: str = Field("", description="empty: the backend's default model")
    system_prompt: str | None = Field(None, description="none: the route's")
    token_budget: int | None = Field(None, ge=0, description="none: the route's")
    weight: float = Field(1.0, gt=0, description="share in the weighted choice among primary targets")


class AffinitySpec(_Strict):
    """A session sticks to its target while healthy, moves when it fails, returns with hysteresis."""

    enabled: bool = True
    return_after_s: float = Field(
        30.0, ge=0, description="a moved session returns once home has been healthy this long")


def _affinity(value: Any) -> Any:
    return {"enabled": value} if isinstance(value, bool) else value


class _RouteBody(_Strict):
    primary: list[TargetSpec] = Field(..., min_length=1)
    balance: Literal["first", "weighted", "least_latency"] = "first"
    fallbacks: list[TargetSpec] = []
    system_prompt: str = ""
    token_budget: int = Field(0, ge=0, description="prompt tokens; 0: only history_limit bounds it")
    history_limit: int | None = Field(None, ge=0, description="none: routing.history_limit")
    affinity: Annotated[AffinitySpec, BeforeValidator(_affinity)] = AffinitySpec()
    first_token_timeout_s: float | None = Field(
        None, gt=0, description="a stream with no first token by then goes to the next target")
    attempt_timeout_s: float | None = Field(
        None, gt=0, description="a non-streamed call with no reply by then goes to the next target")
    agent: str | None = Field(None, min_length=1, description="an agent of the agents section")


class RouteSpec(_RouteBody):
    name: str = Field(..., min_length=1, max_length=64)
    match: MatchSpec = MatchSpec()


class DefaultRouteSpec(_RouteBody):
    name: str = Field(DEFAULT, min_length=1, max_length=64)


class AgentSpec(_Strict):
    tools: list[Annotated[str, Field(min_length=1)]] = Field(..., min_length=1)
    max_iterations: int = Field(5, ge=1, le=10, description="model calls before the loop stops")
    max_tool_calls: int = Field(
        4, ge=1, le=8, description="tool calls run per model call; more are answered with an error")
    tool_timeout_s: float = Field(5.0, gt=0, le=60)


class HealthSpec(_Strict):
    cooldown_s: float = Field(
        5.0, gt=0, description="a backend that failed without a RetryInfo is tried last this long")
    latency_alpha: float = Field(0.2, gt=0, le=1, description="weight of a new sample in the EWMA")


class RulesFile(_Strict):
    routes: list[RouteSpec] = []
    default: DefaultRouteSpec | None = None
    agents: dict[str, AgentSpec] = {}
    health: HealthSpec = HealthSpec()


@dataclass(frozen=True)
class Target:
    backend: str
    model: str
    system_prompt: str
    token_budget: int
    weight: float
    primary: bool

    @property
    def key(self) -> str:
        """``backend/model`` (``backend`` for its default model): how pins and Explain name a target."""
        return f"{self.backend}/{self.model}" if self.model else self.backend


@dataclass(frozen=True)
class Route:
    name: str
    primary: tuple[Target, ...]
    fallbacks: tuple[Target, ...]
    balance: str
    history_limit: int
    affinity: AffinitySpec
    first_token_timeout_s: float | None
    attempt_timeout_s: float | None
    agent_name: str = ""
    agent: AgentSpec | None = None
    match: MatchSpec | None = None  # None: the default route

    @property
    def targets(self) -> tuple[Target, ...]:
        return self.primary + self.fallbacks

    def why(self, message: common_pb2.InboundMessage, tenant: str) -> str | None:
        """Why the route takes ``message`` (its conditions that held), or None when it does not."""
        m = self.match
        if m is None:
            return "no route matched"
        held = []
        for key, value in (("tenant", tenant), ("channel", message.channel), ("sender", message.sender)):
            globs = getattr(m, key)
            if globs is not None:
                if not any(fnmatch.fnmatchcase(value, g) for g in globs):
                    return None
                held.append(f"{key} {value!r} matches {globs}")
        if m.priority is not None:
            priority = PRIORITY_NAMES.get(message.priority, "normal")
            if priority not in m.priority:
                return None
            held.append(f"priority {priority} in {m.priority}")
        if m.min_chars is not None or m.max_chars is not None:
            size, low = len(message.content), m.min_chars or 0
            high = len(message.content) if m.max_chars is None else m.max_chars
            if not low <= size <= high:
                return None
            held.append(f"content {size} chars in [{low}, {'∞' if m.max_chars is None else high}]")
        if m.pattern is not None:
            if re.search(m.pattern, message.content) is None:
                return None
            held.append(f"pattern {m.pattern!r} found")
        return "; ".join(held) or "matches every message"


@dataclass(frozen=True)
class Rules:
    routes: tuple[Route, ...]
    default: Route
    health: HealthSpec
    source: str = ""  # the file, "" for the settings' default route

    def select(self, message: common_pb2.InboundMessage, tenant: str) -> tuple[Route, str]:
        """The first route that takes ``message`` (else the default), and why."""
        for route in self.routes:
            why = route.why(message, tenant)
            if why is not None:
                return route, f"rule {route.name!r} matched: {why}"
        if not self.source:
            return self.default, "no routing rules configured; default backend"
        return self.default, "no rule matched: the default route"


def _targets(specs: Iterable[TargetSpec], body: _RouteBody, primary: bool) -> tuple[Target, ...]:
    return tuple(
        Target(t.backend, t.model, body.system_prompt if t.system_prompt is None else t.system_prompt,
               body.token_budget if t.token_budget is None else t.token_budget, t.weight, primary)
        for t in specs)


def _route(body: _RouteBody, name: str, match: MatchSpec | None, agents: dict[str, AgentSpec],
           history_limit: int) -> Route:
    return Route(
        name=name, primary=_targets(body.primary, body, True),
        fallbacks=_targets(body.fallbacks, body, False), balance=body.balance,
        history_limit=history_limit if body.history_limit is None else body.history_limit,
        affinity=body.affinity, first_token_timeout_s=body.first_token_timeout_s,
        attempt_timeout_s=body.attempt_timeout_s, agent_name=body.agent or "",
        agent=agents.get(body.agent) if body.agent else None, match=match,
    )


def default_rules(cfg: RoutingSettings) -> Rules:
    """No rules file: one route to ``default_backend`` / ``default_model``."""
    target = Target(cfg.default_backend, cfg.default_model, "", 0, 1.0, True)
    route = Route(DEFAULT, (target,), (), "first", cfg.history_limit, AffinitySpec(enabled=False), None, None)
    return Rules((), route, HealthSpec())


def _problems(tree: RulesFile, backends: Collection[str] | None, tools: Collection[str] | None) -> list[str]:
    """What pydantic cannot see: names that must exist elsewhere, and repeats."""
    problems = []
    bodies: list[tuple[str, _RouteBody]] = [(f"routes.{i}", r) for i, r in enumerate(tree.routes)]
    if tree.default is not None:
        bodies.append(("default", tree.default))
    seen: set[str] = set()
    for i, route in enumerate(tree.routes):
        if route.name == DEFAULT:
            problems.append(f"routes.{i}.name: {DEFAULT!r} is the default route's name")
        elif route.name in seen:
            problems.append(f"routes.{i}.name: {route.name!r} is the name of an earlier route")
        seen.add(route.name)
    for where, body in bodies:
        if body.agent and body.agent not in tree.agents:
            problems.append(f"{where}.agent: unknown agent {body.agent!r}; "
                            f"defined: {', '.join(tree.agents) or '(none)'}")
        keys: set[tuple[str, str]] = set()
        for part in ("primary", "fallbacks"):
            for j, target in enumerate(getattr(body, part)):
                if backends is not None and target.backend not in backends:
                    problems.append(f"{where}.{part}.{j}.backend: backend {target.backend!r} is not "
                                    f"configured (provider.backends: {', '.join(sorted(backends))})")
                if (target.backend, target.model) in keys:
                    name = f"{target.backend}/{target.model}" if target.model else target.backend
                    problems.append(f"{where}.{part}.{j}: {name} is already in the route's chain")
                keys.add((target.backend, target.model))
    if tools is not None:
        for name, agent in tree.agents.items():
            for j, tool in enumerate(agent.tools):
                if tool not in tools:
                    problems.append(f"agents.{name}.tools.{j}: unknown tool {tool!r}; "
                                    f"known: {', '.join(sorted(tools))}")
    return problems


def parse_rules(text: str, source: str, cfg: RoutingSettings, backends: Collection[str] | None = None,
                tools: Collection[str] | None = None) -> Rules:
    """Rules from YAML ``text`` (``source`` names it in errors). ``backends``/``tools``: the names that
    exist (None: not checked)."""
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise RulesError(f"{source}: top level must be a mapping")
    try:
        spec = RulesFile.model_validate(tree)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()]
    else:
        problems = _problems(spec, backends, tools)
    if problems:
        raise RulesError("invalid routing rules:\n  " + "\n  ".join(f"{source}: {p}" for p in problems))
    routes = tuple(_route(r, r.name, r.match, spec.agents, cfg.history_limit) for r in spec.routes)
    if spec.default is not None:
        default = _route(spec.default, spec.default.name, None, spec.agents, cfg.history_limit)
    else:
        default = default_rules(cfg).default
    return Rules(routes, default, spec.health, source)


def load_rules(path: str | Path | None, cfg: RoutingSettings, backends: Collection[str] | None = None,
               tools: Collection[str] | None = None) -> Rules:
    """The rules in ``path`` (None: ``default_rules``); RulesError names the file and each bad key."""
    if path is None:
        return default_rules(cfg)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read routing rules: {exc}") from None
    return parse_rules(text, str(path), cfg, backends, tools)


def check_rules(settings: MeshSettings, tools: Collection[str] | None = None) -> Rules:
    """The rules of ``settings.routing.rules_file``, checked against the provider's configured
    backends and ``tools`` (default: the built-in ones). What routing and ``clawmesh config check`` run."""
    cfg = settings.routing
    known_tools = ToolRegistry.builtin().names() if tools is None else tools
    backends = set(settings.provider.backend_configs())
    return load_rules(cfg.rules_file, cfg, backends=backends, tools=known_tools)
