"""Everything a handler may use, owned by the runtime and handed to the app once.

The routing layer does not see it: the ``Router`` was built with its own dependencies, and
handlers reach it (and the ``Recorder``) through here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..core.auth import AuthPolicy
from ..core.config import Config
from ..core.identity import TrustedProxies
from ..io.backend_watch import BackendWatch
from ..io.gpu import GpuMonitor
from ..io.observability import AccessLog, Metrics
from ..io.oplog import Notices
from ..io.pollers import Pollers
from ..io.shared_state import SharedState
from ..io.upstream import UpstreamClient
from ..routing.recording import Recorder
from ..routing.router import Router
from ..state.access_stats import AccessStats
from ..state.affinity import AffinityStore
from ..state.events import EventCounts
from ..state.queue import WaitQueue
from ..state.clock import Clock
from ..state.registry import Registry
from ..state.series import BackendSeries
from ..state.sticky import StickyStore


@dataclass
class AppContext:
    config: Config  # replaced as a whole on reload; read once per request
    clock: Clock
    registry: Registry
    sticky: StickyStore
    stats: AccessStats
    client: UpstreamClient
    pollers: Pollers
    gpu: GpuMonitor
    metrics: Metrics
    access_log: AccessLog
    auth: AuthPolicy
    trusted: TrustedProxies
    affinity: AffinityStore
    queue: WaitQueue
    watch: BackendWatch  # logs backend state changes (after polls and failed requests)
    router: Router  # the model-bearing requests' way (routing/)
    recorder: Recorder  # opens and closes every exchange's record (metrics, access log, stats)
    notices: Notices  # throttled log lines (retries, 429s, unknown models)
    series: BackendSeries  # dashboard, per backend, 15 min
    events: EventCounts  # dashboard errors panel, last hour
    shared: SharedState | None = None  # replicas sharing state through Redis; None: one process
    info: dict[str, Any] = field(default_factory=dict)  # config path, loaded_at, last error
    # Set by the runtime: re-read the config file; answers {"ok": bool, ...}.
    reload: Callable[[], Awaitable[dict[str, Any]]] | None = None


CONTEXT: web.AppKey[AppContext] = web.AppKey("llama_balancer_context", AppContext)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)


def context_of(request: web.Request) -> AppContext:
    return request.app[CONTEXT]
