"""Tools that run in a child process with CPU-time, memory and wall-time limits, so a tool that loops or
leaks memory cannot take the executor down.

The child is `python -m actors.executor.isolation --cpu-s N --memory-mb M <mode> …`: it sets its own
rlimits (RLIMIT_CPU, RLIMIT_AS, with the `resource` module) first, then either execs a command (a
stdio MCP server: `exec -- command args…`, the limits carry over the exec) or calls one Python
function (`call module:function`, JSON arguments on stdin, a JSON answer on stdout). The wall-time
limit is the parent's: it kills the child (its whole process group) when the time is up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import os
import resource
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

__all__ = ["IsolationLimits", "ToolStopped", "call_isolated", "exec_argv"]

MODULE = "actors.executor.isolation"
ANSWER_LIMIT = 64 * 1024 * 1024  # bytes of a child's answer read at most


class IsolationLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cpu_s: int = 10  # CPU seconds (a stdio server: over its whole life)
    memory_mb: int = 512  # address space
    wall_s: float = 30.0  # per call

    def flags(self) -> list[str]:
        return ["--cpu-s", str(self.cpu_s), "--memory-mb", str(self.memory_mb)]


class ToolStopped(Exception):
    """An isolated tool was stopped at one of its limits (`limit`: cpu_s, memory_mb or wall_s) or died
    otherwise (`exited`)."""

    def __init__(self, tool: str, limit: str, message: str) -> None:
        super().__init__(message)
        self.tool = tool
        self.limit = limit


def exec_argv(limits: IsolationLimits, command: str, args: list[str]) -> tuple[str, list[str]]:
    """The command and arguments that run `command args…` under `limits` (a stdio MCP server)."""
    return sys.executable, ["-m", MODULE, *limits.flags(), "exec", "--", command, *args]


def _stopped(tool: str, limits: IsolationLimits, returncode: int, stderr: bytes) -> ToolStopped:
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and b"MemoryError" not in stderr:
        limit, what = (
            ("cpu_s", f"its CPU-time limit of {limits.cpu_s} s")
            if returncode == -signal.SIGXCPU
            else (
                "memory_mb",
                f"its memory limit of {limits.memory_mb} MB (killed)",
            )
        )
    elif b"MemoryError" in stderr:
        limit, what = "memory_mb", f"its memory limit of {limits.memory_mb} MB"
    else:
        return ToolStopped(tool, "exited", f"the isolated tool {tool} failed (exit status {returncode})")
    return ToolStopped(tool, limit, f"the isolated tool {tool} was stopped at {what}")


async def call_isolated(tool: str, target: str, args: dict[str, Any], limits: IsolationLimits) -> Any:
    """Call the function `module:attr` with `args` in a child process under `limits`; its result.
    A child stopped at a limit raises ToolStopped; an exception in the function raises RuntimeError."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        MODULE,
        *limits.flags(),
        "call",
        target,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: killed whole, never by a signal meant for us
        limit=ANSWER_LIMIT,
    )
    try:
        async with asyncio.timeout(limits.wall_s):
            out, err = await proc.communicate(json.dumps(args).encode())
    except TimeoutError:
        raise ToolStopped(
            tool, "wall_s", f"the isolated tool {tool} was stopped at its wall-time limit of {limits.wall_s:g} s"
        ) from None
    finally:
        if proc.returncode is None:  # timed out, or the call was cancelled (the run's tool timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    if proc.returncode != 0:
        raise _stopped(tool, limits, proc.returncode or 0, err)
    answer = json.loads(out)
    if "error" in answer:
        if answer["error"] == "MemoryError":
            raise ToolStopped(
                tool, "memory_mb", f"the isolated tool {tool} was stopped at its memory limit of {limits.memory_mb} MB"
            )
        raise RuntimeError(f"{tool} raised {answer['error']}")
    return answer["result"]


# --- the child -------------------------------------------------------------------------------


def _set_limits(cpu_s: int, memory_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU at the soft limit, SIGKILL at the hard
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def _call(target: str) -> int:
    module_name, _, attr = target.partition(":")
    function: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
    args = json.loads(sys.stdin.read() or "{}")
    try:
        result = function(**args)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
    except MemoryError:
        answer = {"error": "MemoryError"}
    except Exception as e:
        traceback.print_exc()
        answer = {"error": f"{type(e).__name__}: {e}"}
    else:
        answer = {"result": result}
    sys.stdout.write(json.dumps(answer, default=str))
    return 0


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-s", type=int, required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    modes = parser.add_subparsers(dest="mode", required=True)
    call = modes.add_parser("call", help="call module:function with JSON arguments from stdin")
    call.add_argument("target")
    run = modes.add_parser("exec", help="exec a command under the limits")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    _set_limits(args.cpu_s, args.memory_mb)
    if args.mode == "call":
        return _call(args.target)
    command: list[str] = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("exec needs a command")
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())
