"""The batch discipline of the agents: outputs acknowledged by Kafka before state is written."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust.streams
import pytest
from aiokafka.errors import KafkaTimeoutError

from leadflow.settings import Settings
from streams.app import CLEAN_STOP_MARK, prepare_state_dir
from streams.stall_guard import StallGuard, never_committed
from streams.wiring import EXIT_STAGE_FAILED, Outbox, StagedTable, run_batches


class _Event:
    """What the agents read of a Faust event (Faust holds events by weak reference)."""

    def __init__(self, partition: int, key: bytes, value: bytes) -> None:
        self.key, self.value = key, value
        self.message = SimpleNamespace(
            topic="t", partition=partition, offset=0, key=key, value=value
        )


def _event(partition: int, key: bytes, value: bytes = b"") -> Any:
    return _Event(partition, key, value)


class RecordingTable(dict[str, Any]):
    """A table that notes, for each write, the partition of the event Faust would see."""

    def __init__(self, journal: list[str], **items: Any) -> None:
        super().__init__(**items)
        self.journal = journal
        self.partitions: dict[str, int] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        event = faust.streams.current_event()
        assert event is not None, "a table write outside an event context"
        self.partitions[key] = event.message.partition
        self.journal.append(f"write {key}")
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.journal.append(f"delete {key}")
        super().__delitem__(key)


class SlowTopic:
    """A topic whose messages are acknowledged a little after they are sent, in order."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.app = SimpleNamespace(producer=self)

    def get_topic_name(self) -> str:
        return "out"

    async def send(self, topic: str, key: bytes, value: bytes, *rest: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def acknowledge() -> None:
            self.journal.append(f"acked {key.decode()}")
            future.set_result(None)

        asyncio.get_running_loop().call_later(0.01, acknowledge)
        return future


class FakeStream:
    """Yields the batches; notes each acknowledgement in the journal, when there is one."""

    def __init__(self, batches: list[list[Any]], journal: list[str] | None = None) -> None:
        self.batches = batches
        self.journal = journal if journal is not None else []

    async def noack_take(self, size: int, within: float) -> AsyncIterator[list[Any]]:
        for batch in self.batches:
            yield batch

    async def ack(self, event: Any) -> bool:
        self.journal.append(f"ack {event.key.decode()}@{event.message.partition}")
        return True


def test_staged_reads_see_the_batch_writes_and_the_table_waits() -> None:
    table = RecordingTable([], old="before", gone="x")
    staged = StagedTable(table)
    staged.event = _event(3, b"k")
    staged["new"] = 1
    staged["old"] = "after"
    del staged["gone"]
    assert staged.get("new") == 1
    assert staged["old"] == "after"
    assert "gone" not in staged
    assert staged.get("gone", "default") == "default"
    assert staged.pop("missing", 7) == 7
    with pytest.raises(KeyError):
        staged["gone"]
    assert dict(table) == {"old": "before", "gone": "x"}  # nothing written yet

    staged.apply()
    assert dict(table) == {"old": "after", "new": 1}
    assert table.partitions == {"new": 3, "old": 3}
    assert faust.streams.current_event() is None  # the context is restored


class CountingTable(dict[str, Any]):
    """A table that counts reads (each one a RocksDB lookup and a JSON decode in Faust)."""

    reads = 0

    def get(self, key: str, default: Any = None) -> Any:
        self.reads += 1
        return super().get(key, default)


def test_a_batch_reads_each_key_from_the_table_once() -> None:
    table = CountingTable(counters={"turn": 1})
    staged = StagedTable(table)
    staged.event = _event(0, b"k")
    for _ in range(5):
        assert staged.get("counters") == {"turn": 1}
        assert "counters" in staged
        assert "absent" not in staged
        assert staged.get("absent", 0) == 0
    assert table.reads == 2
    staged["counters"] = {"turn": 2}
    assert staged.get("counters") == {"turn": 2}
    staged.apply()
    assert staged.get("counters") == {"turn": 2}  # the next batch reads the table again
    assert table.reads == 3


def test_each_write_lands_in_the_partition_of_the_event_that_made_it() -> None:
    table = RecordingTable([])
    staged = StagedTable(table)
    for partition, key in ((0, "a"), (5, "b"), (2, "a")):
        staged.event = _event(partition, key.encode())
        staged[key] = partition
    staged.apply()
    assert table == {"a": 2, "b": 5}
    assert table.partitions == {"a": 2, "b": 5}


def test_a_batch_writes_its_state_only_after_every_output_was_acknowledged() -> None:
    journal: list[str] = []
    table = RecordingTable(journal)
    topic = SlowTopic(journal)

    def step(event: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        key = event.key.decode()
        staged[key] = (staged.get(key) or 0) + 1
        out.add("out", f"{key}{staged[key]}", b"v")

    batches = [
        [_event(0, b"a"), _event(1, b"b"), _event(0, b"a")],
        [_event(1, b"b")],
    ]
    worker = Settings()
    asyncio.run(run_batches(topic.app, FakeStream(batches, journal), worker, step, table))

    assert table == {"a": 2, "b": 2}
    assert journal == [
        "acked a1",
        "acked b1",
        "acked a2",
        "write a",
        "write b",
        "ack a@0",
        "ack b@1",
        "ack a@0",
        "acked b2",
        "write b",
        "ack b@1",
    ]


def test_a_stateless_batch_delivers_in_order_and_dead_letters_travel_with_it() -> None:
    journal: list[str] = []
    topic = SlowTopic(journal)

    def step(event: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is None
        if event.value == b"bad":
            out.dead_letter("out", "normalize", event, ValueError("unreadable"))
        else:
            out.add("out", event.key, b"ok")

    batch = [_event(0, b"one"), _event(0, b"two", b"bad"), _event(0, b"three")]
    asyncio.run(run_batches(topic.app, FakeStream([batch]), Settings(), step))
    assert journal[0] == "acked one"
    assert journal[2] == "acked three"
    assert journal[1].startswith("acked ")
    assert len(journal) == 3


def test_a_worker_that_did_not_stop_cleanly_rebuilds_its_tables(tmp_path: Path) -> None:
    state = tmp_path / "worker-state"
    prepare_state_dir(state)  # first start: nothing to keep
    (state / "lead_state-0.db").write_text("store")
    (state / CLEAN_STOP_MARK).touch()  # a clean stop
    prepare_state_dir(state)
    assert (state / "lead_state-0.db").exists()
    assert not (state / CLEAN_STOP_MARK).exists()  # the running worker has not stopped yet

    prepare_state_dir(state)  # killed before it could leave the mark
    assert state.is_dir()
    assert list(state.iterdir()) == []


class FlakyTopic(SlowTopic):
    """Fails the first `failures` sends the way a broker outage does, then acknowledges."""

    def __init__(self, journal: list[str], failures: int) -> None:
        super().__init__(journal)
        self.failures = failures

    async def send(self, topic: str, key: bytes, value: bytes, *rest: Any) -> asyncio.Future[None]:
        if self.failures > 0:
            self.failures -= 1
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_exception(KafkaTimeoutError())
            self.journal.append(f"failed {key.decode()}")
            return future
        return await super().send(topic, key, value)


def test_outputs_that_kafka_refused_are_sent_again_before_the_state_is_written() -> None:
    journal: list[str] = []
    table = RecordingTable(journal)
    topic = FlakyTopic(journal, failures=1)

    def step(event: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        staged[event.key.decode()] = True
        out.add("out", event.key, b"v")

    batch = [_event(0, b"a"), _event(0, b"b")]
    asyncio.run(run_batches(topic.app, FakeStream([batch]), Settings(), step, table))
    assert journal[0] == "failed a"
    assert journal[-2:] == ["write a", "write b"]
    assert "acked a" in journal
    assert "acked b" in journal


def test_a_stage_bug_stops_the_worker_before_anything_is_sent_or_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal: list[str] = []
    table = RecordingTable(journal)
    topic = SlowTopic(journal)
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", fake_exit)

    def step(event: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        staged[event.key.decode()] = True
        out.add("out", event.key, b"v")
        if event.key == b"b":
            raise KeyError("a bug")

    batch = [_event(0, b"a"), _event(0, b"b")]
    with pytest.raises(SystemExit):
        asyncio.run(run_batches(topic.app, FakeStream([batch], journal), Settings(), step, table))
    assert exits == [EXIT_STAGE_FAILED]
    # Nothing sent, written or acknowledged: the batch replays on the next start.
    assert journal == []


def test_a_batch_cancelled_while_sending_is_not_acknowledged() -> None:
    journal: list[str] = []
    table = RecordingTable(journal)

    class NeverAcknowledged(SlowTopic):
        async def send(self, *args: Any) -> asyncio.Future[None]:
            return asyncio.get_running_loop().create_future()  # Kafka never answers

    topic = NeverAcknowledged(journal)

    def step(event: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        staged[event.key.decode()] = True
        out.add("out", event.key, b"v")

    async def stop_midway() -> None:
        agent = asyncio.create_task(
            run_batches(
                topic.app, FakeStream([[_event(0, b"a")]], journal), Settings(), step, table
            )
        )
        await asyncio.sleep(0.05)
        agent.cancel()  # what a SIGTERM or a rebalance does to an agent
        with pytest.raises(asyncio.CancelledError):
            await agent

    asyncio.run(stop_midway())
    assert journal == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_stall_guard_names_a_partition_behind_with_nothing_in_flight() -> None:
    clock = FakeClock()
    guard = StallGuard(after_s=20, clock=clock)
    # (tp, Faust's read offset, committed offset, aiokafka's position)
    fetched_not_delivered = ("raw", 1)
    delivered_not_committed = ("raw", 5)  # records after dropped ones, held before the gap
    rows = [
        (fetched_not_delivered, 690, 690, 704),
        (("raw", 2), 799, 800, 800),  # everything fetched is committed: idle, fine
        (("raw", 3), None, None, None),  # no position yet
        (delivered_not_committed, 720, 700, 721),
    ]
    assert guard.stalled(rows) == []
    clock.now = 19
    assert guard.stalled(rows) == []
    clock.now = 21
    assert guard.stalled(rows) == [fetched_not_delivered, delivered_not_committed]
    guard.healed()
    assert guard.stalled(rows) == []  # the clock starts again after a seek


def test_a_partition_that_moves_is_not_a_stall() -> None:
    clock = FakeClock()
    guard = StallGuard(after_s=20, clock=clock)
    tp = ("raw", 0)
    for step in range(10):
        clock.now = step * 5.0
        # Behind the fetcher, but commits keep coming: not stuck.
        assert guard.stalled([(tp, 100 + step, 90 + step, 200)]) == []
    # Never committed and nothing delivered, yet fetched to 50: the records were dropped.
    fresh = ("raw", 9)
    assert guard.stalled([(fresh, None, None, 50)]) == []
    clock.now += 25
    assert guard.stalled([(fresh, None, None, 50)]) == [fresh]


def test_a_stuck_partition_with_nothing_committed_is_read_from_the_start() -> None:
    # aiokafka's seek_to_committed skips a partition committed at None or 0, so seeking back
    # cannot move it: those are the ones the guard seeks to 0 itself.
    rows = [
        (("raw", 2), None, None, 12),  # first records after a kill: never committed
        (("raw", 3), 0, 0, 4),
        (("raw", 1), 690, 690, 704),  # seeking back to 690 works
    ]
    stuck = [("raw", 2), ("raw", 3), ("raw", 1)]
    assert never_committed(stuck, rows) == [("raw", 2), ("raw", 3)]
    assert never_committed([], rows) == []
