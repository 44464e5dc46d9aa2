"""The durable journal: an agent run redone after a crash resumes from its last finished step.

Built on pydantic-ai's durable-execution extension points (`pydantic_ai.durable_exec`) with this
platform's own storage (actors/executor/journal_store.py). `Journal`, a capability on every agent,
routes each model request and each tool call of a run through `JournalBackend.execute` while the
run is inside `journal_scope(...)`: a unit whose result the journal holds returns it (and its events
are replayed to the stream) instead of running; one that finishes is recorded, with one awaited
INSERT, before it returns. Outside a scope an agent runs as if the capability were not there.

A unit's key names its place in the run, not the order units happened to start in: `model@<step>`
for the model's response in run step <step> (whichever model of a fallback chain gave it), and
`tool@<step>:<tool call id>` (`validate@…` for argument validation) for a tool call, so parallel
tool calls find their own results. Other units are keyed by pydantic-ai's name and count.

Side-effecting tools (`side_effects = true`, metadata SIDE_EFFECTS) run at most once per (run, tool
call id): a "started" mark is written, and awaited, before the call; its journaled result is the
"finished" row. A call found started but not finished after a crash is not run again: the model is
told so in the call's result (see NOT_REPEATED). The docs: docs/durability.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from contextlib import ExitStack
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal

from pydantic_ai import RunContext
from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.capabilities import ValidatedToolArgs, WrapToolExecuteHandler
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    DurabilityEngineSpec,
    DurableOperationId,
    JournalCallableOperationBackend,
    ModelRequestId,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    ToolsetValidateToolArgumentsId,
    record_durable_unit,
    replay_scope,
)
from pydantic_ai.messages import (
    AgentStreamEvent,
    ModelResponse,
    PartStartEvent,
    ToolCallPart,
)
from pydantic_ai.models import Model
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets import AbstractToolset, WrapperToolset

from actors.executor.deps import RunDeps
from actors.executor.journal_store import JournalStore
from actors.executor.limits import SIDE_EFFECTS
from actors.executor.mcp_servers import ServerToolset
from actors.executor.models import ResolvedModel

__all__ = ["NOT_REPEATED", "Journal", "JournalBackend", "JournalScope", "journal_for", "journal_scope"]

# Tools that are not journaled: `ask_agent`'s sub-run is a run of its own, found again by its id
# (`<parent>-sub<k>`, k counted per call) when the parent is redone, so the call is made again.
NOT_JOURNALED = frozenset({"ask_agent"})

# A plain tool return, not a retry prompt: it is what became of the call (nobody knows), not a fault in
# how the model called it; a retry prompt would invite the very repeat this prevents, and count against
# the tool's retries (failing the run once they are spent).
NOT_REPEATED = (
    "This call of {tool} was started before the process running it crashed, so it may or may not have "
    "taken effect. It was not repeated, because {tool} has side effects. Check whether it took effect "
    "before calling it again."
)


@dataclass
class JournalScope:
    """One stretch (`segment`) of one run's journal: what it had recorded, and what this process adds.

    `async with` it around the agent run: the journal is read once on entering (not at all when
    `fresh`: a run's first attempt has nothing recorded), and the run is its durable context until
    it leaves. `failure` keeps a write that failed, so the run is redone, not failed."""

    store: JournalStore
    tenant: str
    run_id: str
    segment: int = 0
    fresh: bool = False
    recorded: dict[str, Any] = field(default_factory=dict)
    failure: BaseException | None = None
    # where a streamed run's model events go as the model streams them (and a replayed response's parts):
    # the run's event stream carries a model response only once its unit has returned
    live: Callable[[AgentStreamEvent], None] | None = None
    _seen: Counter[str] = field(default_factory=Counter)
    _token: Token[JournalScope | None] | None = None
    _replay: ExitStack = field(default_factory=ExitStack)

    async def __aenter__(self) -> JournalScope:
        if not self.fresh:
            self.recorded = await self.store.load(self.tenant, self.run_id, self.segment)
        self._token = _CURRENT.set(self)
        self._replay.enter_context(replay_scope())  # replayed units' spans and metrics stay out of traces
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._replay.close()
        if self._token is not None:
            _CURRENT.reset(self._token)

    def place(self, key: str) -> str:
        """`key` the first time this stretch meets it, then `key#1`, `key#2`, … (a tool call id a model
        used twice in one step)."""
        n = self._seen[key]
        self._seen[key] += 1
        return key if n == 0 else f"{key}#{n}"

    async def record(self, key: str, payload: Any) -> None:
        try:
            await self.store.record(self.tenant, self.run_id, self.segment, key, payload)
        except Exception as e:
            self.failure = e
            raise


def journal_scope(store: JournalStore, tenant: str, run_id: str, segment: int, *, fresh: bool = False) -> JournalScope:
    """`async with journal_scope(...)`: the run inside resumes from what `segment` of its journal holds."""
    return JournalScope(store, tenant, run_id, segment, fresh)


_CURRENT: ContextVar[JournalScope | None] = ContextVar("agentbus_journal", default=None)


def _unit_key(operation_id: DurableOperationId, name: str, cache_key: tuple[object, ...]) -> str:
    """Where a unit stands in its run (see the module's docstring). The run context is among the
    inputs pydantic-ai hands every model request and tool call unit as its cache key."""
    ctx = next((c for c in cache_key if isinstance(c, RunContext)), None)
    if ctx is None:
        return name
    match operation_id:
        case ModelRequestId():
            return f"model@{ctx.run_step}"
        case ToolsetCallToolId() if ctx.tool_call_id:
            return f"tool@{ctx.run_step}:{ctx.tool_call_id}"
        case ToolsetValidateToolArgumentsId() if ctx.tool_call_id:
            return f"validate@{ctx.run_step}:{ctx.tool_call_id}"
        case _:
            return name


class JournalBackend(JournalCallableOperationBackend[None]):
    """Runs a unit, or returns its recorded result: pydantic-ai's callable backend on the run's journal."""

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: None,
    ) -> object:
        journal = _CURRENT.get()
        if journal is None:  # pydantic-ai dispatches units only inside the durable context
            raise RuntimeError("a journaled unit ran outside journal_scope")
        key = _unit_key(operation_id, name, cache_key)
        if not key.startswith("model@"):  # one answer per step: a fallback's first model replays it too
            key = journal.place(key)
        if key in journal.recorded:
            record_durable_unit(executed=False)
            payload = journal.recorded[key]
            if journal.live is not None and isinstance(operation_id, ModelRequestId) and operation_id.streaming:
                response: ModelResponse = JSON_CODEC.load(ModelResponse, payload)
                for index, part in enumerate(response.parts):
                    journal.live(PartStartEvent(index=index, part=part))
            return payload
        payload = await body()
        await journal.record(key, payload)
        record_durable_unit(executed=True)
        return payload


async def _stream_live(ctx: RunContext[RunDeps], events: AsyncIterable[AgentStreamEvent]) -> None:
    """Inside a model request's unit: its events, as the model streams them, to the run's live output."""
    journal = _CURRENT.get()
    live = journal.live if journal is not None else None
    async for event in events:
        if live is not None:
            live(event)


def _tool_config(operation_id: DurableOperationId, tool: object | None, tool_name: str) -> Literal[False] | None:
    return False if tool_name in NOT_JOURNALED else None


class Journal(BaseDurabilityCapability[RunDeps]):
    """The journal as a pydantic-ai durability capability. `models`: every model a fallback chain may
    move a request to, by name (pydantic-ai passes only names into a unit)."""

    engine_spec: ClassVar[DurabilityEngineSpec] = DurabilityEngineSpec(
        engine_name="agentbus journal",
        durable_unit_noun="step",
        durable_container_noun="run",
        codec=JSON_CODEC,  # payloads go into jsonb
        wrapped_toolset_kinds=frozenset({"function", "mcp"}),
        # an MCP server's connection is the executor's (mcp_servers.py): entering a run's view of it is free
        toolset_lifecycles={"function": "enter-always", "mcp": "enter-always", "dynamic": "enter-never"},
        journal_discovery=False,  # tool lists are read live: a replayed step may see a server's new tools
        # A run's CancellationToken fires at an unrecorded point, which pydantic-ai guards against for
        # engines that replay a run from its start on another loop. Here a cancelled run is never replayed:
        # it ends cancelled (its journal dropped), and a crash after the cancel was asked for finds the
        # cancel flag in executor.runs and ends the run without running it.
        accepts_cancellation_token=True,
    )

    def __init__(self, *, models: Mapping[str, Model] | None = None) -> None:
        super().__init__(models=models)

    @property
    def in_durable_context(self) -> bool:
        return _CURRENT.get() is not None

    def get_durable_operation_backend(self) -> JournalBackend:
        config = RoleBasedOperationConfig[None](
            model=None, event=None, capability=None, tool=None, resolve_tool=_tool_config
        )
        return JournalBackend(agent_name=self.name, config=config)

    def _model_stream_event_handler(self) -> EventStreamHandler[RunDeps]:
        return _stream_live

    def _wrap_other_leaf_toolset(self, ts: AbstractToolset[RunDeps]) -> WrapperToolset[RunDeps] | None:
        """A declared MCP server's tools (a run's view of the shared connection) journal as MCP tools."""
        return self._build_mcp_toolset(ts) if isinstance(ts, ServerToolset) else None

    async def wrap_tool_execute(
        self,
        ctx: RunContext[RunDeps],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: ValidatedToolArgs,
        handler: WrapToolExecuteHandler,
    ) -> Any:
        """The side-effect ledger: a side-effecting call is marked started before it runs, and one marked
        started by a process that crashed before it finished is not run again."""
        journal = _CURRENT.get()
        if journal is None or not (tool_def.metadata or {}).get(SIDE_EFFECTS):
            return await handler(args)
        where = f"{ctx.run_step}:{call.tool_call_id}"
        if f"tool@{where}" not in journal.recorded:  # else it finished: the journal replays its result
            if f"started@{where}" in journal.recorded:
                return NOT_REPEATED.format(tool=tool_def.name)
            await journal.record(f"started@{where}", None)
        return await handler(args)


def journal_for(model: ResolvedModel) -> Journal:
    """The journal capability for an agent on `model`, knowing each deployment its requests may go to."""
    route = model.route
    deployments = {d.name: d.model for d in route.deployments} if route is not None else {}
    return Journal(models={name: m for name, m in deployments.items() if m is not model.model})
