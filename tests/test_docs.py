"""The docs describe the code as it is: the schema reference in docs/bus.md is regenerated, not edited."""

from __future__ import annotations

from schemas.__main__ import DOC, with_reference


def test_bus_md_schema_reference_is_current() -> None:
    current = DOC.read_text()
    assert current == with_reference(current), "docs/bus.md is stale: run `uv run python -m schemas --write`"


def test_bus_md_lists_every_subject_function() -> None:
    import bus.subjects

    doc = DOC.read_text()
    missing = [name for name in bus.subjects.__all__ if name[0].islower() and f"`{name}(" not in doc]
    assert missing == [], f"docs/bus.md does not list {missing}"
