"""What a handler raises to steer delivery, and what the bus raises at its edge."""

from __future__ import annotations

from schemas.errors import ErrorCode, ErrorReply

__all__ = ["BusError", "Reject", "Retry"]


class Retry(Exception):
    """Put the message back and try again after `delay` seconds (nak with delay). `waiting`: the message is
    fine and waits for something outside (a model provider to come back), so its deliveries while it waits
    are not counted toward dead-lettering it."""

    def __init__(self, reason: str, *, delay: float = 1.0, waiting: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.waiting = waiting


class Reject(Exception):
    """The message can never succeed: terminate it and send it to the dead-letter subject."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BusError(Exception):
    """A request failed with a typed error: an actor's ErrorReply, a timeout, or no responder."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}

    @classmethod
    def from_reply(cls, reply: ErrorReply) -> BusError:
        return cls(reply.code, reply.message, dict(reply.details))

    def reply(self) -> ErrorReply:
        return ErrorReply(code=self.code, message=self.message, details=self.details)
