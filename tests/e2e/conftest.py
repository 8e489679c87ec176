"""A real Chromium, driven by Playwright, for the dashboard tests.

The browser is Debian's ``chromium``, launched by path: Playwright never downloads one.
Where it is missing (or does not start) the tests are skipped with one line, except when
``LLAMA_BALANCER_REQUIRE_BROWSER=1`` (set by ``.ci/run``): then they fail instead.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import pytest

MISSING = "Chromium not installed: dashboard browser test needs Debian's chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _required() -> bool:
    return os.environ.get("LLAMA_BALANCER_REQUIRE_BROWSER") == "1"


def _unavailable(detail: str, module: bool = False) -> None:
    if _required():
        pytest.fail(f"{MISSING} ({detail}; LLAMA_BALANCER_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(MISSING, allow_module_level=module)


def chromium_path() -> str | None:
    """$LLAMA_BALANCER_CHROMIUM if set, else ``chromium`` on PATH, else Debian's path."""
    override = os.environ.get("LLAMA_BALANCER_CHROMIUM")
    candidates = (override,) if override is not None else (shutil.which("chromium"), "/usr/bin/chromium")
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_chromium(at_import: bool = False) -> str | None:
    """Chromium's path, or skip: at import the whole module in one line. With
    LLAMA_BALANCER_REQUIRE_BROWSER=1 each test fails instead (in the ``browser`` fixture,
    not at import, so the rest of the suite still runs and reports)."""
    executable = chromium_path()
    problem = None
    if executable is None:
        problem = "not found: " + (os.environ.get("LLAMA_BALANCER_CHROMIUM") or "chromium on PATH or /usr/bin/chromium")
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError as exc:
            problem = f"the playwright package is missing: {exc}"
    if problem is not None:
        if at_import and _required():
            return None
        _unavailable(problem, module=at_import)
    return executable


@pytest.fixture
async def browser():
    """Chromium launched by path (never downloaded); a start failure skips or fails as above."""
    executable = require_chromium()
    from playwright.async_api import async_playwright
    async with async_playwright() as pw:
        try:
            chromium = await pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # playwright.async_api.Error and start-up failures alike
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            _unavailable(f"{executable} did not start: {first}")
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class PageLog:
    """What a page asked for and complained about."""
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
async def dashboard(browser):
    """``page, log = await dashboard(runtime)`` opens /llmhealth-monitor in a fresh context;
    ``setup(page)``, when given, runs before the page loads."""
    contexts: list[Any] = []

    async def open_page(runtime: Any, setup: Callable[[Any], Awaitable[None]] | None = None) -> tuple[Any, PageLog]:
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(context)
        page = await context.new_page()
        log = PageLog()
        page.on("request", lambda request: log.requests.append(request.url))
        page.on("console", lambda msg: log.errors.append(f"console.{msg.type}: {msg.text}")
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: log.errors.append(f"pageerror: {exc}"))
        if setup is not None:  # e.g. page.route(...) before the first request
            await setup(page)
        await page.goto(runtime.url + "/llmhealth-monitor", wait_until="load")
        return page, log

    yield open_page
    for context in contexts:
        await context.close()
