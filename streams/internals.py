"""The parts of Faust, mode and aiokafka the worker relies on that are not public API.

docs/architecture.md ("What leadflow relies on that is not public API")
lists them with where each is used. A newer library may drop or rename any
of them without notice, and the code that uses them runs late (a timer, a
signal handler, the first batch) or, where a `getattr` default hides a
missing one, keeps running as a guard that no longer guards. So the worker
checks them on the installed libraries:

- `require_stream_internals()` when `leadflow worker` starts
  (`streams.app.run_worker`, before anything is declared or consumed), on the
  classes and on a Faust app and aiokafka consumer built for the check and
  never started;
- `check_running_internals(app)` once the worker's consumer runs (a task that
  `streams.stall_guard.install` registers): what only a started consumer has.

Either refuses with one message naming every missing internal and the
installed versions (`FatalError`).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import weakref
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from leadflow.errors import FatalError

log = logging.getLogger(__name__)

# Faust's consumer attributes read by streams/stall_guard.py and streams/diagnostics.py.
CONSUMER_STATE = (
    "_read_offset",
    "_committed_offset",
    "_acked",
    "_unacked_messages",
    "_paused_partitions",
    "_buffered_partitions",
    "_active_partitions",
)
# Faust's transport Producer.send, called positionally by streams.wiring.Outbox.deliver.
PRODUCER_SEND = ("topic", "key", "value", "partition", "timestamp", "headers")
PACKAGES = ("faust-streaming", "aiokafka", "mode-streaming")


def leader_topic_name(app_id: str) -> str:
    """The topic Faust's leader assignor declares for an app (`LeaderAssignor._leader_topic_name`,
    checked by `missing_stream_internals`); the worker declares it ahead of Faust."""
    return f"{app_id}-__assignor-__leader"


def installed_versions() -> str:
    """`faust-streaming 0.15.3 / aiokafka 0.14.0 / mode-streaming 0.7.1`, as installed."""

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} (not installed)"

    return " / ".join(installed(name) for name in PACKAGES)


def internals_message(missing: list[str]) -> str:
    return (
        "this worker relies on Faust/aiokafka internals that "
        f"{installed_versions()} no longer have: {'; '.join(missing)}; install the versions "
        "pinned in pyproject.toml (docs/architecture.md lists these internals)"
    )


def _reads(function: Any, name: str) -> bool:
    """Whether `function`'s own code reads the attribute or global `name`."""
    code = getattr(function, "__code__", None)
    return code is not None and name in code.co_names


def _missing_faust_classes() -> list[str]:
    from faust.streams import Stream
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from mode import Worker

    from streams import stall_guard

    missing: list[str] = []
    if not inspect.iscoroutinefunction(stall_guard.faust_add_gap()):
        missing.append("faust Consumer._add_gap (replaced by streams/stall_guard.py)")
    if not _reads(getattr(Consumer, "_drain_messages", None), "_add_gap"):
        missing.append("faust Consumer._drain_messages calling self._add_gap")
    if not callable(stall_guard.faust_new_offset()):
        missing.append("faust Consumer._new_offset (wrapped by streams/stall_guard.py)")
    elif not _reads(getattr(Consumer, "_filter_committable_offsets", None), "_new_offset"):
        missing.append("faust Consumer._filter_committable_offsets calling self._new_offset")
    if not hasattr(AIOKafkaConsumerThread, "_consumer"):
        missing.append("faust AIOKafkaConsumerThread._consumer")
    if not callable(getattr(Stream, "noack_take", None)):
        missing.append("faust Stream.noack_take")
    missing += _missing_current_event()
    if not callable(getattr(Worker, "_on_sigusr1", None)):
        missing.append("mode Worker._on_sigusr1")
    elif not _reads(getattr(Worker, "_install_signal_handlers_unix", None), "_on_sigusr1"):
        missing.append("mode Worker._install_signal_handlers_unix installing self._on_sigusr1")
    return missing


def _missing_current_event() -> list[str]:
    """`faust.streams._current_event`, which streams.wiring.StagedTable sets so that a table
    write goes to its event's partition: Faust's tables find the event through it."""
    import faust.streams

    variable = getattr(faust.streams, "_current_event", None)
    if not isinstance(variable, contextvars.ContextVar):
        return ["faust faust.streams._current_event (a ContextVar)"]

    class Probe:
        pass

    probe = Probe()

    def seen() -> Any:
        variable.set(weakref.ref(probe))
        return faust.streams.current_event()

    if contextvars.copy_context().run(seen) is not probe:
        return ["faust faust.streams.current_event() reading faust.streams._current_event"]
    return []


def _missing_on_app() -> list[str]:
    """What a Faust app's consumer and producer hold once built (not started): an app made
    only for this check, on the same transport as the worker's."""
    import faust

    probe = faust.App(
        "leadflow-internals-probe",
        broker="kafka://127.0.0.1:9",
        store="memory://",
        autodiscover=False,
        web_enabled=False,
    )
    missing: list[str] = []
    consumer = probe.consumer
    missing += [f"faust Consumer.{name}" for name in CONSUMER_STATE if not hasattr(consumer, name)]
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        missing.append("faust Consumer._thread")
    # The consumer thread made an event loop of its own, closed only when it stops.
    thread_loop = getattr(thread, "thread_loop", None)
    if isinstance(thread_loop, asyncio.AbstractEventLoop):
        thread_loop.close()
    send = getattr(type(probe.producer), "send", None)
    params = list(inspect.signature(send).parameters)[1:7] if callable(send) else []
    if tuple(params) != PRODUCER_SEND:
        missing.append(f"faust Producer.send({', '.join(PRODUCER_SEND)}) taken positionally")
    assignor = getattr(probe, "_leader_assignor", None)
    if getattr(assignor, "_leader_topic_name", None) != leader_topic_name(probe.conf.id):
        missing.append(
            "faust App._leader_assignor._leader_topic_name "
            f"= {leader_topic_name('<app id>')!r} (declared ahead by streams/app.py)"
        )
    return missing


def _missing_aiokafka_classes() -> list[str]:
    """What streams.stall_guard reads past aiokafka's `_subscription`."""
    from aiokafka.consumer.subscription_state import (
        Assignment,
        Subscription,
        SubscriptionState,
        TopicPartitionState,
    )

    wanted: list[tuple[type, str]] = [
        (SubscriptionState, "subscription"),
        (Subscription, "assignment"),
        (Assignment, "tps"),
        (Assignment, "state_value"),
        (TopicPartitionState, "position"),
        (TopicPartitionState, "has_valid_position"),
    ]
    return [f"aiokafka {cls.__name__}.{name}" for cls, name in wanted if not hasattr(cls, name)]


async def _missing_on_probes() -> list[str]:
    """A Faust app and an aiokafka consumer built for the check, never started."""
    from aiokafka import AIOKafkaConsumer

    missing = _missing_on_app()
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    try:
        missing += _missing_on_inner(consumer)
    finally:
        await consumer.stop()
    return missing


def _missing_on_inner(consumer: Any) -> list[str]:
    """`_client.fetch_all_metadata` and `_subscription.subscription` on an aiokafka consumer
    (leadflow.kafka_clients.wait_for_topics, leadflow.suppression, streams.stall_guard)."""
    missing: list[str] = []
    if not callable(getattr(getattr(consumer, "_client", None), "fetch_all_metadata", None)):
        missing.append("aiokafka AIOKafkaConsumer._client.fetch_all_metadata()")
    if not hasattr(getattr(consumer, "_subscription", None), "subscription"):
        missing.append("aiokafka AIOKafkaConsumer._subscription.subscription")
    return missing


def missing_stream_internals() -> list[str]:
    """Every internal the worker relies on (docs/architecture.md lists them) that the
    installed Faust, mode or aiokafka lacks, each named: empty when all are there.

    Builds a Faust app and an aiokafka consumer for the check, neither started (no
    connection is made), in a thread with an event loop of its own that is closed after:
    nothing is left behind here, and it works with or without a running loop. Call it
    before `streams.stall_guard.install` or after, either way.
    """
    missing = _missing_faust_classes() + _missing_aiokafka_classes()
    with ThreadPoolExecutor(1) as thread:
        missing += thread.submit(asyncio.run, _missing_on_probes()).result()
    return missing


def require_stream_internals() -> None:
    """Refuse to start (FatalError naming each missing internal and the installed versions)
    unless the installed libraries have every internal the worker relies on."""
    missing = missing_stream_internals()
    if missing:
        raise FatalError(internals_message(missing))


def missing_running_internals(app: Any) -> list[str]:
    """What only the worker's started consumer shows: aiokafka's consumer inside Faust's
    consumer thread, with its internals, and the stall guard's `_add_gap` in force."""
    from aiokafka import AIOKafkaConsumer

    from streams import stall_guard

    consumer = app.consumer
    missing = [f"faust Consumer.{name}" for name in CONSUMER_STATE if not hasattr(consumer, name)]
    if getattr(type(consumer), "_add_gap", None) is not stall_guard._hold_commits_at_gaps:
        missing.append(
            f"faust {type(consumer).__name__}._add_gap being the stall guard's replacement "
            "(the running consumer uses another)"
        )
    if getattr(type(consumer), "_new_offset", None) is not stall_guard._commit_from_the_head:
        missing.append(
            f"faust {type(consumer).__name__}._new_offset being the stall guard's wrapper "
            "(the running consumer uses another)"
        )
    thread = getattr(consumer, "_thread", None)
    inner = getattr(thread, "_consumer", None)
    if not isinstance(inner, AIOKafkaConsumer):
        missing.append(
            "faust Consumer._thread._consumer (the started aiokafka consumer; found "
            f"{type(inner).__name__})"
        )
    else:
        missing += _missing_on_inner(inner)
    return missing


async def check_running_internals(app: Any, *, wait_s: float = 30.0) -> None:
    """Once the consumer's aiokafka consumer exists (waiting at most `wait_s`), check what
    the running consumer holds: log "stream internals checked" when all is there, otherwise
    log the missing internals and raise FatalError, which crashes (stops) the worker."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while getattr(getattr(app.consumer, "_thread", None), "_consumer", None) is None:
        if asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.1)
    missing = missing_running_internals(app)
    if missing:
        message = internals_message(missing)
        log.critical("stopping the worker: %s", message)
        raise FatalError(message)
    log.info("stream internals checked on the running consumer (%s)", installed_versions())
