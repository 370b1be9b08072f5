"""Prometheus metrics for the server, the calls and the pipeline.

Pushed to, never reaching out: the server tells :class:`Metrics` when a call starts and
ends and why a connection was refused, and gives it a readiness probe; the app wires the
assistant's observer to it. The hot path stays cheap: each call's pacer counts its own
lateness into a small bucket array (integer increments), and the arrays of the calls in
progress are only summed when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .call import Call
from .pacing import PACING_BUCKETS_MS, PacingHistogram
from .ticker import Ticker

__all__ = ["STAGE_BUCKETS", "Metrics"]

STAGE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


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
        self.resumes = Counter("audiosocket_resumes", "Times the agent paused for a sound over its speech and "
                               "went on, by what the sound was (backchannel, noise, echo, background, undecided).",
                               ["verdict"], registry=r)
        self.provider_errors = Counter("audiosocket_provider_errors", "Provider failures, by stage.", ["stage"],
                                       registry=r)
        self.stage_latency = Histogram("audiosocket_stage_latency_seconds", "Latency of each pipeline stage.",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self._finished_pacing = PacingHistogram()
        self.live_calls: set[Call] = set()
        """Calls in progress, as the server announced them."""
        self.ready: Callable[[], bool] = lambda: False
        """Readiness probe, given by the server."""
        self.ticker: Ticker | None = None
        """The server's shared tick, given by the server (its pass times and skipped ticks)."""
        r.register(_LiveCollector(self))

    def call_started(self, call: Call) -> None:
        """A call was admitted: count it, and read its live counters at each scrape."""
        self.calls_total.inc()
        self.live_calls.add(call)

    def call_ended(self, call: Call) -> None:
        """Fold a finished call's counters into the totals."""
        self.live_calls.discard(call)
        playout = call.playout
        self.calls_ended.labels(reason=(call.end_reason.value if call.end_reason else "unknown")).inc()
        self.frames_in.inc(call.stats.frames_in)
        self.frames_out.inc(playout.frames_sent)
        self.finished_underruns += playout.underruns
        self.finished_late_ticks += call.late_ticks
        self.inbound_dropped.inc(call.stats.audio_dropped)
        if call.pacer is not None:
            self._finished_pacing.merge(call.pacer.lateness)

    def connection_rejected(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

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
        calls = list(self.metrics.live_calls)
        yield GaugeMetricFamily("audiosocket_calls_active", "Calls in progress.", value=len(calls))
        yield GaugeMetricFamily("audiosocket_ready", "1 if accepting new calls.",
                                value=1 if self.metrics.ready() else 0)
        yield CounterMetricFamily("audiosocket_underrun_ticks", "Ticks where an utterance that had started "
                                  "playing had no audio ready (the caller heard a gap).",
                                  value=self.metrics.finished_underruns + sum(c.playout.underruns for c in calls))
        yield CounterMetricFamily("audiosocket_late_ticks", "Ticks skipped because the event loop stalled.",
                                  value=self.metrics.finished_late_ticks + sum(c.late_ticks for c in calls))
        pacing = PacingHistogram()
        pacing.merge(self.metrics._finished_pacing)
        for call in calls:
            if call.pacer is not None:
                pacing.merge(call.pacer.lateness)
        yield _histogram("audiosocket_pacing_lateness_seconds",
                         "How late each outbound frame left relative to its 20 ms deadline.", pacing)
        ticker = self.metrics.ticker
        if ticker is not None:
            yield _histogram("audiosocket_tick_pass_seconds", "How long each pass of the server-wide 20 ms tick "
                             "took (every call's socket read and frame written); near 0.02 the server is full.",
                             ticker.pass_ms)
            yield CounterMetricFamily("audiosocket_tick_skipped", "Ticks of the server-wide tick skipped because "
                                      "a pass began more than a tick late.", value=ticker.late_ticks)
            yield CounterMetricFamily("audiosocket_tick_passes_behind", "Passes of the tick that did not go before "
                                      "other tasks: the event loop had no time to spare or the tick could not "
                                      "keep up (past capacity).", value=ticker.passes_behind)


def _histogram(name: str, documentation: str, histogram: PacingHistogram) -> HistogramMetricFamily:
    """A Prometheus histogram (in seconds) of a millisecond :class:`PacingHistogram`."""
    buckets, running = [], 0
    for bound, count in zip(PACING_BUCKETS_MS, histogram.counts, strict=False):
        running += count
        buckets.append((str(bound / 1000), running))
    buckets.append(("+Inf", histogram.count))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.total / 1000)
