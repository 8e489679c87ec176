"""The cache-aware fixes found by the routing bench (docs/routing.md): poll lag, one prompt
per slot, live conversations keep their slots."""
from typing import Any
from llama_balancer.core.placement import Place, Target, place
from llama_balancer.core.prefix import fingerprint
from llama_balancer.core.signals import BackendLoad, fuse_load
from llama_balancer.state.affinity import AffinityStore

PROMPT = 2000
FRESH, MAX_AGE = 0.5, 2.0


def t(server: str, order: int = 0, status: str = "idle", instance: str = "m", **kw: Any) -> Target:
    if "match" in kw:
        kw["match_chars"] = kw.pop("match")
    return Target(server=server, instance=instance, order=order, status=status, **kw)


def where(decision: Any) -> tuple[str, str]:
    assert isinstance(decision, Place), decision
    return decision.server, decision.reason


def chat(system: str) -> dict:
    return {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]}


def test_fused_load_drops_our_own_requests_that_ended_since_the_poll():
    assert fuse_load(1, BackendLoad(2, 0), FRESH, MAX_AGE, own_at_poll=2) == 1


def test_fused_load_keeps_what_other_clients_run():
    assert fuse_load(1, BackendLoad(3, 1), FRESH, MAX_AGE, own_at_poll=1) == 4


def test_a_prompt_that_continues_an_idle_slot_goes_there_whatever_the_load():
    own = t("A", 1, load=1, idle_slots=(1,), slot_match={1: 1900}, slot_cached={1: 1850})
    other = t("B", 0, idle_slots=(0, 1), slot_match={0: 0, 1: 0}, slot_cached={0: 3000, 1: 3000})
    assert place([other, own], None, PROMPT) == Place("A", "m", "prefix", 1, 0)


def test_a_slot_nobody_uses_beats_a_shared_prefix_in_someone_elses_slot():
    shared = t("B", 0, match=1000, idle_slots=(0,), slot_match={0: 1000}, slot_cached={0: 2600})
    fresh = t("A", 1, idle_slots=(0, 1), slot_match={0: 0}, slot_cached={0: 2600})
    assert place([shared, fresh], None, PROMPT) == Place("A", "m", "least-loaded", 1, 0)


def test_without_free_slots_a_shared_prefix_still_wins():
    shared = t("B", 0, match=1000, idle_slots=(0,), slot_match={0: 1000}, slot_cached={0: 2600})
    other = t("A", 1, idle_slots=(0,), slot_match={0: 0}, slot_cached={0: 2600})
    assert where(place([shared, other], None, PROMPT)) == ("B", "prefix")


def test_a_pinned_slot_holds_only_its_last_prompt():
    store = AffinityStore(64)
    first, second = fingerprint(chat("alpha " * 300)), fingerprint(chat("omega " * 300))
    store.record("B1", "m", 0, first)
    store.record("B1", "m", 0, second)
    assert store.slot_match("B1", (0,), first) == {0: 0}
    assert store.slot_cached("B1", (0,)) == {0: second.chars}
    assert store.match_chars("B1", "m", first) == first.chars  # the server-level memory stays
