"""core/prefix.py: cumulative prompt fingerprints and the longest known prefix."""
from __future__ import annotations

import hashlib

import pytest

from llama_balancer.core.prefix import (
    CHAT_BLOCK_CHARS,
    MAX_BLOCKS,
    TEXT_BLOCK_CHARS,
    Fingerprint,
    fingerprint,
    longest_match,
    prefix_hashes,
)

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TURN_1 = [SYSTEM, {"role": "user", "content": "Hello"}]
TURN_2 = TURN_1 + [{"role": "assistant", "content": "Hi! How can I help?"},
                   {"role": "user", "content": "Tell me a joke."}]


def chat(messages, **extra):
    return {"model": "m", "messages": messages, **extra}


def chain(*blocks: tuple[bytes, str]) -> list[int]:
    """The documented algorithm, written out independently of the module."""
    out, digest = [], b""
    for kind, text in blocks:
        digest = hashlib.blake2b(digest + kind + text.encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "big"))
    return out


# --- the algorithm ------------------------------------------------------------------------


def test_hashes_follow_the_documented_chained_blake2b():
    expected = chain((b"M", "system\nYou are a helpful assistant."), (b"M", "user\nHello"))

    assert list(prefix_hashes(chat(TURN_1))) == expected


def test_a_known_conversation_has_a_fixed_hash_across_versions_and_machines():
    # Computed once by hand from the documented algorithm (no Python hash(), so no per-process
    # seed); a change here breaks state shared between replicas and restarts.
    assert prefix_hashes(chat([{"role": "user", "content": "Hello"}])) == (0xBFE8A57A490454CC,)


def test_lengths_are_the_rendered_block_chars():
    fp = fingerprint(chat(TURN_1))

    assert fp.lengths == (len("system\nYou are a helpful assistant."), len("user\nHello"))
    assert fp.chars == sum(fp.lengths)


# --- chat ---------------------------------------------------------------------------------


def test_one_more_turn_keeps_every_earlier_hash():
    first, second = prefix_hashes(chat(TURN_1)), prefix_hashes(chat(TURN_2))

    assert second[: len(first)] == first
    assert len(second) == len(first) + 2


def test_a_different_system_prompt_shares_no_hash():
    other = [{"role": "system", "content": "You are a pirate."}] + TURN_2[1:]

    assert not set(prefix_hashes(chat(other))) & set(prefix_hashes(chat(TURN_2)))


def test_a_changed_earlier_turn_changes_every_hash_from_there_on():
    edited = TURN_2[:1] + [{"role": "user", "content": "Hullo"}] + TURN_2[2:]
    a, b = prefix_hashes(chat(TURN_2)), prefix_hashes(chat(edited))

    assert a[0] == b[0]
    assert all(x != y for x, y in zip(a[1:], b[1:]))


def test_roles_matter():
    assert prefix_hashes(chat([{"role": "user", "content": "x"}])) != \
        prefix_hashes(chat([{"role": "assistant", "content": "x"}]))


def test_content_parts_equal_the_plain_string():
    parts = [{"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
             {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]

    assert prefix_hashes(chat(parts)) == prefix_hashes(chat(TURN_1))


def test_several_text_parts_are_joined_with_newlines():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]

    assert prefix_hashes(chat(parts)) == prefix_hashes(chat([{"role": "user", "content": "a\nb"}]))


def test_images_change_the_hash_but_count_as_a_short_marker():
    def with_image(url: str):
        return chat([{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": url}}]}])

    big = "data:image/png;base64," + "A" * 100_000
    a, b = fingerprint(with_image(big)), fingerprint(with_image(big + "B"))

    assert a.hashes != b.hashes
    assert a.chars < 100


def test_a_long_system_prompt_is_cut_so_a_shared_beginning_still_matches():
    common = "rules " * 400  # 2400 chars: three blocks of at most 1024
    a = fingerprint(chat([{"role": "system", "content": common + "for Alice"}]))
    b = fingerprint(chat([{"role": "system", "content": common + "for Bob"}]))

    assert max(a.lengths) <= CHAT_BLOCK_CHARS
    assert a.hashes[:2] == b.hashes[:2] and a.hashes[2] != b.hashes[2]
    assert longest_match(b, set(a.hashes)) == (2, 2 * CHAT_BLOCK_CHARS)


def test_tools_come_after_the_system_prompt_and_before_the_conversation():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    plain, with_tools = fingerprint(chat(TURN_1)), fingerprint(chat(TURN_1, tools=tools))

    assert with_tools.hashes[0] == plain.hashes[0]
    assert with_tools.hashes[1] != plain.hashes[1]
    assert len(with_tools.hashes) == len(plain.hashes) + 1


def test_tool_key_order_does_not_matter():
    a = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    b = [{"function": {"parameters": {}, "name": "f"}, "type": "function"}]

    assert prefix_hashes(chat(TURN_1, tools=a)) == prefix_hashes(chat(TURN_1, tools=b))


def test_assistant_tool_calls_and_tool_answers_are_part_of_the_prompt():
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    answer = {"role": "tool", "tool_call_id": "c1", "content": "42"}
    other = {**answer, "content": "43"}

    a = prefix_hashes(chat(TURN_1 + [call, answer]))
    b = prefix_hashes(chat(TURN_1 + [call, other]))

    assert a[:3] == b[:3] and a[3] != b[3]


def test_anthropic_top_level_system_counts_as_a_system_message():
    anthropic = {"model": "m", "system": "You are a helpful assistant.",
                 "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}

    assert prefix_hashes(anthropic) == prefix_hashes(chat(TURN_1))


def test_responses_instructions_and_input_items_read_like_chat():
    responses = {"model": "m", "instructions": "You are a helpful assistant.",
                 "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}]}

    assert prefix_hashes(responses) == prefix_hashes(chat(TURN_1))


def test_responses_string_input_with_instructions_reads_like_chat():
    responses = {"model": "m", "instructions": "You are a helpful assistant.", "input": "Hello"}

    assert prefix_hashes(responses) == prefix_hashes(chat(TURN_1))


def test_messages_that_are_not_objects_are_skipped():
    assert prefix_hashes(chat([None, "x", 3, *TURN_1])) == prefix_hashes(chat(TURN_1))


# --- text completions ---------------------------------------------------------------------


def test_text_prompts_sharing_a_beginning_share_its_whole_blocks():
    base = "".join(f"line {i}\n" for i in range(200))  # ~1500 chars
    a = fingerprint({"prompt": base + "question A"})
    b = fingerprint({"prompt": base + "question B"})
    whole = len(base) // TEXT_BLOCK_CHARS

    assert max(a.lengths) == TEXT_BLOCK_CHARS
    assert longest_match(b, set(a.hashes)) == (whole, whole * TEXT_BLOCK_CHARS)


def test_a_batch_of_prompts_is_fingerprinted_by_its_first():
    assert prefix_hashes({"prompt": ["abc", "def"]}) == prefix_hashes({"prompt": "abc"})


def test_token_id_prompts_are_cut_into_blocks_of_ids():
    a = fingerprint({"prompt": list(range(100))})
    b = fingerprint({"prompt": list(range(64)) + [7] * 36})

    assert len(a.hashes) == 2 and a.lengths == (64 * 4, 36 * 4)
    assert a.hashes[0] == b.hashes[0] and a.hashes[1] != b.hashes[1]


def test_plain_string_input_is_read_as_a_prompt():
    assert prefix_hashes({"input": "abc"}) == prefix_hashes({"prompt": "abc"})


def test_infill_context_and_prefix_are_fingerprinted():
    body = {"input_extra": [{"filename": "a.py", "text": "x = 1"}], "input_prefix": "def f():", "input_suffix": ""}
    changed = {**body, "input_prefix": "def g():"}

    a, b = prefix_hashes(body), prefix_hashes(changed)

    assert len(a) == 2 and a[0] == b[0] and a[1] != b[1]


@pytest.mark.parametrize("payload", [None, [], "x", {}, {"prompt": ""}, {"prompt": None}, {"messages": "x"},
                                     {"prompt": []}, {"model": "m"}])
def test_payloads_without_a_prompt_have_an_empty_fingerprint(payload):
    assert fingerprint(payload) == Fingerprint()


def test_huge_prompts_are_fingerprinted_up_to_the_block_limit():
    fp = fingerprint({"prompt": "x" * (TEXT_BLOCK_CHARS * (MAX_BLOCKS + 10))})

    assert len(fp.hashes) == MAX_BLOCKS


# --- longest_match ------------------------------------------------------------------------


def test_longest_match_returns_blocks_and_chars_of_the_longest_known_prefix():
    fp = Fingerprint(hashes=(1, 2, 3, 4), lengths=(10, 20, 30, 40))

    assert longest_match(fp, {1, 2, 3}) == (3, 60)


def test_longest_match_finds_a_long_prefix_even_when_shorter_ones_were_forgotten():
    fp = Fingerprint(hashes=(1, 2, 3, 4), lengths=(10, 20, 30, 40))

    assert longest_match(fp, {3}) == (3, 60)


def test_longest_match_of_nothing_known_is_zero():
    assert longest_match(Fingerprint((1, 2), (5, 5)), set()) == (0, 0)
    assert longest_match(Fingerprint(), {1}) == (0, 0)
