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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel
from pydantic_ai.models.test import TestModel

from bus import subjects
from bus.codec import encode
from bus.headers import Trace, new_id
from gateway.console import report_html
from schemas.conversation import PostMessage
from schemas.research import Citation
from tests.conftest import Platform, wait_until
from tests.models import prompts_of
from tests.test_approvals_http import AGENTS as MAILER_AGENTS
from tests.test_approvals_http import ASKED, Mailer
from tests.test_dead_letters import _dead_letter

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

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no Chromium at /usr/bin/chromium (apt install it)")


def _whole(messages: list[ModelMessage], info: AgentInfo) -> Any:
    from pydantic_ai.messages import ModelResponse, TextPart

    return ModelResponse(parts=[TextPart("".join(WORDS))])


async def _slow(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
    """A streamed reply asks for the time first (a tool call the chat shows), then streams the words."""
    last = messages[-1]
    if not (isinstance(last, ModelRequest) and any(isinstance(p, ToolReturnPart) for p in last.parts)):
        yield {0: DeltaToolCall(name="current_time", json_args="{}", tool_call_id="clock")}
        return
    if "wait forever" in prompts_of(messages)[-1]:  # until cancelled
        yield "waiting "
        await asyncio.sleep(120)
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
        self.loads: dict[str, list[float]] = {}  # page -> each load's milliseconds
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
        self.loaded(route.split("/")[0] if "/" not in route else f"{route.split('/')[0]}/<id>", started)

    def loaded(self, page: str, started: float) -> None:
        self.loads.setdefault(page, []).append(round((time.perf_counter() - started) * 1000, 1))

    async def sign_in(self) -> None:
        started = time.perf_counter()
        await self.page.goto(f"{self.platform.url}/console/")
        await self.page.wait_for_selector("main[data-ready='signin']")
        self.loaded("signin", started)
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
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        made.append(Console(page, platform, name))
        return made[-1]

    yield make
    for c in made:
        c.save_loads()
        await c.shot(f"last-{c.name}")  # where the test left the page (the state at a failure)
        await c.page.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@needs_chromium
async def test_sign_in_and_chat_streams_tokens(
    start_platform: Callable[..., Awaitable[Platform]], console: Callable[[Platform, str], Awaitable[Console]]
) -> None:
    platform = await start_platform(slow_words())
    async with httpx.AsyncClient(base_url=platform.url) as anonymous:  # the files need no key; the API does
        index = await anonymous.get("/console/")
        module = await anonymous.get("/console/app.js")
        refused = await anonymous.get("/v1/agents")
    assert index.status_code == 200 and "/console/app.js" in index.text
    assert "script-src 'self'" in index.headers["content-security-policy"]
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    assert refused.status_code == 401
    c = await console(platform, "chat")
    await c.sign_in()
    page = c.page

    await page.select_option("#new-pattern", "sidekick")
    await page.click("#new-conversation button[type=submit]")
    await page.wait_for_selector("#send-box")
    conversation_id = page.url.rsplit("/", 1)[-1]

    await page.fill("#message", "hello there")
    await page.click("#send")
    tool = page.locator(".message.live .tool, .message.assistant .tool").first
    await text_when(tool, lambda t: "current_time" in t)  # the tool call, shown as it happens, then its result
    await page.wait_for_selector(".tool pre.tool-result")
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

    # a run is cancelled from its page while it streams
    await page.fill("#message", "wait forever")
    await page.click("#send")
    await text_when(page.locator("#reply"), lambda t: "waiting" in t)
    await page.locator(".message.live .meta a", has_text="run").click()
    await page.wait_for_selector("main[data-ready='runs'] #cancel-run")
    await text_when(page.locator("#run-events"), lambda t: "delta" in t)
    await page.click("#cancel-run")
    await text_when(page.locator("#run-events"), lambda t: "cancelled" in t)
    await text_when(page.locator("#run-summary"), lambda t: "cancelled" in t)

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


@needs_chromium
async def test_tasks_runs_overview_and_dead_letters(
    start_platform: Callable[..., Awaitable[Platform]], console: Callable[[Platform, str], Awaitable[Console]]
) -> None:
    platform = await start_platform(slow_words(), background=True)
    c = await console(platform, "tasks")
    await c.sign_in()
    page = c.page
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))

    # create each type of task through the form
    await c.open("tasks", "tasks")
    await page.select_option("#task-type", "scheduled")
    await page.fill("#task-prompt", "a daily summary")
    await page.fill("#task-interval", "86400")
    await page.click("#new-task button[type=submit]")
    await page.wait_for_selector("main[data-ready='tasks'] h1:has-text('-')")  # the new task's page
    await c.open("tasks", "tasks")
    await page.select_option("#task-type", "triggered")
    await page.fill("#task-prompt", "react to the webhook")
    await page.click("#new-task button[type=submit]")
    await page.wait_for_selector("#task-created:has-text('Webhook secret (shown once)')")
    await c.open("tasks", "tasks")
    await page.select_option("#task-type", "delegation")
    await page.fill("#task-prompt", "do it now")
    await page.check("input[name=channel][value=in_app]")
    await page.check("input[name=channel][value=webhook]")
    await page.fill("#task-webhook", "http://127.0.0.1:9/nobody-listens")  # fails: the log shows it, retry
    await page.click("#new-task button[type=submit]")
    await page.wait_for_selector("#task-created:has-text('Notification signing secret (shown once)')")
    await page.click("#task-created a")
    await page.wait_for_selector("#task-runs table")  # its run appears
    task_id = page.url.rsplit("/", 1)[-1]
    await text_when(page.locator("#task-runs"), lambda t: "completed" in t, timeout=20)
    await c.shot("task")

    # run now adds a run; disable, enable
    await page.click("#run-now")
    await text_when(page.locator("#task-runs"), lambda t: t.count("completed") >= 2, timeout=20)
    await page.click("#disable")
    await page.wait_for_selector("main[data-ready='tasks'] #enable")
    await page.click("#enable")
    await page.wait_for_selector("main[data-ready='tasks'] #disable")

    await c.open("tasks", "tasks")
    listed = await page.locator("#tasks").text_content() or ""
    assert all(kind in listed for kind in ("delegation", "scheduled", "triggered"))
    await c.shot("tasks")

    # a task run: output, usage, the delivery log; the failed webhook delivery is retried
    async with platform.client() as http:
        runs = (await http.get(f"/v1/tasks/{task_id}/runs")).json()["runs"]
    first = runs[-1]["id"]
    await c.open(f"task-runs/{first}", "task-runs")
    assert "tok23" in (await page.locator("#task-run-output").text_content() or "")
    deliveries = page.locator("#deliveries")
    await text_when(deliveries, lambda t: "delivered" in t and "failed" in t, timeout=20)
    await page.click("#deliveries button.retry")
    await text_when(deliveries, lambda t: t.count("failed") >= 1 and t.count("ok") + t.count("failed") >= 5)
    await c.shot("task-run")

    # its executor run: tree, events, usage
    await c.open(f"runs/{first}", "runs")
    await text_when(page.locator("#run-events"), lambda t: "completed" in t)
    assert "tok23" in (await page.locator("#run-output").text_content() or "")
    await c.shot("run")
    await c.open("runs", "runs")
    assert first in (await page.locator("#runs").text_content() or "")
    await c.shot("runs")

    # the delete button removes the task
    await c.open(f"tasks/{task_id}", "tasks")
    await page.click("#delete")
    await page.wait_for_selector("main[data-ready='tasks'] #new-task")
    assert task_id not in (await page.locator("main").text_content() or "")

    # dead letters: a command the conversation actor cannot read (dead-lettered by it), and a turn it gave up
    # on (published to the DLQ as the actor does when the database is away, as tests/test_dead_letters.py does)
    async with platform.client() as http:
        conversation = (await http.post("/v1/conversations", json={})).json()["id"]
    subject = subjects.conversation_command("t1", conversation)
    await platform.bus.js.publish(subject, b"not json at all", headers=Trace(tenant="t1").headers())
    turn = PostMessage(conversation_id=conversation, message_id=new_id(), run_id=new_id(), content="are you there?")
    await _dead_letter(platform, subject, encode(turn))
    for _ in range(100):
        await c.open("dlq/conversation", "dlq")
        if await page.locator(".dead-letter").count() == 2:
            break
        await asyncio.sleep(0.1)
    await c.shot("dlq")
    await c.open("overview", "overview")  # the overview counts them per actor, linked to their list
    await text_when(page.locator("#health"), lambda t: "Dead letters" in t and "None." not in t)
    depth = page.locator("#dlq-depth tbody tr", has_text="conversation")
    assert (await depth.locator("td").all_text_contents()) == ["conversation", "2"]
    await depth.locator("a").click()
    await page.wait_for_selector("main[data-ready='dlq'] .dead-letter")
    junk = page.locator(".dead-letter", has_text="undecodable")
    lost = page.locator(".dead-letter", has_text="are you there?")
    assert subject in (await lost.text_content() or "") and "the database was away" in (await lost.text_content() or "")
    await lost.locator("button.replay").click()
    await page.wait_for_selector("#dlq-note:has-text('Replayed')")
    await junk.locator("button.discard").click()
    await page.wait_for_selector("#dlq-note:has-text('Discarded')")
    await c.open("dlq", "dlq")
    assert await page.locator(".dead-letter").count() == 0
    # the replayed turn was taken and answered
    await c.open(f"chat/{conversation}", "chat")
    for _ in range(100):
        contents = await page.locator("#messages .message .content").all_text_contents()
        if len(contents) == 2:
            break
        await asyncio.sleep(0.2)
        await c.open(f"chat/{conversation}", "chat")
    assert contents == ["are you there?", "".join(WORDS)]

    # the overview: health, backlog, charts of runs, tokens and cost by day and by agent
    await c.open("overview", "overview")
    assert await page.locator("#charts svg").count() == 6
    actors = await page.locator("#actors").text_content() or ""
    assert all(name in actors for name in ("conversation", "executor", "scheduler", "notifier", "research"))
    assert "conversation-cmd" in (await page.locator("#consumers").text_content() or "")  # its backlog
    assert "Conversations" in (await page.locator("#stats").text_content() or "")
    assert await page.locator("#charts svg rect.bar").count() >= 2
    runs_shown = page.locator("#stats .kpi", has_text="in 24 h").locator("strong")
    async with platform.client() as http:  # an event arrives on the live feed as it happens
        runs = (await http.get("/v1/stats")).json()["runs"]["total"]
        assert await runs_shown.text_content() == str(runs)
        scheduled = (await http.get("/v1/tasks", params={"task_type": "scheduled"})).json()["tasks"][0]["id"]
        assert (await http.post(f"/v1/tasks/{scheduled}/execute")).status_code == 202
    await text_when(page.locator("#live-events"), lambda t: "scheduler." in t and "executor.finished" in t)
    await text_when(runs_shown, lambda t: t == str(runs + 1))  # the totals follow the events too
    await c.shot("overview")


@needs_chromium
async def test_research_job_progress_and_report(
    start_platform: Callable[..., Awaitable[Platform]], console: Callable[[Platform, str], Awaitable[Console]]
) -> None:
    from tests.test_research import Researchers, _ingest

    model = Researchers()
    model.delay_s = 0.3  # slow enough for the progress to arrive while the page watches
    platform = await start_platform(model.model(), background=True)
    async with platform.client() as http:
        ids = await _ingest(http)
    c = await console(platform, "research")
    await c.sign_in()
    page = c.page
    await c.open("research", "research")
    await page.fill("#research-question", "Which energy sources exist?")
    await page.fill("#research-subtasks", "3")
    await page.fill("#research-depth", "2")
    await page.click("#new-research button[type=submit]")
    await page.wait_for_selector("#research-events")
    job_id = page.url.rsplit("/", 1)[-1]
    events = page.locator("#research-events")
    await text_when(events, lambda t: "subrun_started" in t)
    await c.shot("research-progress")
    report = f"/v1/console/research/{job_id}/report"
    async with platform.client() as http:
        early = await http.get(report)
    await text_when(events, lambda t: "research_finished" in t, timeout=40)
    async with platform.client() as http, platform.client(key=await platform.key_for("t2")) as stranger:
        assert (await http.get(report)).headers["content-type"].startswith("text/html")
        theirs = await stranger.get(report)
    assert early.status_code == 409 and early.json()["error"]["code"] == "conflict", early.text  # not ended yet
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    await page.wait_for_selector("#report-body h1", timeout=15_000)
    assert "completed" in (await page.locator("#research-phase").text_content() or "")
    assert "sub-runs" in (await page.locator("#research-totals").text_content() or "")
    links = page.locator("#report-body a.citation")
    hrefs = [await a.get_attribute("href") or "" for a in await links.all()]
    assert any(h.startswith("#/documents/") for h in hrefs) and any(h.startswith("#/runs/") for h in hrefs)
    assert {h.removeprefix("#/documents/") for h in hrefs if h.startswith("#/documents/")} <= set(ids.values())
    await c.shot("research")
    await page.locator("#report-body a.citation[href^='#/documents/']").first.click()
    await page.wait_for_selector("main[data-ready='documents'] #document-text")
    assert "electricity" in (await page.locator("#document-text").text_content() or "")
    await c.shot("document")
    await c.open("research", "research")
    assert job_id in (await page.locator("#jobs").inner_html())
    # the job as a run tree: its sub-runs under it, each linked
    await c.open(f"runs/{job_id}", "runs")
    tree = await page.locator("#run-tree").text_content() or ""
    assert "research job" in tree and f"{job_id}-plan" in tree and f"{job_id}-report" in tree
    await c.shot("run-tree")


@needs_chromium
async def test_an_approval_is_decided_in_the_chat_and_on_the_approvals_page(
    start_platform: Callable[..., Awaitable[Platform]],
    console: Callable[[Platform, str], Awaitable[Console]],
    tmp_path: Path,
) -> None:
    mailer = Mailer()
    agents = tmp_path / "agents.toml"
    agents.write_text(MAILER_AGENTS)
    platform = await start_platform(mailer.model(), agents_file=agents)
    c = await console(platform, "approvals")
    await c.sign_in()
    page = c.page
    await page.select_option("#new-agent", "mailer")
    await page.click("#new-conversation button[type=submit]")
    await page.wait_for_selector("#send-box")

    # the run parks: its approval is shown in the reply, the tool call and its arguments as the model wrote them
    await page.fill("#message", "mail ada the invoice")
    await page.click("#send")
    card = page.locator(".message.live .approval[data-status='pending']")
    await card.wait_for()
    assert "send_email" in (await card.locator(".approval-tool").text_content() or "")
    assert json.loads(await card.locator(".approval-args").text_content() or "") == ASKED

    # another tab: the Approvals page lists it with the same buttons
    tab = await console(platform, "approvals-page")
    await tab.sign_in()
    await tab.open("approvals", "approvals")
    assert json.loads(await tab.page.locator("#approvals .approval .approval-args").text_content() or "") == ASKED
    await tab.shot("approvals")

    # approved in the chat: the tool runs and the reply completes
    await card.locator("button.approve").click()
    await page.locator(".message .approval[data-status='approved']").wait_for()
    await page.wait_for_selector("#reply:not(.streaming)")
    assert await page.locator("#reply").text_content() == "the tool said: sent to ada@example.com: the invoice"
    await c.shot("chat-approved")

    # a second turn, denied on the Approvals page with a reason: the chat's reply goes on with it
    await page.fill("#message", "mail ada again")
    await page.click("#send")
    await page.locator(".message.live .approval[data-status='pending']").wait_for()
    await tab.open("approvals", "approvals")
    waiting = tab.page.locator("#approvals .approval[data-status='pending']")
    await waiting.locator("input.approval-reason").fill("she has it already")
    await waiting.locator("button.deny").click()
    await tab.page.locator("#approvals .approval[data-status='denied']").wait_for()
    await page.locator(".message .approval[data-status='denied']").wait_for()  # the chat hears of it
    await text_when(page.locator(".message.assistant .content").last, lambda t: "she has it already" in t)
    assert mailer.seen[0].startswith("sent to ada@example.com") and "she has it already" in mailer.seen[1]


def test_a_report_is_rendered_without_its_html_and_with_its_citations_as_links() -> None:
    report = (
        "# Findings\n\n<script>alert(1)</script> <img src=x onerror=alert(1)>\n\n"
        "- solar [doc:d1], wind [run:job-q1-1], a page [https://example.com/a?b=1&c=2]\n"
        "- [click](javascript:alert(1)) and `[doc:in-code]`\n"
    )
    cited = [
        Citation(ref="doc:d1", kind="document", title="Solar", verified=True),
        Citation(ref="https://example.com/a?b=1&c=2", kind="url", title="A page", verified=False),
    ]
    html = report_html(report, cited)
    assert "<script>" not in html and "&lt;script&gt;" in html and "<img" not in html
    assert "javascript:" not in html.split("[click]")[0] and 'href="javascript' not in html
    assert '<a href="#/documents/d1" class="citation">doc:d1</a>' in html
    assert '<a href="#/runs/job-q1-1" class="citation unverified">run:job-q1-1</a>' in html  # cited, never run
    assert (
        '<a href="https://example.com/a?b=1&amp;c=2" class="citation unverified" rel="noopener noreferrer" '
        'target="_blank">' in html
    )
    assert "<code>[doc:in-code]</code>" in html  # code stays code


@needs_chromium
async def test_long_lists_page_with_more(
    start_platform: Callable[..., Awaitable[Platform]], console: Callable[[Platform, str], Awaitable[Console]]
) -> None:
    """Tasks, runs and conversations past the console's page of 50: "More" reads the next page through `after`."""
    platform = await start_platform(background=True)
    async with platform.client() as http:
        for i in range(51):
            body = {"task_type": "scheduled", "prompt": f"task {i}", "schedule_expression": "0 0 1 1 *"}
            assert (await http.post("/v1/tasks", json=body)).status_code == 201
        for i in range(51):
            conversation = (await http.post("/v1/conversations", json={})).json()["id"]
            reply = await http.post(f"/v1/conversations/{conversation}/messages", json={"message": f"turn {i}"})
            assert reply.status_code == 200, reply.text
    c = await console(platform, "paging")
    await c.sign_in()
    page = c.page
    for route, table in (("tasks", "#tasks"), ("runs", "#runs")):
        await c.open(route, route)
        rows = page.locator(f"{table} tbody tr")
        assert await rows.count() == 50
        await page.click(f"{table}-more")
        await page.wait_for_selector(f"{table}-more[hidden]", state="attached")
        assert await rows.count() == 51
        ids = await page.locator(f"{table} tbody tr td:first-child").all_text_contents()
        assert len(set(ids)) == 51, ids  # the second page follows the first: no row twice
    await c.shot("runs-paged")
    await c.open("chat", "chat")
    conversations = page.locator("#conversations li")
    assert await conversations.count() == 50
    await page.click("#conversations-more")
    await page.wait_for_selector("#conversations-more[hidden]", state="attached")
    names = await conversations.locator("a").all_text_contents()
    assert len(names) == len(set(names)) == 51


@needs_chromium
async def test_notifications_page_lists_the_in_app_channel_and_shows_new_ones_live(
    start_platform: Callable[..., Awaitable[Platform]], console: Callable[[Platform, str], Awaitable[Console]]
) -> None:
    platform = await start_platform(TestModel(custom_output_text="The report is ready."), background=True)
    body = {"task_type": "delegation", "prompt": "write it", "notification_config": {"channels": ["in_app"]}}
    async with platform.client() as http:
        first = (await http.post("/v1/tasks", json=body)).json()

        async def listed() -> bool:
            return bool((await http.get("/v1/notifications")).json()["notifications"])

        await wait_until(listed, timeout=30, what="the first task's notification")
        c = await console(platform, "notifications")
        await c.sign_in()
        page = c.page
        await c.open("notifications", "notifications")
        items = page.locator("#notifications li")
        assert await items.count() == 1 and "The report is ready." in (await items.first.text_content() or "")
        second = (await http.post("/v1/tasks", json={**body, "prompt": "and another"})).json()
        await text_when(page.locator("#notifications"), lambda t: t.count("The report is ready.") == 2, timeout=30)
    assert await items.count() == 2  # the new one on top, live, and no copy of the first
    links = [await a.get_attribute("href") for a in await items.locator("a").all()]
    assert links == [f"#/task-runs/{second['last_runs'][0]['id']}", f"#/task-runs/{first['last_runs'][0]['id']}"]
    await c.shot("notifications")


@needs_chromium
async def test_cron_and_one_shot_times_in_a_zone_and_a_subject_trigger_running_a_pipeline(
    start_platform: Callable[..., Awaitable[Platform]], console: Callable[[Platform, str], Awaitable[Console]]
) -> None:
    """The form's other timings, each in a time zone (a one-shot's wall-clock time is read in the task's zone,
    not the browser's), and a task triggered by a bus subject (another task's completion) that runs a
    pipeline, whose run shows its steps as a tree."""
    from tests.test_pipelines import TEXT, Steps

    platform = await start_platform(Steps().model(), background=True)
    c = await console(platform, "schedules")
    await c.sign_in()
    page = c.page

    async def create(kind: str, prompt: str, **fields: str) -> str:
        await c.open("tasks", "tasks")
        await page.select_option("#task-type", kind)
        await page.fill("#task-prompt", prompt)
        await page.select_option("#task-agent", "pipeline:text-analysis")
        for selector, value in fields.items():
            if selector == "#task-timing":
                await page.select_option(selector, value)
            else:
                await page.fill(selector, value)
        await page.click("#new-task button[type=submit]")
        await page.wait_for_selector("main[data-ready='tasks'] h1:has-text('-')")
        return page.url.rsplit("/", 1)[-1]

    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
    once = await create(
        "scheduled", "remind me", **{"#task-timing": "run_at", "#task-run-at": f"{tomorrow}T09:00"},
        **{"#task-timezone": "America/New_York"},
    )  # fmt: skip
    details = await page.locator("main").text_content() or ""
    assert f"{tomorrow} 09:00:00 America/New_York" in details, details  # shown in the task's zone too
    cron = await create(
        "scheduled", TEXT, **{"#task-timing": "cron", "#task-cron": "0 9 * * *", "#task-timezone": "Asia/Tokyo"}
    )
    assert "09:00:00 Asia/Tokyo" in (await page.locator("main").text_content() or "")
    chained = await create(
        "triggered", "post-process it", **{"#task-subject": subjects.scheduler_event("t1", cron, "completed")}
    )
    async with platform.client() as http:
        tasks = {t["id"]: t for t in (await http.get("/v1/tasks")).json()["tasks"]}
    new_york = datetime.fromisoformat(tasks[once]["run_at"]).astimezone(ZoneInfo("America/New_York"))
    assert (new_york.date(), new_york.hour, new_york.minute) == (tomorrow, 9, 0)
    assert tasks[once]["next_run_at"] == tasks[once]["run_at"]
    assert tasks[cron]["next_run_at"].endswith("T00:00:00Z")  # 09:00 in Tokyo, which has no DST
    assert tasks[chained]["trigger_config"]["subject"].endswith(f".{cron}.completed")
    await c.open("tasks", "tasks")
    listed = await page.locator("#tasks").text_content() or ""
    assert "cron 0 9 * * * (Asia/Tokyo)" in listed and "on ab.scheduler.evt.t1." in listed
    await c.shot("tasks-schedules")

    # run the cron task now: its completion fires the chained task, whose pipeline run has its steps as a tree
    await c.open(f"tasks/{cron}", "tasks")
    await page.click("#run-now")
    await text_when(page.locator("#task-runs"), lambda t: "completed" in t, timeout=30)
    await c.open(f"tasks/{chained}", "tasks")
    for _ in range(150):
        if "completed" in (await page.locator("#task-runs").text_content() or ""):
            break
        await asyncio.sleep(0.2)
        await c.open(f"tasks/{chained}", "tasks")
    runs = page.locator("#task-runs")
    assert "event" in (await runs.text_content() or "") and "completed" in (await runs.text_content() or "")
    run_id = (await runs.locator("tbody tr td:first-child").first.text_content() or "").strip()
    await c.open(f"runs/{run_id}", "runs")
    tree = page.locator("#run-tree")
    await text_when(tree, lambda t: all(step in t for step in ("summarizer", "sentiment", "entities")))
    assert await tree.locator("ul ul li").count() == 3  # the steps, under the pipeline's run
    await text_when(page.locator("#run-events"), lambda t: "attempt 1" in t and "completed" in t)
    output = json.loads(await page.locator("#run-output").text_content() or "")  # indented, whole
    assert [s["agent"] for s in output["steps"]] == ["summarizer", "sentiment", "entities"]
    await c.shot("run-tree-pipeline")
