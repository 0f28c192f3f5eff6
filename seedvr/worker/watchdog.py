"""The watchdog: a job whose pipeline stops making progress is ended, not left to RunPod's timeout.

The pipeline's progress events are the heartbeat: one as every model stage of every window starts and
one per chunk handed to the encoder. A job is stalled when no heartbeat came for

    max(WATCHDOG_MIN_SECONDS, WATCHDOG_MARGIN x the expected time of one window)

where the expected time is the slowest window measured so far in this job, or, before the first
window ends, the plan's window work (padded output pixels x frames) at a slow rate for the device
(it covers warm-up). The job runs in a thread of its own and is watched from the calling thread, so a
call that never returns (a hung kernel, a deadlocked collective, a stuck encoder) cannot stop the
watchdog. On a stall the caller stops what it can (sequence-parallel ranks are killed) and answers with
an error naming the stage and window, asking RunPod to replace the worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar


Result = TypeVar("Result")

# Seconds per million pixel-frames of window work before any window is measured: slow on purpose
# (a small GPU, a cold start). The goal of 3B at 720p, 11 fps on an H100, is about 0.1.
PRIOR_SECONDS_PER_MEGAPIXEL = {"cuda": 1.0, "cpu": 60.0}
POLL = 0.5  # seconds between looks at the heartbeat
UNWIND_GRACE = 10.0  # seconds a stalled job's thread gets to unwind once its ranks are killed


class Stalled(Exception):
    """The watched job made no progress within its limit; `thread` is its thread (alive if stuck)."""

    def __init__(self, message: str, thread: threading.Thread):
        super().__init__(message)
        self.message = message
        self.thread = thread


class Watchdog:
    """Heartbeats of one job and the stall limit they are held to; armed while the pipeline runs."""

    def __init__(
        self, margin: float, min_seconds: float, device_type: str, clock: Callable[[], float] = time.monotonic
    ):
        self.margin, self.min_seconds = margin, min_seconds
        self.rate = PRIOR_SECONDS_PER_MEGAPIXEL.get(device_type, PRIOR_SECONDS_PER_MEGAPIXEL["cpu"])
        self._clock = clock
        self._lock = threading.Lock()
        self._armed = False
        self._last: Any = None  # the latest progress event
        self._last_beat = 0.0
        self._window_started = 0.0
        self.slowest_window = 0.0

    def arm(self, progress: Callable[[Any], None]) -> Callable[[Any], None]:
        """Start watching; returns the progress callback for the pipeline, which also beats."""
        with self._lock:
            self._armed, self._last_beat = True, self._clock()

        def beat_and_forward(event: Any) -> None:
            self.beat(event)
            progress(event)

        return beat_and_forward

    def disarm(self) -> None:
        """Stop watching (the pipeline is done; delivery has its own timeouts)."""
        with self._lock:
            self._armed = False

    def beat(self, event: Any) -> None:
        """A progress event: the job is alive; a new window number closes the previous window's time."""
        now = self._clock()
        with self._lock:
            if self._last is None or event.window != self._last.window:
                if self._last is not None and self._last.window:
                    self.slowest_window = max(self.slowest_window, now - self._window_started)
                self._window_started = now
            self._last, self._last_beat = event, now

    def limit(self) -> float:
        """Seconds without a heartbeat that count as a stall."""
        pixels = getattr(self._last, "window_pixels", 0)
        expected = self.slowest_window or pixels / 1e6 * self.rate
        return max(self.min_seconds, self.margin * expected)

    def stalled(self) -> str | None:
        """Why the job counts as stalled, or None while it is alive (or not armed)."""
        with self._lock:
            if not self._armed:
                return None
            idle, limit, last = self._clock() - self._last_beat, self.limit(), self._last
        if idle <= limit:
            return None
        where = "before the first window" if last is None else (
            f"after stage {last.stage} of window {last.window} of {last.windows} started"
        )
        return (
            f"Processing stalled: no progress for {idle:.0f} s {where} (stall limit {limit:.0f} s: "
            f"WATCHDOG_MARGIN x the expected window time, at least WATCHDOG_MIN_SECONDS); "
            "the worker is replaced"
        )


def run_watched(work: Callable[[], Result], watchdog: Watchdog, on_stall: Callable[[], None]) -> Result:
    """`work()` in a thread of its own, watched from this one. On a stall, `on_stall()` stops what can be
    stopped, the thread gets UNWIND_GRACE seconds to end, and `Stalled` is raised."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - raised in the watching thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="seedvr-job", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(POLL)
        message = watchdog.stalled()
        if message is not None and thread.is_alive():
            on_stall()
            thread.join(UNWIND_GRACE)
            raise Stalled(message, thread)
    if "error" in outcome:
        raise outcome.pop("error")  # popped: the dict in this frame must not keep the failed job's tensors alive
    return outcome["value"]
