"""The `agentbus` commands that talk to a gateway over HTTP (chat, status, tasks, runs, research, dlq)."""

from __future__ import annotations

import argparse
from typing import Any

from bus import cli_chat
from bus.cli_http import run_command

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("chat",)


def add_parsers(commands: Any) -> None:
    cli_chat.add_parser(commands)


def run(args: argparse.Namespace) -> int:
    match args.command:
        case "chat":
            return run_command(lambda api, console: cli_chat.chat(api, console, args))
    return 2
