"""The agent of step `learn`, and how every worker follows the model it publishes.

Input: `scoring.outcomes`, all under the key `model`, so the one partition
that owns it learns every outcome in order (table `scoring_model`: the
model's weights under `model`, and `seen|<event id>` for each outcome
learned, so an outcome published twice is learned once). Outputs: an
`Evaluation` per outcome on `scoring.evaluations`, and every
`publish_every` outcomes a `ModelSnapshot` on the compacted
`scoring.models`. Unreadable outcomes go to `dlq.learn`.

`ModelFollower` reads `scoring.models` in every worker; the lead step
scores each batch with the snapshot it holds (`current_model`), so a score
records the version that made it. A snapshot that cannot be read keeps the
last good one, and says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import faust
from pydantic import ValidationError

from leadflow import steps
from leadflow.kafka_clients import follow_topic
from leadflow.rules import ModelRules
from leadflow.settings import KafkaSettings, Settings
from leadflow.topics import Topics
from schemas.messages import RescoreLead
from schemas.scoring import ModelSnapshot, Outcome
from streams import learning
from streams.wiring import (
    Outbox,
    Outputs,
    StagedTable,
    Table,
    json_table,
    raw_topic,
    run_batches,
)

STEP = steps.LEARN
MODEL_KEY = "model"
log = logging.getLogger(__name__)


def learn_step(
    record: Any, table: Table, out: Outputs, *, topics: Topics, rules: ModelRules, now: datetime
) -> None:
    """One outcome: predicted, then learned, once."""
    try:
        outcome = Outcome.model_validate_json(record.value or b"")
    except (ValidationError, ValueError) as exc:
        out.dead_letter(topics.dlq(STEP), STEP, record, exc)
        return
    # Once per outcome event, and once per lead and label: a lead converted and then won
    # is one lesson that leads like it buy, not two.
    seen = f"seen|{outcome.event_id}"
    lesson = f"seen|{outcome.lead_id}|{int(outcome.label)}"
    if seen in table or lesson in table:
        return
    state = dict(table.get(MODEL_KEY) or learning.empty_state())
    learned = learning.learn(state, outcome, rules, now)
    table[MODEL_KEY] = state
    table[seen] = 1
    table[lesson] = 1
    if learned.evaluation is not None:
        value = learned.evaluation.model_dump_json().encode()
        out.add(topics.scoring_evaluations, outcome.lead_id, value)
    if learned.snapshot is not None:
        out.add(topics.scoring_models, "current", learned.snapshot.model_dump_json().encode())


def register(app: faust.App, topics: Topics, settings: Settings, rules: ModelRules) -> Any:
    learning.require_river_internals()
    source = raw_topic(app, topics.scoring_outcomes)
    table = json_table(app, "scoring_model", settings)

    def one(record: Any, staged: StagedTable | None, out: Outbox) -> None:
        assert staged is not None
        learn_step(record, staged, out, topics=topics, rules=rules, now=datetime.now(UTC))

    async def learn_outcomes(stream: Any) -> None:
        await run_batches(app, stream, settings, one, table)

    return app.agent(source, name=STEP, concurrency=1)(learn_outcomes)


class ModelFollower:
    """The newest readable snapshot on `scoring.models`, kept current. `loaded` once the
    topic was read to its end: the lead step waits for it, so a restarted worker does
    not score with the rules alone what it scored with the model before."""

    def __init__(self) -> None:
        self.snapshot: ModelSnapshot | None = None
        self.loaded = False

    async def wait_loaded(self) -> None:
        while not self.loaded:  # noqa: ASYNC110 - set from another task's loop (see privacy)
            await asyncio.sleep(0.05)

    def take(self, value: bytes | None) -> None:
        try:
            snapshot = ModelSnapshot.model_validate_json(value or b"")
        except (ValidationError, ValueError) as exc:
            kept = self.snapshot.version if self.snapshot else "none"
            log.error("a model snapshot could not be read (%s); keeping version %s", exc, kept)
            return
        if self.snapshot is None or snapshot.version >= self.snapshot.version:
            self.snapshot = snapshot

    async def follow(self, kafka: KafkaSettings, bootstrap: str, topic: str) -> None:
        """Read the topic from its start, then every new snapshot, until cancelled."""

        def caught_up() -> None:
            version = self.snapshot.version if self.snapshot else "none (rules alone)"
            log.info("learned model loaded: version %s", version)
            self.loaded = True

        await follow_topic(kafka, bootstrap, topic, lambda r: self.take(r.value), caught_up)


class Rescorer:
    """Open leads scored again when the model moved: for each new version that is in use
    and differs materially from the last one acted on, every open lead of this worker's
    `lead_state` stores gets a `RescoreLead` on `lead.updates`, at most `rescore_per_s`
    a second. The lead step scores it in order with its other updates, with the newest
    version it holds; a lead another worker also asked for (a standby, a rebalance) is
    scored once: the second finds its score unchanged.

    A newer version during a pass does not start the pass over (with versions every few
    outcomes, that would ask the first leads of the store again and again and never
    reach the rest): the pass goes on, asking for the newest version, and once it ends
    the version it started with is the one acted on, so a newer one that moved enough
    since then gets a pass of its own."""

    def __init__(
        self,
        follower: ModelFollower,
        table: Any,
        updates: Any,
        rules: ModelRules,
        closed: frozenset[str],
    ) -> None:
        self._follower = follower
        self._table = table
        self._updates = updates
        self._rules = rules
        self._closed = closed
        self.acted_on: dict[str, float] | None = None
        self.asked = 0
        # Set by the lead step once it handles records, i.e. its tables are recovered.
        self.tables_ready = False

    def due(self) -> ModelSnapshot | None:
        snapshot = self._follower.snapshot
        if snapshot is None or not learning.in_use(snapshot, self._rules):
            return None
        threshold = self._rules.rescore_when_weight_moves
        return snapshot if learning.moved(self.acted_on, snapshot, threshold) else None

    def wanted(self, value: Any) -> bool:
        return (
            isinstance(value, dict)
            and not value.get("merged_into")
            and value.get("stage") not in self._closed
        )

    async def run(self, poll_s: float = 1.0, ready_within_s: float = 60.0) -> None:
        # A pass before the tables are recovered would miss leads; a worker with no
        # traffic at all goes after `ready_within_s`.
        for _ in range(int(ready_within_s / poll_s)):
            if self.tables_ready:
                break
            await asyncio.sleep(poll_s)
        while True:
            snapshot = self.due()
            if snapshot is None:
                await asyncio.sleep(poll_s)
                continue
            await self.rescore(snapshot)
            self.acted_on = {**snapshot.weights, learning.INTERCEPT: snapshot.intercept}

    async def rescore(self, snapshot: ModelSnapshot) -> int:
        """One pass over the open leads, begun for `snapshot`; how many were asked."""
        pause = 1.0 / self._rules.rescore_per_s
        asked = 0
        for key, value in self._table.items():
            if not self.wanted(value):
                continue
            newest = self._follower.snapshot or snapshot
            command = RescoreLead(lead_id=key, version=newest.version)
            await self._updates.send(key=key.encode(), value=command.model_dump_json().encode())
            asked += 1
            self.asked += 1
            await asyncio.sleep(pause)
        log.info("model version %d: %d open leads asked to re-score", snapshot.version, asked)
        return asked
