"""Test helpers for the stream core: an independent oracle of who is the same person
(leadflow/oracle.py, re-exported here), and an in-memory run of the stage topology
under arbitrary interleavings.

The oracle knows nothing of partitions or merges: it links every pair of
leads a matching rule links and takes connected components. The simulator
runs the real pure stage functions with per-partition FIFO queues and picks
the next partition at random, as independent Kafka partitions may interleave.
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

from leadflow.oracle import expected_people, expected_survivors
from leadflow.topics import Topics
from schemas import Assignment, IdentityProbe, Lead, LeadState
from streams.identity import start_probe, table_key, visit_key
from streams.lead_agent import handle_assignment, handle_update
from streams.routing_agent import handle_routing
from streams.rules import Rules

NOW = datetime(2026, 3, 10, tzinfo=UTC)


class Topology:
    """The stages over in-memory partitions; tables are plain dicts (keys are unique)."""

    def __init__(self, rules: Rules, partitions: int = 4, seed: int = 0) -> None:
        self.rules = rules
        self.partitions = partitions
        self.rng = random.Random(seed)
        self.topics = Topics()
        self.queues: dict[tuple[str, int], deque[tuple[str, bytes]]] = defaultdict(deque)
        self.identity: dict[str, Any] = {}
        self.lead_table: dict[str, Any] = {}
        self.teams: dict[str, Any] = {}
        self.states: dict[str, LeadState] = {}
        self.assignments: list[Assignment] = []
        self.merges: list[dict[str, Any]] = []
        self.transitions: list[dict[str, Any]] = []
        self.now = NOW  # the wall clock the routing stage sees; tests move it

    def send(self, topic: str, key: str, value: bytes) -> None:
        partition = zlib.crc32(key.encode()) % self.partitions
        self.queues[(topic, partition)].append((key, value))

    def publish_lead(self, lead: Lead) -> None:
        probe = start_probe(lead, self.rules.identity)
        kind, value, _ = probe.keys[0]
        self.send(
            self.topics.identity_keys, table_key(kind, value), probe.model_dump_json().encode()
        )

    def publish_probe(self, probe: IdentityProbe) -> None:
        kind, value, _ = probe.keys[0]
        self.send(
            self.topics.identity_keys, table_key(kind, value), probe.model_dump_json().encode()
        )

    def publish_update(self, update: dict[str, Any] | BaseModel) -> None:
        """A message for the lead stage, keyed as its producer keys it: the lead it names
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
            key, value = self.queues[(topic, partition)].popleft()
            self._dispatch(topic, key, value)
        raise AssertionError("the topology did not settle")

    def _dispatch(self, topic: str, key: str, value: bytes) -> None:
        t = self.topics
        if topic == t.identity_keys:
            probe = IdentityProbe.model_validate_json(value)
            probe, entry = visit_key(probe, self.identity.get(key), self.rules.identity)
            self.identity[key] = entry
            if probe.keys:
                kind, next_value, _ = probe.keys[0]
                self.send(
                    t.identity_keys, table_key(kind, next_value), probe.model_dump_json().encode()
                )
            else:
                self.send(
                    t.lead_updates,
                    probe.lead_id,
                    orjson.dumps({"type": "lead", "probe": probe.model_dump(mode="json")}),
                )
        elif topic in (t.lead_updates, t.leads_assigned):
            stored = self.lead_table.get(key)
            state = LeadState.model_validate(stored) if stored else None
            if topic == t.leads_assigned:
                effects = handle_assignment(
                    Assignment.model_validate_json(value), state, t, self.rules, self.now
                )
            else:
                effects = handle_update(orjson.loads(value), state, t, self.rules, self.now)
            if effects.state is not None:
                self.lead_table[key] = effects.state.model_dump(mode="json")
            for out_topic, out_key, out_value in effects.sends:
                self.send(out_topic, out_key, out_value)
        elif topic == t.routing_requests:
            for assignment in handle_routing(orjson.loads(value), self.teams, self.rules, self.now):
                self.assignments.append(assignment)
                self.send(
                    t.leads_assigned, assignment.lead_id, assignment.model_dump_json().encode()
                )
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

    def people(self) -> list[LeadState]:
        """Current leads: every state not merged into another."""
        return [s for s in self.states.values() if s.merged_into is None]
