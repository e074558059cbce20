"""The worker's check of the Faust, mode and aiokafka internals it relies on.

Every test runs the check against the installed libraries; the ones that
simulate a newer library delete or replace the real attribute with
monkeypatch (undone after the test), never a stand-in for Faust.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import faust
import faust.streams
import mode
import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.subscription_state import TopicPartitionState
from faust.assignor import LeaderAssignor
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as driver

from leadflow.errors import FatalError
from streams import stall_guard
from streams.internals import (
    check_running_internals,
    missing_running_internals,
    missing_stream_internals,
    require_stream_internals,
)


def test_the_installed_libraries_have_every_internal_the_worker_relies_on() -> None:
    assert missing_stream_internals() == []
    require_stream_internals()


@pytest.mark.parametrize(
    ("owner", "name", "named"),
    [
        (Consumer, "_add_gap", "faust Consumer._add_gap"),
        (Consumer, "_new_offset", "faust Consumer._new_offset"),
        (driver.AIOKafkaConsumerThread, "_consumer", "faust AIOKafkaConsumerThread._consumer"),
        (faust.Stream, "noack_take", "faust Stream.noack_take"),
        (faust.streams, "_current_event", "faust faust.streams._current_event"),
        (LeaderAssignor, "_leader_topic_name", "faust App._leader_assignor._leader_topic_name"),
        (mode.Worker, "_on_sigusr1", "mode Worker._on_sigusr1"),
        (
            AIOKafkaClient,
            "fetch_all_metadata",
            "aiokafka AIOKafkaConsumer._client.fetch_all_metadata",
        ),
        (
            TopicPartitionState,
            "has_valid_position",
            "aiokafka TopicPartitionState.has_valid_position",
        ),
    ],
)
def test_a_missing_internal_is_named_with_the_installed_versions(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, named: str
) -> None:
    monkeypatch.delattr(owner, name)
    missing = missing_stream_internals()
    assert len(missing) == 1, missing
    assert missing[0].startswith(named)
    with pytest.raises(FatalError) as refused:
        require_stream_internals()
    message = str(refused.value)
    assert named in message
    assert f"faust-streaming {version('faust-streaming')}" in message
    assert f"aiokafka {version('aiokafka')}" in message
    assert "install the versions pinned in pyproject.toml" in message


def _without(attribute: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def reset_state(self: Any) -> None:
        original(self)
        delattr(self, attribute)

    return reset_state


def test_an_attribute_the_consumer_no_longer_sets_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Faust whose consumer no longer keeps `_paused_partitions` (set in `_reset_state`).
    monkeypatch.setattr(
        Consumer, "_reset_state", _without("_paused_partitions", Consumer._reset_state)
    )
    assert missing_stream_internals() == ["faust Consumer._paused_partitions"]


def test_changed_behaviour_is_named_too(monkeypatch: pytest.MonkeyPatch) -> None:
    async def send(self: Any, topic: str, key: Any, value: Any, headers: Any = None) -> Any:
        raise AssertionError("never called")

    async def drain(self: Any, fetcher: Any) -> None:
        return None

    def committable(self: Any, tps: Any) -> dict[Any, int]:
        return {}

    monkeypatch.setattr(driver.Producer, "send", send)  # parameters the Outbox cannot pass
    monkeypatch.setattr(Consumer, "_drain_messages", drain)  # no longer calls _add_gap
    monkeypatch.setattr(Consumer, "_filter_committable_offsets", committable)  # nor _new_offset
    monkeypatch.setattr(faust.streams, "current_event", lambda: None)  # ignores the variable
    monkeypatch.setattr(mode.Worker, "_install_signal_handlers_unix", lambda self: None)
    assert missing_stream_internals() == [
        "faust Consumer._drain_messages calling self._add_gap",
        "faust Consumer._filter_committable_offsets calling self._new_offset",
        "faust faust.streams.current_event() reading faust.streams._current_event",
        "mode Worker._install_signal_handlers_unix installing self._on_sigusr1",
        "faust Producer.send(topic, key, value, partition, timestamp, headers) taken positionally",
    ]


def close_consumer_loop(app: faust.App) -> None:
    """Faust's consumer thread made an event loop of its own, closed only when it stops."""
    consumer: Any = app.consumer
    consumer._thread.thread_loop.close()


@pytest.fixture
def guarded_add_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's `_add_gap` replaced as `stall_guard.install` does, undone after the test."""
    monkeypatch.setattr(stall_guard, "_replaced", {})
    monkeypatch.setattr(Consumer, "_add_gap", Consumer._add_gap)  # restored after
    monkeypatch.setattr(Consumer, "_new_offset", Consumer._new_offset)
    app = faust.App("unit-install", broker="kafka://127.0.0.1:9", store="memory://")
    stall_guard.install(app)  # registers a timer and a task; builds no consumer


def test_the_check_sees_faust_own_add_gap_after_the_stall_guard_replaced_it(
    guarded_add_gap: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Consumer._add_gap is stall_guard._hold_commits_at_gaps
    assert missing_stream_internals() == []
    monkeypatch.setitem(stall_guard._replaced, "_add_gap", None)  # Faust had none to replace
    assert missing_stream_internals() == [
        "faust Consumer._add_gap (replaced by streams/stall_guard.py)"
    ]


async def test_a_consumer_not_running_fails_the_running_check(
    guarded_add_gap: None, caplog: pytest.LogCaptureFixture
) -> None:
    app = faust.App("unit-running", broker="kafka://127.0.0.1:9", store="memory://")
    try:
        assert [name.split(" (")[0] for name in missing_running_internals(app)] == [
            "faust Consumer._thread._consumer"
        ]
        with (
            caplog.at_level(logging.CRITICAL, "streams.internals"),
            pytest.raises(FatalError, match=r"faust Consumer\._thread\._consumer"),
        ):
            await check_running_internals(app, wait_s=0.2)
        assert "stopping the worker: this worker relies on" in caplog.text
    finally:
        close_consumer_loop(app)


async def test_the_running_check_names_a_consumer_that_bypasses_the_stall_guard(
    guarded_add_gap: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Faust whose aiokafka driver had an `_add_gap` of its own, shadowing the replacement.
    monkeypatch.setattr(driver.Consumer, "_add_gap", stall_guard.faust_add_gap(), raising=False)
    app = faust.App("unit-shadow", broker="kafka://127.0.0.1:9", store="memory://")
    try:
        assert "faust Consumer._add_gap being the stall guard's replacement" in " ".join(
            missing_running_internals(app)
        )
    finally:
        close_consumer_loop(app)


async def test_a_record_never_acknowledged_at_the_head_is_not_committed_past(
    guarded_add_gap: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust commits acknowledged offsets that start one past the committed offset: the
    record in between, handed to a stream and dropped there by a rebalance, was lost."""
    from faust.types import TP

    app = faust.App("unit-head", broker="kafka://127.0.0.1:9", store="memory://")
    consumer = app.consumer
    sought: list[tuple[Any, int]] = []

    async def seek(partition: Any, offset: int) -> None:
        sought.append((partition, offset))

    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(stall_guard, "_held_at", {})
    monkeypatch.setattr(stall_guard, "_log_start", {})
    tp = TP("leads.raw", 1)

    def begins_at(offsets: dict[Any, int]) -> Any:
        async def earliest_offsets(*partitions: Any) -> dict[Any, int]:
            return {p: offsets[p] for p in partitions}

        return earliest_offsets

    faust_own = stall_guard.faust_new_offset()
    try:
        consumer._committed_offset[tp] = 1233
        consumer._acked[tp] = [1234, 1235]
        assert faust_own(consumer, tp) == 1236  # Faust alone: 1233 skipped
        consumer._acked[tp] = [1234, 1235]
        assert consumer._new_offset(tp) is None  # held, and read again from 1233
        assert consumer._new_offset(tp) is None  # (one seek per hold)
        await asyncio.sleep(0)
        assert sought == [(tp, 1233)]
        consumer._acked[tp] = [1233, 1234, 1235]  # fetched again and handled
        assert consumer._new_offset(tp) == 1236
        # Nothing committed yet: the head is where the partition begins, asked of the
        # broker first (the commit waits for the answer).
        consumer._committed_offset[tp] = None
        consumer._acked[tp] = [5, 6]
        monkeypatch.setattr(consumer, "earliest_offsets", begins_at({tp: 5}))
        assert consumer._new_offset(tp) is None  # not known yet: held
        await asyncio.sleep(0.01)
        assert consumer._new_offset(tp) == 7  # 5 is the first record: nothing skipped
        # Records dropped at the head of a partition with nothing committed (a worker
        # killed before its first commit): held, and read again from the first offset.
        monkeypatch.setattr(stall_guard, "_log_start", {tp: 0})
        consumer._acked[tp] = [5, 6]
        assert consumer._new_offset(tp) is None
        await asyncio.sleep(0)
        assert sought == [(tp, 1233), (tp, 0)]
        assert faust_own(consumer, tp) == 7  # what Faust alone would have committed
    finally:
        close_consumer_loop(app)
