"""The `agentbus` commands that talk to a gateway over HTTP: chat, status, tasks, runs, research, dlq, approvals."""

from __future__ import annotations

import argparse
from typing import Any

from bus.cli import approvals as cli_approvals
from bus.cli import chat as cli_chat
from bus.cli import status as cli_status
from bus.cli import work as cli_work
from bus.cli.api import run_command

__all__ = ["COMMANDS", "add_parsers", "run"]

COMMANDS = ("chat", "status", *cli_work.NOUNS, *cli_approvals.COMMANDS)


def add_parsers(commands: Any) -> None:
    cli_chat.add_parser(commands)
    cli_status.add_parser(commands)
    cli_work.add_parsers(commands)
    cli_approvals.add_parsers(commands)


def run(args: argparse.Namespace) -> int:
    match args.command:
        case "chat":
            return run_command(lambda api, console: cli_chat.chat(api, console, args))
        case "status":
            return run_command(lambda api, console: cli_status.status(api, console, args))
        case command if command in cli_approvals.COMMANDS:
            return run_command(lambda api, console: cli_approvals.approvals(api, console, args))
    return run_command(lambda api, console: cli_work.work(api, console, args))
