"""The executor actor: runs pydantic-ai agents and streams their output to the bus."""
