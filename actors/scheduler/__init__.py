"""The scheduler actor: task definitions, their timing, and every firing as a task run."""
