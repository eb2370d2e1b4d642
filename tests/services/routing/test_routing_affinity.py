"""Session affinity and balance: unit-level on a fake clock, then through real servers.

Routing's health and pins run on a FakeClock; the provider's breaker on real time (short).
"""

import asyncio
import collections
import random

from clawmesh.routing.v1 import routing_pb2
from clawmesh.services.routing.rules import parse_rules
from clawmesh.services.routing.selection import (
    HELD,
    MOVED,
    NEW,
    RETURNING,
    AffinityPins,
    BackendHealth,
    make_plan,
)
from clawmesh.shared.settings import RoutingSettings
from tests.fakes import FakeClock
from tests.openai_standin import Reply, Status
from tests.services.routing.conftest import openai, routing_mesh

CFG = RoutingSettings()


def route_of(text: str):
    rules = parse_rules(text, "rules.yaml", CFG)
    return rules.routes[0]


def order(plan) -> list[str]:
    return [c.target.key for c in plan.chain]


def test_weighted_choice_follows_the_weights_and_keeps_each_session_on_one_target():
    route = route_of("""
routes:
  - name: w
    primary: [{backend: a, weight: 3}, {backend: b, weight: 1}]
    balance: weighted
""")
    health, pins, rng = BackendHealth(FakeClock()), AffinityPins(), random.Random(1)
    picks = collections.Counter(make_plan(route, ("t", f"s{i}"), health, pins, rng).chain[0].target.backend
                                for i in range(4000))
    assert 2850 < picks["a"] < 3150, picks  # 3:1
    for i in range(20):  # the same session always gets the same pick (every replica computes it alike)
        assert len({tuple(order(make_plan(route, ("t", f"s{i}"), health, pins, rng))) for _ in range(3)}) == 1


def test_weighted_choice_without_affinity_is_drawn_per_message():
    route = route_of("""
routes:
  - name: w
    primary: [{backend: a, weight: 1}, {backend: b, weight: 1}]
    balance: weighted
    affinity: {enabled: false}
""")
    health, pins, rng = BackendHealth(FakeClock()), AffinityPins(), random.Random(7)
    picks = collections.Counter(make_plan(route, ("t", "one"), health, pins, rng).chain[0].target.backend
                                for _ in range(1000))
    assert 420 < picks["a"] < 580, picks


def test_least_latency_measures_new_backends_first_then_prefers_the_fastest():
    route = route_of("""
routes:
  - name: fast
    primary: [{backend: a}, {backend: b}, {backend: c}]
    balance: least_latency
    affinity: {enabled: false}
    fallbacks: [{backend: d}]
""")
    health, pins, rng = BackendHealth(FakeClock(), alpha=0.5), AffinityPins(), random.Random()
    health.succeeded("a", 0.300)
    health.succeeded("b", 0.100)
    assert order(make_plan(route, ("t", "s"), health, pins, rng)) == ["c", "b", "a", "d"]  # c: not measured
    health.succeeded("c", 0.500)
    health.succeeded("b", 0.700)  # EWMA: 100 -> 400 ms
    plan = make_plan(route, ("t", "s"), health, pins, rng)
    assert order(plan) == ["a", "b", "c", "d"]
    assert "least latency a (300 ms)" in plan.reason and plan.chain[0].latency_ms == 300


def test_a_failed_backend_is_set_aside_for_its_retry_time_or_the_cooldown():
    route = route_of("routes: [{name: r, primary: [{backend: a}], fallbacks: [{backend: b}]}]")
    clock = FakeClock()
    health, pins = BackendHealth(clock, cooldown_s=5), AffinityPins(clock=clock)
    health.failed("a", 2.0, "UNAVAILABLE: breaker open")
    plan = make_plan(route, ("t", "s"), health, pins, random.Random())
    assert order(plan) == ["b", "a"] and not plan.chain[1].available and plan.chain[1].retry_in_s == 2.0
    clock.advance(2.0)
    assert order(make_plan(route, ("t", "s"), health, pins, random.Random())) == ["a", "b"]
    health.failed("a", None, "UNAVAILABLE: 500")  # no RetryInfo: the cooldown
    assert health.retry_in("a") == 5.0 and health.healthy_for("a") == -1


def test_affinity_holds_moves_and_returns_after_home_is_healthy_for_return_after_s():
    route = route_of("""
routes:
  - name: r
    primary: [{backend: a}]
    fallbacks: [{backend: b}]
    affinity: {return_after_s: 30}
""")
    clock = FakeClock()
    health, pins, rng = BackendHealth(clock, cooldown_s=5), AffinityPins(clock=clock), random.Random()
    session = ("t", "s")

    def plan():
        return make_plan(route, session, health, pins, rng)

    first = plan()
    assert first.affinity.status == NEW and first.affinity.home == "a"
    pins.record(session, first, first.chain[0].target)
    assert (plan().affinity.status, order(plan())) == (HELD, ["a", "b"])
    health.failed("a", None, "UNAVAILABLE")  # a fails: b answers, the session moves
    moved = plan()
    assert (moved.affinity.status, order(moved)) == (MOVED, ["b", "a"])
    pins.record(session, moved, moved.chain[0].target)
    clock.advance(5 + 29)  # a usable again after 5 s, healthy for 29 s: not yet
    assert (plan().affinity.status, order(plan())) == (MOVED, ["b", "a"])
    assert "healthy for 29.0s of 30s" in plan().reason
    clock.advance(1)
    back = plan()
    assert (back.affinity.status, order(back)) == (RETURNING, ["a", "b"])
    pins.record(session, back, back.chain[0].target)
    assert plan().affinity.status == HELD


async def test_affinity_through_the_provider_moves_on_an_open_breaker_and_returns_after_recovery(
        settings, tmp_path, api_a, api_b):
    rules = """
routes:
  - name: sticky
    primary: [{backend: a}]
    fallbacks: [{backend: b}]
    affinity: {return_after_s: 30}
health: {cooldown_s: 5}
"""
    clock = FakeClock()
    breaker = {"failure_threshold": 1, "open_timeout_s": 1.0}
    backends = {"a": openai(api_a, breaker=breaker), "b": openai(api_b)}
    async with routing_mesh(settings, tmp_path, rules, backends, clock=clock) as mesh:
        api_a.script(Reply("a1"), Reply("a2"), Reply("a3"))
        for session in ("s1", "s1", "s2"):  # both sessions live on a
            assert (await mesh.dispatch("hi", session)).reply.backend == "a"
        assert (await mesh.explain("x", "s1")).affinity.status == routing_pb2.AFFINITY_STATUS_HELD

        api_a.script(Status(500))  # a fails and its breaker (threshold 1) opens in the provider
        api_b.script(Reply("b1"), Reply("b2"), Reply("b3"), Reply("b4"))
        assert (await mesh.dispatch("one", "s1")).reply.backend == "b"
        route = await mesh.explain("x", "s1")
        assert (route.affinity.status, route.affinity.home, route.affinity.current) == (
            routing_pb2.AFFINITY_STATUS_MOVED, "a", "b")
        assert [t.backend for t in route.targets] == ["b", "a"]

        clock.advance(6)  # routing's cooldown is over: s2, still at home on a, tries a
        moved = await mesh.dispatch("two", "s2")  # the provider's open breaker refuses: s2 moves
        assert moved.reply.backend == "b" and "circuit breaker" in moved.failovers[0].message
        assert len(api_a.requests) == 4  # the refused call never reached the backend
        assert (await mesh.dispatch("three", "s1")).reply.backend == "b"  # s1 stays moved

        await asyncio.sleep(1.1)  # the provider's breaker may probe now
        clock.advance(20)  # home healthy for ~20 s: not long enough
        route = await mesh.explain("x", "s1")
        assert route.affinity.status == routing_pb2.AFFINITY_STATUS_MOVED and route.targets[0].backend == "b"
        assert 15 < route.affinity.home_healthy_for_s < 30
        assert (await mesh.dispatch("four", "s1")).reply.backend == "b"

        clock.advance(15)  # healthy for more than 30 s: back home (the probe closes the breaker)
        api_a.script(Reply("a again"), Reply("a for s2"))
        route = await mesh.explain("x", "s1")
        assert route.affinity.status == routing_pb2.AFFINITY_STATUS_RETURNING
        assert (await mesh.dispatch("five", "s1")).reply.content == "a again"
        assert (await mesh.explain("x", "s1")).affinity.status == routing_pb2.AFFINITY_STATUS_HELD
        assert (await mesh.dispatch("six", "s2")).reply.content == "a for s2"


def test_a_pin_to_a_target_that_left_the_route_is_ignored():
    clock = FakeClock()
    health, pins, rng = BackendHealth(clock), AffinityPins(clock=clock), random.Random()
    old = route_of("routes: [{name: r, primary: [{backend: a}], fallbacks: [{backend: b}]}]")
    plan = make_plan(old, ("t", "s"), health, pins, rng)
    pins.record(("t", "s"), plan, plan.chain[1].target)  # pinned: home a, on b
    # After a reload the route of that name has other targets: the session starts afresh.
    new = route_of("routes: [{name: r, primary: [{backend: c}], fallbacks: [{backend: d}]}]")
    assert make_plan(new, ("t", "s"), health, pins, rng).affinity.status == NEW
