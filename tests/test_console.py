"""The web console (/console) in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright;
no browser is downloaded): sign in, chat and watch the tokens arrive, and the other pages against a running
platform. A screenshot of each page and the page-load times go to AGENTBUS_ARTIFACTS (default
.agentbus/artifacts/console/), for people to look at; nothing here asserts on a time."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from tests.conftest import Platform

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("AGENTBUS_ARTIFACTS") or ROOT / ".agentbus" / "artifacts" / "console")
WORDS = [f"tok{i} " for i in range(24)]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt install chromium)")

if CHROMIUM.exists():
    from playwright.async_api import Browser, Page, async_playwright


def _whole(messages: list[ModelMessage], info: AgentInfo) -> Any:
    from pydantic_ai.messages import ModelResponse, TextPart

    return ModelResponse(parts=[TextPart("".join(WORDS))])


async def _slow(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for word in WORDS:
        await asyncio.sleep(0.08)  # about 2 s a reply: slow enough to see several tokens arrive
        yield word


def slow_words() -> FunctionModel:
    return FunctionModel(_whole, stream_function=_slow, model_name="slow-words")


class Console:
    """A browser page on the gateway's /console, signed in, saving screenshots and load times."""

    def __init__(self, page: Page, platform: Platform, name: str) -> None:
        self.page = page
        self.platform = platform
        self.name = name
        self.loads: dict[str, float] = {}
        self.shots: list[Path] = []

    async def open(self, route: str, ready: str) -> None:
        """Navigate to `#/<route>` and wait for page `ready` to render; the time it took is recorded."""
        target = f"{self.platform.url}/console/#/{route}"
        await self.page.evaluate("() => { const m = document.querySelector('main'); if (m) m.dataset.ready = ''; }")
        started = time.perf_counter()
        if self.page.url == target:
            await self.page.reload()
        else:
            await self.page.goto(target)
        await self.page.wait_for_selector(f"main[data-ready='{ready}']", timeout=15_000)
        self.loads[route.split("/")[0] if "/" not in route else f"{route.split('/')[0]}/<id>"] = round(
            (time.perf_counter() - started) * 1000, 1
        )

    async def sign_in(self) -> None:
        started = time.perf_counter()
        await self.page.goto(f"{self.platform.url}/console/")
        await self.page.wait_for_selector("main[data-ready='signin']")
        self.loads["signin"] = round((time.perf_counter() - started) * 1000, 1)
        await self.shot("signin")
        await self.page.fill("#api-key", "ak_not-a-key")
        await self.page.click("#sign-in button[type=submit]")
        await self.page.wait_for_selector("#sign-in-error:has-text('not valid')")
        await self.page.fill("#api-key", self.platform.key)
        await self.page.click("#sign-in button[type=submit]")
        await self.page.wait_for_selector("main[data-ready='chat']")

    async def shot(self, page: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{page}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        print(f"screenshot: {path}")

    def save_loads(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"page-loads-{self.name}.json"
        path.write_text(json.dumps({"unit": "ms", "navigation_to_rendered": self.loads}, indent=2) + "\n")
        print(f"page loads: {path} {self.loads}")


async def text_when(locator: Any, ok: Callable[[str], bool], timeout: float = 15.0) -> str:
    """The locator's text once `ok` holds for it (polled from here: the console's CSP forbids eval'd scripts)."""
    deadline = time.monotonic() + timeout
    while True:
        text = await locator.text_content(timeout=timeout * 1000) or ""
        if ok(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; the text is {text[:300]!r}")
        await asyncio.sleep(0.03)


async def wait_until_true(ok: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def console(browser: Browser) -> AsyncIterator[Callable[[Platform, str], Awaitable[Console]]]:
    made: list[Console] = []
    errors: list[str] = []

    async def make(platform: Platform, name: str) -> Console:
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        made.append(Console(page, platform, name))
        return made[-1]

    yield make
    for c in made:
        c.save_loads()
        await c.page.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


async def test_sign_in_and_chat_streams_tokens(
    start_platform: Callable[..., Awaitable[Platform]], console: Callable[[Platform, str], Awaitable[Console]]
) -> None:
    platform = await start_platform(slow_words())
    c = await console(platform, "chat")
    await c.sign_in()
    page = c.page

    await page.select_option("#new-pattern", "sidekick")
    await page.click("#new-conversation button[type=submit]")
    await page.wait_for_selector("#send-box")
    conversation_id = page.url.rsplit("/", 1)[-1]

    await page.fill("#message", "hello there")
    await page.click("#send")
    reply = page.locator("#reply")
    first = await text_when(reply, lambda t: "tok1 " in t)
    second = await text_when(reply, lambda t: len(t) > len(first) + 4)
    assert first and len(second) > len(first) and second.startswith(first.rstrip())
    assert "tok23" not in first  # seen before the reply was whole
    await page.wait_for_selector("#reply:not(.streaming)", timeout=15_000)
    assert (await reply.text_content() or "").strip() == "".join(WORDS).strip()
    await c.shot("chat")

    # the stored turn is there on a reload (the console reads the API, not its own memory)
    await c.open(f"chat/{conversation_id}", "chat")
    contents = await page.locator("#messages .message .content").all_text_contents()
    assert contents == ["hello there", "".join(WORDS)]

    # the sidekick's context editor saves through the API
    await page.fill("#context", '{"page": "invoice", "id": 7}')
    await page.click("#context-editor button[type=submit]")
    await page.wait_for_selector("#context-editor [role=status]:has-text('Saved')")
    async with platform.client() as http:
        stored = (await http.get(f"/v1/conversations/{conversation_id}")).json()
    assert stored["context"] == {"page": "invoice", "id": 7}

    # continue: a new conversation from this one's history
    await page.click("#continue")
    await wait_until_true(lambda: "#/chat/" in page.url and not page.url.endswith(conversation_id), "continue")
    await page.wait_for_selector("main[data-ready='chat'] #send-box")
    assert conversation_id in (await page.locator("#conversation .heading").text_content() or "")

    # another tenant's key sees none of it
    other = await platform.key_for("t2")
    await page.click("#sign-out")
    await page.wait_for_selector("#sign-in")
    await page.fill("#api-key", other)
    await page.click("#sign-in button[type=submit]")
    await page.wait_for_selector("main[data-ready='chat']")
    assert conversation_id not in (await page.locator("#conversations").text_content() or "")
    await c.open(f"chat/{conversation_id}", "chat")
    assert "not_found" in (await page.locator("main [role=alert]").first.text_content() or "")
