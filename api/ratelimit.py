"""Per-API-key sliding-window rate limit (in process memory; one API process per key is the common case)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from api.errors import APIError


class RateLimiter:
    """At most `limit` events per `window` seconds per key."""

    def __init__(self, limit: int, window: float = 60.0, what: str = "job creations") -> None:
        self.limit = limit
        self.window = window
        self.what = what
        self._events: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def hit(self, key: str) -> None:
        """Count one event for `key`; raise a 429 APIError when over the limit."""
        now = time.monotonic()
        with self._lock:
            events = self._events[key]
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                retry = max(1, int(events[0] + self.window - now) + 1)
                raise APIError(
                    429,
                    f"Rate limit reached: at most {self.limit} {self.what} per {int(self.window)} s per API "
                    f"key; retry in {retry} s.",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry)},
                )
            events.append(now)
