"""Model names no backend knows: routed as before (``fallback``) or refused (``reject``).

A name is unknown when no server of its route lists it in ``/v1/models`` while at least one
of their lists is known: a llama-swap lists what it can load, so its names stay known; a
plain llama-server, which answers whatever name it is sent, lists its one model, so a typo
is caught; a server whose list was never read decides nothing. With no pattern matching,
every server's list counts (the name goes to the fallback server only if nobody lists it).
Either way the first request for each unknown name logs one warning (throttled).
"""
from __future__ import annotations

import logging

from ..core.errors import ModelNotFound
from ..core.models import public_models
from ..io.oplog import Notices
from ..state.registry import Registry
from .resolve import Resolved

log = logging.getLogger("llama_balancer.routing")

LISTED_AT_MOST = 30  # served models named in a 404's message


def check_known(registry: Registry, notices: Notices, resolved: Resolved, reject: bool) -> None:
    """Raise ModelNotFound for an unknown name when ``reject``; warn once per name."""
    names = resolved.candidates if resolved.candidates is not None else registry.names()
    model = resolved.upstream_model
    listed = False
    for name in names:
        state = registry.find(name)
        if state is None or state.served is None:
            continue
        listed = True
        if state.instances(model):
            return
    if not listed:
        return
    served = served_models(registry)
    if notices.first_unknown(resolved.requested):
        action = "answered 404 model_not_found" if reject else "routed as the config says"
        notices.emit(log, logging.WARNING, "unknown_model", "unknown_model",
                     "unknown model %r: no server of its route lists it; %s (served: %s)",
                     resolved.requested, action, ", ".join(served) or "none",
                     model=resolved.requested, upstream_model=model if model != resolved.requested else None,
                     action="reject" if reject else "fallback", servers=list(names))
    if reject:
        shown = ", ".join(served[:LISTED_AT_MOST]) + (f" and {len(served) - LISTED_AT_MOST} more"
                                                      if len(served) > LISTED_AT_MOST else "")
        raise ModelNotFound(f"The model {resolved.requested!r} does not exist or is not served here; "
                            f"served models: {shown or 'none known yet'}")


def served_models(registry: Registry) -> list[str]:
    """Every model the backends list, without instance variants (as ``/v1/models``)."""
    names: list[str] = []
    for name in registry.names():
        names.extend(registry.state(name).served or ())
    return public_models(names)
