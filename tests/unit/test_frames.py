"""Frames: many records of one partition in one Kafka message (streams/frames.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from streams.frames import MAGIC, FramedEvent, FrameError, partition_for, records_of, unframe
from streams.wiring import Framing, Outbox


class Producer:
    """Notes what the outbox hands to Kafka: (topic, key, value, partition)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes, int | None]] = []

    async def send(self, topic: str, key: bytes, value: bytes, partition: int | None, *_: Any):
        self.sent.append((topic, key, value, partition))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def consumed(topic: str, partition: int, offset: int, key: bytes, value: bytes) -> Any:
    message = SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key, value=value)
    return SimpleNamespace(key=key, value=value, message=message)


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=64))
def test_the_partition_is_the_one_kafkas_default_partitioner_picks(key: bytes, n: int) -> None:
    assert partition_for(key, n) == DefaultPartitioner()(key, list(range(n)), list(range(n)))


def deliver(outbox: Outbox) -> None:
    asyncio.run(outbox.deliver())


def test_records_of_one_partition_travel_in_one_frame_in_order() -> None:
    producer = Producer()
    keys, other = "keys", "out"
    outbox = Outbox(
        SimpleNamespace(producer=producer),
        Framing(frozenset({"keys"}), partitions=4, max_bytes=10_000),
    )
    records = [(f"email:p{i}@x.com".encode(), f'{{"n":{i}}}'.encode()) for i in range(40)]
    for key, value in records:
        outbox.add(keys, key, value)
    outbox.add(other, "lead-1", b"{}")
    deliver(outbox)

    plain = [s for s in producer.sent if s[0] == "out"]
    assert plain == [("out", b"lead-1", b"{}", None)]
    framed = [s for s in producer.sent if s[0] == "keys"]
    assert len(framed) <= 4 < len(records)
    seen: list[tuple[bytes, bytes]] = []
    for _, key, value, partition in framed:
        inside = unframe(value) if value.startswith(MAGIC) else [(key, value)]
        assert key == inside[0][0]
        assert {partition_for(k, 4) for k, _ in inside} == {partition}
        seen.extend(inside)
    assert sorted(seen) == sorted(records)
    for partition in range(4):  # order kept within each partition
        mine = [r for r in records if partition_for(r[0], 4) == partition]
        assert [r for r in seen if partition_for(r[0], 4) == partition] == mine
    assert len(outbox) == len(records) + 1


def test_a_full_frame_is_closed_and_the_next_follows_it() -> None:
    producer = Producer()
    keys = "keys"
    outbox = Outbox(
        SimpleNamespace(producer=producer),
        Framing(frozenset({"keys"}), partitions=1, max_bytes=300),
    )
    for i in range(20):
        outbox.add(keys, b"k", b"v" * 40 + str(i).encode())
    deliver(outbox)
    values = [value for *_, value, _ in producer.sent]
    assert len(values) > 1
    assert all(len(v) <= 300 for v in values)
    got = [v for value in values for _, v in unframe(value)]
    assert got == [b"v" * 40 + str(i).encode() for i in range(20)]


def test_a_record_larger_than_a_frame_still_goes_alone() -> None:
    producer = Producer()
    keys = "keys"
    outbox = Outbox(
        SimpleNamespace(producer=producer),
        Framing(frozenset({"keys"}), partitions=2, max_bytes=100),
    )
    outbox.add(keys, b"a", b"x" * 500)
    deliver(outbox)
    assert producer.sent == [("keys", b"a", b"x" * 500, partition_for(b"a", 2))]


def test_framing_off_sends_every_record_alone() -> None:
    producer = Producer()
    keys = "keys"
    outbox = Outbox(
        SimpleNamespace(producer=producer), Framing(frozenset({"keys"}), partitions=4, max_bytes=0)
    )
    for i in range(5):
        outbox.add(keys, f"k{i}", b"{}")
    deliver(outbox)
    assert [(k, p) for _, k, _, p in producer.sent] == [(f"k{i}".encode(), None) for i in range(5)]


def test_a_frame_is_read_back_as_records_at_its_coordinates() -> None:
    producer = Producer()
    outbox = Outbox(
        SimpleNamespace(producer=producer),
        Framing(frozenset({"keys"}), partitions=1, max_bytes=10_000),
    )
    outbox.add("keys", b"a", b'{"x":1}')
    outbox.add("keys", b"b", b'{"x":2}')
    deliver(outbox)
    [(_, key, value, _)] = producer.sent
    records = list(records_of(consumed("keys", 0, 7, key, value)))
    assert [(r.key, r.value) for r in records] == [(b"a", b'{"x":1}'), (b"b", b'{"x":2}')]
    assert all(isinstance(r, FramedEvent) for r in records)
    assert [(r.message.offset, r.message.index, r.message.value) for r in records] == [
        (7, 0, b'{"x":1}'),
        (7, 1, b'{"x":2}'),
    ]


@pytest.mark.parametrize(
    "value",
    [MAGIC, MAGIC + b"\x00\x00", MAGIC + b"\x00\x00\x00\x01\x00\x00\x00\x09ab"],
    ids=["empty", "cut header", "cut record"],
)
def test_an_unreadable_frame_comes_back_whole_for_the_step_to_dead_letter(value: bytes) -> None:
    with pytest.raises(FrameError):
        unframe(value)
    event = consumed("keys", 0, 3, b"k", value)
    assert list(records_of(event)) == [event]


def test_a_plain_message_is_its_own_record() -> None:
    event = consumed("keys", 0, 3, b"k", b'{"type":"probe"}')
    assert list(records_of(event)) == [event]
