"""The pure parts of shared state: the degraded share, the link's state machine, the records
replicas exchange, lease bookkeeping and the merge of remote sticky bindings."""
from __future__ import annotations

from llama_balancer.core.replicas import (AFFINITY, STICKY, Link, affinity_record, batch_sender, decode_batch,
                                          encode_batch, encode_record, health_record, replica_limit, reserve_target,
                                          sticky_record)
from llama_balancer.io.resp import RedisAddress, ReplyError, command, reader
from llama_balancer.state.leases import LeaseBook
from llama_balancer.state.sticky import StickyStore


class FakeClock:
    def __init__(self) -> None:
        self.mono, self.wall_s = 100.0, 1_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_s

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_s += seconds


def test_the_degraded_share_is_request_max_over_live_replicas_rounded_up():
    assert replica_limit(2, 3) == 1
    assert replica_limit(4, 3) == 2
    assert replica_limit(6, 3) == 2
    assert replica_limit(7, 2) == 4
    assert replica_limit(1, 5) == 1  # never 0: a replica must be able to serve


def test_while_shared_or_unlimited_the_whole_limit_applies():
    assert replica_limit(2, None) == 2
    assert replica_limit(None, 3) is None


def test_the_link_reports_each_transition_once():
    link = Link(live=1)
    assert link.mode == "degraded" and link.degraded_live == 1
    assert link.ok(1.0, 3) is True
    assert link.ok(2.0, 3) is False
    assert link.mode == "shared" and link.degraded_live is None
    assert link.fail(3.0, "connection lost") is True
    assert link.fail(3.5, "again") is False
    assert link.degraded_live == 3  # the last known count
    assert link.reason == "connection lost" and link.transitions == 2
    assert link.ok(4.0, 2) is True and link.live == 2


def test_records_round_trip_in_one_batch_and_name_their_sender():
    lines = [encode_record(sticky_record("alice", "10.0.0.1", "m", "PC1", "m-2", 12.5)),
             encode_record(affinity_record("PC1", "m", 1, (11, 22, 2**64 - 1), (5, 6, 7))),
             encode_record(health_record("PC2", True, 99.0, 12.0))]
    message = encode_batch("replica-a", lines)
    assert batch_sender(message) == "replica-a"
    kinds = decode_batch(message)
    assert [kind for kind, _ in kinds] == ["s", "a", "h"]
    assert kinds[0][1]["n"] == "m-2"
    assert kinds[1][1]["h"] == [11, 22, 2**64 - 1] and kinds[1][1]["slot"] == 1
    assert kinds[2][1]["open"] == 99.0


def test_malformed_lines_in_a_batch_are_skipped():
    message = b"r\n" + b"s{bad json\n" + b"zzz\n" + encode_record(sticky_record("a", "ip", "m", "S", "m", 1.0))
    assert [kind for kind, _ in decode_batch(message)] == [STICKY]


def test_affinity_records_are_keyed_by_slot_or_by_the_longest_hash_and_bounded():
    by_slot = affinity_record("S", "m", 0, (1, 2), (3, 4))
    by_hash = affinity_record("S", "m", None, (1, 2), (3, 4))
    assert by_slot is not None and by_slot.field == "S|m|slot0" and by_slot.kind == AFFINITY
    assert by_hash is not None and by_hash.field == "S|m|h2"
    long = affinity_record("S", "m", None, tuple(range(1000)), (1,) * 1000)
    assert long is not None and len(long.data["h"]) == 128
    assert affinity_record("S", "m", None, (), ()) is None


def test_the_lease_book_tracks_held_leases_and_queues_releases_once():
    book = LeaseBook("r1:abc")
    woken = []
    book.on_release = lambda: woken.append(1)
    first = book.grant("PC1", book.next_id())
    second = book.grant("PC1", book.next_id())
    assert first.id != second.id and first.id.startswith("r1:abc:")
    assert book.count("PC1") == 2 and book.total() == 2
    first.release()
    first.release()  # idempotent
    assert book.count("PC1") == 1 and len(woken) == 1
    assert book.take_released(10) == [("PC1", first.id)]
    second.release()
    assert book.held == {} and book.take_released(10) == [("PC1", second.id)]


def test_the_reserve_is_a_quarter_of_the_room_over_live_replicas_and_none_near_the_limit():
    assert reserve_target(100000, 0, 0, 1, 64) == 64  # capped by lease_reserve
    assert reserve_target(24, 0, 0, 3, 64) == 2  # 24 / (4 x 3)
    assert reserve_target(24, 10, 6, 3, 64) == 0  # 8 left: each place matters now
    assert reserve_target(2, 0, 0, 3, 64) == 0  # request-max 2: every admission asks Redis
    assert reserve_target(100, 120, 0, 1, 64) == 0  # over the limit (a reload lowered it): none
    assert reserve_target(100000, 0, 0, 1, 0) == 0  # lease_reserve 0: off


def test_reserved_leases_are_taken_without_redis_and_refill_on_release_up_to_the_target():
    book = LeaseBook("r")
    woken = []
    book.on_release = lambda: woken.append(1)
    book.trim_spare("PC1", 2)
    assert book.missing_spares("PC1") == 2
    book.add_spare("PC1", ["r:1", "r:2"])
    assert (book.count("PC1"), book.in_use("PC1"), book.spares()) == (2, 0, 2)
    taken = [book.take_spare("PC1"), book.take_spare("PC1")]
    assert book.take_spare("PC1") is None  # empty: the caller asks Redis
    assert all(lease is not None for lease in taken) and book.in_use("PC1") == 2 and book.count("PC1") == 2
    other = book.grant("PC1", "r:3")  # granted by Redis while the reserve was empty
    assert sorted(book.ids("PC1")) == ["r:1", "r:2", "r:3"]  # all renewed
    taken[0].release()
    taken[1].release()
    other.release()  # the reserve is full again (2): this one goes back to Redis
    assert (book.spares(), book.in_use("PC1")) == (2, 0)
    assert book.take_released(10) == [("PC1", "r:3")] and len(woken) == 1
    book.trim_spare("PC1", 1)  # the room shrank: the surplus goes back
    assert book.spares() == 1 and [lease_id for _, lease_id in book.take_released(10)] != []
    book.drop_spares()  # Redis went away: nothing kept, nothing refilled
    assert (book.spares(), book.missing_spares("PC1")) == (0, 0) and len(book.take_released(10)) == 1


def test_a_lease_whose_answer_was_lost_is_deleted_to_be_sure():
    book = LeaseBook("r")
    book.forget("PC1", "r:7")
    assert book.take_released(10) == [("PC1", "r:7")] and book.total() == 0


def test_a_newer_remote_binding_replaces_ours_and_an_older_one_is_ignored():
    clock = FakeClock()
    store = StickyStore(180.0, clock)
    store.bind("alice", "ip", "m", "PC1", "m")
    assert store.merge("alice", "ip", "m", "PC2", "m", clock.wall() - 5) is False
    assert store.target("alice", "m") == ("PC1", "m")
    assert store.merge("alice", "ip", "m", "PC2", "m", clock.wall() + 0.001) is True
    assert store.target("alice", "m") == ("PC2", "m")


def test_a_merged_binding_keeps_its_age_and_takes_the_target_from_another_identity():
    clock = FakeClock()
    store = StickyStore(10.0, clock)
    store.bind("bob", "ip", "m", "PC1", "m")
    clock.advance(1)
    assert store.merge("alice", "ip", "m", "PC1", "m", clock.wall() - 0.5)
    assert store.target("bob", "m") is None  # one identity per server x instance
    clock.advance(9.6)  # the remote binding was 0.5 s old when it came: expired now
    assert store.target("alice", "m") is None
    assert store.merge("carol", "ip", "m", "PC3", "m", clock.wall() - 11) is False  # already expired


def test_binds_are_shared_and_refreshes_only_when_the_binding_was_shared_long_ago():
    clock = FakeClock()
    store = StickyStore(100.0, clock)
    shared = []
    store.on_change = lambda entry: shared.append((entry.identity, entry.server))
    store.bind("alice", "ip", "m", "PC1", "m")
    store.refresh("alice", "m", "PC1", "m")  # the same request's end: not sent again
    assert shared == [("alice", "PC1")]
    clock.advance(6)  # past 5 % of the TTL
    store.refresh("alice", "m", "PC1", "m")
    assert shared == [("alice", "PC1"), ("alice", "PC1")]
    store.merge("bob", "ip", "m", "PC2", "m", clock.wall())
    assert len(shared) == 2  # merges are never echoed


def test_resp_replies_parse_whole_or_report_incomplete_at_any_cut():
    wire = b"*3\r\n:1\r\n$5\r\nhello\r\n*2\r\n$-1\r\n+OK\r\n-NOSCRIPT no such script\r\n"
    for cut in range(len(wire)):
        replies = reader()
        replies.feed(wire[:cut])
        assert (replies.gets() is False) == (cut < 33)  # the first reply is 33 bytes
    replies = reader()
    replies.feed(wire)
    assert replies.gets() == [1, b"hello", [None, b"OK"]]
    error = replies.gets()
    assert isinstance(error, ReplyError) and str(error).startswith("NOSCRIPT")


def test_resp_commands_and_urls():
    assert command("SET", "k", 5) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n"
    address = RedisAddress.from_url("redis://user:s%40cret@10.1.2.3:6380/2")
    assert (address.host, address.port, address.db, address.username, address.password) == \
        ("10.1.2.3", 6380, 2, "user", "s@cret")
    assert "s@cret" not in address.display() and address.display().endswith("@10.1.2.3:6380/2")
    assert RedisAddress.from_url("rediss://h").tls


def _registry():
    from llama_balancer.core.config import config_from_data
    from llama_balancer.state.registry import Registry
    config = config_from_data({"servers": {"PC1": {"addr": "http://h", "health-port": 1, "model-port": 2,
                                                   "request-max": 5}}})
    return Registry(config, FakeClock())


def test_degraded_limits_are_the_share_and_count_only_our_own_requests():
    registry = _registry()
    state = registry.state("PC1")
    assert state.limit == 5
    state.remote = 3
    assert state.counted == 3
    registry.set_degraded(2)
    assert state.limit == 3 and state.remote == 0  # ceil(5 / 2), other replicas unknown
    registry.set_degraded(None)
    assert state.limit == 5


def test_other_replicas_pins_count_and_go_into_the_poll_mark():
    registry = _registry()
    registry.merge_pin("PC1", 1, +1)
    registry.merge_pin("PC1", 1, +1)
    registry.merge_pin("PC1", 1, -1)
    registry.merge_pin("gone", 0, +1)  # a server removed by a reload: ignored
    state = registry.state("PC1")
    assert state.remote_pinned == {1: 1}
    mark = registry.poll_mark("PC1")
    assert 1 in mark.pinned and mark.remote == {1: 1}
    registry.merge_pin("PC1", 1, -1)
    assert state.remote_pinned == {}
