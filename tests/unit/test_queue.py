"""The wait queue: bounded, fair across identities, FIFO within one, no leaked places."""
from __future__ import annotations

import asyncio

import pytest

from llama_balancer.state.queue import QueueFull, WaitQueue


def names(queue: WaitQueue) -> list[str]:
    return [f"{t.identity}{t.model}" for t in queue.fair_order()]


def test_fair_order_takes_turns_between_identities_and_keeps_fifo_within_each():
    queue = WaitQueue(10, lambda: 0.0)
    for identity, n in [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("b", 2)]:
        queue.ticket(identity, str(n))
    assert names(queue) == ["a1", "b1", "c1", "a2", "b2", "a3"]


async def test_an_identity_whose_request_left_goes_to_the_back_of_the_rotation():
    queue = WaitQueue(10, lambda: 0.0)
    a1, a2, b1 = queue.ticket("a", "1"), queue.ticket("a", "2"), queue.ticket("b", "1")
    async with a1:
        pass
    assert names(queue) == ["b1", "a2"]
    async with b1, a2:
        pass
    assert len(queue) == 0 and queue.fair_order() == []


def test_the_queue_refuses_a_ticket_beyond_its_size():
    queue = WaitQueue(2, lambda: 0.0)
    queue.ticket("a", "m")
    queue.ticket("b", "m")
    with pytest.raises(QueueFull):
        queue.ticket("c", "m")


async def test_a_woken_ticket_returns_true_and_a_timed_out_one_false():
    queue = WaitQueue(5, lambda: 0.0)
    ticket = queue.ticket("a", "m")
    waiting = asyncio.create_task(ticket.wait_turn(5))
    await asyncio.sleep(0)
    queue.wake_all()
    assert await waiting is True
    assert await ticket.wait_turn(0.01) is False


async def test_cancelling_a_waiter_inside_async_with_removes_its_ticket():
    queue = WaitQueue(5, lambda: 0.0)

    async def wait() -> None:
        async with queue.ticket("a", "m") as ticket:
            await ticket.wait_turn(10)

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    assert len(queue) == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(queue) == 0


def test_snapshot_counts_waiters_by_model_and_the_oldest_wait():
    now = [10.0]
    queue = WaitQueue(5, lambda: now[0])
    queue.ticket("a", "m", ("PC1", "PC2"))
    now[0] = 12.5
    queue.ticket("b", "n", ("PC2",))
    queue.ticket("b", "m", ("PC1", "PC2"))
    snap = queue.snapshot()
    assert snap == {"length": 3, "max": 5, "waiting_by_model": {"m": 2, "n": 1},
                    "waiting_by_server": {"PC1": 2, "PC2": 3}, "identities": 2, "oldest_wait_s": 2.5}
