"""Prometheus metrics, served as text at ``GET /metrics``.

One registry per server (not prometheus_client's process-global one), fed by the supervisor's
session events and read from the watchdog's counts:

* ``pipecat_base_sessions_started_total``
* ``pipecat_base_sessions_ended_total{outcome}`` -- completed, error, budget, shutdown,
  client_disconnected, stopped, abandoned
* ``pipecat_base_sessions_active``
* ``pipecat_base_session_duration_seconds`` (histogram)
* ``pipecat_base_session_budget_stops_total``
* ``pipecat_base_drain_duration_seconds`` -- how long the last shutdown drain took
* ``pipecat_base_loop_stalls_total``, ``pipecat_base_loop_stall_longest_seconds``
* ``pipecat_base_leaked_tasks_reaped_total``
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))
OUTCOMES = (
    "completed",
    "error",
    "budget",
    "shutdown",
    "client_disconnected",
    "stopped",
    "abandoned",
    "no_connection",
)


class Metrics:
    """The server's metrics; the supervisor reports to it, ``/metrics`` renders it."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._started = Counter("pipecat_base_sessions_started", "Sessions started.", registry=r)
        self._ended = Counter(
            "pipecat_base_sessions_ended", "Sessions ended, by outcome.", ["outcome"], registry=r
        )
        # Every outcome shows from the start, at 0; the children are kept, since ``labels()``
        # validates and locks on every call.
        self._ended_by = {outcome: self._ended.labels(outcome) for outcome in OUTCOMES}
        self.active = Gauge("pipecat_base_sessions_active", "Sessions running now.", registry=r)
        self._duration = Histogram(
            "pipecat_base_session_duration_seconds",
            "How long sessions ran.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._budget_stops = Counter(
            "pipecat_base_session_budget_stops",
            "Sessions stopped by X-PCC-Max-Session-Seconds.",
            registry=r,
        )
        self._drain = Gauge(
            "pipecat_base_drain_duration_seconds",
            "Duration of the last shutdown drain.",
            registry=r,
        )
        self._reaped = Counter(
            "pipecat_base_leaked_tasks_reaped",
            "asyncio tasks a session left running, cancelled or abandoned at its end.",
            registry=r,
        )
        self.loop_stalls = Gauge(
            "pipecat_base_loop_stalls_total",
            "Times the event loop was blocked longer than LOOP_STALL_WARNING.",
            registry=r,
        )
        self.longest_stall = Gauge(
            "pipecat_base_loop_stall_longest_seconds",
            "Longest event-loop stall seen.",
            registry=r,
        )

    def session_started(self) -> None:
        self._started.inc()

    def session_ended(self, outcome: str, duration: float) -> None:
        self._ended_by[outcome].inc()
        self._duration.observe(duration)
        if outcome == "budget":
            self._budget_stops.inc()

    def tasks_reaped(self, count: int) -> None:
        self._reaped.inc(count)

    def drained(self, seconds: float) -> None:
        self._drain.set(seconds)

    def watch_stalls(self, stalls: Callable[[], float], longest_stall: Callable[[], float]) -> None:
        """Read the watchdog's counts at every scrape."""
        self.loop_stalls.set_function(stalls)
        self.longest_stall.set_function(longest_stall)

    def render(self) -> bytes:
        return generate_latest(self.registry)
