"""The docs describe the code as it is: the schema reference in docs/bus.md is regenerated, not edited."""

from __future__ import annotations

from schemas.__main__ import DOC, with_reference


def test_bus_md_schema_reference_is_current() -> None:
    current = DOC.read_text()
    assert current == with_reference(current), "docs/bus.md is stale: run `uv run python -m schemas --write`"
