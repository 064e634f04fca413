"""What "now" and "today" mean for the service."""

from __future__ import annotations

import datetime as dt
import time
from zoneinfo import ZoneInfo


class Clock:
    """Wall-clock time; "today" is the calendar date in the service time zone."""

    def __init__(self, time_zone: str = "Asia/Jakarta") -> None:
        self.zone = ZoneInfo(time_zone)

    def now_us(self) -> int:
        """Microseconds since the Unix epoch (UTC)."""
        return time.time_ns() // 1000

    def today(self) -> dt.date:
        """Today's date in the service time zone."""
        return dt.datetime.now(self.zone).date()
