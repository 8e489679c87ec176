"""core/placement.py's slot rules across servers and the hold for a busy slot's cache; the
state behind them: which prefixes live in more than one slot (affinity) and how long a slot
stays busy (registry)."""
from __future__ import annotations

from typing import Any

import pytest

from llama_balancer.core.config import Config, config_from_data
from llama_balancer.core.placement import Place, PlacementKnobs, Queue, Target, place
from llama_balancer.core.prefix import fingerprint
from llama_balancer.core.signals import BackendLoad, Slot, SlotsInfo
from llama_balancer.core.usage import Usage
from llama_balancer.state.affinity import AffinityStore
from llama_balancer.state.registry import Registry
from llama_balancer.state.targets import build_targets

PROMPT = 4000  # chars; meaningful from 400 (10 %), a hold needs a gain of 1000 (25 %)


def t(server: str, order: int = 0, **kw: Any) -> Target:
    return Target(server=server, instance="m", order=order, status="idle", **kw)


def chat(system: str, user: str = "hi") -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def test_the_idle_slot_holding_the_prefix_wins_over_a_server_that_only_remembers_it():
    # A saw this prompt's system prompt once (server memory), but its idle slot now holds
    # something else; B's idle slot holds it.
    remembers = t("A", 0, match_chars=3000, idle_slots=(0,), slot_match={0: 0}, slot_cached={0: 5000})
    holds = t("B", 1, load=1, idle_slots=(1,), slot_match={1: 3000}, slot_cached={1: 3500})
    assert place([remembers, holds], None, PROMPT) == Place("B", "m", "prefix", 1, 0)


def test_without_any_match_the_slot_whose_prompt_lives_elsewhere_is_reused():
    unique = t("A", 0, idle_slots=(0,), slot_match={0: 0}, slot_cached={0: 3000}, slot_spare={0: 0})
    duplicated = t("B", 1, load=1, idle_slots=(0,), slot_match={0: 0}, slot_cached={0: 3000}, slot_spare={0: 2800})
    assert place([unique, duplicated], None, PROMPT) == Place("B", "m", "spare-slot", 0, 0)


def test_equal_losses_reuse_the_smaller_prompt_then_the_lighter_server():
    big = t("A", 0, idle_slots=(0,), slot_match={0: 0}, slot_cached={0: 9000})
    small = t("B", 1, load=1, idle_slots=(0,), slot_match={0: 0}, slot_cached={0: 1000})
    assert place([big, small], None, PROMPT) == Place("B", "m", "spare-slot", 0, 0)
    twin = t("C", 2, idle_slots=(0,), slot_match={0: 0}, slot_cached={0: 1000})
    assert place([big, small, twin], None, PROMPT) == Place("C", "m", "spare-slot", 0, 0)


def test_a_server_without_slot_information_with_a_longer_match_is_not_bypassed():
    vllm = t("V", 1, match_chars=3500)
    slotted = t("L", 0, idle_slots=(0,), slot_match={0: 1000}, slot_cached={0: 3000})
    assert place([slotted, vllm], None, PROMPT) == Place("V", "m", "prefix", None, 3500)


def busy(wait: float | None = 0.1, match: int = 3800) -> Target:
    """A target whose slots are all busy, one of them with ``match`` chars of the prompt,
    expected to free in ``wait`` seconds."""
    return t("A", 0, load=2, busy_match=match, busy_wait_s=wait)


IDLE_ELSEWHERE = t("B", 1, idle_slots=(0,), slot_match={0: 500}, slot_cached={0: 4000})


def test_a_busy_slot_expected_to_free_within_the_hold_is_waited_for():
    decision = place([busy(0.1), IDLE_ELSEWHERE], None, PROMPT, hold_s=0.3)
    assert isinstance(decision, Queue) and decision.waiting_for_cache


def test_no_hold_once_the_budget_is_spent_or_the_slot_frees_too_late():
    taken = Place("B", "m", "prefix", 0, 0)
    assert place([busy(0.1), IDLE_ELSEWHERE], None, PROMPT, hold_s=0.0) == taken
    assert place([busy(0.1), IDLE_ELSEWHERE], None, PROMPT, hold_s=0.05) == taken
    assert place([busy(None), IDLE_ELSEWHERE], None, PROMPT, hold_s=5.0) == taken  # turnover unknown


def test_no_hold_for_a_small_gain_or_without_slot_pinning():
    close = t("B", 1, idle_slots=(0,), slot_match={0: 3000}, slot_cached={0: 4000})  # gain 800 < 1000
    assert place([busy(), close], None, PROMPT, hold_s=1.0) == Place("B", "m", "prefix", 0, 0)
    unpinned = PlacementKnobs(pin_slots=False)
    assert isinstance(place([busy(), IDLE_ELSEWHERE], None, PROMPT, unpinned, hold_s=1.0), Place)
    lower_bar = PlacementKnobs(hold_min_gain_ratio=0.1)
    assert isinstance(place([busy(), close], None, PROMPT, lower_bar, hold_s=1.0), Queue)


def test_no_hold_when_the_idle_slot_already_continues_the_prompt():
    own = t("B", 1, idle_slots=(0,), slot_match={0: 3900}, slot_cached={0: 3950})
    assert place([busy(match=3900), own], None, PROMPT, hold_s=1.0) == Place("B", "m", "prefix", 0, 0)


PACE = 0.001  # s of prefill per prompt char: a 4000-char prompt takes 4 s uncached


def slow(wait: float, pace: float | None = PACE) -> Target:
    """A slow server's busy slot holding 3800 chars of the prompt, freeing in ``wait`` s."""
    return t("A", 0, load=2, busy_match=3800, busy_wait_s=wait, prefill_s_per_char=pace)


def test_where_the_pace_is_known_a_wait_beyond_the_fixed_hold_is_taken_when_it_saves_prefill():
    # Taking B's slot: 3500 chars to compute and 3500 of another prompt lost (held nowhere
    # else) = 7 s at B's pace; waiting: 3 s + 200 chars = 3.2 s.
    other_prompt = t("B", 1, idle_slots=(0,), slot_match={0: 500}, slot_cached={0: 4000},
                     slot_spare={0: 0}, prefill_s_per_char=PACE)
    decision = place([slow(3.0), other_prompt], None, PROMPT, hold_s=0.5, hold_max_s=10.0)
    assert isinstance(decision, Queue) and decision.waiting_for_cache
    # A slot whose prompt another slot holds too loses nothing: taking it costs 3.5 s.
    spare = t("B", 1, idle_slots=(0,), slot_match={0: 500}, slot_cached={0: 4000},
              slot_spare={0: 4000}, prefill_s_per_char=PACE)
    assert isinstance(place([slow(3.0), spare], None, PROMPT, hold_s=0.5, hold_max_s=10.0), Queue)  # 3.2 < 3.5
    assert place([slow(3.4), spare], None, PROMPT, hold_s=0.5, hold_max_s=10.0) == \
        Place("B", "m", "prefix", 0, 0)  # 3.6 s of waiting > 3.5 s of prefill
    fast = t("B", 1, idle_slots=(0,), slot_match={0: 500}, slot_cached={0: 4000},
             slot_spare={0: 0}, prefill_s_per_char=PACE / 4)  # a 4x faster server: 1.75 s
    assert place([slow(3.0), fast], None, PROMPT, hold_s=0.5, hold_max_s=10.0) == Place("B", "m", "prefix", 0, 0)


def test_the_learnt_horizon_has_a_cap_and_needs_the_pace():
    other_prompt = t("B", 1, idle_slots=(0,), slot_match={0: 500}, slot_cached={0: 4000}, slot_spare={0: 0})
    taken = Place("B", "m", "prefix", 0, 0)
    assert place([slow(3.0), other_prompt], None, PROMPT, hold_s=0.5, hold_max_s=2.5) == taken  # past the cap
    assert place([slow(3.0, pace=None), other_prompt], None, PROMPT, hold_s=0.5, hold_max_s=10.0) == taken
    # B's own pace unknown: the busy server's stands in for it (7 s), so the wait is taken.
    assert isinstance(place([slow(3.0), other_prompt], None, PROMPT, hold_s=0.5, hold_max_s=10.0), Queue)
    assert place([slow(None), other_prompt], None, PROMPT, hold_s=0.5, hold_max_s=10.0) == taken  # unknown


def test_spare_counts_what_other_slots_hold_of_a_slots_prompt():
    store = AffinityStore(64)
    system = "You answer questions about the warehouse. " * 60  # 2 full blocks + a part
    a, b = fingerprint(chat(system, "first")), fingerprint(chat(system, "second"))
    other = fingerprint(chat("Something else entirely. " * 60))
    store.record("S1", "m", 0, a)
    store.record("S1", "m", 1, other)
    assert store.slot_spare("S1", (0, 1)) == {0: 0, 1: 0}  # each is the last copy
    store.record("S2", "m", 0, b)
    shared = store.slot_spare("S1", (0,))[0]
    assert 2048 <= shared < a.chars  # the system prompt's blocks, not the user turn
    assert store.slot_spare("S2", (0,)) == {0: shared}
    store.record("S2", "m", 0, other)  # S2's slot 0 now holds the other prompt instead
    assert store.slot_spare("S1", (0, 1)) == {0: 0, 1: other.chars}
    store.forget_server("S2")
    assert store.slot_spare("S1", (0, 1)) == {0: 0, 1: 0}
    assert store.slot_spare("S2", (0,)) == {}


def one_llama_server(clock: Any) -> tuple[Config, Registry]:
    """A config of one llama-server B1 serving m, and its registry with both slots idle."""
    config = config_from_data({"servers": {"B1": {"addr": "http://10.0.0.1", "health-port": 8080,
                                                   "model-port": 8080, "kind": "llama.cpp"}},
                               "models": {"m": ["B1"]}})
    registry = Registry(config, clock)
    registry.record_signals("B1", BackendLoad(0, 0, 2, 2), SlotsInfo((Slot(0, False), Slot(1, False))), "llama.cpp")
    return config, registry


async def test_the_registry_learns_slot_turnover_and_targets_show_the_busy_slots_match(clock):
    config, registry = one_llama_server(clock)
    affinity = AffinityStore(64)
    prompt = fingerprint(chat("The shared system prompt of conversation A. " * 80))
    routing = config.balancer.routing

    async with registry.slot("B1", "m", pinned=0):
        affinity.record("B1", "m", 0, prompt)
        clock.advance(0.4)
    assert registry.state("B1").pace.occupancy_s == pytest.approx(0.4)

    async with registry.slot("B1", "m", pinned=0):
        clock.advance(0.1)
        [target] = build_targets(registry, affinity, ["B1"], "m", prompt, clock.monotonic(), routing)
        assert target.idle_slots == (1,) and target.busy_match == prompt.chars
        assert target.busy_wait_s == pytest.approx(0.3)  # 0.4 usual, 0.1 gone
        clock.advance(0.5)  # 0.2 s late: as late again, 0.2 s more expected
        [target] = build_targets(registry, affinity, ["B1"], "m", prompt, clock.monotonic(), routing)
        assert target.busy_match == prompt.chars and target.busy_wait_s == pytest.approx(0.2)
        clock.advance(5.0)  # the later, the longer it is expected to go on
        registry.record_signals("B1", BackendLoad(1, 0, 2, 1), SlotsInfo((Slot(0, True), Slot(1, False))), "llama.cpp")
        [target] = build_targets(registry, affinity, ["B1"], "m", prompt, clock.monotonic(), routing)
        assert target.idle_slots == (1,) and target.busy_wait_s == pytest.approx(5.2)
    [target] = build_targets(registry, affinity, ["B1"], "m", prompt, clock.monotonic(), routing)
    assert target.busy_match == 0 and target.idle_slots == (0, 1)
    assert registry.state("B1").pace.occupancy_s == pytest.approx(0.4 + 0.2 * (5.6 - 0.4))


def test_the_registry_learns_the_prefill_pace_from_llama_servers_timings(clock):
    config, registry = one_llama_server(clock)
    # 1000 of 1250 tokens evaluated in 400 ms; the prompt is 5000 chars: 4000 chars uncached.
    registry.record_prefill("B1", Usage(1250, 8, 250, 50.0, 1000, 400.0), 5000)
    assert registry.state("B1").pace.prefill_s_per_char == pytest.approx(0.4 / 4000)
    registry.record_prefill("B1", Usage(1250, 8, 1240, 50.0, 10, 9.0), 5000)  # 40 chars: fixed costs, ignored
    registry.record_prefill("B1", Usage(1250, 8, None, 50.0, None, None), 5000)  # no timings
    assert registry.state("B1").pace.prefill_s_per_char == pytest.approx(0.4 / 4000)
    registry.record_prefill("B1", Usage(1250, 8, 0, 50.0, 1250, 1000.0), 5000)  # 0.2 ms a char
    assert registry.state("B1").pace.prefill_s_per_char == pytest.approx(1e-4 + 0.2 * (2e-4 - 1e-4))
    [target] = build_targets(registry, AffinityStore(64), ["B1"], "m", fingerprint(chat("x")), clock.monotonic(),
                             config.balancer.routing)
    assert target.prefill_s_per_char == pytest.approx(1.2e-4)
    assert registry.snapshot()[0]["prefill_ms_per_kchar"] == pytest.approx(120.0)


async def test_a_slots_expected_turnover_counts_the_prefill_its_request_was_placed_with(clock):
    """One average turnover reads a slot busy with a cold prompt as overrun (nobody waits for
    it) though it frees soon after: with the prefill pace known, the expected time is the
    request's own prefill plus the usual rest, learnt from each release."""
    config, registry = one_llama_server(clock)
    affinity = AffinityStore(64)
    prompt = fingerprint(chat("The shared system prompt of conversation A. " * 80))
    routing = config.balancer.routing
    pace = registry.state("B1").pace
    pace.prefill_s_per_char = 1e-3  # 1 s per 1,000 uncached chars

    async with registry.slot("B1", "m", pinned=0, uncached_chars=100):  # 0.1 s of prefill
        clock.advance(0.4)
    assert pace.occupancy_s == pytest.approx(0.4) and pace.rest_s == pytest.approx(0.3)
    async with registry.slot("B1", "m", pinned=0):  # the uncached part unknown: the rest learns nothing
        clock.advance(0.5)
    assert pace.rest_s == pytest.approx(0.3) and pace.occupancy_s == pytest.approx(0.42)

    cold = 3000  # 3 s of prefill: 3.3 s expected, far past the 0.42 s average
    async with registry.slot("B1", "m", pinned=0, uncached_chars=cold):
        affinity.record("B1", "m", 0, prompt)
        clock.advance(1.0)
        [target] = build_targets(registry, affinity, ["B1"], "m", prompt, clock.monotonic(), routing)
        assert target.busy_match == prompt.chars and target.busy_wait_s == pytest.approx(2.3)
        assert registry.state("B1").pinned_uncached == {0: cold}
        clock.advance(2.5)  # past its own expected time too: 0.2 s late, 0.2 s more expected
        registry.record_signals("B1", BackendLoad(1, 0, 2, 1), SlotsInfo((Slot(0, True), Slot(1, False))), "llama.cpp")
        [target] = build_targets(registry, affinity, ["B1"], "m", prompt, clock.monotonic(), routing)
        assert target.idle_slots == (1,) and target.busy_wait_s == pytest.approx(0.2)
    assert registry.state("B1").pinned_uncached == {}
    assert pace.rest_s == pytest.approx(0.3 + 0.2 * (0.5 - 0.3))  # 3.5 s on the slot, 3 of it prefill
    assert registry.snapshot()[0]["slot_rest_s"] == pytest.approx(0.34)


async def test_a_slot_of_ours_that_ended_while_the_poll_was_out_still_reads_idle(clock):
    """The race seen on real llama-servers: the /slots answer is written while our request
    still runs, our request ends, then the answer arrives. The slot it shows busy was ours,
    so it is idle now, not another client's (before: the conversation lost its slot)."""
    config = config_from_data({"servers": {"B1": {"addr": "http://10.0.0.1", "health-port": 8080,
                                                   "model-port": 8080, "kind": "llama.cpp"}},
                               "models": {"m": ["B1"]}})
    registry = Registry(config, clock)
    affinity = AffinityStore(64)
    prompt = fingerprint(chat("A system prompt. " * 40))
    async with registry.slot("B1", "m", pinned=1):
        mark = registry.poll_mark("B1")  # the poll goes out while slot 1 works for us
    # ... and its answer, showing slot 1 busy, comes back after our request ended.
    registry.record_signals("B1", BackendLoad(1, 0, 2, 1), SlotsInfo((Slot(0, False), Slot(1, True))),
                            "llama.cpp", mark)
    [target] = build_targets(registry, affinity, ["B1"], "m", prompt, clock.monotonic(), config.balancer.routing)
    assert target.idle_slots == (0, 1) and target.load == 0
    # Without the mark (our share read only when the answer came) slot 1 looks taken by someone else.
    registry.record_signals("B1", BackendLoad(1, 0, 2, 1), SlotsInfo((Slot(0, False), Slot(1, True))), "llama.cpp")
    [target] = build_targets(registry, affinity, ["B1"], "m", prompt, clock.monotonic(), config.balancer.routing)
    assert target.idle_slots == (0,)
