"""Reference target ``aiohttp-only``: aiohttp.web answering the bench's chat request itself,
with no proxying, routing or bookkeeping at all.

It measures the ceiling of anything whose front is aiohttp.web on one core: llama-balancer
can never do more requests per second than this in S1. Streams get one canned event (S1
is the scenario it is for; the harness runs it nowhere else).

Usage: ``python bench/reference/aiohttp_only.py PORT``
"""
from __future__ import annotations

import sys

from aiohttp import web

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

_ANSWER = (b'{"id":"chatcmpl-ref","object":"chat.completion","created":1700000000,"model":"bench-model",'
           b'"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hello!"}}],'
           b'"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}')
_EVENTS = b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello!"}}]}\n\n' \
          b"data: [DONE]\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if b'"stream": true' in body or b'"stream":true' in body:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_EVENTS)
        await response.write_eof()
        return response
    return web.Response(body=_ANSWER, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    if uvloop is not None:
        uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
