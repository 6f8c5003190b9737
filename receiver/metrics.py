"""Prometheus metrics for one app (its own registry, so several apps never collide)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """Callbacks by channel, provider, type and outcome; latency; replies sent; and, with
    a journal, retries, dead letters, undelivered replies, the backlog and commit times
    (the :class:`receiver.redelivery.Observer` methods, called where those happen)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The standard process_* (memory, CPU, descriptors) and python_info series.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.callbacks = Counter(
            "receiver_callbacks",
            "Callbacks received, by channel, provider, event type and outcome.",
            ["channel", "provider", "type", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "receiver_callback_duration_seconds",
            "Time from request to answer, by channel.",
            ["channel"],
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
            ),
            registry=self.registry,
        )
        self.replies = Counter(
            "receiver_replies",
            "Replies sent back to the provider (in the response or through send_reply).",
            ["channel", "provider"],
            registry=self.registry,
        )
        self.retries = Counter(
            "receiver_retries",
            "Failed entries the retry worker dispatched again (or whose reply it re-sent).",
            ["channel"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "receiver_dead_letters",
            "Entries out of attempts (state dead).",
            ["channel"],
            registry=self.registry,
        )
        self.undelivered = Counter(
            "receiver_replies_undelivered",
            "Replies send_reply raised on (with the journal: kept and re-sent; without: lost).",
            ["channel"],
            registry=self.registry,
        )
        self.backlog_gauge = Gauge(
            "receiver_journal_backlog",
            "Journal entries still to handle or deliver: failed and reply_failed, and "
            "received ones being handled (counted by the retry worker every few seconds).",
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "receiver_journal_commit_seconds",
            "Time of each journal transaction, BEGIN to COMMIT (one per group commit).",
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.journal_commit = self.commit_seconds.observe
        """Told each commit's seconds (by the journal's writer thread)."""
        self._children: dict[tuple[str, ...], tuple[Counter, Histogram, Counter]] = {}

    def retried(self, channel: str) -> None:
        self.retries.labels(channel).inc()

    def dead_letter(self, channel: str) -> None:
        self.dead_letters.labels(channel).inc()

    def reply_undelivered(self, channel: str) -> None:
        self.undelivered.labels(channel).inc()

    def backlog(self, count: int) -> None:
        self.backlog_gauge.set(count)

    def observe(
        self,
        channel: str,
        provider: str,
        event_type: str,
        outcome: str,
        seconds: float,
        replied: bool,
    ) -> None:
        """Record one callback (label children are cached: no lookups per request)."""
        key = (channel, provider, event_type, outcome)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.callbacks.labels(*key),
                self.latency.labels(channel),
                self.replies.labels(channel, provider),
            )
        count, latency, replies = children
        count.inc()
        latency.observe(seconds)
        if replied:
            replies.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this app's metrics."""
        return generate_latest(self.registry)
