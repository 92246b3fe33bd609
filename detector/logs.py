"""Logging helpers: one-line setup and rate-limited warnings for bad data."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog", "setup_logging"]


def setup_logging(level: str) -> None:
    """Timestamped single-line logs on stderr."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python logs every connection at INFO; its warnings and errors are what operators need.
    logging.getLogger("kafka").setLevel(max(logging.getLevelName(level), logging.WARNING))


class RateLimitedLog:
    """Logs a message at most once per ``interval_s`` per key, reporting how many were suppressed.

    Bad data can arrive thousands of times a second; one line per reason per interval keeps the
    log readable while the rejected counter keeps the exact count.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``message`` under ``key`` unless it was logged recently; returns whether it logged.

        ``exc_info`` adds the traceback of the exception being handled.
        """
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        suppressed = self._suppressed.pop(key, 0)
        suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
        self.logger.warning(message + suffix, *args, exc_info=exc_info)
        self._last[key] = now
        return True
