"""The trigger actor: signed webhooks and bus subjects that fire triggered tasks."""
