"""Every topic name leadflow reads or writes, in one place.

Names follow docs/architecture.md. A prefix (KAFKA_TOPIC_PREFIX) isolates a
tenant or a test run; consumer groups carry the same prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from leadflow import steps


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def leads_raw(self) -> str:
        return self._name("leads.raw")

    @property
    def events_calls(self) -> str:
        return self._name("events.calls")

    @property
    def events_engagement(self) -> str:
        return self._name("events.engagement")

    @property
    def events_crm(self) -> str:
        return self._name("events.crm")

    @property
    def privacy_suppressions(self) -> str:
        """Compacted: hashes of erased people's identifiers, checked before every write."""
        return self._name("privacy.suppressions")

    @property
    def leads_quarantine(self) -> str:
        """Form posts taken for bots (honeypot, too fast): kept for review, never leads."""
        return self._name("leads.quarantine")

    @property
    def social_notifications(self) -> str:
        """Lead ids announced by Meta/LinkedIn webhooks, before the fetcher reads the lead."""
        return self._name("social.notifications")

    @property
    def leads_identified(self) -> str:
        return self._name("leads.identified")

    @property
    def leads_assigned(self) -> str:
        return self._name("leads.assigned")

    @property
    def lead_transitions(self) -> str:
        return self._name("lead.transitions")

    # Internal hops of the stream core (re-keying through topics, never shared state).
    @property
    def identity_keys(self) -> str:
        """Identity probes keyed by match key (`email:…`, `phone:…`, `company:…`)."""
        return self._name("identity.keys")

    @property
    def lead_updates(self) -> str:
        """Events for the lead step, keyed by lead id: new leads, merges, absorbs."""
        return self._name("lead.updates")

    @property
    def routing_requests(self) -> str:
        """Routing requests keyed by team, so one partition owns a team's turns."""
        return self._name("routing.requests")

    @property
    def lead_merges(self) -> str:
        return self._name("lead.merges")

    @property
    def notifier_delivered(self) -> str:
        """Compacted: assignment ids the notifier has delivered or dead-lettered."""
        return self._name("notifier.delivered")

    @property
    def nurture_commands(self) -> str:
        """The nurture agent's clock (a tick per partition) and its erase commands (keyed
        by lead id), co-partitioned with `leads.identified`."""
        return self._name("nurture.commands")

    @property
    def nurture_sends(self) -> str:
        """Emails the nurture agent decided to send, keyed by lead id, for the mailer."""
        return self._name("nurture.sends")

    @property
    def nurture_events(self) -> str:
        """What happened in a sequence (enrolled, sent, opened ...), keyed by lead id."""
        return self._name("nurture.events")

    @property
    def nurture_suppressions(self) -> str:
        """Compacted: identifier hashes that may not be mailed (unsubscribed, bounced)."""
        return self._name("nurture.suppressions")

    @property
    def mailer_delivered(self) -> str:
        """Compacted: send ids the mailer has delivered, bounced or dead-lettered."""
        return self._name("mailer.delivered")

    @property
    def scoring_outcomes(self) -> str:
        """Won/lost outcomes with their features, all under one key: one learner, in order."""
        return self._name("scoring.outcomes")

    @property
    def scoring_models(self) -> str:
        """Compacted: the current learned model, read by every worker."""
        return self._name("scoring.models")

    @property
    def scoring_evaluations(self) -> str:
        """Progressive validation of the learned model, keyed by lead id."""
        return self._name("scoring.evaluations")

    def dlq(self, step: str) -> str:
        """The dead-letter topic of one step: `dlq.<step>` (the contract calls it `dlq.<stage>`)."""
        return self._name(f"dlq.{step}")

    def all_dlq(self) -> list[str]:
        return [self.dlq(step) for step in steps.ALL]

    def all(self) -> list[str]:
        """Every topic the product declares at start, dead-letter topics included."""
        return [
            self.leads_raw,
            self.events_calls,
            self.events_engagement,
            self.events_crm,
            self.social_notifications,
            self.leads_quarantine,
            self.leads_identified,
            self.leads_assigned,
            self.lead_transitions,
            self.identity_keys,
            self.lead_updates,
            self.routing_requests,
            self.lead_merges,
            self.notifier_delivered,
            self.uploads_done,
            self.privacy_suppressions,
            self.nurture_commands,
            self.nurture_sends,
            self.nurture_events,
            self.nurture_suppressions,
            self.mailer_delivered,
            self.scoring_outcomes,
            self.scoring_models,
            self.scoring_evaluations,
            *self.all_dlq(),
        ]

    @property
    def uploads_done(self) -> str:
        """Compacted: finished uploads by event and file digest, with their summary."""
        return self._name("uploads.done")

    def compacted(self) -> set[str]:
        """Topics that keep only the latest value per key."""
        return {
            self.notifier_delivered,
            self.uploads_done,
            self.privacy_suppressions,
            self.nurture_suppressions,
            self.mailer_delivered,
            self.scoring_models,
        }

    def worker_sources(self) -> list[str]:
        """Every topic the stream worker's agents read."""
        return [
            self.leads_raw,
            self.events_calls,
            self.events_engagement,
            self.events_crm,
            self.identity_keys,
            self.lead_updates,
            self.leads_assigned,
            self.routing_requests,
        ]

    def group(self, role: str) -> str:
        """Consumer group id of one role (clickhouse writer, notifier ...)."""
        return self._name(f"leadflow.{role}")
