"""Handlers of the model-bearing endpoints: chat, text and native completions, embeddings,
Anthropic messages, OpenAI responses, and Ollama's chat, generate and embeddings.

Each request is logged in the event log, waits for a slot of its instance, spends the
simulated prompt time, then answers in one body or as a stream written event by event.
The fault in the live config is applied per request: "500"/"503" answer an error,
"stall" sleeps before anything is sent, "drop" cuts the connection mid-answer.
A client that goes away cancels the handler (handler_cancellation=True): the slot is freed
by the `working` context and the event's outcome is "client_closed".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from . import ollama
from .dialects import (CHAT, EMBED, EMBEDDINGS, MESSAGES, NATIVE, OLLAMA, OLLAMA_CHAT, OLLAMA_EMBED,
                       OLLAMA_EMBEDDINGS, OLLAMA_GENERATE, RESPONSES, TEXT)
from .engine import Run, evaluate_prompt, next_token, working
from .events import close_event, mark_first_byte
from .formats import EVENT_STREAM, format_for
from .generate import embedding_body
from .parse import Job, SimHTTPError, check_context, decode_body, parse_job
from .slots import Slot
from .state import SimState
from .tokens import tokenize

STATE_KEY: web.AppKey[SimState] = web.AppKey("sim_state", SimState)
JSON_TYPE = "application/json; charset=utf-8"


class FaultError(SimHTTPError):
    """An error answered because a fault is configured (event outcome "fault")."""


class _Dropped(Exception):
    """Raised by the writers when the "drop" fault says to cut the connection now."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None,
                  ) -> web.Response:
    """A JSON response serialised with orjson (bytes are sent as they are)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = web.Response(body=raw, status=status, headers=headers)
    resp.headers["Content-Type"] = JSON_TYPE
    return resp


def error_response(err: SimHTTPError, instance: str | None = None, kind: str = CHAT) -> web.Response:
    """llama-server's error JSON; Ollama's ``{"error": "message"}`` on its endpoints."""
    headers = {"X-Sim-Instance": instance} if instance else None
    body = ollama.error_body(err.message) if kind in OLLAMA else err.body()
    return json_response(body, status=err.status, headers=headers)


async def handle_chat(request: web.Request) -> web.StreamResponse:
    return await _serve(request, CHAT)


async def handle_text(request: web.Request) -> web.StreamResponse:
    return await _serve(request, TEXT)


async def handle_native(request: web.Request) -> web.StreamResponse:
    return await _serve(request, NATIVE)


async def handle_embeddings(request: web.Request) -> web.StreamResponse:
    return await _serve(request, EMBED)


async def handle_messages(request: web.Request) -> web.StreamResponse:
    return await _serve(request, MESSAGES)


async def handle_responses(request: web.Request) -> web.StreamResponse:
    return await _serve(request, RESPONSES)


async def handle_ollama_chat(request: web.Request) -> web.StreamResponse:
    return await _serve(request, OLLAMA_CHAT)


async def handle_ollama_generate(request: web.Request) -> web.StreamResponse:
    return await _serve(request, OLLAMA_GENERATE)


async def handle_ollama_embed(request: web.Request) -> web.StreamResponse:
    return await _serve(request, OLLAMA_EMBED)


async def handle_ollama_embeddings(request: web.Request) -> web.StreamResponse:
    return await _serve(request, OLLAMA_EMBEDDINGS)


async def _serve(request: web.Request, kind: str) -> web.StreamResponse:
    """Run one request, turning every way it can end into an event outcome."""
    state = request.app[STATE_KEY]
    event = state.events.open(request.path)
    try:
        return await _serve_job(request, state, kind, event)
    except SimHTTPError as err:
        close_event(event, "fault" if isinstance(err, FaultError) else "error", err.status)
        return error_response(err, event["instance"], kind)
    except asyncio.CancelledError:
        close_event(event, "fault" if state.config.fault == "refuse" else "client_closed")
        raise
    except ConnectionResetError:
        close_event(event, "client_closed")
        return web.Response(status=499)  # nobody will read it: the client is gone
    finally:
        close_event(event, "error")


async def _serve_job(request: web.Request, state: SimState, kind: str,
                     event: dict[str, Any]) -> web.StreamResponse:
    body = decode_body(await request.read())
    event["body"] = body
    job = parse_job(kind, body, state)
    event.update(model=job.model, instance=job.instance, stream=job.stream)
    await _entry_fault(state)
    if kind in EMBEDDINGS:
        return await _embed(request, state, job, body.get("prompt" if kind == OLLAMA_EMBEDDINGS else "input"), event)
    check_context(job, state.config.ctx_per_slot)
    run = Run(job=job, task_id=state.next_task_id(), created=int(time.time()),
              n_ctx=state.config.ctx_per_slot)
    async with working(state, run) as slot:
        event.update(slot=slot.id, prompt_n=run.prompt_n, cache_n=run.cache_n)
        await evaluate_prompt(state.config, run)
        try:
            if job.stream:
                return await _stream(request, state, run, slot, event)
            for _ in range(run.n_predict):
                await next_token(state.config, run, slot)
            return await _send_body(request, state, format_for(kind).full(run), event)
        finally:
            event["completion_tokens"] = len(run.pieces)


async def _entry_fault(state: SimState) -> None:
    """Apply "500"/"503" (an error answer) or "stall" (a long silence) before any work."""
    cfg = state.config
    if cfg.fault == "500":
        raise FaultError(500, "simulated server error", "server_error")
    if cfg.fault == "503":
        raise FaultError(503, "Loading model", "unavailable_error")
    if cfg.fault == "stall":
        await asyncio.sleep(cfg.stall_s)


def _stream_response(instance: str, content_type: str) -> web.StreamResponse:
    resp = web.StreamResponse(status=200)
    resp.headers["Content-Type"] = content_type
    if content_type == EVENT_STREAM:
        resp.headers["X-Accel-Buffering"] = "no"
    resp.headers["X-Sim-Instance"] = instance
    resp.enable_chunked_encoding()
    return resp


async def _stream(request: web.Request, state: SimState, run: Run, slot: Slot,
                  event: dict[str, Any]) -> web.StreamResponse:
    """Write the stream (SSE, or Ollama's NDJSON), each event flushed as soon as it exists."""
    fmt = format_for(run.job.kind)
    resp = _stream_response(run.job.instance, fmt.content_type)
    await resp.prepare(request)
    mark_first_byte(event)
    writer = _EventWriter(resp, state)
    try:
        for payload in fmt.opening(run):
            await writer.send(payload)
        for _ in range(run.n_predict):
            for payload in fmt.token(run, await next_token(state.config, run, slot)):
                await writer.send(payload)
        for payload in fmt.closing(run):
            await writer.send(payload)
        await resp.write_eof()
    except _Dropped:
        _cut(request)
        close_event(event, "fault", 200)
        return resp
    except ConnectionResetError:
        close_event(event, "client_closed", 200)
        return resp
    close_event(event, "completed", 200)
    return resp


class _EventWriter:
    """Writes stream events, cutting the connection when the "drop" fault says so."""

    def __init__(self, resp: web.StreamResponse, state: SimState) -> None:
        self._resp = resp
        self._cfg = state.config
        self.sent = 0

    async def send(self, payload: bytes) -> None:
        if self._cfg.fault == "drop" and self.sent >= self._cfg.drop_after_chunks:
            raise _Dropped
        await self._resp.write(payload)
        self.sent += 1


def _cut(request: web.Request) -> None:
    """Close the TCP connection under a response that is not finished (flushes first)."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def _send_body(request: web.Request, state: SimState, body: bytes,
                     event: dict[str, Any]) -> web.StreamResponse:
    """Send a whole JSON body, or with "drop" its headers and first half only."""
    instance = event["instance"]
    if state.config.fault != "drop":
        resp = json_response(body, headers={"X-Sim-Instance": instance})
        await resp.prepare(request)
        mark_first_byte(event)
        await resp.write_eof()
        close_event(event, "completed", 200)
        return resp
    resp = web.StreamResponse(status=200)
    resp.headers["Content-Type"] = JSON_TYPE
    resp.headers["X-Sim-Instance"] = instance
    resp.content_length = len(body)
    await resp.prepare(request)
    mark_first_byte(event)
    await resp.write(body[: len(body) // 2])
    _cut(request)
    close_event(event, "fault", 200)
    return resp


def _embed_inputs(raw: Any) -> list[str]:
    """The texts to embed: one string, a list of strings, or token ids (one input)."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        return list(raw)
    return [orjson.dumps(raw).decode()]


async def _embed(request: web.Request, state: SimState, job: Job, raw: Any,
                 event: dict[str, Any]) -> web.StreamResponse:
    """Answer embeddings at once: no slot, no delay, same faults."""
    started = time.monotonic()
    inputs = _embed_inputs(raw)
    n_tokens = sum(len(tokenize(text)) for text in inputs)
    event.update(prompt_n=n_tokens, cache_n=0)
    if job.kind in OLLAMA:
        payload = ollama.embedding_body(job.kind, job.instance, inputs, n_tokens, started)
    else:
        payload = embedding_body(job.instance, inputs, n_tokens)
    return await _send_body(request, state, orjson.dumps(payload), event)
