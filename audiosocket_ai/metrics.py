"""Prometheus metrics for the server, the calls and the pipeline.

The hot path stays cheap: the pacer counts its own lateness into a small per-call bucket
array (integer increments), and those arrays are only summed when Prometheus scrapes.
Per-turn and per-call events (a few per second) go straight into prometheus-client
objects.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .call import Call
    from .server import Server

PACING_BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Upper bounds of the pacing-lateness histogram (how late a tick's frame left)."""

STAGE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class PacingHistogram:
    """Counts of tick lateness per bucket; cheap enough to update 50 times a second per call."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(PACING_BUCKETS_MS) + 1)
        self.count = 0
        self.total = 0.0

    def observe_ms(self, late_ms: float) -> None:
        self.counts[bisect.bisect_left(PACING_BUCKETS_MS, late_ms)] += 1
        self.count += 1
        self.total += late_ms

    def merge(self, other: PacingHistogram) -> None:
        for i, value in enumerate(other.counts):
            self.counts[i] += value
        self.count += other.count
        self.total += other.total


class Metrics:
    """One registry per process (or per test), fed by the server and the pipeline."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls_total = Counter("audiosocket_calls", "Calls accepted.", registry=r)
        self.calls_ended = Counter("audiosocket_calls_ended", "Calls ended, by reason.", ["reason"], registry=r)
        self.rejected = Counter("audiosocket_connections_rejected", "Connections refused, by reason.", ["reason"],
                                registry=r)
        self.frames_in = Counter("audiosocket_frames_in", "Messages received from Asterisk.", registry=r)
        self.frames_out = Counter("audiosocket_frames_out", "Audio frames sent to Asterisk.", registry=r)
        # underrun and late ticks are counted live (finished calls + calls in progress), so a
        # scrape during a burst shows the stalls as they happen: see _LiveCollector
        self.finished_underruns = 0
        self.finished_late_ticks = 0
        self.inbound_dropped = Counter("audiosocket_inbound_frames_dropped",
                                       "Inbound frames dropped because the agent fell behind.", registry=r)
        self.barge_ins = Counter("audiosocket_barge_ins", "Times the caller interrupted the agent.", registry=r)
        self.provider_errors = Counter("audiosocket_provider_errors", "Provider failures, by stage.", ["stage"],
                                       registry=r)
        self.stage_latency = Histogram("audiosocket_stage_latency_seconds", "Latency of each pipeline stage.",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self._finished_pacing = PacingHistogram()
        self._server: Server | None = None
        r.register(_LiveCollector(self))

    def attach(self, server: Server) -> None:
        """Read live numbers (active calls, readiness) from ``server`` at scrape time."""
        self._server = server

    def call_ended(self, call: Call) -> None:
        """Fold a finished call's counters into the totals."""
        playout = call.playout
        self.calls_ended.labels(reason=(call.end_reason.value if call.end_reason else "unknown")).inc()
        self.frames_in.inc(call.stats.frames_in)
        self.frames_out.inc(playout.frames_sent)
        self.finished_underruns += playout.underruns
        self.finished_late_ticks += playout.late_ticks
        self.inbound_dropped.inc(call.stats.audio_dropped)
        self._finished_pacing.merge(playout.pacing)

    def observe_turn(self, timings_ms: dict[str, float | None]) -> None:
        for stage, value in timings_ms.items():
            if value is not None:
                self.stage_latency.labels(stage=stage).observe(value / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        server = self.metrics._server
        calls = list(server.calls.values()) if server is not None else []
        yield GaugeMetricFamily("audiosocket_calls_active", "Calls in progress.", value=len(calls))
        yield GaugeMetricFamily("audiosocket_ready", "1 if accepting new calls.",
                                value=1 if server is not None and server.ready else 0)
        yield CounterMetricFamily("audiosocket_underrun_ticks", "Ticks where an utterance that had started "
                                  "playing had no audio ready (the caller heard a gap).",
                                  value=self.metrics.finished_underruns + sum(c.playout.underruns for c in calls))
        yield CounterMetricFamily("audiosocket_late_ticks", "Ticks skipped because the event loop stalled.",
                                  value=self.metrics.finished_late_ticks + sum(c.playout.late_ticks for c in calls))
        pacing = PacingHistogram()
        pacing.merge(self.metrics._finished_pacing)
        for call in calls:
            pacing.merge(call.playout.pacing)
        buckets, running = [], 0
        for bound, count in zip(PACING_BUCKETS_MS, pacing.counts, strict=False):
            running += count
            buckets.append((str(bound / 1000), running))
        buckets.append(("+Inf", pacing.count))
        yield HistogramMetricFamily("audiosocket_pacing_lateness_seconds",
                                    "How late each outbound frame left relative to its 20 ms deadline.",
                                    buckets=buckets, sum_value=pacing.total / 1000)
