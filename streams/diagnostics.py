"""What every coroutine of the worker waits on, for `kill -USR1 <worker pid>`.

Faust's own SIGUSR1 dump stops at the first `async for` over an async
generator (its frames hang off the generator, not the task); this one also
walks every live async generator, so a stalled agent shows the line it
waits on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import types
from typing import Any

log = logging.getLogger(__name__)


def _awaited_chain(obj: Any) -> list[str]:
    """`file:line function` from `obj` down the chain of what it awaits."""
    lines: list[str] = []
    seen: set[int] = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None)
        frame = frame or getattr(obj, "gi_frame", None)
        if frame is not None:
            lines.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        nxt = getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None)
        obj = nxt or getattr(obj, "gi_yieldfrom", None)
    return lines


def describe(loop: asyncio.AbstractEventLoop) -> str:
    """A text dump of the loop's tasks and of every suspended async generator."""
    parts = []
    for task in asyncio.all_tasks(loop):
        chain = _awaited_chain(task.get_coro())
        parts.append(f"task {task.get_name()}:\n    " + "\n    ".join(chain or ["(no frame)"]))
    for obj in gc.get_objects():
        # Every generator not finished: the ones awaiting something are the interesting ones.
        if isinstance(obj, types.AsyncGeneratorType) and obj.ag_frame is not None:
            chain = _awaited_chain(obj)
            parts.append("async generator:\n    " + "\n    ".join(chain))
    return "\n".join(parts)


def log_tasks(loop: asyncio.AbstractEventLoop) -> None:
    log.warning("what the worker's coroutines wait on:\n%s", describe(loop))


def describe_consumer(app: Any) -> str:
    """Faust's view of its partitions, and aiokafka's fetch position of each."""
    consumer = app.consumer
    lines = [
        f"assigned: {sorted(map(str, consumer.assignment()))}",
        f"active: {sorted(map(str, consumer._active_partitions or ()))}",
        f"paused: {sorted(map(str, consumer._paused_partitions))}",
        f"buffered: {sorted(map(str, consumer._buffered_partitions))}",
        f"flow active: {consumer.flow_active}",
        f"read offsets: { {str(k): v for k, v in consumer._read_offset.items()} }",
        f"committed: { {str(k): v for k, v in consumer._committed_offset.items()} }",
    ]
    inner = getattr(consumer._thread, "_consumer", None)
    if inner is not None:
        lines.append(f"aiokafka paused: {sorted(map(str, inner.paused()))}")
        assignment = inner._subscription.subscription.assignment
        for tp in sorted(assignment.tps):
            state = assignment.state_value(tp)
            lines.append(f"  {tp.topic}[{tp.partition}]: {state!r}")
    return "\n".join(lines)
