"""A guard against records Faust fetched but never handed to its streams.

Under a rebalance race (a worker restarted after a kill -9, before the dead
member's session expired), Faust can drop records it already took from
aiokafka's buffer without seeking back. Two things then go wrong, both seen
by the fault drill about once in ten kills:

- nothing arrives after the dropped records: aiokafka's position is past
  them, the stream never saw them, and the committed offset never moves;
- something does: Faust takes the jump in offsets for a compaction gap and
  commits past it, and the dropped records are lost.

The second is refused here: leadflow's stream topics are neither compacted
nor transactional, so their offsets have no gaps, and a jump only means
dropped records; the commit stays before them. Then both cases look the
same, a partition whose committed offset stays behind what was fetched
while none of its records is in flight, and every `interval` seconds the
guard looks for one. Stuck for `after_s` seconds, the consumer seeks every
partition back to its committed offset, so the records are fetched again
(records already handled are handled twice, which every step tolerates).

A partition with nothing committed yet (the first records after a worker
was killed, on a fresh topic) has no committed offset to go back to, and
aiokafka's `seek_to_committed` leaves such a partition (and one committed at
0) where it is: it stays stuck for good. The guard seeks those to offset 0
itself (the group resets to earliest when that is gone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class StallGuard:
    after_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    # per partition: its (read, committed, position) when first seen behind, and since when
    _behind: dict[Any, tuple[tuple[int | None, int | None, int], float]] = field(
        default_factory=dict
    )

    def stalled(
        self, partitions: Iterable[tuple[Any, int | None, int | None, int | None]]
    ) -> list[Any]:
        """The partitions stuck behind for `after_s`, from (tp, read, committed, position)
        of the partitions that have no record in flight."""
        now = self.clock()
        stuck: list[Any] = []
        seen: set[Any] = set()
        for tp, read, committed, position in partitions:
            if position is None or position <= (committed or 0):
                continue  # everything fetched is committed
            seen.add(tp)
            state = (read, committed, position)
            first = self._behind.get(tp)
            if first is None or first[0] != state:
                self._behind[tp] = (state, now)
            elif now - first[1] >= self.after_s:
                stuck.append(tp)
        for tp in set(self._behind) - seen:
            del self._behind[tp]
        return stuck

    def healed(self) -> None:
        self._behind.clear()


def idle_stream_partitions(app: Any) -> list[tuple[Any, int | None, int | None, int | None]]:
    """(tp, read offset, committed offset, fetch position) of each stream partition with
    no record in flight (delivered to a stream and not yet acknowledged).

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
    in_flight = {message.tp for message in list(consumer._unacked_messages)}
    rows = []
    for tp in consumer.assignment():
        if tp.topic.endswith("-changelog") or tp in consumer._paused_partitions:
            continue
        if tp in in_flight or tp in consumer._buffered_partitions:
            continue  # being worked on, or held back on purpose (stream buffer full)
        state = subscription.assignment.state_value(tp)
        position = state.position if state is not None and state.has_valid_position else None
        rows.append(
            (tp, consumer._read_offset.get(tp), consumer._committed_offset.get(tp), position)
        )
    return rows


async def _hold_commits_at_gaps(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
    """Replaces Faust's `Consumer._add_gap`, which marks the skipped offsets as done."""
    log.warning(
        "offsets %d..%d of %s[%d] were fetched but not delivered; not committing past "
        "them (they are fetched again)",
        offset_from,
        offset_to - 1,
        tp.topic,
        tp.partition,
    )


def _commit_from_the_head(self: Any, tp: Any) -> int | None:
    """Wraps Faust's `Consumer._new_offset`: no commit while the record at the committed
    offset (or, with nothing committed, the partition's first record) was never
    acknowledged, and the partition is read again from there.

    Faust commits the first run of consecutive acknowledged offsets unless it starts
    *more than one* past the committed offset, so a single record handed to a stream and
    dropped there (a rebalance or a restart empties the stream's buffers) is committed
    past and lost: the fault drill lost one of 889 that way. A record after it was
    acknowledged, and one partition's records are handled in order, so it will not be
    acknowledged any more: the partition is sought back to it (what follows is handled
    twice, which every step tolerates), again every HOLD_RESEEK_S while it holds.
    """
    acked = self._acked[tp]
    committed = self._committed_offset[tp]
    unknown = committed is None
    if acked and committed is None:
        # Nothing committed yet (a fresh group, or a worker killed before its first
        # commit): the head is where the partition begins. Records dropped there were
        # committed past by Faust, as a new lead's identity answer was once.
        committed = _begins_at(self, tp)
        if committed is None:
            return None  # where it begins is being asked: hold this commit until known
    if acked and committed is not None and min(acked) > committed:
        if unknown:
            _log_start.pop(tp, None)  # asked again at the next hold: retention moves it
        now = time.monotonic()
        held = _held_at.get(tp)
        if held is None or held[0] != committed or now - held[1] >= HOLD_RESEEK_S:
            _held_at[tp] = (committed, now)
            log.warning(
                "offset %d of %s[%d] was never acknowledged; not committing past it, "
                "reading the partition again from there",
                committed,
                tp.topic,
                tp.partition,
            )
            _seek_soon(self, tp, committed)
        return None
    _held_at.pop(tp, None)
    new_offset: int | None = _replaced["_new_offset"](self, tp)
    return new_offset


HOLD_RESEEK_S = 20.0
_held_at: dict[Any, tuple[int, float]] = {}
_seeks: set[Any] = set()  # running seeks and lookups, kept referenced until done
_log_start: dict[Any, int] = {}  # each partition's first offset, once asked
_asking: set[Any] = set()


def _begins_at(consumer: Any, tp: Any) -> int | None:
    """The partition's first offset if known; else asked of the broker (by the consumer's
    `earliest_offsets`) for a later commit, and None."""
    if tp in _log_start:
        return _log_start[tp]
    if tp not in _asking:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        _asking.add(tp)

        async def ask() -> None:
            try:
                offsets = await consumer.earliest_offsets(tp)
                if tp in offsets:
                    _log_start[tp] = offsets[tp]
            except Exception:
                # Nothing is lost while this fails: the partition's commit stays held
                # (nothing committed past its head) and the next commit asks again. Said
                # at warning, so a lookup that keeps failing is seen, not a silent hold.
                log.warning(
                    "could not read where %s[%d] begins; its commit waits, asking again",
                    tp.topic,
                    tp.partition,
                    exc_info=True,
                )
            finally:
                _asking.discard(tp)

        task = loop.create_task(ask())
        _seeks.add(task)
        task.add_done_callback(_seeks.discard)
    return None


def _seek_soon(consumer: Any, tp: Any, offset: int) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop (a direct call): the commit is held all the same
        return
    task = loop.create_task(consumer.seek(tp, offset))
    _seeks.add(task)
    task.add_done_callback(_seeks.discard)


def never_committed(
    stuck: Iterable[Any], partitions: Iterable[tuple[Any, int | None, int | None, int | None]]
) -> list[Any]:
    """Those of the stuck partitions that have no committed offset beyond 0: seeking back to
    the committed offsets does not move them."""
    committed = {tp: done for tp, _, done, _ in partitions}
    return [tp for tp in stuck if not committed.get(tp)]


# Faust's own `Consumer._add_gap` and `_new_offset`, kept when `install` replaces them
# (None: Faust had none).
_replaced: dict[str, Any] = {}


def faust_add_gap() -> Any:
    """Faust's `Consumer._add_gap`, whether or not `install` replaced it; None if it has none."""
    from faust.transport.consumer import Consumer

    current = getattr(Consumer, "_add_gap", None)
    return _replaced.get("_add_gap") if current is _hold_commits_at_gaps else current


def faust_new_offset() -> Any:
    """Faust's `Consumer._new_offset`, whether or not `install` wrapped it; None if none."""
    from faust.transport.consumer import Consumer

    current = getattr(Consumer, "_new_offset", None)
    return _replaced.get("_new_offset") if current is _commit_from_the_head else current


def install(app: Any, interval: float = 2.5, after_s: float = 10.0) -> StallGuard:
    """Replace `Consumer._add_gap`, wrap `Consumer._new_offset`, look for stalls every
    `interval` seconds, and check the internals this relies on once the consumer runs
    (`streams.internals`)."""
    from faust.transport.consumer import Consumer

    from streams.internals import check_running_internals

    current = getattr(Consumer, "_add_gap", None)
    if current is not _hold_commits_at_gaps:
        _replaced["_add_gap"] = current
    Consumer._add_gap = _hold_commits_at_gaps  # type: ignore[method-assign]
    current = getattr(Consumer, "_new_offset", None)
    if current is not _commit_from_the_head:
        _replaced["_new_offset"] = current
    Consumer._new_offset = _commit_from_the_head  # type: ignore[method-assign]
    guard = StallGuard(after_s=after_s)

    async def check_internals() -> None:
        await check_running_internals(app)

    app.task(check_internals)

    async def check_stalls() -> None:
        if app.rebalancing or not app.consumer.flow_active:
            guard.healed()  # a rebalance ends with its own seek
            return
        idle = idle_stream_partitions(app)
        stuck = guard.stalled(idle)
        if stuck:
            log.warning(
                "nothing delivered or committed for %.0fs while behind: %s; seeking back "
                "to the committed offsets",
                after_s,
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in stuck),
            )
            await app.consumer.perform_seek()
            for tp in never_committed(stuck, idle):
                log.warning("%s[%d] has nothing committed: reading it from the start", *tp)
                await app.consumer.seek(tp, 0)
            guard.healed()

    app.timer(interval=interval)(check_stalls)
    return guard
