"""The model endpoints on the aiohttp side: never served there.

The native front serves every model endpoint's request (one data path, ``front.py``); a
connection aiohttp serves comes back to it with the next such request
(``handoff.HandedOff``). Only a model request pipelined in one read behind another request
reaches aiohttp: it is answered 421 and the connection closes, so that the client sends it
again on a new connection (RFC 9110 15.5.20: a client may retry a 421 on another connection,
whatever the method).
"""
from __future__ import annotations

from aiohttp import web

from .errors import error_response


async def handle_misdirected(request: web.Request) -> web.StreamResponse:
    response = error_response(421, "a model request pipelined behind another request on one connection is not "
                                   "served: send it again on a new connection", "invalid_request_error",
                              "misdirected_request")
    response.force_close()
    return response
