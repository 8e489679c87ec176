"""core/placement.py: the cache-aware policy, by table cases and a seeded property loop."""
from __future__ import annotations

import random
from typing import Any

import pytest

from llama_balancer.core.placement import (
    Place,
    PlacementKnobs,
    Queue,
    Reject,
    Target,
    eligible,
    match_threshold,
    overloaded,
    place,
)

KNOBS = PlacementKnobs()
PROMPT = 2000  # prompt chars: the ratio threshold (10 %) is 200


def t(server: str, order: int = 0, status: str = "idle", instance: str = "m", **kw: Any) -> Target:
    if "match" in kw:
        kw["match_chars"] = kw.pop("match")
    return Target(server=server, instance=instance, order=order, status=status, **kw)  # type: ignore[arg-type]


def where(decision: Any) -> tuple[str, str]:
    assert isinstance(decision, Place), decision
    return decision.server, decision.reason


# --- eligibility, full, queue, reject -----------------------------------------------------


def test_no_target_at_all_is_rejected_with_503():
    assert place([], None, PROMPT) == Reject(503, "no backend for this model")


def test_only_invalid_targets_are_rejected_with_503_not_sent_to_a_dead_server():
    decision = place([t("A", 0, "invalid"), t("B", 1, "invalid")], None, PROMPT)

    assert decision == Reject(503, "no healthy backend for this model")


def test_invalid_target_is_never_chosen_even_with_the_best_match_and_no_load():
    targets = [t("A", 0, "invalid", match=5000), t("B", 1, "busy", load=4)]

    assert where(place(targets, ("A", "m"), PROMPT)) == ("B", "least-loaded")


def test_suspect_target_is_skipped_while_a_healthy_one_exists():
    targets = [t("A", 0, "suspect", match=5000), t("B", 1, "busy", load=5)]

    assert where(place(targets, None, PROMPT)) == ("B", "least-loaded")


def test_suspect_targets_are_used_when_nothing_healthy_is_left():
    targets = [t("A", 0, "invalid"), t("B", 1, "suspect", load=1), t("C", 2, "suspect")]

    assert where(place(targets, None, PROMPT)) == ("C", "least-loaded")


def test_full_healthy_targets_queue_rather_than_spill_onto_a_suspect_one():
    targets = [t("A", 0, capacity=0), t("B", 1, "suspect", capacity=3)]

    assert isinstance(place(targets, None, PROMPT), Queue)


def test_every_eligible_target_full_queues():
    targets = [t("A", 0, capacity=0, match=5000), t("B", 1, "busy", capacity=0), t("C", 2, "invalid")]

    assert place(targets, ("A", "m"), PROMPT) == Queue("all 2 eligible targets are full")


def test_negative_capacity_counts_as_full():
    assert isinstance(place([t("A", capacity=-1)], None, PROMPT), Queue)


def test_unknown_capacity_is_not_full():
    assert where(place([t("A", load=9, capacity=None)], None, PROMPT)) == ("A", "least-loaded")


def test_full_target_is_skipped_for_one_with_room():
    targets = [t("A", 0, capacity=0, match=5000), t("B", 1, load=3, capacity=1)]

    assert where(place(targets, None, PROMPT)) == ("B", "least-loaded")


# --- prefix and the overload guard --------------------------------------------------------


def test_longest_meaningful_match_wins():
    targets = [t("A", 0, match=300), t("B", 1, load=1, match=900), t("C", 2)]

    assert place(targets, None, PROMPT) == Place("B", "m", "prefix", None, 900)


def test_match_below_min_match_chars_does_not_count():
    targets = [t("A", 0, load=1, match=63), t("B", 1)]

    assert where(place(targets, None, 100)) == ("B", "least-loaded")


def test_match_below_the_ratio_of_the_prompt_does_not_count():
    targets = [t("A", 0, load=1, match=999), t("B", 1)]

    assert where(place(targets, None, 10_000)) == ("B", "least-loaded")
    assert where(place(targets, None, 9_990)) == ("A", "prefix")


def test_overloaded_target_loses_its_match_to_the_least_loaded():
    targets = [t("A", 0, load=3, match=5000), t("B", 1, load=0)]

    assert where(place(targets, None, PROMPT)) == ("B", "least-loaded")


def test_load_gap_within_the_absolute_threshold_keeps_the_match():
    targets = [t("A", 0, load=2, match=5000), t("B", 1, load=0)]

    assert where(place(targets, None, PROMPT)) == ("A", "prefix")


@pytest.mark.parametrize(("heavy", "light", "reason"), [(10, 6, "least-loaded"), (10, 7, "prefix")])
def test_relative_threshold_must_also_be_crossed(heavy, light, reason):
    # 10 - 6 > 2 and 10 > 1.5 * 6: overloaded. 10 - 7 > 2 but 10 <= 1.5 * 7: not.
    targets = [t("A", 0, load=heavy, match=5000), t("B", 1, load=light)]

    assert place(targets, None, PROMPT).reason == reason  # type: ignore[union-attr]


def test_a_warm_moderately_loaded_target_is_used_while_another_is_overloaded():
    # SGLang would see max - min = 6 and send everything to C; per target, B is still fair.
    targets = [t("A", 0, "busy", load=6), t("B", 1, load=2, match=1000), t("C", 2, load=0)]

    assert where(place(targets, None, PROMPT)) == ("B", "prefix")


def test_prefix_ties_go_to_the_lower_load_then_the_earlier_server():
    targets = [t("A", 0, load=1, match=500), t("B", 1, load=0, match=500), t("C", 2, load=0, match=500)]

    assert where(place(targets, None, PROMPT)) == ("B", "prefix")


def test_full_targets_do_not_set_the_load_floor():
    # C is full with load 0; the floor among open targets is 2, so A (load 4) is not overloaded.
    targets = [t("A", 0, load=4, match=900), t("B", 1, load=2), t("C", 2, load=0, capacity=0)]

    assert where(place(targets, None, PROMPT)) == ("A", "prefix")


# --- least-loaded ties --------------------------------------------------------------------


def test_least_loaded_ties_go_to_the_longer_match_first():
    targets = [t("A", 0, load=1, match=10), t("B", 1, load=1, match=50), t("C", 2, load=2)]

    assert where(place(targets, None, PROMPT)) == ("B", "least-loaded")


def test_least_loaded_ties_go_to_idle_before_busy_then_order():
    targets = [t("A", 0, "busy"), t("B", 1, "idle"), t("C", 2, "idle")]

    assert where(place(targets, None, PROMPT)) == ("B", "least-loaded")


def test_instances_of_one_server_tie_in_the_order_they_are_listed():
    targets = [t("A", 0, instance="m-2", load=1), t("A", 0, instance="m", load=0), t("A", 0, instance="m-3", load=0)]

    assert place(targets, None, PROMPT) == Place("A", "m", "least-loaded")


# --- sticky -------------------------------------------------------------------------------


def test_sticky_target_wins_when_no_target_has_a_meaningful_match():
    targets = [t("A", 0), t("B", 1, "busy", load=2)]

    assert where(place(targets, ("B", "m"), PROMPT)) == ("B", "sticky")


def test_sticky_target_wins_when_its_match_is_within_the_margin_of_the_best():
    targets = [t("A", 0, match=1200), t("B", 1, load=1, match=1000)]

    assert where(place(targets, ("B", "m"), PROMPT)) == ("B", "sticky")


def test_a_much_longer_match_elsewhere_beats_the_sticky_binding():
    targets = [t("A", 0, match=3000), t("B", 1, match=1000)]

    assert where(place(targets, ("B", "m"), PROMPT)) == ("A", "prefix")


def test_sticky_binding_names_the_instance_not_just_the_server():
    targets = [t("A", 0, instance="m", load=1), t("A", 0, instance="m-2", load=2)]

    assert place(targets, ("A", "m-2"), PROMPT) == Place("A", "m-2", "sticky")


@pytest.mark.parametrize("bound", [
    t("B", 1, load=3),  # overloaded against A's 0
    t("B", 1, capacity=0),  # full
    t("B", 1, "invalid"),  # dead
    t("B", 1, "suspect"),  # suspect while A is healthy
])
def test_sticky_binding_is_dropped_when_its_target_is_unfit(bound):
    assert where(place([t("A", 0), bound], ("B", "m"), PROMPT)) == ("A", "least-loaded")


def test_sticky_binding_to_an_unknown_target_is_ignored():
    assert where(place([t("A", 0)], ("Z", "m"), PROMPT)) == ("A", "least-loaded")


# --- slot pinning -------------------------------------------------------------------------


def test_idle_slot_with_the_longest_match_is_pinned():
    target = t("A", match=900, idle_slots=(0, 1, 2), slot_match={0: 100, 1: 900, 2: 400, 3: 2000})

    assert place([target], None, PROMPT) == Place("A", "m", "prefix", 1, 900)


def test_busy_slot_is_never_pinned_even_with_the_best_match():
    target = t("A", match=900, idle_slots=(0,), slot_match={1: 900})

    assert place([target], None, PROMPT).id_slot == 0  # type: ignore[union-attr]


def test_without_a_meaningful_match_an_idle_slot_we_never_used_is_pinned():
    target = t("A", idle_slots=(0, 1, 2), slot_match={0: 199})

    assert place([target], None, PROMPT).id_slot == 1  # type: ignore[union-attr]


def test_without_a_match_or_an_unused_slot_the_slot_losing_least_is_pinned():
    # Slot 0's prompt shares 150 chars with this one (kept when overwritten), slot 1's 20.
    target = t("A", idle_slots=(0, 1), slot_match={0: 150, 1: 20}, slot_cached={0: 3000, 1: 3000})

    assert place([target], None, PROMPT) == Place("A", "m", "spare-slot", 0, 0)


def test_without_idle_slots_nothing_is_pinned():
    target = t("A", idle_slots=(), slot_match={0: 900})

    assert place([target], None, PROMPT).id_slot is None  # type: ignore[union-attr]


def test_slot_match_ties_pin_the_lowest_slot_id():
    target = t("A", match=500, idle_slots=(3, 1, 2), slot_match={1: 500, 2: 500, 3: 500})

    assert place([target], None, PROMPT).id_slot == 1  # type: ignore[union-attr]


def test_pinning_can_be_turned_off():
    target = t("A", match=900, idle_slots=(0,), slot_match={0: 900})

    assert place([target], None, PROMPT, PlacementKnobs(pin_slots=False)).id_slot is None  # type: ignore[union-attr]


def test_a_sticky_or_least_loaded_choice_also_pins_its_matching_idle_slot():
    sticky = t("A", idle_slots=(5,), slot_match={5: 250})

    assert place([sticky, t("B", 1)], ("A", "m"), PROMPT) == Place("A", "m", "sticky", 5)


# --- helpers ------------------------------------------------------------------------------


def test_match_threshold_is_the_larger_of_chars_and_ratio_and_at_least_one():
    assert match_threshold(100, KNOBS) == 64
    assert match_threshold(10_001, KNOBS) == 1001
    assert match_threshold(0, PlacementKnobs(min_match_chars=0, min_match_ratio=0.0)) == 1


def test_overload_needs_both_thresholds():
    assert overloaded(3, 0, KNOBS)
    assert not overloaded(2, 0, KNOBS)
    assert not overloaded(10, 7, KNOBS)


def test_eligible_prefers_healthy_and_falls_back_to_suspects():
    a, b, c = t("A", status="busy"), t("B", status="suspect"), t("C", status="invalid")

    assert eligible([a, b, c]) == [a]
    assert eligible([b, c]) == [b]
    assert eligible([c]) == []


# --- properties over random target sets ---------------------------------------------------

STATUSES = ("idle", "busy", "invalid", "suspect")
KNOB_CHOICES = [
    KNOBS,
    PlacementKnobs(balance_abs_threshold=0, balance_rel_threshold=1.0),
    PlacementKnobs(balance_abs_threshold=5, balance_rel_threshold=3.0, min_match_chars=0, min_match_ratio=0.5),
    PlacementKnobs(sticky_margin_chars=0, pin_slots=False),
]


def random_case(rng: random.Random) -> tuple[list[Target], tuple[str, str] | None, int, PlacementKnobs]:
    count = rng.randint(0, 6)
    orders = rng.sample(range(10), count)
    targets = []
    for index in range(count):
        idle = tuple(s for s in range(4) if rng.random() < 0.4)
        targets.append(Target(
            server=f"S{index}", instance=rng.choice(["m", "m-2"]), order=orders[index],
            status=rng.choice(STATUSES), load=rng.randint(0, 8),
            capacity=rng.choice([None, None, 0, 1, 2, -1]),
            match_chars=rng.choice([0, 0, 50, 100, 300, 800, 2000]),
            idle_slots=idle, **random_slot_memory(rng),
        ))
    keys = [(x.server, x.instance) for x in targets] + [("nowhere", "m")]
    sticky = rng.choice(keys) if rng.random() < 0.6 else None
    return targets, sticky, rng.choice([0, 100, 1000, 5000]), rng.choice(KNOB_CHOICES)


def random_slot_memory(rng: random.Random) -> dict[str, dict[int, int]]:
    """What the balancer knows of slots 0-3: nothing (never pinned), or the prompt each holds,
    how much of it matches this request and how much of it other slots hold too."""
    match: dict[int, int] = {}
    cached: dict[int, int] = {}
    spare: dict[int, int] = {}
    for slot in range(4):
        if rng.random() < 0.2:
            continue
        cached[slot] = rng.choice([300, 1000, 3000])
        match[slot] = min(cached[slot], rng.choice([0, 60, 300, 900, 2900]))
        spare[slot] = min(cached[slot], rng.choice([0, 0, 100, 1000]))
    return {"slot_match": match, "slot_cached": cached, "slot_spare": spare}


def check_slot_choice(fair: list[Target], sticky: Any, threshold: int, knobs: PlacementKnobs,
                      chosen: Target, decision: Place) -> bool:
    """The slot-level rules (placement._slot_placement); False when they did not decide."""
    idle = [(x, s) for x in fair for s in x.idle_slots if s >= 0]
    if not knobs.pin_slots or not idle:
        return False
    match = {(x.server, x.instance, s): x.slot_match.get(s, 0) for x, s in idle}
    best_slot = max(match.values())
    continued = [key for (x, s) in idle if (key := (x.server, x.instance, s)) and match[key] >= threshold
                 and s in x.slot_cached and x.slot_cached[s] - match[key] <= knobs.sticky_margin_chars]
    fresh = [(x, s) for x, s in idle if s not in x.slot_match and s not in x.slot_cached]
    elsewhere = max((x.match_chars for x in fair if not any(s >= 0 for s in x.idle_slots)), default=0)
    if not continued and elsewhere >= threshold and elsewhere > (best_slot if best_slot >= threshold else 0):
        return False  # the target-level rules decide, towards the longer match
    key = (chosen.server, chosen.instance, decision.id_slot)
    assert key in match, "the slot rules pin one of the fair idle slots"
    if continued:
        assert decision.reason in ("prefix", "sticky") and key in continued
        assert match[key] == max(match[c] for c in continued)
    elif fresh:
        assert (chosen, decision.id_slot) in fresh, "a slot nobody was pinned to comes next"
        assert decision.reason in ("least-loaded", "sticky")
        assert decision.reason != "sticky" or (chosen.server, chosen.instance) == sticky
    elif best_slot >= threshold:
        assert decision.reason in ("prefix", "sticky") and match[key] == best_slot
    else:
        assert decision.reason == "spare-slot"

        def kept(x: Target, s: int) -> int:
            return max(x.slot_spare.get(s, 0), x.slot_match.get(s, 0))
        assert kept(chosen, decision.id_slot) == max(kept(x, s) for x, s in idle)  # type: ignore[arg-type]
    if decision.reason == "sticky":
        assert (chosen.server, chosen.instance) == sticky
    return True


def check(targets: list[Target], sticky: Any, prompt: int, knobs: PlacementKnobs, decision: Any) -> None:
    healthy = [x for x in targets if x.status in ("idle", "busy")]
    pool = healthy or [x for x in targets if x.status == "suspect"]
    open_ = [x for x in pool if not x.full]
    if isinstance(decision, Reject):
        assert not pool and decision.status == 503
        return
    if isinstance(decision, Queue):
        assert pool and not open_, "Queue only when every eligible target is full"
        return
    assert isinstance(decision, Place) and open_
    chosen = next(x for x in targets if (x.server, x.instance) == (decision.server, decision.instance))
    assert chosen in open_, "never invalid, never full, suspect only without healthy"
    floor = min(x.load for x in open_)
    fair = [x for x in open_ if not overloaded(x.load, floor, knobs)]
    assert chosen in fair, "an overloaded target is never chosen"
    threshold = match_threshold(prompt, knobs)
    best = max(x.match_chars for x in fair)
    assert decision.reason != "fallback"
    if check_slot_choice(fair, sticky, threshold, knobs, chosen, decision):
        assert decision.match_chars == chosen.match_chars
        return
    if decision.reason == "sticky":
        assert (chosen.server, chosen.instance) == sticky
    elif decision.reason == "prefix":
        assert chosen.match_chars == best >= threshold, "prefix picks the longest match among fair"
    else:
        assert chosen.load == floor and best < threshold, "least-loaded only without a meaningful match"
        assert sticky not in [(x.server, x.instance) for x in fair]
    if decision.id_slot is not None:
        assert knobs.pin_slots and decision.id_slot in chosen.idle_slots
        matched = chosen.slot_match.get(decision.id_slot, 0)
        best_slot = max(chosen.slot_match.get(s, 0) for s in chosen.idle_slots)
        assert matched == best_slot or best_slot < threshold
    elif knobs.pin_slots:
        assert not [s for s in chosen.idle_slots if s >= 0], "an idle slot is always pinned"
    assert decision.match_chars == chosen.match_chars


def test_random_target_sets_keep_every_invariant_and_decide_deterministically():
    rng = random.Random(20240611)
    seen: set[str] = set()
    for _ in range(500):
        targets, sticky, prompt, knobs = random_case(rng)
        decision = place(targets, sticky, prompt, knobs)
        check(targets, sticky, prompt, knobs, decision)
        assert place(targets, sticky, prompt, knobs) == decision
        shuffled = rng.sample(targets, len(targets))
        assert place(shuffled, sticky, prompt, knobs) == decision, "order field, not list order, decides"
        seen.add(f"Place:{decision.reason}" if isinstance(decision, Place) else type(decision).__name__)
    # The loop must have met every kind of outcome, or it proves little.
    assert seen == {"Reject", "Queue", "Place:sticky", "Place:prefix", "Place:least-loaded", "Place:spare-slot"}
