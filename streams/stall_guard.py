"""A guard against partitions Faust fetched but never handed to its streams.

Under a rebalance race (a worker restarted after a kill -9, before the dead
member's session expired), Faust can drop records it already took from
aiokafka's buffer without seeking back: aiokafka's position is past them, the
stream never saw them, and the partition's committed offset never moves again
until the worker restarts. The fault drill caught it as a stall about once in
ten kills.

Every `interval` seconds the guard compares, per stream partition, what
aiokafka fetched (its position) with what Faust delivered (its read offset).
A gap that has not changed for `after_s` seconds is a stall: the guard seeks
every partition back to its committed offset, so the records are fetched
again (a record that was in flight is then handled twice, which every stage
tolerates).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class StallGuard:
    after_s: float = 20.0
    clock: Callable[[], float] = time.monotonic
    # per partition: (read offset, fetch position) when first seen apart, and since when
    _apart: dict[Any, tuple[tuple[int | None, int], float]] = field(default_factory=dict)

    def stalled(
        self, partitions: Iterable[tuple[Any, int | None, int | None, int | None]]
    ) -> list[Any]:
        """The partitions stuck apart for `after_s`, from (tp, read, committed, position)."""
        now = self.clock()
        stuck: list[Any] = []
        seen: set[Any] = set()
        for tp, read, committed, position in partitions:
            # Nothing read since the last seek: the stream starts at the committed offset,
            # or at the log's start when the group never committed on this partition.
            delivered_to = read + 1 if read is not None else (committed or 0)
            if position is None or position <= delivered_to:
                continue  # nothing fetched beyond what the stream saw
            seen.add(tp)
            state = (read, position)
            first = self._apart.get(tp)
            if first is None or first[0] != state:
                self._apart[tp] = (state, now)
            elif now - first[1] >= self.after_s:
                stuck.append(tp)
        for tp in set(self._apart) - seen:
            del self._apart[tp]
        return stuck

    def healed(self) -> None:
        self._apart.clear()


def stream_partitions(app: Any) -> list[tuple[Any, int | None, int | None, int | None]]:
    """(tp, Faust's read offset, its committed offset, aiokafka's position) per stream tp.

    Reads Faust's and aiokafka's internals (faust-streaming 0.15, aiokafka 0.14):
    neither exposes these as public API.
    """
    consumer = app.consumer
    inner = getattr(consumer._thread, "_consumer", None)
    if inner is None:
        return []
    subscription = inner._subscription.subscription
    if subscription is None or subscription.assignment is None:
        return []
    rows = []
    for tp in consumer.assignment():
        if tp.topic.endswith("-changelog") or tp in consumer._paused_partitions:
            continue
        state = subscription.assignment.state_value(tp)
        position = state.position if state is not None and state.has_valid_position else None
        rows.append(
            (tp, consumer._read_offset.get(tp), consumer._committed_offset.get(tp), position)
        )
    return rows


def install(app: Any, interval: float = 5.0, after_s: float = 20.0) -> StallGuard:
    guard = StallGuard(after_s=after_s)

    async def check_stalls() -> None:
        if app.rebalancing or not app.consumer.flow_active:
            guard.healed()  # a rebalance ends with its own seek
            return
        stuck = guard.stalled(stream_partitions(app))
        if stuck:
            log.warning(
                "partitions fetched but not delivered for %.0fs: %s; seeking back to "
                "the committed offsets",
                after_s,
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in stuck),
            )
            await app.consumer.perform_seek()
            guard.healed()

    app.timer(interval=interval)(check_stalls)
    return guard
