"""Which tool calls of an agent need a person's approval: the agents file's `requires_approval`.

```toml
[agents.mailer]
tools = ["python:myapp.tools:send_email", "python:myapp.tools:refund", "mcp:crm"]
requires_approval = [
    "send_email",                                   # every call of this tool (its name as the model sees it)
    "mcp:crm",                                      # every tool of that MCP server (or "mcp:crm/<tool>")
    { tool = "refund", args_schema = { properties = { amount = { minimum = 100 } }, required = ["amount"] } },
]
```

A rule's `args_schema` is a JSON Schema: the call needs approval when its arguments are valid against it
(`refund` above: an amount of 100 or more). The gate is pydantic-ai's ApprovalRequiredToolset around each
of the agent's toolsets; a call it stops becomes a deferred call and the run parks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # (the mcp package depends on it; no stubs)
import msgspec
from pydantic_ai import RunContext
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets import AbstractToolset, ApprovalRequiredToolset

from actors.executor.deps import RunDeps

__all__ = ["ApprovalGate", "ApprovalRule"]

MCP_PREFIX = "mcp:"


class ApprovalRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tool: str  # as the model sees it (an MCP server's tools: `<server>_<tool>`)
    args_schema: dict[str, Any] | None = None  # None: every call


@dataclass(frozen=True, slots=True)
class ApprovalGate:
    tools: frozenset[str]  # every call of these needs approval
    servers: frozenset[str]  # every tool of these MCP servers
    rules: tuple[tuple[str, Any], ...]  # (tool, a JSON Schema validator of its arguments)

    @classmethod
    def of(cls, entries: Sequence[str | ApprovalRule]) -> ApprovalGate:
        """From `requires_approval`; ValueError naming an entry that is not one (a bad schema, say)."""
        tools: set[str] = set()
        servers: set[str] = set()
        rules: list[tuple[str, Any]] = []
        for entry in entries:
            if isinstance(entry, ApprovalRule):
                if entry.args_schema is None:
                    tools.add(entry.tool)
                    continue
                try:
                    jsonschema.Draft202012Validator.check_schema(entry.args_schema)
                except jsonschema.SchemaError as e:
                    raise ValueError(
                        f"requires_approval: {entry.tool}: args_schema is not a JSON Schema: {e.message}"
                    ) from e
                rules.append((entry.tool, jsonschema.Draft202012Validator(entry.args_schema)))
            elif entry.startswith(MCP_PREFIX):
                server, _, tool = entry.removeprefix(MCP_PREFIX).partition("/")
                if tool:
                    tools.add(f"{server}_{tool}")
                else:
                    servers.add(server)
            else:
                tools.add(entry)
        return cls(frozenset(tools), frozenset(servers), tuple(rules))

    def needs(self, tool: str, args: dict[str, Any]) -> bool:
        return tool in self.tools or any(name == tool and check.is_valid(args) for name, check in self.rules)

    def guard(self, toolset: AbstractToolset[RunDeps], *, server: str | None = None) -> AbstractToolset[RunDeps]:
        """`toolset` with its calls that need approval deferred (all of them for a server named whole)."""
        if server is not None and server in self.servers:
            return ApprovalRequiredToolset(toolset)
        return ApprovalRequiredToolset(toolset, approval_required_func=self._check)

    def _check(self, ctx: RunContext[RunDeps], tool: ToolDefinition, args: dict[str, Any]) -> bool:
        return self.needs(tool.name, args)
