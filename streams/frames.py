"""Many small records in one Kafka message, on the stream core's own topics.

A Kafka message costs the worker about half a millisecond of CPU in Faust and
aiokafka whatever it holds (fetch, stream plumbing, acknowledgement, the
producer's batching), while our own work per record is a fraction of that.
So the internal topics (`identity.keys`, `lead.updates`, `routing.requests`)
carry *frames*: every record a batch sends to one partition of one topic, in
the order the batch made them, as one message.

A frame is `MAGIC` followed by records, each a big-endian 4-byte key length,
4-byte value length, the key and the value. The value is the record's own
JSON message (`schemas.messages`), unchanged. A record alone is sent as a
plain message, so a frame always holds two or more.

Why it keeps every guarantee:

- *Ownership.* A frame goes to the partition Kafka's default partitioner
  gives its records' keys (murmur2, like a plain keyed message), so each
  record is handled on the partition that owns its key, and a table write it
  makes goes to that partition's store and changelog.
- *Order.* Records of one partition keep the order they were made in, within
  a frame and across the frames of a batch (sent in order, one producer).
- *At-least-once.* A frame is acknowledged and committed as one message: a
  replay repeats all its records, and every step is idempotent.

A message that starts with `MAGIC` but cannot be read is handed to the step
as it is, which dead-letters it with its bytes (nothing is dropped).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import murmur2

MAGIC = b"LFG\x01"
_LENGTHS = struct.Struct(">II")


class FrameError(ValueError):
    """A frame whose lengths run past its end."""


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's and aiokafka's) picks for a key."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class FrameBuilder:
    """The records of one frame, until it is sent."""

    __slots__ = ("count", "first_key", "first_value", "partition", "parts", "size", "topic")

    def __init__(self, topic: Any, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.parts: list[bytes] = [MAGIC]
        self.size = len(MAGIC)
        self.count = 0
        self.first_key = b""
        self.first_value = b""

    def fits(self, key: bytes, value: bytes, max_bytes: int) -> bool:
        """An empty frame takes anything; else only what keeps it within `max_bytes`."""
        return self.count == 0 or self.size + 8 + len(key) + len(value) <= max_bytes

    def add(self, key: bytes, value: bytes) -> None:
        if self.count == 0:
            self.first_key, self.first_value = key, value
        self.parts.append(_LENGTHS.pack(len(key), len(value)))
        self.parts.append(key)
        self.parts.append(value)
        self.size += 8 + len(key) + len(value)
        self.count += 1

    def message(self) -> tuple[bytes, bytes]:
        """(key, value) to send: the record itself when it is alone, else the frame
        keyed by its first record's key (for people reading the topic; the partition
        is given explicitly)."""
        if self.count == 1:
            return self.first_key, self.first_value
        return self.first_key, b"".join(self.parts)


def unframe(value: bytes) -> list[tuple[bytes, bytes]]:
    """The (key, value) records of a frame, in order."""
    records: list[tuple[bytes, bytes]] = []
    position, end = len(MAGIC), len(value)
    while position < end:
        if position + _LENGTHS.size > end:
            raise FrameError(f"frame cut inside a record header at byte {position} of {end}")
        key_length, value_length = _LENGTHS.unpack_from(value, position)
        position += _LENGTHS.size
        stop = position + key_length + value_length
        if stop > end:
            raise FrameError(f"frame record of {stop - position} bytes runs past byte {end}")
        records.append(
            (value[position : position + key_length], value[position + key_length : stop])
        )
        position = stop
    if not records:
        raise FrameError("frame holds no record")
    return records


@dataclass(frozen=True, slots=True)
class RecordInFrame:
    """Where one record of a frame came from, shaped like a consumed Kafka record, so a
    dead letter keeps the record's own key and bytes at the frame's coordinates."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    index: int


@dataclass(frozen=True, slots=True)
class FramedEvent:
    """One record of a frame, handed to a step in place of a Faust event."""

    key: bytes
    value: bytes
    message: RecordInFrame


def records_of(event: Any) -> Iterator[Any]:
    """The records a consumed event carries: itself, or each record of its frame.

    A frame that cannot be read comes back whole, for the step to dead-letter."""
    value = event.value
    if not (isinstance(value, bytes) and value.startswith(MAGIC)):
        yield event
        return
    try:
        records = unframe(value)
    except FrameError:
        yield event
        return
    message = event.message
    for index, (key, record) in enumerate(records):
        yield FramedEvent(
            key,
            record,
            RecordInFrame(message.topic, message.partition, message.offset, key, record, index),
        )
