"""The aiohttp side of recording: an exchange opened from a request aiohttp parsed (the
``Recorder`` in ``routing/recording.py`` keeps every record)."""
from __future__ import annotations

from aiohttp import web

from ..state.exchange import Exchange
from .context import REQUEST_ID, AppContext


def begin_exchange_for(ctx: AppContext, request: web.Request, endpoint_label: str) -> Exchange:
    """An exchange for a request that aiohttp parsed."""
    return ctx.recorder.begin(request[REQUEST_ID], request.path, endpoint_label,
                              request.headers.get("X-Forwarded-For"), request.remote)
