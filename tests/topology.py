"""Test helpers for the stream core: an independent oracle of who is the same person
(leadflow_tools/oracle.py, re-exported here), and an in-memory run of the stage topology
under arbitrary interleavings.

The oracle knows nothing of partitions or merges: it links every pair of
leads a matching rule links and takes connected components. The simulator
calls the very step functions the agents call (`resolve_step`, `fold_step`,
`assign_step`), with plain dicts for tables and per-partition FIFO queues,
and picks the next partition at random, as independent Kafka partitions may
interleave.
"""

from __future__ import annotations

__all__ = ["NOW", "Topology", "expected_people", "expected_survivors"]

import random
import zlib
from collections import defaultdict, deque
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel

from leadflow.rules import Rules
from leadflow.topics import Topics
from leadflow_tools.oracle import expected_people, expected_survivors
from schemas import Assignment, IdentityProbe, Lead, LeadState
from schemas.scoring import Evaluation, ModelSnapshot
from streams.frames import FramedEvent, RecordInFrame
from streams.identity import scatter, start_probe
from streams.identity_agent import resolve_step
from streams.lead_agent import fold_step
from streams.learning import scoring_with
from streams.learning_agent import learn_step
from streams.routing_agent import assign_step

NOW = datetime(2026, 3, 10, tzinfo=UTC)


class Topology:
    """The stages over in-memory partitions; tables are plain dicts (keys are unique)."""

    def __init__(self, rules: Rules, partitions: int = 4, seed: int = 0) -> None:
        self.rules = rules
        self.partitions = partitions
        self.rng = random.Random(seed)
        self.topics = Topics()
        self.queues: dict[tuple[str, int], deque[tuple[str, bytes, int]]] = defaultdict(deque)
        self.identity: dict[str, Any] = {}
        self.lead_table: dict[str, Any] = {}
        self.teams: dict[str, Any] = {}
        self.states: dict[str, LeadState] = {}
        self.assignments: list[Assignment] = []
        self.merges: list[dict[str, Any]] = []
        self.transitions: list[dict[str, Any]] = []
        self.now = NOW  # the wall clock the routing step sees; tests move it
        self.dead_letters: list[tuple[str, Exception]] = []
        self.offsets: dict[tuple[str, int], int] = defaultdict(int)
        # Kafka hops: a message published from outside is hop 1 (what the normalize step
        # sends for a `leads.raw` envelope); a step's output is one more than its input.
        self.hop = 0
        self.first_hop: dict[tuple[str, str], int] = {}
        # Learned scoring: the learner's table, the model every stage scores with, and
        # the learner's predictions of each outcome.
        self.learner: dict[str, Any] = {}
        self.model: ModelSnapshot | None = None
        self.evaluations: list[Evaluation] = []

    def add(self, topic: str, key: str | bytes, value: bytes) -> None:
        """A step's output (the `Outputs` of streams.wiring)."""
        if topic == self.topics.leads_assigned:
            self.assignments.append(Assignment.model_validate_json(value))
        self.send(topic, key.decode() if isinstance(key, bytes) else key, value)

    def dead_letter(self, dlq: str, step: str, event: Any, error: Exception) -> None:
        # The simulator feeds only messages the steps must take: a dead letter is a bug.
        raise AssertionError(f"{step} dead-lettered {event.value[:200]!r}: {error}")

    def send(self, topic: str, key: str, value: bytes) -> None:
        partition = zlib.crc32(key.encode()) % self.partitions
        hop = self.hop + 1
        self.queues[(topic, partition)].append((key, value, hop))
        self.first_hop.setdefault((topic, key), hop)

    def publish_lead(self, lead: Lead) -> None:
        """A normalized lead, as the normalize step sends it (its probes, one per key)."""
        self.publish_probe(start_probe(lead, self.rules.identity))

    def publish_probe(self, probe: IdentityProbe) -> None:
        for key, value in scatter(probe):
            self.send(self.topics.identity_keys, key, value)

    def publish_update(self, update: dict[str, Any] | BaseModel) -> None:
        """A message for the lead step, keyed as its producer keys it: the lead it names
        (`lead_id`), or for a merge the lead to absorb (`loser`)."""
        if isinstance(update, BaseModel):
            update = update.model_dump(mode="json")
        key = update["loser"] if update.get("type") == "merge" else update["lead_id"]
        self.send(self.topics.lead_updates, key, orjson.dumps(update))

    def run(self, max_steps: int = 1_000_000) -> None:
        for _ in range(max_steps):
            ready = [q for q, items in self.queues.items() if items]
            if not ready:
                return
            topic, partition = self.rng.choice(ready)
            key, value, self.hop = self.queues[(topic, partition)].popleft()
            self._dispatch(topic, key, value)
            self.hop = 0
        raise AssertionError("the topology did not settle")

    def _dispatch(self, topic: str, key: str, value: bytes) -> None:
        t = self.topics
        partition = zlib.crc32(key.encode()) % self.partitions
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] += 1
        record = FramedEvent(
            key.encode(), value, RecordInFrame(topic, partition, offset, key.encode(), value, 0)
        )
        if topic == t.identity_keys:
            resolve_step(record, self.identity, self, topics=t, rules=self.rules)
        elif topic in (t.lead_updates, t.leads_assigned):
            with scoring_with(self.model):
                fold_step(record, self.lead_table, self, topics=t, rules=self.rules, now=self.now)
        elif topic == t.scoring_outcomes:
            learn_step(
                record, self.learner, self, topics=t, rules=self.rules.scoring.model, now=self.now
            )
        elif topic == t.scoring_models:
            self.model = ModelSnapshot.model_validate_json(value)
        elif topic == t.scoring_evaluations:
            self.evaluations.append(Evaluation.model_validate_json(value))
        elif topic == t.routing_requests:
            assign_step(record, self.teams, self, topics=t, rules=self.rules, now=self.now)
        elif topic == t.leads_identified:
            state = LeadState.model_validate_json(value)
            known = self.states.get(state.lead_id)
            if known is None or state.version >= known.version:
                self.states[state.lead_id] = state
        elif topic == t.lead_merges:
            self.merges.append(orjson.loads(value))
        elif topic == t.lead_transitions:
            self.transitions.append(orjson.loads(value))
        else:
            raise AssertionError(f"no stage reads {topic}")

    def queues_of(self, topic: str) -> list[tuple[str, bytes, int]]:
        """Every message waiting on `topic`, over its partitions."""
        return [item for (t, _), items in self.queues.items() if t == topic for item in items]

    def people(self) -> list[LeadState]:
        """Current leads: every state not merged into another."""
        return [s for s in self.states.values() if s.merged_into is None]
