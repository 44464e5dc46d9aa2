"""When a task fires next: cron (5 fields, or 6 with seconds first), a fixed interval, or once.

Cron times are computed in the task's IANA time zone, so `0 9 * * *` stays 09:00 local across DST
changes (a time that does not exist on a spring-forward day fires at the next valid time; a
fixed time inside the repeated hour of a fall-back day fires once, at its first occurrence).
A one-shot `run_at` with a UTC offset is that instant; without one it is a wall-clock time in the
task's time zone (inside a repeated hour, its first occurrence; inside a skipped one, read with the
offset before the change, so 02:30 on a spring-forward night fires at 03:30). Everything is stored in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, croniter

__all__ = ["Timing", "TimingError", "first_after", "shortest_gap_s", "validate"]

GAPS_LOOKED_AT = 1000  # firings a cron's shortest gap is looked for in (a few ms of croniter)


class TimingError(ValueError):
    pass


class Timing:
    def __init__(
        self,
        *,
        schedule_expression: str | None,
        interval_seconds: float | None,
        run_at: datetime | None,
        timezone: str,
    ) -> None:
        self.cron = schedule_expression
        self.interval = interval_seconds
        try:
            self.zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise TimingError(f"unknown time zone {timezone!r}: use an IANA name like Europe/Paris") from None
        if run_at is not None and run_at.tzinfo is None:  # a wall-clock time, read in the task's time zone
            run_at = run_at.replace(tzinfo=self.zone).astimezone(UTC)
        self.run_at = run_at

    def next_after(self, moment: datetime) -> datetime | None:
        """The first firing strictly after `moment` (UTC), or None when there is none."""
        if self.cron is not None:
            fields = self.cron.split()
            local = moment.astimezone(self.zone)
            it = croniter(self.cron, local, second_at_beginning=len(fields) == 6)
            nxt: datetime = it.get_next(datetime)
            if nxt.replace(tzinfo=None) == local.replace(tzinfo=None):  # the repeated hour of a fall-back day
                nxt = it.get_next(datetime)
            return nxt.astimezone(UTC)
        if self.interval is not None:
            return moment + timedelta(seconds=self.interval)
        if self.run_at is not None and self.run_at > moment:
            return self.run_at.astimezone(UTC)
        return None


def validate(
    *, schedule_expression: str | None, interval_seconds: float | None, run_at: datetime | None, timezone: str
) -> Timing:
    """A Timing for a scheduled task, or TimingError saying what is wrong."""
    given = [x is not None for x in (schedule_expression, interval_seconds, run_at)]
    if sum(given) != 1:
        raise TimingError("a scheduled task needs exactly one of schedule_expression, interval_seconds, run_at")
    if schedule_expression is not None:
        fields = schedule_expression.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(
            schedule_expression, second_at_beginning=len(fields) == 6
        ):
            raise TimingError(f"not a cron expression: {schedule_expression!r} (5 fields, or 6 with seconds first)")
    if interval_seconds is not None and not interval_seconds > 0:
        raise TimingError("interval_seconds must be greater than 0")
    timing = Timing(
        schedule_expression=schedule_expression, interval_seconds=interval_seconds, run_at=run_at, timezone=timezone
    )
    try:
        timing.next_after(datetime.now(UTC))
    except (CroniterBadCronError, ValueError) as e:
        raise TimingError(str(e)) from e
    return timing


def first_after(timing: Timing, moment: datetime) -> datetime | None:
    return timing.next_after(moment)


def shortest_gap_s(timing: Timing, *, below: float, start: datetime) -> float | None:
    """The shortest time between two firings of the timing (its interval; for cron, looked for among its first
    GAPS_LOOKED_AT firings after `start`), or None for a one-shot. Stops at the first gap under `below`."""
    if timing.interval is not None:
        return timing.interval
    if timing.cron is None:
        return None
    fields = timing.cron.split()
    it = croniter(timing.cron, start.astimezone(UTC), second_at_beginning=len(fields) == 6)
    last: datetime = it.get_next(datetime)
    shortest: float | None = None
    for _ in range(GAPS_LOOKED_AT):
        nxt: datetime = it.get_next(datetime)
        gap = (nxt - last).total_seconds()
        shortest = gap if shortest is None else min(shortest, gap)
        if shortest < below:
            break
        last = nxt
    return shortest
