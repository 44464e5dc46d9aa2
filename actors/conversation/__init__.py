"""The conversation actor: conversations, their messages and history, and the order of their turns."""
