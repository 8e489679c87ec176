"""The balancer in front of real llama-servers: what the servers themselves report.

Every assertion here reads llama-server's own account of what happened — ``timings`` in its
answers, its log (slot choice, task ids, cancels, prompt-cache saves and loads), ``/slots``,
``/metrics`` — never only what the balancer believes. The client is the real ``openai``
SDK where one is involved.

Log lines of this build (llama.cpp vendored in llama-cpp-python 0.3.36) that the tests read;
the first five are printed at the default verbosity, the last three only with ``-v``:

    I slot get_availabl: id  1 | task -1 | selected slot by id (1)        a pinned request
    I slot get_availabl: id  1 | task -1 | selected slot by LRU, t_last = -1   (id_slot -1)
    I slot launch_slot_: id  1 | task 10 | processing task, is_child = 0
    W srv          stop: cancel task, id_task = 10                          client gone
    I slot      release: id  1 | task 10 | stop processing: n_tokens = 207, truncated = 0
    I slot get_availabl: id  1 | task -1 |  - skipping, slot is empty       (-v)
    I srv   prompt_save:  - saving prompt with length 1094, ...              (-v)
    I srv          load:  - found better prompt with f_keep = 0.997, ...    (-v)
"""
from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import orjson
import pytest

from tests.conftest import assert_nothing_in_flight, wait_until
from tests.real.conftest import RealServer, seed_entry

MODEL = "tiny"

# Two unrelated long system prompts (~1,100 tokens each with this vocabulary): long enough
# that a cache hit or miss is unmistakable in timings.cache_n.
PROMPT_A = " ".join(f"apple{i}" for i in range(300))
PROMPT_B = " ".join(f"banana{i}" for i in range(300))

SELECTED = re.compile(r"slot get_availabl: id +(\d+) \| task -1 \| selected slot by (.+)")
LAUNCHED = re.compile(r"slot launch_slot_: id +(\d+) \| task (\d+) \| processing task")


# --- helpers -----------------------------------------------------------------------------

def seed_config(*servers: RealServer, **balancer: Any) -> dict[str, Any]:
    """The old tool's server-list.json for these servers: no ``kind``, one model pattern."""
    return {"servers": {s.name: seed_entry(s) for s in servers},
            "models": {MODEL: [s.name for s in servers]},
            **({"balancer": balancer} if balancer else {})}


async def detected(runtime: Any, *names: str) -> None:
    """Every server detected as llama-server, its slots polled: pinning is possible now."""
    registry = runtime.context.registry

    def ready() -> bool:
        return all(registry.state(n).kind == "llama.cpp" and registry.state(n).slots is not None for n in names)
    await wait_until(ready, timeout=5.0)


def sdk(runtime: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=runtime.url + "/v1", api_key="x", max_retries=0, timeout=60)


def selections(server: RealServer) -> list[tuple[int, str]]:
    """How llama-server chose each request's slot, in order: (slot, "id (k)" | "LRU, ..." | ...)."""
    return [(int(m[1]), m[2].strip()) for m in SELECTED.finditer(server.log())]


def launches(server: RealServer) -> list[tuple[int, int]]:
    """(slot, task id) of every task llama-server started, in order."""
    return [(int(m[1]), int(m[2])) for m in LAUNCHED.finditer(server.log())]


async def slots_of(server: RealServer) -> list[dict[str, Any]]:
    return await asyncio.to_thread(server.get, "/slots")


async def native(server: RealServer, prompt: str, id_slot: int) -> dict[str, Any]:
    """llama-server's own /completion, directly (no balancer)."""
    body = {"prompt": prompt, "n_predict": 4, "temperature": 0, "id_slot": id_slot, "cache_prompt": True}
    return await asyncio.to_thread(server.post, "/completion", body)


def timings_of(answer: Any) -> dict[str, Any]:
    """llama-server's ``timings`` in an SDK object (an extra field the SDK keeps)."""
    extra = answer.model_extra or {}
    assert "timings" in extra, f"no timings in {answer!r}"
    return extra["timings"]


def chat(system: str, *turns: str) -> list[dict[str, str]]:
    """A conversation: a system prompt, then user / assistant / user ... turns."""
    roles = ["user", "assistant"]
    return [{"role": "system", "content": system},
            *({"role": roles[i % 2], "content": text} for i, text in enumerate(turns))]


async def wait_log(server: RealServer, pattern: str, timeout: float) -> float:
    """Seconds until ``pattern`` appears in the server's log; fails after ``timeout``."""
    started = time.monotonic()
    regex = re.compile(pattern)
    while not regex.search(server.log()):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{pattern!r} not in {server.name}'s log within {timeout}s:\n"
                                 f"{server.log()[-1500:]}")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


# --- 1. id_slot pinning, as the server sees it ---------------------------------------------

async def test_the_pinned_slot_is_the_one_llama_server_used_and_the_next_turn_returns_to_it(
        llama_servers, balancer):
    server = llama_servers("LS")
    runtime = await balancer(seed_config(server))
    await detected(runtime, "LS")
    client = sdk(runtime)

    x1 = chat(PROMPT_A, "Tell me about apples.")
    first = await client.chat.completions.create(model=MODEL, messages=x1, max_tokens=8, temperature=0)
    # The answer's timings taught the balancer this server's prefill pace (the cache hold's).
    pace = runtime.context.registry.state("LS").pace.prefill_s_per_char
    assert timings_of(first)["prompt_n"] > 100 and pace is not None and 0 < pace < 0.01
    (slot_x, how), = selections(server)
    assert how == f"id ({slot_x})", "the balancer pinned the slot: llama-server did not choose it"
    (launched_slot, task_x), = launches(server)
    assert launched_slot == slot_x
    slots = await slots_of(server)
    assert slots[slot_x]["id_task"] == task_x
    assert slots[slot_x]["n_prompt_tokens"] >= first.usage.prompt_tokens
    other = 1 - slot_x
    assert "id_task" not in slots[other], "the other slot was never used"

    # Another conversation goes to the slot nobody used, keeping X's cache.
    y1 = chat(PROMPT_B, "Tell me about bananas.")
    await client.chat.completions.create(model=MODEL, messages=y1, max_tokens=8, temperature=0)
    assert selections(server)[-1] == (other, f"id ({other})")

    # X's next turn: the same slot, and the server reports the earlier turn as cached.
    x2 = [*x1, {"role": "assistant", "content": first.choices[0].message.content},
          {"role": "user", "content": "And pears?"}]
    second = await client.chat.completions.create(model=MODEL, messages=x2, max_tokens=8, temperature=0)
    assert selections(server)[-1] == (slot_x, f"id ({slot_x})")
    timings = timings_of(second)
    assert timings["cache_n"] >= first.usage.prompt_tokens - 1
    assert timings["prompt_n"] < second.usage.prompt_tokens - first.usage.prompt_tokens + 8
    assert second.usage.prompt_tokens_details.cached_tokens == timings["cache_n"]
    (_, task_x2) = launches(server)[-1]
    assert (await slots_of(server))[slot_x]["id_task"] == task_x2

    recent = runtime.context.stats.summary()["recent"]
    assert [r["server"] for r in recent] == ["LS"] * 3
    assert all(r["status"] == 200 for r in recent)
    print("reasons (newest first):", [r["reason"] for r in recent], "turn 2 timings:", timings)
    await client.close()


# --- 2. llama.cpp #28139: a pinned empty slot skips the host prompt cache -----------------

async def test_issue_28139_pinning_an_empty_slot_skips_the_host_prompt_cache_on_this_build(llama_servers):
    """On this build (llama.cpp in llama-cpp-python 0.3.36) #28139 is real: a request pinned
    to a slot that was never used (``selected slot by id (1)``, ``- skipping, slot is
    empty``) is computed from scratch, although its whole prompt sits in the host prompt cache
    (``--cache-ram``, default 8 GiB); the same request with ``id_slot: -1`` lands on the same
    empty slot (``selected slot by LRU``) and is restored from the host cache
    (``found better prompt``, cache_n = all but the last token). Pinning a slot that holds
    some other prompt does consult the host cache."""
    pinned = llama_servers("PIN", verbose=True)
    free = llama_servers("ANY", verbose=True)
    for server in (pinned, free):
        a = await native(server, PROMPT_A, 0)
        assert a["timings"]["cache_n"] == 0
        b = await native(server, PROMPT_B, 0)  # B over A: A goes to the host cache
        assert b["timings"]["cache_n"] <= 1
        assert "prompt_save:  - saving prompt with length 1094" in server.log()
    prompt_n = a["timings"]["prompt_n"]

    lost = await native(pinned, PROMPT_A, 1)  # pinned to the never-used slot
    assert lost["id_slot"] == 1
    assert lost["timings"]["cache_n"] == 0 and lost["timings"]["prompt_n"] == prompt_n
    tail = pinned.log().split("selected slot by id (1)", 1)[1]
    assert "- skipping, slot is empty" in tail and "found better prompt" not in tail

    restored = await native(free, PROMPT_A, -1)
    assert restored["id_slot"] == 1  # the same empty slot, chosen by the server
    assert selections(free)[-1] == (1, "LRU, t_last = -1")
    assert restored["timings"]["cache_n"] == prompt_n - 1
    assert "found better prompt" in free.log().split("selected slot by LRU", 1)[1]

    # Pinned to a slot that holds another prompt, the host cache is searched: slot 1 holds A
    # now, B was saved from slot 0 when slot 1 started, and comes back whole.
    again = await native(pinned, PROMPT_B, 1)
    assert again["timings"]["cache_n"] == b["timings"]["prompt_n"] + b["timings"]["cache_n"] - 1


async def test_a_kv_unified_server_empties_idle_slots_so_a_pinned_return_misses_the_host_cache(llama_servers):
    """With a unified KV buffer (``--kv-unified``; llama-server's default when ``--parallel``
    is not given: 4 slots, ``kv_unified = 'true'``) and ``--cache-idle-slots`` (default on), an
    idle slot is saved to the host cache and *cleared* as soon as another slot starts a task
    (/slots then shows its ``n_prompt_tokens`` as 0). A request pinned back to that slot finds
    it empty and, by #28139, skips the host cache: cache_n = 0. With ``id_slot: -1`` the server
    restores it (cache_n = all but the last token)."""
    server = llama_servers("KVU", "--kv-unified", verbose=True)
    assert "kv_unified = 'true'" in server.log()
    a = await native(server, PROMPT_A, 0)
    await native(server, PROMPT_B, 1)
    slots = await slots_of(server)
    assert slots[0]["n_prompt_tokens"] == 0, "slot 0 was cleared when slot 1 started"
    assert slots[1]["n_prompt_tokens"] > 1000

    back = await native(server, PROMPT_A, 0)
    assert back["timings"]["cache_n"] == 0 and back["timings"]["prompt_n"] == a["timings"]["prompt_n"]
    # Slot 1 was cleared in turn when slot 0 started; unpinned, B is restored from the host cache.
    unpinned = await native(server, PROMPT_B, -1)
    assert unpinned["id_slot"] == 1
    assert unpinned["timings"]["cache_n"] > 1000


async def test_a_conversation_returning_to_a_kv_unified_server_keeps_its_host_cached_prefix(
        llama_servers, balancer):
    """A kv-unified llama-server (its default without --parallel) empties an idle slot when
    another starts; pinned back there, a turn would skip the host cache (#28139) and be
    recomputed. Once /slots shows an emptied idle slot, the balancer stops pinning on that
    server and routes by server, and the returning turn is restored from the host cache."""
    server = llama_servers("KVU", "--kv-unified")
    runtime = await balancer(seed_config(server))
    await detected(runtime, "KVU")
    client = sdk(runtime)
    x1 = chat(PROMPT_A, "Tell me about apples.")
    first = await client.chat.completions.create(model=MODEL, messages=x1, max_tokens=8, temperature=0)
    (slot_x, _), = selections(server)
    await client.chat.completions.create(model=MODEL, messages=chat(PROMPT_B, "Bananas?"), max_tokens=8,
                                         temperature=0)
    slots = await slots_of(server)
    assert slots[slot_x]["n_prompt_tokens"] == 0, "llama-server emptied X's slot (saved to its host cache)"

    x2 = [*x1, {"role": "assistant", "content": first.choices[0].message.content},
          {"role": "user", "content": "And pears?"}]
    second = await client.chat.completions.create(model=MODEL, messages=x2, max_tokens=8, temperature=0)
    chosen = selections(server)[-1]
    await client.close()
    # The balancer saw the emptied slot on /slots and pins nothing on this server any more:
    # llama-server picks the slot and restores X's prompt from its host cache (#28139 avoided).
    assert chosen[1].startswith("LRU"), f"pinned {chosen}: an emptied slot skips the host cache"
    assert runtime.context.registry.state("KVU").clears_idle_slots
    timings = timings_of(second)
    assert timings["cache_n"] >= first.usage.prompt_tokens - 1, (
        f"pinned to the emptied slot {slot_x}: llama-server recomputed the prompt "
        f"(cache_n={timings['cache_n']}, prompt_n={timings['prompt_n']})")


# --- 3. cancel on client disconnect ---------------------------------------------------------

LONG = {"max_tokens": 4000, "temperature": 0, "extra_body": {"ignore_eos": True}}
CANCEL_WITHIN_S = 1.0
NON_STREAMED_CANCEL_WITHIN_S = 8.0  # llama-server's 1 s wait, restarted by the balancer's 1 s polls
CANCEL_WAIT_S = 10.0  # how long to wait for the cancel at all, to report how late it came


async def _cancelled_on_the_server(server: RealServer, runtime: Any, http: aiohttp.ClientSession,
                                   closed_at: float, within_s: float = CANCEL_WITHIN_S) -> dict[str, Any]:
    """The task llama-server last started is cancelled within a second of the client closing,
    its slot goes idle, and the balancer holds nothing in flight. Returns what the server said."""
    slot, task = launches(server)[-1]
    await wait_log(server, rf"stop: cancel task, id_task = {task}\n", CANCEL_WAIT_S)
    after = time.monotonic() - closed_at
    released = re.compile(rf"slot +release: id +{slot} \| task {task} \| stop processing: n_tokens = (\d+)")
    await wait_log(server, released.pattern, 0.5)
    n_tokens = int(released.findall(server.log())[-1])
    assert n_tokens < 4000, f"generation stopped early (slot held {n_tokens} tokens)"
    await wait_until(lambda: not any(s["is_processing"] for s in server.get("/slots")), timeout=1.0)
    assert (await slots_of(server))[slot]["id_task"] == task
    await assert_nothing_in_flight(http, runtime)
    assert after < within_s, f"cancel logged {after:.3f}s after the client closed"
    return {"after_s": round(after, 3), "n_tokens": n_tokens}


async def test_a_client_closing_a_stream_mid_way_cancels_the_generation_on_llama_server(
        llama_servers, balancer, http):
    server = llama_servers("LS")
    runtime = await balancer(seed_config(server))
    await detected(runtime, "LS")
    client = sdk(runtime)
    stream = await client.chat.completions.create(model=MODEL, messages=chat("Count.", "Go on."), stream=True,
                                                  **LONG)
    received = 0
    async for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received >= 50:
            break
    closed_at = time.monotonic()
    await stream.close()
    seen = await _cancelled_on_the_server(server, runtime, http, closed_at)
    await client.close()
    print("streamed cancel:", seen)


async def test_a_client_abandoning_a_non_streamed_request_cancels_the_generation_on_llama_server(
        llama_servers, balancer, http):
    """The balancer lets go of the upstream connection at once: its in-flight count is 0 within
    0.2 s and its pool holds no connection mid-exchange. llama-server, non-streamed, notices the
    closed connection only when its 1 s wait for the result times out, and every /slots and
    /metrics poll restarts that wait (see the next test): at the tests' 20 ms polls the cancel
    never comes, so this runs at the balancer's default, 1 s — and even then the cancel comes
    1.5-5.6 s after the client left (5 runs here; the poll period equals the server's wait), so
    the bound is only "before the generation would have ended" (4,000 tokens, ~8.6 s)."""
    server = llama_servers("LS")
    runtime = await balancer(seed_config(server, health_poll_interval_s=1.0, health_window=2))
    await detected(runtime, "LS")
    client = sdk(runtime)
    call = asyncio.create_task(client.chat.completions.create(
        model=MODEL, messages=chat("Count.", "Go on."), **LONG))

    async def generating() -> bool:
        slots = await slots_of(server)
        return any(s["is_processing"] and s["next_token"][0]["n_decoded"] > 50 for s in slots)
    await wait_until(generating, timeout=5.0, interval=0.02)
    call.cancel()
    closed_at = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_until(lambda: runtime.context.registry.state("LS").total == 0, timeout=0.2, interval=0.005)
    seen = await _cancelled_on_the_server(server, runtime, http, closed_at, within_s=NON_STREAMED_CANCEL_WITHIN_S)
    await client.close()
    print("non-streamed cancel:", seen)


def _abandon_a_non_streamed_generation(server: RealServer, poll: str | None, max_tokens: int) -> str:
    """A raw client sends a non-streamed chat and goes away after 0.3 s, while another client
    polls ``poll`` every 20 ms (``"stream"``: streams a long answer from the other slot instead);
    what the server's log says of the abandoned task afterwards."""
    import socket
    import threading
    stop = threading.Event()

    def request(body: dict[str, Any]) -> bytes:
        raw = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "ignore_eos": True,
                            "temperature": 0, **body})
        return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(raw), raw))

    def other() -> None:
        if poll == "stream":
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(request({"max_tokens": 4 * max_tokens, "stream": True}))
                sock.settimeout(0.1)
                while not stop.is_set():
                    try:
                        sock.recv(65536)
                    except TimeoutError:
                        pass
            return
        while poll and not stop.wait(0.02):
            with urllib.request.urlopen(server.url + poll, timeout=5) as answer:
                answer.read()
    thread = threading.Thread(target=other)
    thread.start()
    try:
        if poll == "stream":
            deadline = time.monotonic() + 5
            while not launches(server) and time.monotonic() < deadline:
                time.sleep(0.01)
        started = len(launches(server))
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(request({"max_tokens": max_tokens}))
            deadline = time.monotonic() + 5
            while len(launches(server)) == started and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)
        slot, task = launches(server)[-1]
        released = re.compile(rf"release: id +{slot} \| task {task} \| stop processing: n_tokens = (\d+)")
        deadline = time.monotonic() + 3 * max_tokens / 400 + 5
        while not released.search(server.log()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return server.log().split(f"| task {task} | processing task", 1)[1]
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("poll", ["/slots", "/metrics", "stream"])
def test_polling_slots_or_metrics_often_keeps_llama_server_generating_for_a_gone_client(llama_servers, poll):
    """A llama-server fact of this build that the balancer must live with: a non-streamed
    request whose client went away is cancelled (``stop: cancel task``) within a second when
    the server is otherwise quiet, but runs on — here, as a rule, to its last token — while
    someone polls /slots or /metrics every 20 ms (the tests' FAST_OPTIONS poll interval), or
    while another slot streams an answer. The handler checks its connection only when its
    1 s wait for a result times out (``server_response::recv_with_timeout``, tools/server/
    server-queue.cpp: ``wait_for`` restarted on every wake-up), and every other task's result
    — each poll is a task, each streamed token a result — wakes it first. Polls a little under
    1 s apart only delay the cancel (0.9 s: after ~6 s). /health polls do not matter."""
    quiet = _abandon_a_non_streamed_generation(llama_servers("QUIET"), None, 3000)
    quiet_tokens = int(re.search(r"stop processing: n_tokens = (\d+)", quiet)[1])
    assert "stop: cancel task" in quiet and quiet_tokens < 3000
    polled = _abandon_a_non_streamed_generation(llama_servers("POLLED"), poll, 3000)
    polled_tokens = int(re.search(r"stop processing: n_tokens = (\d+)", polled)[1])
    print(f"{poll}: quiet cancelled at {quiet_tokens} tokens; polled: cancel logged "
          f"{'stop: cancel task' in polled}, {polled_tokens} tokens")
    assert "stop: cancel task" not in polled
    assert polled_tokens >= 3000, "polled, the server generated every token for a client long gone"


# --- 4. timings and usage relayed ---------------------------------------------------------

def sse_events(raw: bytes) -> list[Any]:
    """An SSE body's ``data:`` payloads, JSON-decoded, ``[DONE]`` kept as the string."""
    events = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[len(b"data: "):]
            events.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return events


def counters(text: str, server: str) -> dict[str, float]:
    """Prometheus ``*_total`` samples summed over labels, for one server where labelled."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"([a-z_:]+_total)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if match and (match[2] is None or f'server="{server}"' in match[2]):
            sums[match[1]] = sums.get(match[1], 0.0) + float(match[3])
    return sums


def check_timings(timings: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> None:
    assert timings["predicted_n"] == completion_tokens
    assert timings["prompt_n"] + timings["cache_n"] == prompt_tokens


async def test_timings_and_usage_reach_the_client_in_every_shape_and_the_token_counters_count_them(
        llama_servers, balancer, http):
    server = llama_servers("LS")
    runtime = await balancer(seed_config(server))
    await detected(runtime, "LS")
    client = sdk(runtime)
    ask = {"model": MODEL, "messages": chat("Be brief.", "Name a fruit."), "max_tokens": 6, "temperature": 0,
           "extra_body": {"ignore_eos": True}}
    sent: list[tuple[int, int, dict[str, Any]]] = []  # (prompt, completion, timings) per request
    direct: list[dict[str, Any]] = []  # timings of the requests sent to the server directly

    # SDK, non-streamed: usage and timings in the body.
    answer = await client.chat.completions.create(**ask)
    assert answer.usage.completion_tokens == 6
    check_timings(timings_of(answer), answer.usage.prompt_tokens, 6)
    sent.append((answer.usage.prompt_tokens, 6, timings_of(answer)))

    # SDK, streamed without include_usage: timings in the finish chunk, no usage chunk.
    chunks = [c async for c in await client.chat.completions.create(**ask, stream=True)]
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0] is chunks[-1] and finish[0].choices[0].finish_reason == "length"
    assert not any(c.usage for c in chunks)
    timings = timings_of(finish[0])
    assert [c.model_extra.get("timings") is not None for c in chunks].count(True) == 1
    check_timings(timings, answer.usage.prompt_tokens, 6)
    sent.append((answer.usage.prompt_tokens, 6, timings))

    # SDK, streamed with include_usage: a last chunk with choices [] carries usage and timings.
    chunks = [c async for c in await client.chat.completions.create(
        **ask, stream=True, stream_options={"include_usage": True})]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 6
    assert [c.model_extra.get("timings") is not None for c in chunks].count(True) == 1
    check_timings(timings_of(last), last.usage.prompt_tokens, 6)
    assert chunks[-2].choices[0].finish_reason == "length"
    sent.append((last.usage.prompt_tokens, 6, timings_of(last)))

    # Raw bytes, the same three shapes, checked against what llama-server itself answers.
    body = {**{k: v for k, v in ask.items() if k != "extra_body"}, "ignore_eos": True}
    for extra in ({}, {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}):
        shapes = []
        for base in (runtime.url, server.url):
            async with http.post(base + "/v1/chat/completions", json={**body, **extra}) as response:
                assert response.status == 200
                raw = await response.read()
                kind = response.headers["Content-Type"]
            if not extra:
                got = orjson.loads(raw)
                shapes.append((kind, sorted(got), sorted(got["usage"]), sorted(got["timings"])))
                prompt, timings = got["usage"]["prompt_tokens"], got["timings"]
            else:
                events = sse_events(raw)
                assert events[-1] == "[DONE]"
                carrier = [e for e in events[:-1] if "timings" in e]
                assert len(carrier) == 1
                if "stream_options" in extra:
                    assert carrier[0] is events[-2] and carrier[0]["choices"] == [] and "usage" in carrier[0]
                else:
                    assert carrier[0]["choices"][0]["finish_reason"] == "length"
                    assert not any("usage" in e for e in events[:-1])
                shapes.append((kind, len(events), sorted(carrier[0])))
                timings = carrier[0]["timings"]
                prompt = timings["prompt_n"] + timings["cache_n"]
            check_timings(timings, prompt, 6)
            if base == runtime.url:
                sent.append((prompt, 6, timings))
            else:
                direct.append(timings)
        assert shapes[0] == shapes[1], "through the balancer, the answer has the server's own shape"

    # The balancer's counters saw every request's tokens; llama-server's own counters agree.
    want_prompt = sum(p for p, _, _ in sent)
    want_completion = sum(c for _, c, _ in sent)

    async def counted() -> dict[str, float]:
        async with http.get(runtime.url + "/metrics") as response:
            ours = counters(await response.text(), "LS")
        return ours if ours.get("llama_balancer_completion_tokens_total") == want_completion else {}
    ours = await wait_until(counted, timeout=2.0)
    assert ours["llama_balancer_prompt_tokens_total"] == want_prompt
    theirs = counters(await asyncio.to_thread(_text, server.url + "/metrics"), "LS")
    every = [t for _, _, t in sent] + direct
    assert theirs["llamacpp:tokens_predicted_total"] == want_completion + 6 * len(direct)
    assert theirs["llamacpp:prompt_tokens_total"] == sum(t["prompt_n"] for t in every), "uncached only"
    assert theirs["llamacpp:prompt_tokens_cached_total"] == sum(t["cache_n"] for t in every)
    await client.close()
    await assert_nothing_in_flight(http, runtime)


def _text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


# --- 5. llama-server's own errors, passed through ----------------------------------------

async def _answer(http: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, str, bytes]:
    async with http.post(url, data=data, headers={"Content-Type": "application/json"}) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


async def test_a_prompt_over_the_slot_context_gets_llama_servers_own_400_byte_for_byte(
        llama_servers, balancer, http):
    server = llama_servers("LS", ctx=1024)  # 512 tokens a slot
    runtime = await balancer(seed_config(server))
    await detected(runtime, "LS")
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT_A}], "max_tokens": 4})
    direct = await _answer(http, server.url + "/v1/chat/completions", body)
    relayed = await _answer(http, runtime.url + "/v1/chat/completions", body)
    assert direct[0] == 400
    error = orjson.loads(direct[2])["error"]
    assert error["type"] == "exceed_context_size_error" and error["n_ctx"] == 512
    assert relayed == direct, "status, content type and body bytes exactly as llama-server answered"

    client = sdk(runtime)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT_A}],
                                             max_tokens=4)
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "exceed_context_size_error"
    await client.close()
    await assert_nothing_in_flight(http, runtime)


async def test_a_body_that_is_not_json_gets_the_balancers_400_where_llama_server_would_answer_500(
        llama_servers, balancer, http):
    """Documented difference: llama-server answers a body that is not JSON with 500
    ``server_error`` (its JSON parser's message); the balancer must read ``model`` to route,
    so it answers such a body itself, 400 ``invalid_request_error``, and sends nothing to the
    server. A body that *is* JSON but that llama-server refuses (``messages`` not a list)
    reaches it and its own 400 comes back unchanged."""
    server = llama_servers("LS")
    runtime = await balancer(seed_config(server))
    await detected(runtime, "LS")
    broken = b'{"model": "tiny", "messages": ['
    status, _, raw = await _answer(http, server.url + "/v1/chat/completions", broken)
    assert status == 500
    assert orjson.loads(raw)["error"]["type"] == "server_error"
    assert orjson.loads(raw)["error"]["message"].startswith("[json.exception.parse_error.101]")
    tasks_before = launches(server)
    status, kind, raw = await _answer(http, runtime.url + "/v1/chat/completions", broken)
    assert status == 400 and kind.startswith("application/json")
    error = orjson.loads(raw)["error"]
    assert error["message"].startswith("request body is not valid JSON")
    print("balancer's answer to a non-JSON body:", raw.decode())

    wrong = orjson.dumps({"model": MODEL, "messages": "not a list"})
    direct = await _answer(http, server.url + "/v1/chat/completions", wrong)
    assert direct[0] == 400 and orjson.loads(direct[2])["error"]["type"] == "invalid_request_error"
    assert await _answer(http, runtime.url + "/v1/chat/completions", wrong) == direct
    assert launches(server) == tasks_before
    await assert_nothing_in_flight(http, runtime)


# --- 6. one server killed mid-traffic -------------------------------------------------------

@dataclass
class Outcome:
    request_id: str
    stream: bool
    ok: bool = False
    chunks: int = 0  # content chunks received before the end or the error
    error: str | None = None


async def _one_request(client: openai.AsyncOpenAI, index: int, stream: bool, max_tokens: int) -> Outcome:
    """One request, judged whole: a success is an answer with every token, a finish reason and
    usage; anything else the client sees (an exception) is recorded, never raised."""
    out = Outcome(f"kill-{index:03d}", stream)
    ask = {"model": MODEL, "messages": chat("Answer at length.", f"Question number {index}?"),
           "max_tokens": max_tokens, "temperature": 0, "extra_body": {"ignore_eos": True},
           "extra_headers": {"X-Request-Id": out.request_id}}
    try:
        if stream:
            finish, usage = None, None
            async for chunk in await client.chat.completions.create(
                    **ask, stream=True, stream_options={"include_usage": True}):
                if chunk.choices:
                    out.chunks += bool(chunk.choices[0].delta.content)
                    finish = chunk.choices[0].finish_reason or finish
                usage = chunk.usage or usage
            out.ok = finish == "length" and usage is not None and usage.completion_tokens == max_tokens
        else:
            answer = await client.chat.completions.create(**ask)
            out.ok = answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == max_tokens
        if not out.ok:
            out.error = "truncated-looking success"
    except (openai.APIError, httpx2.HTTPError) as exc:
        cause = exc.__cause__ or exc.__context__
        out.error = f"{type(exc).__name__}: {exc}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
    return out


async def test_a_server_killed_mid_traffic_fails_only_the_streams_it_was_sending(
        llama_servers, balancer, http, tmp_path: Path):
    """60 chat requests, 4 at a time, two thirds streamed, over two llama-servers; server A is
    SIGKILLed part-way while it serves at least one of them. Every request that had not
    started answering from A succeeds whole — those caught before their first byte are retried
    on B — and the only client errors are streams A was sending: each ends in a connection
    error (never a clean end that looks complete), and the balancer's access log shows it on
    A with its first byte sent and the outcome ``upstream_error``. With ``resume: off``;
    tests/real/test_real_resume.py kills servers with resume on (every stream completes)."""
    a, b = llama_servers("A"), llama_servers("B")
    access = tmp_path / "access.jsonl"
    runtime = await balancer(seed_config(a, b, access_log=str(access), resume="off"))
    await detected(runtime, "A", "B")
    client = sdk(runtime)
    total, concurrency, max_tokens = 60, 4, 120
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)
    outcomes: list[Outcome] = []
    streaming: list[Outcome] = []  # in progress, for the kill trigger

    async def worker() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            outcomes.append(await _one_request(client, index, index % 3 != 2, max_tokens))

    async def killer() -> float:
        registry = runtime.context.registry
        await wait_until(lambda: len(outcomes) >= 16 and registry.state("A").total >= 1
                         and registry.state("B").total >= 1, timeout=30.0, interval=0.002)
        await asyncio.sleep(0.05)  # let A's streams get under way
        a.kill()
        return time.monotonic()

    kill = asyncio.create_task(killer())
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=120)
    await kill
    await client.close()
    assert len(outcomes) == total

    def logged() -> dict[str, dict[str, Any]] | None:
        lines = access.read_text().splitlines() if access.exists() else []
        return {e["request_id"]: e for e in map(json.loads, lines)} if len(lines) >= total else None
    entries = await wait_until(logged, timeout=3.0)
    failed = [o for o in outcomes if not o.ok]
    retried = [entries[o.request_id] for o in outcomes if entries[o.request_id]["retries"]]
    on_a = [o for o in outcomes if entries[o.request_id]["server"] == "A"]
    print(f"\n{len(outcomes)} requests: {len(on_a)} answered by A, {len(retried)} retried on B, "
          f"{len(failed)} failed at the client:")
    for o in failed:
        e = entries[o.request_id]
        print(f"  {o.request_id} stream={o.stream} chunks={o.chunks} {o.error!r} | log: server={e['server']} "
              f"outcome={e['outcome']} status={e['status']} ttft_ms={e['ttft_ms']} retries={e['retries']}")
    for e in retried:
        print(f"  retried: {e['request_id']} -> {e['server']} status={e['status']} outcome={e['outcome']} "
              f"retries={e['retries']} duration_ms={e['duration_ms']}")

    assert any(o.ok for o in on_a), "A served requests before it was killed"
    for o in failed:
        e = entries[o.request_id]
        assert o.stream, f"{o.request_id}: a non-streamed request never had a byte sent, so it is retried"
        assert o.error != "truncated-looking success", f"{o.request_id} ended as if whole but was not"
        assert ("RemoteProtocolError" in o.error or "APIConnectionError" in o.error
                or "ReadError" in o.error), o.error
        assert e["server"] == "A" and e["ttft_ms"] is not None and e["outcome"] == "upstream_error", e
        assert e["status"] == 200 and e["retries"] == 0, e
    for e in retried:
        assert e["server"] == "B" and e["status"] == 200 and e["outcome"] == "completed", e
    assert all(o.ok for o in outcomes if entries[o.request_id]["server"] == "B")
    await wait_until(lambda: runtime.context.registry.state("A").status == "invalid", timeout=2.0)
    await assert_nothing_in_flight(http, runtime)
