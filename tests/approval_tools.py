"""`python:` tools the approval tests name in their agents files: calls a person must approve first."""

from __future__ import annotations


def send_email(to: str, subject: str) -> str:
    """Send an email to `to` (a test's tool: it answers with the arguments it ran with, for the model to see)."""
    return f"sent to {to}: {subject}"
