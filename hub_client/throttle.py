"""How a sync paces itself against a Hub that rate-limits: wait as told, then go on with fewer
requests in flight.

huggingface.co answers a client over its quota with 429, the IETF ``RateLimit`` headers
(``"api";r=0;t=55``: nothing left, the window resets in 55 s) and ``Retry-After``;
``HubClient`` turns that into :class:`HubRateLimited` with the wait. Every fetch of a sync
goes through one :class:`RateGate`: a 429 pauses all of them until the time the Hub named,
halves the number allowed in flight (once per pause, however many requests were already out),
and the request is sent again. A run of successes gives the slots back one at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from loradex.errors import HubRateLimited

T = TypeVar("T")

# A Hub's reset time is whole seconds; waking a little after it avoids a second 429.
WAKE_MARGIN = 0.25
MAX_ATTEMPTS = 8  # 429s in a row for one request before the sync gives up (it resumes later)


class GateClosed(Exception):
    """The sync is stopping (Ctrl-C, a fatal error): waiting fetches give up."""


class RateGate:
    """Shared by a sync's fetch threads: how many may be in flight, and when they may go."""

    def __init__(
        self, jobs: int, max_wait: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.jobs = jobs
        self.limit = jobs  # fetches allowed in flight now
        self.lowest = jobs  # the lowest that limit went
        self.max_wait = max_wait
        self.hits = 0  # 429 answers seen
        self.waited = 0.0  # seconds paused (overlapping pauses counted once)
        self._clock = clock
        self._resume_at = 0.0
        self._active = 0
        self._streak = 0
        self._closed = False
        self._cond = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the slots in flight, once no pause is on."""
        with self._cond:
            while True:
                if self._closed:
                    raise GateClosed
                pause = self._resume_at - self._clock()
                if pause > 0:
                    self._cond.wait(pause)
                elif self._active >= self.limit:
                    self._cond.wait()
                else:
                    break
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a slot; after a 429, wait as told and send it again.

        Raises :class:`HubRateLimited` when the Hub asks for a wait longer than ``max_wait``
        or refuses ``MAX_ATTEMPTS`` times in a row: the sync stops there and resumes later.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            with self.slot():
                try:
                    result = fn(*args)
                except HubRateLimited as exc:
                    error = exc
                else:
                    self._succeeded()
                    return result
            self._rate_limited(error, attempt)
        raise AssertionError("unreachable")  # _rate_limited raises on the last attempt

    def close(self) -> None:
        """Wake every waiting fetch with :class:`GateClosed`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _rate_limited(self, error: HubRateLimited, attempt: int) -> None:
        with self._cond:
            self.hits += 1
            if error.retry_after > self.max_wait:
                raise HubRateLimited(
                    f"{error}: longer than the {self.max_wait:g} s this sync may wait; run it "
                    "again later (it resumes where it stopped)",
                    error.retry_after,
                ) from error
            if attempt == MAX_ATTEMPTS:
                raise HubRateLimited(
                    f"{error}: refused {attempt} times in a row; run the sync again later "
                    "(it resumes where it stopped)",
                    error.retry_after,
                ) from error
            now = self._clock()
            if now >= self._resume_at:  # the first 429 of a new pause
                self.limit = max(1, self.limit // 2)
                self.lowest = min(self.lowest, self.limit)
            end = now + error.retry_after + WAKE_MARGIN
            if end > self._resume_at:
                self.waited += end - max(now, self._resume_at)
                self._resume_at = end
            self._streak = 0
            self._cond.notify_all()

    def _succeeded(self) -> None:
        with self._cond:
            self._streak += 1
            if self.limit < self.jobs and self._streak >= 4 * self.limit:
                self.limit += 1
                self._streak = 0
                self._cond.notify_all()

