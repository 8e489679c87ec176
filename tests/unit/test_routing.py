"""core/routing.py: SPEC Part A routing as a pure function, driven with plain data."""
from __future__ import annotations

import random
from typing import Any

import pytest

from llama_balancer.core.routing import Route, ServerView, StickyBinding, choose_route

TTL = 180.0
NOW = 10_000.0
M = "gpt-oss:20b"


def view(name: str, status: str = "idle", **kw: Any) -> ServerView:
    """A server view; ``total_inflight`` defaults to the sum of the per-instance counts."""
    inflight = kw.pop("inflight", {})
    kw.setdefault("total_inflight", sum(inflight.values()))
    return ServerView(name=name, status=status, inflight=inflight, **kw)


def route(
    views: list[ServerView],
    candidates: list[str] | None = None,
    sticky: StickyBinding | None = None,
    model: str = M,
    fallback: str = "FB",
    now: float = NOW,
) -> Route:
    by_name = {v.name: v for v in views}
    if candidates is None:
        candidates = [v.name for v in views]
    return choose_route(model, candidates, fallback, by_name, sticky, now, TTL)


def fresh(server: str, instance: str = M, age: float = 10.0) -> StickyBinding:
    return StickyBinding(server, instance, NOW - age)


# --- the walk over the listed servers -----------------------------------------------------


@pytest.mark.parametrize("candidates", [None, []])
def test_no_matching_pattern_goes_to_the_fallback_as_asked(candidates):
    views = {"FB": view("FB", "invalid"), "A": view("A")}

    assert choose_route(M, candidates, "FB", views, None, NOW, TTL) == Route("FB", M, "fallback")


def test_fallback_ignores_even_a_live_sticky_binding():
    views = {"A": view("A")}

    assert choose_route(M, None, "A", views, fresh("A"), NOW, TTL).reason == "fallback"


def test_idle_server_with_the_model_free_gets_the_model_as_asked():
    assert route([view("A"), view("B")]) == Route("A", M, "free-instance")


def test_servers_are_walked_in_listed_order_not_view_order():
    views = [view("A"), view("B")]

    assert route(views, candidates=["B", "A"]).server == "B"


def test_invalid_server_is_skipped():
    assert route([view("A", "invalid"), view("B", "busy")]) == Route("B", M, "free-instance")


def test_server_at_request_max_is_skipped():
    views = [view("A", request_max=1, inflight={M: 1}), view("B")]

    assert route(views) == Route("B", M, "free-instance")


def test_request_max_counts_every_model_on_the_server_not_just_this_one():
    # Nothing is in flight for M on A, but A is full with another model's requests.
    views = [view("A", request_max=2, inflight={"other": 1, "other-2": 1}), view("B")]

    assert route(views) == Route("B", M, "free-instance")


def test_request_max_uses_the_total_even_when_per_instance_counts_are_lower():
    views = [view("A", request_max=3, total_inflight=3, inflight={}), view("B")]

    assert route(views).server == "B"


def test_server_under_request_max_is_used():
    views = [view("A", request_max=3, inflight={"other": 2}), view("B")]

    assert route(views) == Route("A", M, "free-instance")


def test_server_whose_discovered_models_lack_the_model_is_skipped():
    views = [view("A", served=("other", "other-2")), view("B", served=(M,))]

    assert route(views) == Route("B", M, "free-instance")


def test_server_that_discovered_no_models_at_all_is_skipped():
    views = [view("A", served=()), view("B")]

    assert route(views).server == "B"


def test_undiscovered_server_is_assumed_to_serve_the_model():
    views = [view("A", "busy", served=None)]

    assert route(views) == Route("A", M, "free-instance")


def test_busy_server_with_a_free_copy_rewrites_to_that_copy():
    views = [view("A", "busy", served=(M, f"{M}-2", f"{M}-3"), inflight={M: 1})]

    assert route(views) == Route("A", f"{M}-2", "free-instance")


def test_idle_server_with_the_model_busy_but_a_copy_free_uses_the_copy():
    views = [view("A", "idle", served=(M, f"{M}-2"), inflight={M: 2})]

    assert route(views) == Route("A", f"{M}-2", "free-instance")


def test_free_copies_are_tried_in_numeric_order():
    served = (M, f"{M}-10", f"{M}-3", f"{M}-2")
    views = [view("A", "busy", served=served, inflight={M: 1, f"{M}-2": 1})]

    assert route(views).instance == f"{M}-3"


def test_server_serving_only_numbered_copies_gets_a_copy():
    views = [view("A", "busy", served=(f"{M}-2",))]

    assert route(views) == Route("A", f"{M}-2", "free-instance")


def test_idle_saturated_server_listing_only_copies_gets_its_first_copy_not_an_unserved_name():
    views = [view("A", "idle", served=(f"{M}-3", f"{M}-2"), inflight={f"{M}-2": 1, f"{M}-3": 1})]

    assert route(views) == Route("A", f"{M}-2", "idle")


def test_idle_server_with_every_instance_busy_gets_the_model_as_asked():
    views = [view("A", "idle", served=(M, f"{M}-2"), inflight={M: 1, f"{M}-2": 3}), view("B")]

    assert route(views) == Route("A", M, "idle")


def test_busy_server_with_every_instance_busy_is_passed_over_for_the_next():
    views = [
        view("A", "busy", served=(M, f"{M}-2"), inflight={M: 1, f"{M}-2": 1}),
        view("B", "busy", served=(M,)),
    ]

    assert route(views) == Route("B", M, "free-instance")


def test_busy_full_server_is_passed_over_for_an_idle_one_further_down():
    views = [view("A", "busy", inflight={M: 1}), view("B", "invalid"), view("C", "idle", inflight={M: 4})]

    assert route(views) == Route("C", M, "idle")


def test_in_flight_for_other_models_does_not_make_this_model_busy():
    views = [view("A", "busy", inflight={"other": 5})]

    assert route(views) == Route("A", M, "free-instance")


def test_nothing_suitable_goes_to_the_first_listed_server_as_asked():
    views = [
        view("A", "invalid"),
        view("B", "busy", inflight={M: 1}),
        view("C", request_max=1, inflight={M: 1}),
        view("D", served=("other",)),
    ]

    assert route(views) == Route("A", M, "last-resort")


def test_last_resort_is_the_first_listed_server_even_when_it_is_invalid():
    views = [view("A", "invalid"), view("B", "invalid")]

    assert route(views, candidates=["B", "A"]) == Route("B", M, "last-resort")


def test_the_fallback_server_is_not_used_for_a_matched_model():
    views = [view("A", "invalid"), view("FB")]

    assert route(views, candidates=["A"], fallback="FB") == Route("A", M, "last-resort")


# --- sticky -------------------------------------------------------------------------------


def test_live_sticky_binding_is_used_over_the_first_free_server():
    views = [view("A"), view("B", "busy", served=(M, f"{M}-2"))]

    assert route(views, sticky=fresh("B", f"{M}-2")) == Route("B", f"{M}-2", "sticky")


def test_sticky_is_used_even_when_its_instance_is_busy():
    views = [view("A"), view("B", "busy", served=(M,), inflight={M: 3})]

    assert route(views, sticky=fresh("B")) == Route("B", M, "sticky")


def test_sticky_is_used_on_an_undiscovered_server():
    views = [view("A"), view("B", "busy", served=None)]

    assert route(views, sticky=fresh("B", f"{M}-2")) == Route("B", f"{M}-2", "sticky")


def test_sticky_at_exactly_the_ttl_is_still_fresh():
    views = [view("A"), view("B")]

    assert route(views, sticky=fresh("B", age=TTL)).reason == "sticky"


def test_sticky_older_than_the_ttl_is_ignored():
    views = [view("A"), view("B")]

    assert route(views, sticky=fresh("B", age=TTL + 0.001)) == Route("A", M, "free-instance")


def test_sticky_to_an_invalid_server_is_ignored():
    views = [view("A"), view("B", "invalid")]

    assert route(views, sticky=fresh("B")) == Route("A", M, "free-instance")


def test_sticky_to_a_server_at_request_max_is_ignored():
    views = [view("A"), view("B", request_max=2, inflight={"other": 2})]

    assert route(views, sticky=fresh("B")) == Route("A", M, "free-instance")


def test_sticky_to_an_instance_no_longer_served_is_ignored():
    views = [view("A", "busy", served=(M,), inflight={M: 1}), view("B", served=(M,))]

    assert route(views, sticky=fresh("B", f"{M}-2")) == Route("B", M, "free-instance")


def test_sticky_to_a_server_no_longer_among_the_candidates_is_ignored():
    views = [view("A"), view("B")]

    assert route(views, candidates=["A"], sticky=fresh("B")) == Route("A", M, "free-instance")


def test_sticky_to_a_busy_server_under_request_max_is_kept():
    views = [view("A"), view("B", "busy", request_max=2, inflight={M: 1})]

    assert route(views, sticky=fresh("B")) == Route("B", M, "sticky")


# --- a table of whole snapshots -----------------------------------------------------------

TABLE: list[tuple[str, list[ServerView], StickyBinding | None, Route]] = [
    (
        "two idle servers, first wins",
        [view("A"), view("B")],
        None,
        Route("A", M, "free-instance"),
    ),
    (
        "first invalid, second busy with copy free",
        [view("A", "invalid"), view("B", "busy", served=(M, f"{M}-2"), inflight={M: 1})],
        None,
        Route("B", f"{M}-2", "free-instance"),
    ),
    (
        "first full, second lacks model, third idle and saturated",
        [
            view("A", request_max=1, inflight={"x": 1}),
            view("B", served=("x",)),
            view("C", served=(M,), inflight={M: 9}),
        ],
        None,
        Route("C", M, "idle"),
    ),
    (
        "everything saturated and busy",
        [view("A", "busy", inflight={M: 1}), view("B", "busy", inflight={M: 1})],
        None,
        Route("A", M, "last-resort"),
    ),
    (
        "expired sticky on the second, first free",
        [view("A"), view("B")],
        StickyBinding("B", M, NOW - 1000),
        Route("A", M, "free-instance"),
    ),
    (
        "sticky on a copy of the second",
        [view("A"), view("B", served=(M, f"{M}-2"), inflight={f"{M}-2": 1})],
        fresh("B", f"{M}-2"),
        Route("B", f"{M}-2", "sticky"),
    ),
    (
        "sticky on a server without request-max set is never full",
        [view("A"), view("B", "busy", inflight={M: 50})],
        fresh("B"),
        Route("B", M, "sticky"),
    ),
]


@pytest.mark.parametrize(("views", "sticky", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_routing_table(views, sticky, expected):
    assert route(views, sticky=sticky) == expected


def test_server_view_full_only_with_a_request_max():
    assert not view("A", total_inflight=1000).full
    assert not view("A", request_max=2, total_inflight=1).full
    assert view("A", request_max=2, total_inflight=2).full
    assert view("A", request_max=2, total_inflight=3).full


def test_server_view_instances_assume_the_model_when_undiscovered():
    assert view("A").instances(M) == [M]
    assert view("A", served=(f"{M}-2", M)).instances(M) == [M, f"{M}-2"]
    assert view("A", served=("x",)).instances(M) == []


# --- property-style: random snapshots, precise invariants -----------------------------------


def _usable(v: ServerView, model: str) -> bool:
    """Usable by the walk: not invalid, not full, serves the model, free instance or idle."""
    if v.status == "invalid" or v.full:
        return False
    instances = v.instances(model)
    if not instances:
        return False
    return v.status == "idle" or any(v.inflight.get(i, 0) == 0 for i in instances)


def _sticky_live(s: StickyBinding | None, candidates: list[str], views: dict[str, ServerView], now: float) -> bool:
    if s is None or now - s.updated_at > TTL or s.server not in candidates:
        return False
    v = views[s.server]
    return v.status != "invalid" and not v.full and (v.served is None or s.instance in v.served)


def _random_snapshot(rng: random.Random):
    names = [f"S{i}" for i in range(rng.randint(1, 5))]
    all_instances = [M, f"{M}-2", f"{M}-3", f"{M}-10"]
    views: dict[str, ServerView] = {}
    for name in names:
        if rng.random() < 0.2:
            served = None
        else:
            served = tuple(rng.sample(all_instances + ["other", "other-2"], rng.randint(0, 5)))
        known = list(served) if served is not None else [M]
        inflight = {inst: rng.choice([0, 0, 1, 2]) for inst in known if rng.random() < 0.7}
        inflight = {k: n for k, n in inflight.items() if n}
        extra = rng.choice([0, 0, 1, 3])  # requests of models this server no longer lists
        total = sum(inflight.values()) + extra
        views[name] = ServerView(
            name=name,
            status=rng.choice(["idle", "busy", "invalid"]),
            total_inflight=total,
            request_max=rng.choice([None, None, 1, 2, 4]),
            served=served,
            inflight=inflight,
        )
    candidates = rng.sample(names, rng.randint(0, len(names)))
    sticky = None
    if rng.random() < 0.5:
        sticky = StickyBinding(
            rng.choice(names),
            rng.choice(all_instances),
            NOW - rng.choice([0.0, 60.0, TTL, TTL + 1, 1000.0]),
        )
    return candidates, views, sticky


def test_random_snapshots_respect_the_spec_invariants():
    rng = random.Random(20261127)
    reasons_seen: set[str] = set()
    for case in range(600):
        candidates, views, sticky = _random_snapshot(rng)
        decision = choose_route(M, candidates, "FB", views, sticky, NOW, TTL)
        reasons_seen.add(decision.reason)
        context = f"case {case}: {candidates} {views} {sticky} -> {decision}"

        if not candidates:
            assert decision == Route("FB", M, "fallback"), context
            continue
        assert decision.server in candidates, context
        chosen = views[decision.server]

        if _sticky_live(sticky, candidates, views, NOW):
            assert decision == Route(sticky.server, sticky.instance, "sticky"), context
            continue
        assert decision.reason != "sticky", context

        usable = [name for name in candidates if _usable(views[name], M)]
        if usable:
            # The walk stops at the first usable server in listed order, never at last resort.
            assert decision.reason in ("free-instance", "idle"), context
            assert decision.server == usable[0], context
            assert chosen.status != "invalid" and not chosen.full, context
            assert decision.instance in chosen.instances(M), context
            if decision.reason == "free-instance":
                assert chosen.inflight.get(decision.instance, 0) == 0, context
                earlier = chosen.instances(M)[: chosen.instances(M).index(decision.instance)]
                assert all(chosen.inflight.get(i, 0) > 0 for i in earlier), context
            else:
                assert chosen.status == "idle", context
                assert decision.instance == (M if M in chosen.instances(M) else chosen.instances(M)[0]), context
                assert all(chosen.inflight.get(i, 0) > 0 for i in chosen.instances(M)), context
        else:
            assert decision == Route(candidates[0], M, "last-resort"), context

    assert reasons_seen == {"fallback", "sticky", "free-instance", "idle", "last-resort"}


def test_choose_route_does_not_mutate_its_inputs():
    inflight = {M: 1}
    views = {"A": ServerView("A", "busy", 1, None, (M, f"{M}-2"), inflight)}
    candidates = ["A"]

    choose_route(M, candidates, "FB", views, None, NOW, TTL)

    assert inflight == {M: 1}
    assert candidates == ["A"]


def test_sticky_to_an_instance_of_another_model_is_ignored():
    # A stale binding may name a served instance that is not a copy of the model asked for.
    pc1 = view("PC1", served=(M, "other"))
    assert route([pc1], sticky=fresh("PC1", "other")) == Route("PC1", M, "free-instance")
