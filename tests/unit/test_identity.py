"""core/identity.py: who is asking, from a system message or the client address."""
from __future__ import annotations

import pytest

from llama_balancer.core.identity import TrustedProxies, client_ip, user_from_messages


def system(content):
    return {"role": "system", "content": content}


@pytest.mark.parametrize(
    ("opening", "closing"),
    [("「", "」"), ("『", "』"), ("“", "”"), ('"', '"'), ("'", "'")],
)
def test_user_name_is_found_with_every_quote_pair(opening, closing):
    messages = [system(f"あなたは助手です。ユーザーの名前は{opening}田中{closing}です。")]

    assert user_from_messages(messages) == "田中"


def test_name_may_contain_spaces_and_latin_letters():
    assert user_from_messages([system("ユーザーの名前は「Jane Doe」")]) == "Jane Doe"


def test_content_given_as_a_list_of_parts_is_searched():
    messages = [
        system(
            [
                {"type": "text", "text": "You are helpful."},
                {"type": "image_url", "image_url": {"url": "data:"}},
                {"type": "text", "text": "ユーザーの名前は『suzuki』"},
            ]
        )
    ]

    assert user_from_messages(messages) == "suzuki"


def test_only_system_messages_count():
    messages = [
        {"role": "user", "content": "ユーザーの名前は「mallory」"},
        {"role": "assistant", "content": "ユーザーの名前は「bot」"},
    ]

    assert user_from_messages(messages) is None


def test_a_later_system_message_is_found_after_other_roles():
    messages = [
        {"role": "user", "content": "ユーザーの名前は「mallory」"},
        system("ユーザーの名前は「alice」"),
    ]

    assert user_from_messages(messages) == "alice"


def test_the_first_declared_name_wins():
    messages = [system("ユーザーの名前は「alice」"), system("ユーザーの名前は「bob」")]

    assert user_from_messages(messages) == "alice"


@pytest.mark.parametrize(
    "text",
    [
        "ユーザーの名前は田中です",  # no quotes
        "ユーザーの名前は「」",  # empty name
        "ユーザーの名前は「田中",  # unclosed
        "ユーザーの名前は「田中』",  # mismatched pair
        "ユーザーの名前は「田\n中」",  # a line break is not part of a name
        "The user's name is 'Tanaka'",  # other wording
    ],
)
def test_no_name_without_the_phrase_and_a_matching_quote_pair(text):
    assert user_from_messages([system(text)]) is None


@pytest.mark.parametrize(
    "messages",
    [None, "ユーザーの名前は「x」", {"role": "system"}, [None, 3, "s"], [system(None)], [system(42)], [system([1, {"text": 2}])]],
)
def test_malformed_messages_give_no_name_instead_of_failing(messages):
    assert user_from_messages(messages) is None


ALL = TrustedProxies(["*"])
NONE = TrustedProxies([])


def test_client_ip_is_the_first_forwarded_for_entry_when_every_hop_is_trusted():
    assert client_ip("203.0.113.7, 10.0.0.1, 10.0.0.2", "10.0.0.2", ALL) == "203.0.113.7"


def test_client_ip_trims_spaces_around_the_first_entry():
    assert client_ip("  203.0.113.7  ", "10.0.0.2", ALL) == "203.0.113.7"


@pytest.mark.parametrize("forwarded", [None, "", " ", " , "])
def test_client_ip_falls_back_to_the_peer_without_a_usable_forwarded_for(forwarded):
    assert client_ip(forwarded, "192.0.2.10", ALL) == "192.0.2.10"


def test_client_ip_without_peer_or_header_is_unknown():
    assert client_ip(None, None, ALL) == "unknown"


def test_forwarded_for_from_an_untrusted_peer_is_ignored():
    assert client_ip("203.0.113.7", "198.51.100.4", NONE) == "198.51.100.4"


def test_behind_trusted_proxies_the_rightmost_untrusted_hop_wins():
    trusted = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    # The client claims to be 1.1.1.1; our proxy at 10.0.0.5 appended the real address.
    assert client_ip("1.1.1.1, 203.0.113.7, 10.0.0.5", "127.0.0.1", trusted) == "203.0.113.7"


def test_a_peer_that_is_not_an_ip_is_not_trusted():
    assert TrustedProxies(["10.0.0.0/8"]).trusts("unix-socket") is False


def test_a_name_in_anthropic_system_or_responses_instructions_or_input_identifies_the_user():
    from llama_balancer.core.identity import user_from_request
    name = "ユーザーの名前は「alice」"
    assert user_from_request({"system": name, "messages": [{"role": "user", "content": "hi"}]}) == "alice"
    assert user_from_request({"system": [{"type": "text", "text": name}], "messages": []}) == "alice"
    assert user_from_request({"instructions": name, "input": "hi"}) == "alice"
    assert user_from_request({"input": [{"role": "system", "content": name}, {"role": "user", "content": "x"}]}) \
        == "alice"
    assert user_from_request({"messages": [{"role": "system", "content": name}]}) == "alice"
    assert user_from_request({"prompt": name}) is None, "a text prompt declares nobody"
