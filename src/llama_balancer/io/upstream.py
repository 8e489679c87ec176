"""One aiohttp ClientSession per process, with aiohttp's errors mapped to ours in one place."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import aiohttp

from ..core.config import BalancerOptions
from ..core.errors import BalancerError, UpstreamError, UpstreamTimeout

_NO_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type")


class UpstreamClient:
    """Keep-alive pool to every backend; bytes pass through untouched (no decompression)."""

    def __init__(self, options: BalancerOptions) -> None:
        self._options = options
        self._session: aiohttp.ClientSession | None = None
        self.request_timeout = _request_timeout(options)

    def apply_timeouts(self, options: BalancerOptions) -> None:
        """A reload: every request from now on gets the new timeouts (they are passed per
        request). The pool's size is the connector's, fixed at start."""
        self.request_timeout = _request_timeout(options)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._options.upstream_pool_size,
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=4,  # under llama-server's own 5 s (it closes idle connections then)
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=self.request_timeout,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return self._session

    @asynccontextmanager
    async def open(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        data: Any = None,
        server: str | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request and yield the response with headers read; errors become ours.

        On any exit other than a fully read body the connection is closed, not pooled,
        so a client that went away also ends the upstream request.
        """
        try:
            response = await self.session.request(
                method, url, headers=headers, data=data, allow_redirects=False,
                timeout=timeout or self.request_timeout,
            )
        except BaseException as exc:
            raise map_error(exc, url, server) from None
        try:
            yield response
        except BaseException:
            response.close()
            raise
        else:
            response.release()

    async def fetch(self, url: str, timeout: aiohttp.ClientTimeout, server: str | None = None,
                    headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """A small GET for pollers: status and whole body."""
        status, _, body = await self.fetch_full(url, timeout, server, headers)
        return status, body

    async def fetch_full(self, url: str, timeout: aiohttp.ClientTimeout, server: str | None = None,
                         headers: Mapping[str, str] | None = None) -> tuple[int, Mapping[str, str], bytes]:
        """Like fetch, with the response headers (``Server`` tells a llama-server)."""
        async with self.open("GET", url, headers=headers or {}, server=server, timeout=timeout) as response:
            try:
                return response.status, response.headers, await response.read()
            except BaseException as exc:
                raise map_error(exc, url, server) from None


def _request_timeout(options: BalancerOptions) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=options.upstream_connect_timeout_s,
                                 sock_read=options.upstream_idle_timeout_s)


def map_error(exc: BaseException, url: str, server: str | None) -> BaseException:
    """aiohttp/OS errors -> UpstreamError kinds; cancellation and ours pass unchanged."""
    if isinstance(exc, (asyncio.CancelledError, UpstreamError)) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc.__cause__, BalancerError) and not isinstance(exc, BalancerError):
        return exc.__cause__  # ours, from the client's body we were sending (too large, too slow)
    where = f"backend {server!r} ({url})" if server else url
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(f"{where} timed out", kind="timeout", server=server)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(f"{where} is unreachable: {exc.os_error.strerror or exc}", kind="connect", server=server)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError, ConnectionError)):
        return UpstreamError(f"{where} closed the connection: {exc}", kind="reset", server=server)
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamError(f"{where} failed: {exc}", kind="protocol", server=server)
    return exc
